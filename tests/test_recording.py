"""Per-day recordings: files, sanitised names, no overwrite, retention; and through the server."""

from __future__ import annotations

import datetime as dt
import json
import wave

import numpy as np

from fastvc.recording import Recorder, sanitize_session_id
from serverkit import make_config, pcm16, run_session, running_server, ws_url


def test_session_ids_cannot_escape_the_directory():
    assert sanitize_session_id("../../etc/passwd") == "______etc_passwd"
    assert sanitize_session_id("") == "session"
    assert len(sanitize_session_id("x" * 500)) == 64


def test_recordings_are_per_day_and_never_overwritten(tmp_path):
    recorder = Recorder(tmp_path, 7, today=lambda: dt.date(2026, 3, 4))
    first, second = recorder.open("../call"), recorder.open("../call")
    for recording in (first, second):
        recording.write_input(np.zeros(160, np.float32), 8000)
        recording.write_output(np.full(320, 0.5, np.float32), 16000)
        recording.close({"outcome": "complete"})
    folder = tmp_path / "2026" / "03" / "04"
    assert sorted(p.name for p in folder.iterdir()) == [
        "___call-1_input.wav", "___call-1_output.wav", "___call-1_stats.json",
        "___call_input.wav", "___call_output.wav", "___call_stats.json"]
    with wave.open(str(folder / "___call_output.wav")) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (16000, 320)
    assert json.loads((folder / "___call_stats.json").read_text()) == {"outcome": "complete"}


def test_retention_deletes_old_days_only(tmp_path):
    today = dt.date(2026, 3, 10)
    for day in (dt.date(2026, 3, 1), dt.date(2026, 3, 3), dt.date(2026, 3, 9)):
        Recorder(tmp_path, 7, today=lambda day=day: day).open("s").close({})
    assert Recorder(tmp_path, 7, today=lambda: today).prune() == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/*/*")) == ["2026/03/03", "2026/03/09"]
    assert Recorder(tmp_path, 0, today=lambda: today).prune() == 0


async def test_the_server_records_input_output_and_stats(tmp_path):
    config = make_config()
    config.recording.enabled = True
    config.recording.directory = str(tmp_path)
    tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 200 / 16000)).astype(np.float32)
    async with running_server(config) as server:
        await run_session(ws_url(server), {"session_id": "rec/1", "sample_rate": 16000, "bit_depth": 16},
                          [pcm16(tone)])
    stats_file, = tmp_path.glob("*/*/*/rec_1_stats.json")
    summary = json.loads(stats_file.read_text())
    assert summary["outcome"] == "complete" and summary["stats"]["input_seconds"] == 1.0
    for kind in ("input", "output"):
        with wave.open(str(stats_file.with_name(f"rec_1_{kind}.wav"))) as wav:
            assert wav.getnframes() == 16000
