"""The load generator against a real server on loopback (passthrough engine): short runs, real sockets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fastvc.loadgen import run_load_async
from fastvc.loadgen.audio import read_wav
from serverkit import make_config, running_server, ws_url

BENCH_LOAD = Path(__file__).resolve().parents[1] / "bench" / "load.py"


async def test_paced_pcm_sessions_complete_with_every_block_timed(audio_dir):
    clip = read_wav(audio_dir / "en-hello_world-16k.wav")  # 1.1 s, looped to 2 s
    async with running_server() as server:
        run = await run_load_async(ws_url(server), 3, clip, duration_s=2.0, ramp_s=0.1)
    assert len(run.sessions) == 3
    for session in run.sessions:
        assert session.ok, session.error
        assert session.close_code == 1000
        assert session.block_ms == 180.0 and session.algorithmic_latency_ms == 260.0  # from "ready"
        assert len(session.block_latencies_ms) == 11 and session.lost_blocks == 0  # 2 s / 180 ms
        assert len(session.added_latencies_ms) == 11
        assert all(0.0 < x < 1000.0 for x in session.block_latencies_ms)
        assert session.output_s == pytest.approx(2.0, abs=0.001)  # fastvc's output lasts as long as the input
        assert 180.0 < session.first_packet_ms < 1200.0  # one block must be buffered first
        assert session.rtf == pytest.approx(1.0, abs=0.5)
        assert session.server_stats["blocks"] >= 11
    assert run.loop_lag_ms["count"] > 50


async def test_opus_both_ways_counts_output_from_packet_headers(audio_dir):
    async with running_server() as server:
        run = await run_load_async(ws_url(server), 2, audio_dir / "en-hello_world-16k.wav", duration_s=1.0,
                                   encoding="OPUS", pace="fast", output_encoding="OPUS", sample_rate_out_hz=48000)
    for session in run.sessions:
        assert session.ok, session.error
        assert session.output_s == pytest.approx(1.0, abs=0.021)  # whole 20 ms packets; the flush may add one
        assert len(session.block_latencies_ms) == 5 and session.lost_blocks == 0
        assert session.rtf < 1.0  # sent as fast as possible: faster than real time


async def test_a_refused_session_is_reported_not_raised(audio_dir):
    async with running_server() as server:
        run = await run_load_async(ws_url(server), 1, audio_dir / "en-hello_world-16k.wav", duration_s=0.5,
                                   pace="fast", sample_rate_out_hz=7)  # an invalid output rate
    session = run.sessions[0]
    assert not session.ok and session.error.startswith("server: INVALID_CONFIG")
    assert session.close_code == 1008


async def test_a_server_at_its_session_limit_refuses_with_1013_and_the_run_goes_on(audio_dir):
    async with running_server(make_config(max_sessions=0)) as server:
        run = await run_load_async(ws_url(server), 2, audio_dir / "en-hello_world-16k.wav", duration_s=0.5,
                                   pace="fast")
    for session in run.sessions:
        assert not session.ok and session.close_code == 1013
        assert "OVERLOADED" in session.error or "1013" in session.error


def load_bench_module():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH_LOAD)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_command_line_spawns_a_server_and_writes_the_report(audio_dir, tmp_path, capsys):
    bench = load_bench_module()
    out = tmp_path / "out.json"
    code = bench.main(["--spawn-server", "--engine", "passthrough", "--sweep", "1,2", "--duration", "1",
                       "--ramp", "0.1", "--settle", "0", "--quiet", "--audio", str(audio_dir / "en-hello_world-16k.wav"),
                       "--json", str(out), "--plot", str(tmp_path / "out.png")])
    assert code == 0
    report = json.loads(out.read_text())
    assert [row["sessions"] for row in report["sweep"]] == [1, 2]
    for row in report["sweep"]:
        assert row["errors"] == 0 and row["completed"] == row["sessions"]
        assert set(row["block_latency_ms"]) >= {"p50", "p95", "p99"} and row["block_latency_ms"]["p99"] > 0
        assert {"first_packet_ms", "rtf", "underruns", "added_latency_ms", "machine"} <= set(row)
        assert row["machine"]["server_cpu_pct"] >= 0
    printed = capsys.readouterr().out
    assert "add p99" in printed and "report:" in printed


def test_server_options_are_parsed_as_toml_values():
    bench = load_bench_module()
    assert bench.parse_server_options(["scheduler.max_wait_ms=0", "scheduler.max_batch_size = 8",
                                       "engine.device=cpu"]) == {
        "scheduler": {"max_wait_ms": 0, "max_batch_size": 8}, "engine": {"device": "cpu"}}
    with pytest.raises(ValueError):
        bench.parse_server_options(["max_wait_ms=0"])
