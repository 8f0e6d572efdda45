"""Binary L16 at /l16?rate=...: the serializer on bytes, then a real server and client at 8, 16 and 48 kHz."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from dialectkit import assert_same_audio
from fastvc.dialects.l16 import L16Serializer
from fastvc.protocol import AudioEvent, EndEvent, InvalidConfig, InvalidMessage
from serverkit import SessionResult, collect, pcm16, running_server, speech, split_bytes, ws_url


def test_the_query_string_configures_the_session():
    config = L16Serializer().open("/l16?rate=8000&voice=alice&api_key=k&session_id=call-7").config
    assert (config.sample_rate_hz, config.sample_rate_out_hz, config.encoding, config.bit_depth) == \
        (8000, 8000, "PCM", 16)
    assert (config.voice, config.api_key, config.session_id) == ("alice", "k", "call-7")


@pytest.mark.parametrize("query, message", [
    ("", "sample rate"),
    ("?rate=7999", "between 8000 and 48000"),
    ("?rate=96000", "between 8000 and 48000"),
    ("?rate=fast", "integer"),
    ("?rate=16000&codec=opus", "unknown query parameter"),
])
def test_a_bad_query_is_refused_with_a_clear_message(query, message):
    with pytest.raises(InvalidConfig, match=message):
        L16Serializer().open("/l16" + query)


def test_binary_is_audio_end_ends_and_gateway_notices_are_ignored():
    serializer = L16Serializer()
    serializer.open("/l16?rate=16000")
    assert serializer.receive(b"\x01\x00\x02\x00") == AudioEvent(b"\x01\x00\x02\x00")
    notice = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}
    assert serializer.receive(json.dumps(notice)) is None
    with pytest.raises(InvalidConfig, match="does not match"):
        serializer.receive(json.dumps({**notice, "content-type": "audio/l16;rate=8000"}))
    with pytest.raises(InvalidMessage, match="unknown message type"):
        serializer.receive(json.dumps({"type": "pause"}))
    assert isinstance(serializer.receive(json.dumps({"type": "end"})), EndEvent)


async def l16_session(url: str, chunks: list[bytes], *, end: bool = True) -> SessionResult:
    result = SessionResult()
    async with connect(url, max_size=None, compression=None) as ws:
        reader = asyncio.create_task(collect(ws, result))
        with contextlib.suppress(ConnectionClosed):  # a refused stream is closed while we still send
            for chunk in chunks:
                await ws.send(chunk)
            if end:
                await ws.send(json.dumps({"type": "end"}))
        await reader
    return result


@pytest.mark.parametrize("rate_hz", [8000, 16000, 48000])
async def test_l16_comes_back_at_the_same_rate_and_duration(audio_dir, rate_hz):
    source = speech(audio_dir, rate_hz, seconds=3.0)
    async with running_server() as server:
        result = await l16_session(ws_url(server, f"/l16?rate={rate_hz}&voice=default"),
                                   split_bytes(pcm16(source), rate_hz // 50 * 2))
    assert result.error is None and result.close_code == 1000
    assert result.ready["session_id"] == result.complete["session_id"]
    assert result.complete["stats"]["input_seconds"] == pytest.approx(3.0, abs=0.001)
    assert_same_audio(source, result.pcm_samples(), rate_hz, max_duration_error_s=0.040, min_correlation=0.95)


async def test_bad_l16_input_is_refused_clearly_and_spares_other_streams(audio_dir):
    source = speech(audio_dir, 16000, seconds=2.0)
    chunks = split_bytes(pcm16(source), 640)
    async with running_server() as server:
        good, odd, too_fast, too_slow = await asyncio.gather(
            l16_session(ws_url(server, "/l16?rate=16000"), chunks),
            l16_session(ws_url(server, "/l16?rate=16000"), [chunks[0], chunks[1][:-1]] + chunks[2:]),
            l16_session(ws_url(server, "/l16?rate=96000"), chunks, end=False),
            l16_session(ws_url(server, "/l16?rate=4000"), chunks, end=False),
        )
        assert server.service.active_sessions == 0
    assert (odd.error["error_code"], odd.close_code) == ("INVALID_AUDIO", 1007)
    assert "not a whole number of 16-bit samples" in odd.error["message"]
    for refused in (too_fast, too_slow):
        assert (refused.error["error_code"], refused.close_code, refused.ready) == ("INVALID_CONFIG", 1008, None)
        assert "'rate' must be between 8000 and 48000 Hz" in refused.error["message"]
    assert good.close_code == 1000
    assert_same_audio(source, good.pcm_samples(), 16000, max_duration_error_s=0.040, min_correlation=0.95)
    assert np.max(np.abs(good.pcm_samples())) > 0.01
