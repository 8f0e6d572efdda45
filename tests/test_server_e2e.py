"""End to end: a real server on loopback (passthrough engine), a real websockets client."""

from __future__ import annotations

import numpy as np
import pytest

from serverkit import best_alignment, pcm16, run_session, running_server, speech, split_bytes, ws_url


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
