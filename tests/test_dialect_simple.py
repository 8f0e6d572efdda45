"""fast-vc-service's simple protocol on / and /ws: the serializer on bytes, then PCM and Opus end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from dialectkit import assert_same_audio
from fastvc.codec import OpusDecoder, OpusEncoder
from fastvc.dialects.simple import SimpleSerializer, is_simple_start
from fastvc.protocol import AudioEvent, ConfigEvent, EndEvent, InvalidConfig, InvalidMessage
from serverkit import make_config, pcm16, running_server, speech, split_bytes, ws_url

START = {"signal": "start", "stream_id": "s-1", "sample_rate": 16000, "sample_bit": 16}


def test_the_first_message_picks_the_dialect():
    assert is_simple_start(json.dumps(START))
    assert is_simple_start(json.dumps({"signal": "end"}))
    assert not is_simple_start(json.dumps({"type": "config", "sample_rate": 16000}))
    assert not is_simple_start(b"\x00\x01")
    assert not is_simple_start("not json")


def test_start_maps_onto_the_session_config():
    event = SimpleSerializer().receive(json.dumps({**START, "encoding": "OPUS", "opus_frame_duration": 40,
                                                   "sample_rate_out": 24000, "api_key": "k"}))
    assert isinstance(event, ConfigEvent)
    config = event.config
    assert (config.session_id, config.sample_rate_hz, config.bit_depth, config.api_key) == ("s-1", 16000, 16, "k")
    assert (config.encoding, config.output_encoding, config.opus_frame_ms, config.sample_rate_out_hz) == \
        ("OPUS", "OPUS", 40, 24000)
    assert SimpleSerializer().receive(json.dumps(START)).config.sample_rate_out_hz == 16000  # the default


@pytest.mark.parametrize("sample_bit", [8, 12, 64, "16", True])
def test_sample_bit_other_than_16_24_32_is_refused(sample_bit):
    with pytest.raises(InvalidConfig, match="'sample_bit' must be one of"):
        SimpleSerializer().receive(json.dumps({**START, "sample_bit": sample_bit}))


def test_order_is_start_audio_end():
    serializer = SimpleSerializer()
    with pytest.raises(InvalidMessage, match="before the 'start'"):
        serializer.receive(b"\x00\x00")
    serializer.receive(json.dumps(START))
    assert serializer.receive(b"\x00\x00") == AudioEvent(b"\x00\x00")
    assert isinstance(serializer.receive(json.dumps({"signal": "end"})), EndEvent)
    assert json.loads(serializer.complete(serializer.config, {"blocks": 1})[0]) == \
        {"signal": "completed", "stream_id": "s-1", "stats": {"blocks": 1}}


async def simple_session(url: str, start: dict, chunks: list[bytes]) -> tuple[list[bytes], list[dict], int]:
    """Send start, the chunks and end; return (binary messages, JSON messages, close code)."""
    audio: list[bytes] = []
    texts: list[dict] = []
    async with connect(url, max_size=None, compression=None) as ws:
        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if isinstance(message, bytes):
                        audio.append(message)
                    else:
                        texts.append(json.loads(message))

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(start))
            for chunk in chunks:
                await ws.send(chunk)
            await ws.send(json.dumps({"signal": "end"}))
        await reader
    return audio, texts, ws.close_code


@pytest.mark.parametrize("path", ["/", "/ws"])
async def test_simple_pcm_round_trip_without_a_ready_message(audio_dir, path):
    source = speech(audio_dir, 16000, seconds=3.0)
    async with running_server() as server:
        audio, texts, close_code = await simple_session(ws_url(server, path), START,
                                                        split_bytes(pcm16(source), 640))
    assert close_code == 1000
    assert [t["signal"] for t in texts] == ["completed"] and texts[0]["stream_id"] == "s-1"
    output = np.frombuffer(b"".join(audio), "<i2").astype(np.float32) / 32768.0
    assert_same_audio(source, output, 16000, max_duration_error_s=0.040, min_correlation=0.95)


async def test_simple_opus_round_trip(audio_dir):
    source = speech(audio_dir, 16000, seconds=3.0)
    encoder = OpusEncoder(16000, 20)
    packets = encoder.encode(source) + encoder.flush()
    start = {**START, "encoding": "OPUS", "opus_frame_duration": 20}
    async with running_server() as server:
        audio, texts, close_code = await simple_session(ws_url(server), start, packets)
    assert close_code == 1000 and texts[-1]["signal"] == "completed"
    output = decode_opus_16k(audio)
    sent = decode_opus_16k(packets)  # what the server received: the source behind one Opus look-ahead
    # The server's Opus adds one more look-ahead (6.5 ms) and pads its last frame (at most 20 ms).
    assert_same_audio(sent, output, 16000, max_duration_error_s=0.040, min_correlation=0.95, max_lag_s=0.010)


def decode_opus_16k(packets: list[bytes]) -> np.ndarray:
    decoder = OpusDecoder(20)
    output_48k = np.concatenate([decoder.decode(packet) for packet in packets])
    return soxr.resample(output_48k, 48000, 16000, "HQ").astype(np.float32)


async def test_bad_simple_input_answers_failed_and_spares_other_streams(audio_dir):
    source = speech(audio_dir, 16000, seconds=2.0)
    chunks = split_bytes(pcm16(source), 640)
    config = make_config()
    config.auth.api_keys = ["secret"]
    async with running_server(config) as server:
        url = ws_url(server)
        good, bad_bits, no_key, odd = await asyncio.gather(
            simple_session(url, {**START, "api_key": "secret"}, chunks),
            simple_session(url, {**START, "stream_id": "s-2", "sample_bit": 8, "api_key": "secret"}, chunks),
            simple_session(url, {**START, "stream_id": "s-3"}, chunks),
            simple_session(url, {**START, "stream_id": "s-4", "api_key": "secret"}, [chunks[0][:-1]] + chunks),
        )
        assert server.service.active_sessions == 0
    for (audio, texts, close_code), stream_id, code in ((bad_bits, "s-2", "INVALID_CONFIG"),
                                                        (no_key, "s-3", "AUTH_FAILED"),
                                                        (odd, "s-4", "INVALID_AUDIO")):
        assert texts == [{"status": "failed", "stream_id": stream_id, "error_msg": texts[0]["error_msg"],
                          "error_code": code}]
        assert close_code in (1007, 1008) and audio == []
    assert "sample_bit" in bad_bits[1][0]["error_msg"]
    audio, texts, close_code = good
    assert close_code == 1000 and texts[-1]["signal"] == "completed"
    output = np.frombuffer(b"".join(audio), "<i2").astype(np.float32) / 32768.0
    assert_same_audio(source, output, 16000, max_duration_error_s=0.040, min_correlation=0.95)
