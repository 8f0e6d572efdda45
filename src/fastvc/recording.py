"""Optional per-day recordings of sessions (off by default: `[recording] enabled`).

    <directory>/YYYY/MM/DD/<session_id>_input.wav    what the client sent, decoded (its rate; 48 kHz for Opus)
    <directory>/YYYY/MM/DD/<session_id>_output.wav   what the server sent back (sample_rate_out)
    <directory>/YYYY/MM/DD/<session_id>_stats.json   the session's stats and outcome

Session ids are sanitised (letters, digits, `_` and `-` only, at most 64 characters: no path traversal), and
a name already taken gets a `-1`, `-2`... suffix (files are created exclusively: never overwritten).
`Recorder.prune` deletes day directories older than `retention_days` (0 keeps everything).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np

from fastvc.codec import to_int16

MAX_NAME_CHARS = 64


def sanitize_session_id(session_id: str) -> str:
    """A file-name-safe form of a client-chosen id: `../../etc` -> `______etc`."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", session_id)[:MAX_NAME_CHARS]
    return name or "session"


class _WavWriter:
    """A mono int16 WAV opened on the first write (the rate is known then)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wav: wave.Wave_write | None = None
        self._rate_hz = 0

    def write(self, samples: np.ndarray, sample_rate_hz: int) -> None:
        if self._wav is None:
            self._wav = wave.open(str(self.path), "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(sample_rate_hz)
            self._rate_hz = sample_rate_hz
        if sample_rate_hz != self._rate_hz:
            raise ValueError(f"{self.path.name}: rate changed from {self._rate_hz} to {sample_rate_hz} Hz")
        self._wav.writeframes(to_int16(samples).astype("<i2", copy=False).tobytes())

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()


class SessionRecording:
    """One session's files. `close` writes the stats JSON; call it once, whatever the outcome."""

    def __init__(self, stem: Path) -> None:
        self.stem = stem
        self.input = _WavWriter(stem.with_name(stem.name + "_input.wav"))
        self.output = _WavWriter(stem.with_name(stem.name + "_output.wav"))
        self.closed = False

    def write_input(self, samples: np.ndarray, sample_rate_hz: int) -> None:
        self.input.write(samples, sample_rate_hz)

    def write_output(self, samples: np.ndarray, sample_rate_hz: int) -> None:
        self.output.write(samples, sample_rate_hz)

    def close(self, summary: dict[str, Any]) -> None:
        if self.closed:
            return
        self.closed = True
        self.input.close()
        self.output.close()
        stats_path = self.stem.with_name(self.stem.name + "_stats.json")
        stats_path.write_text(json.dumps(summary, indent=2, default=str))


class Recorder:
    """Creates recordings under `directory`, one sub-directory per day."""

    def __init__(self, directory: str | Path, retention_days: int, *, today=dt.date.today) -> None:
        self.directory = Path(directory)
        self.retention_days = retention_days
        self.today = today

    def open(self, session_id: str) -> SessionRecording:
        day = self.today()
        folder = self.directory / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = sanitize_session_id(session_id)
        for attempt in range(10_000):
            name = base if attempt == 0 else f"{base}-{attempt}"
            try:  # claim the name atomically: the stats file is created exclusively, now
                (folder / f"{name}_stats.json").open("x").close()
            except FileExistsError:
                continue
            return SessionRecording(folder / name)
        raise FileExistsError(f"no free recording name for {base!r} in {folder}")

    def prune(self) -> int:
        """Delete day directories older than `retention_days`; returns how many were deleted."""
        if self.retention_days <= 0 or not self.directory.is_dir():
            return 0
        oldest_kept = self.today() - dt.timedelta(days=self.retention_days)
        deleted = 0
        for day_dir in sorted(self.directory.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]")):
            try:
                day = dt.date(int(day_dir.parent.parent.name), int(day_dir.parent.name), int(day_dir.name))
            except ValueError:
                continue
            if day < oldest_kept:
                shutil.rmtree(day_dir)
                deleted += 1
        for empty in sorted(self.directory.glob("*/*"), reverse=True) + sorted(self.directory.glob("*")):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
        return deleted
