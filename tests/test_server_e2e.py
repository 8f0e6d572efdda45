"""End to end: a real server on loopback (passthrough engine), a real websockets client."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from serverkit import (best_alignment, decode_opus, opus_packets, pcm16, run_session, running_server, speech,
                       split_bytes, ws_url)


@pytest.mark.parametrize("rate_hz", [8000, 16000, 48000])
async def test_pcm_in_pcm_out_matches_the_input(audio_dir, rate_hz):
    source = speech(audio_dir, rate_hz, seconds=3.0)
    async with running_server() as server:
        result = await run_session(
            ws_url(server),
            {"sample_rate": rate_hz, "bit_depth": 16, "channels": 1, "encoding": "PCM", "sample_rate_out": 16000},
            split_bytes(pcm16(source), rate_hz // 50 * 2))
    assert result.error is None and result.close_code == 1000
    assert result.ready["session_id"] == result.complete["session_id"]
    output = result.pcm_samples()
    reference = speech(audio_dir, 16000, seconds=3.0)
    assert abs(output.shape[0] / 16000 - source.shape[0] / rate_hz) <= 0.020
    lag, corr = best_alignment(reference, output, max_lag=40)
    assert abs(lag) <= 2 and corr >= 0.99


async def test_opus_in_pcm_out_returns_what_the_server_decoded(audio_dir):
    source = speech(audio_dir, 16000, seconds=3.0)
    packets = opus_packets(source, 16000, frame_ms=20)
    async with running_server() as server:
        result = await run_session(ws_url(server), {"sample_rate": 16000, "channels": 1, "encoding": "OPUS",
                                                    "opus_frame_duration": 20}, packets)
    assert result.error is None and result.close_code == 1000
    sent = decode_opus(packets, 16000)  # the audio the server received, as any Opus decoder hears it
    output = result.pcm_samples()
    assert abs(output.shape[0] - sent.shape[0]) <= 320
    lag, corr = best_alignment(sent, output, max_lag=40)
    assert abs(lag) <= 2 and corr >= 0.99


@pytest.mark.parametrize("rate_out_hz", [16000, 48000])
async def test_pcm_in_opus_out_sounds_like_the_input(audio_dir, rate_out_hz):
    source = speech(audio_dir, 16000, seconds=3.0)
    async with running_server() as server:
        result = await run_session(
            ws_url(server), {"sample_rate": 16000, "bit_depth": 16, "encoding": "PCM", "output_encoding": "OPUS",
                             "sample_rate_out": rate_out_hz, "opus_frame_duration": 20},
            split_bytes(pcm16(source), 640))
    assert result.error is None and result.close_code == 1000
    assert all(len(packet) < 400 for packet in result.audio)  # one Opus packet per message, not raw PCM
    heard = decode_opus(result.audio, 16000, drop_lookahead=True)
    assert 0 <= heard.shape[0] - source.shape[0] <= 320  # the last frame is padded up to 20 ms
    lag, corr = best_alignment(source, heard, max_lag=40)
    assert abs(lag) <= 2 and corr >= 0.9  # Opus is lossy: 0.99 holds for the lossless paths only


async def test_24_and_32_bit_pcm_are_accepted(audio_dir):
    source = speech(audio_dir, 16000, seconds=1.0)
    int32 = (np.clip(source, -1, 1 - 2**-31) * 2**31).astype("<i4")
    payload24 = b"".join(int(v >> 8).to_bytes(3, "little", signed=True) for v in int32)
    async with running_server() as server:
        results = [
            await run_session(ws_url(server), {"sample_rate": 16000, "bit_depth": 32}, split_bytes(int32.tobytes(), 1280)),
            await run_session(ws_url(server), {"sample_rate": 16000, "bit_depth": 24}, split_bytes(payload24, 960)),
        ]
    for result in results:
        assert result.close_code == 1000
        lag, corr = best_alignment(source, result.pcm_samples(), max_lag=10)
        assert lag == 0 and corr >= 0.99


async def test_fifty_concurrent_sessions_all_complete(audio_dir):
    source = speech(audio_dir, 16000, seconds=1.0)
    chunks = split_bytes(pcm16(source), 3200)
    async with running_server() as server:
        results = await asyncio.gather(*[
            run_session(ws_url(server, "/" if i % 2 else "/ws"),
                        {"session_id": f"s{i}", "sample_rate": 16000, "bit_depth": 16}, chunks)
            for i in range(50)])
        assert server.service.active_sessions == 0
    assert [r.complete["session_id"] for r in results] == [f"s{i}" for i in range(50)]
    for result in results:  # every block computed, in order: each output is its own input
        assert result.close_code == 1000 and result.complete["stats"]["blocks_failed"] == 0
        assert abs(result.pcm_samples().shape[0] - source.shape[0]) <= 320
        assert np.corrcoef(source, result.pcm_samples()[: source.shape[0]])[0, 1] >= 0.99


async def test_stats_are_real(audio_dir):
    source = speech(audio_dir, 16000, seconds=2.0)
    async with running_server() as server:
        result = await run_session(ws_url(server), {"sample_rate": 16000, "bit_depth": 16},
                                   split_bytes(pcm16(source), 640))
    stats = result.complete["stats"]
    assert stats["input_seconds"] == pytest.approx(2.0, abs=1e-3)
    assert stats["output_seconds"] == pytest.approx(2.0, abs=1e-3)
    assert stats["blocks"] == math.ceil((2.0 * 22050 + 1764) / 3969)  # input plus the lead-in, in 180 ms blocks
    latency = stats["block_latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] < 5000
    assert 0 < stats["first_packet_latency_ms"] < 5000 and 0 < stats["real_time_factor"] < 10
    assert stats["algorithmic_latency_ms"] == pytest.approx(260.0)
    assert result.ready["algorithmic_latency_ms"] == pytest.approx(260.0)
