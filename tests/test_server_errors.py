"""Bad input on the wire: each gets a clear error and close code, and does no harm to other sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import numpy as np
import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from serverkit import (SessionResult, collect, opus_packets, pcm16, run_session, running_server, speech,
                       split_bytes, make_config, ws_url)

PCM = {"type": "config", "sample_rate": 16000, "bit_depth": 16, "channels": 1, "encoding": "PCM"}


async def _exchange(url: str, messages: list[str | bytes]) -> SessionResult:
    """Send `messages` as they are and collect what the server answers until it closes."""
    result = SessionResult()
    async with connect(url, max_size=None, compression=None) as ws:
        reader = asyncio.create_task(collect(ws, result))
        for message in messages:
            await ws.send(message)
        await asyncio.wait_for(reader, 10)
    return result


BAD_MESSAGES = {
    "binary before config": ([b"\x00\x00" * 10], "INVALID_MESSAGE", 1008),
    "malformed JSON": (['{"type": "config", '], "INVALID_MESSAGE", 1008),
    "unknown message type": ([json.dumps(PCM), '{"type": "pause"}'], "INVALID_MESSAGE", 1008),
    "config twice": ([json.dumps(PCM), json.dumps(PCM)], "INVALID_MESSAGE", 1008),
    "missing sample_rate": ([json.dumps({k: v for k, v in PCM.items() if k != "sample_rate"})],
                            "INVALID_CONFIG", 1008),
    "invalid sample_rate": ([json.dumps({**PCM, "sample_rate": 96000})], "INVALID_CONFIG", 1008),
    "invalid bit_depth": ([json.dumps({**PCM, "bit_depth": 8})], "INVALID_CONFIG", 1008),
    "stereo": ([json.dumps({**PCM, "channels": 2})], "INVALID_CONFIG", 1008),
    "unknown encoding": ([json.dumps({**PCM, "encoding": "AAC"})], "INVALID_CONFIG", 1008),
    "invalid opus frame": ([json.dumps({**PCM, "encoding": "OPUS", "opus_frame_duration": 30})],
                           "INVALID_CONFIG", 1008),
    "unknown voice": ([json.dumps({**PCM, "voice": "nobody"})], "INVALID_CONFIG", 1008),
    "odd byte count for 16-bit PCM": ([json.dumps(PCM), b"\x00" * 641], "INVALID_AUDIO", 1007),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
async def test_bad_message_gets_its_error_and_close_code(case):
    messages, error_code, close_code = BAD_MESSAGES[case]
    async with running_server() as server:
        result = await _exchange(ws_url(server), messages)
        assert server.service.active_sessions == 0
        metrics = server.metrics.render()[0].decode()
    assert result.error["error_code"] == error_code and result.error["message"]
    assert result.close_code == close_code
    assert f'fastvc_errors_total{{code="{error_code}"}} 1.0' in metrics


async def test_bad_clients_do_no_harm_to_a_concurrent_session(audio_dir):
    source = speech(audio_dir, 16000, seconds=2.0)
    async with running_server() as server:
        url = ws_url(server)
        good = asyncio.create_task(run_session(url, {"sample_rate": 16000, "bit_depth": 16},
                                               split_bytes(pcm16(source), 640)))
        bad = await asyncio.gather(*[_exchange(url, messages) for messages, _, _ in BAD_MESSAGES.values()])
        good = await good
    assert all(result.error is not None for result in bad)
    assert good.close_code == 1000 and good.error is None
    np.testing.assert_allclose(good.pcm_samples()[:16000], source[:16000], atol=2e-3)


async def test_corrupt_opus_packet_is_concealed_counted_and_not_fatal(audio_dir):
    packets = opus_packets(speech(audio_dir, 16000, seconds=1.0), 16000)
    packets[10] = b"\xff\xfe\xfd\xfc corrupt"
    async with running_server() as server:
        result = await run_session(ws_url(server), {"sample_rate": 16000, "encoding": "OPUS"}, packets)
        metrics = server.metrics.render()[0].decode()
    assert result.error is None and result.close_code == 1000
    assert result.complete["stats"]["concealed_packets"] == 1
    assert abs(result.pcm_samples().shape[0] - len(packets) * 320) <= 320
    assert "fastvc_opus_packets_concealed_total 1.0" in metrics


async def test_oversized_message_gets_message_too_large():
    async with running_server(make_config(max_message_bytes=4096)) as server:
        result = await _exchange(ws_url(server), [json.dumps(PCM), b"\x00" * 4098])
    assert result.error["error_code"] == "MESSAGE_TOO_LARGE" and "4096" in result.error["message"]
    assert result.close_code == 1009


async def test_wrong_api_key_is_refused_and_the_right_one_accepted(monkeypatch):
    config = make_config()
    config.auth.api_keys = ["s3cret"]
    async with running_server(config) as server:
        wrong = await _exchange(ws_url(server), [json.dumps({**PCM, "api_key": "guess"})])
        missing = await _exchange(ws_url(server), [json.dumps(PCM)])
        right = await run_session(ws_url(server), {**PCM, "api_key": "s3cret"}, [b"\x00\x00" * 800])
    assert wrong.error["error_code"] == "AUTH_FAILED" and wrong.close_code == 1008
    assert missing.error["error_code"] == "AUTH_FAILED"
    assert right.close_code == 1000 and right.complete is not None


async def test_api_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv("FASTVC_TEST_KEYS", "a1, b2")
    config = make_config()
    config.auth.api_keys_env = "FASTVC_TEST_KEYS"
    async with running_server(config) as server:
        result = await run_session(ws_url(server), {**PCM, "api_key": "b2"}, [])
    assert result.close_code == 1000


async def test_silent_client_gets_timeout():
    async with running_server(make_config(receive_timeout_s=0.3)) as server:
        before_config = await _exchange(ws_url(server), [])
        after_config = await _exchange(ws_url(server), [json.dumps(PCM), b"\x00\x00" * 100])
    for result in (before_config, after_config):
        assert result.error["error_code"] == "TIMEOUT" and result.close_code == 1008


async def test_client_gone_mid_stream_frees_everything_without_an_error_storm(audio_dir):
    chunks = split_bytes(pcm16(speech(audio_dir, 16000, seconds=2.0)), 640)
    async with running_server() as server:
        with structlog.testing.capture_logs() as logs:
            async with connect(ws_url(server), compression=None) as ws:
                await ws.send(json.dumps(PCM))
                for chunk in chunks:
                    await ws.send(chunk)
                ws.transport.abort()  # gone: no close frame
            for _ in range(100):
                if server.service.active_sessions == 0:
                    break
                await asyncio.sleep(0.02)
        assert server.service.active_sessions == 0
        assert server.service.runner.pending == 0
        metrics = server.metrics.render()[0].decode()
    assert "fastvc_sessions_active 0.0" in metrics
    problems = [line for line in logs if line["log_level"] in ("warning", "error", "critical")]
    assert problems == []
    ends = [line for line in logs if line["event"] == "session.end"]
    assert [line["outcome"] for line in ends] == ["client_gone"]


async def test_overloaded_server_refuses_with_1013():
    async with running_server(make_config(max_sessions=1)) as server:
        async with connect(ws_url(server)) as first:
            await first.send(json.dumps(PCM))
            await first.recv()  # ready
            second = await _exchange(ws_url(server), [])
    assert second.error["error_code"] == "OVERLOADED" and second.close_code == 1013


async def _flood_until_closed(url: str, messages: list[str | bytes]) -> tuple[SessionResult, float]:
    """Send `messages`, then 20 ms audio frames back to back, never stopping to wait, until the server closes.

    Returns what the server sent and the seconds from its last text message (error or complete) to the close.
    """
    result, last_text_at = SessionResult(), []

    async def read(ws) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, str):
                    last_text_at.append(time.monotonic())
                    fields = json.loads(message)
                    setattr(result, fields["type"], fields)  # ready, error or complete

    frame = b"\x00\x00" * 320
    async with connect(url, max_size=None, compression=None, close_timeout=30) as ws:
        reader = asyncio.create_task(read(ws))
        for message in messages:
            await ws.send(message)
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(frame)
        await asyncio.wait_for(reader, 30)
        await ws.wait_closed()
        closed_at = time.monotonic()
    result.close_code = ws.close_code
    return result, closed_at - last_text_at[-1]


@pytest.mark.parametrize("ending", ["error", "complete"])
async def test_a_client_that_keeps_sending_is_closed_promptly(ending):
    """The server reads (and drops) what a client still sends while closing: a full receive queue would hide
    the client's close frame until the close timeout (10 s)."""
    audio = b"\x00\x00" * 1600
    last = b"\x00" * 641 if ending == "error" else json.dumps({"type": "end"})
    async with running_server() as server:
        result, close_s = await _flood_until_closed(ws_url(server), [json.dumps(PCM), audio, last])
        assert server.service.active_sessions == 0
    if ending == "error":
        assert result.error["error_code"] == "INVALID_AUDIO" and result.close_code == 1007
    else:
        assert result.complete is not None and result.close_code == 1000
    assert close_s < 2.0
