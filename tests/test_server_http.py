"""HTTP on the WebSocket port (/health, /ready, /metrics) and the graceful shutdown sequence."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastvc.server import Server
from serverkit import SessionResult, collect, http_get, make_config, pcm16, run_session, running_server, speech, \
    split_bytes, ws_url

PCM = {"type": "config", "sample_rate": 16000, "bit_depth": 16}


async def test_health_ready_and_metrics_answer(audio_dir):
    async with running_server() as server:
        await run_session(ws_url(server), PCM, split_bytes(pcm16(speech(audio_dir, 16000, 1.0)), 640))
        health = await http_get(server.port, "/health")
        ready = await http_get(server.port, "/ready")
        status, headers, body = await http_get(server.port, "/metrics")
        url = f"http://127.0.0.1:{server.port}/metrics"
        standard = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        missing = await http_get(server.port, "/nothing-here")
    assert health[0] == 200 and ready[0] == 200 and missing[0] == 404
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"fastvc_sessions_total" in standard  # a client that trusts Content-Length gets the body too
    assert headers["content-length"] == str(len(body))  # one Content-Length, the body's
    text = body.decode()
    for line in ("fastvc_sessions_total 1.0", "fastvc_sessions_active 0.0", "fastvc_blocks_total 6.0",
                 "fastvc_block_latency_seconds_count 6.0", "fastvc_sessions_completed_total 1.0"):
        assert line in text
    assert "fastvc_batch_size_count 6.0" in text  # one session: one block per forward pass


async def test_ready_is_503_while_the_engine_loads():
    server = Server(make_config())
    release = asyncio.Event()
    original = server._load_engine

    async def slow_load():
        await release.wait()
        await original()

    server._load_engine = slow_load
    await server.start(wait_ready=False)
    try:
        assert (await http_get(server.port, "/health"))[0] == 200
        assert (await http_get(server.port, "/ready"))[0] == 503
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(server))
        assert refused.value.response.status_code == 503
        release.set()
        await server._engine_task
        assert (await http_get(server.port, "/ready"))[0] == 200
    finally:
        await server.stop()


async def test_drain_lets_sessions_finish_and_refuses_new_ones(audio_dir):
    chunks = split_bytes(pcm16(speech(audio_dir, 16000, 1.0)), 640)
    server = Server(make_config(drain_timeout_s=5.0))
    await server.start()
    result = SessionResult()
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps(PCM))
        reader = asyncio.create_task(collect(ws, result))
        await ws.send(chunks[0])
        drain = asyncio.create_task(server.drain())
        await asyncio.sleep(0.05)
        assert (await http_get(server.port, "/ready"))[0] == 503
        with pytest.raises(InvalidStatus):
            await connect(ws_url(server))
        for chunk in chunks[1:]:
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "end"}))
        await reader
    await asyncio.wait_for(drain, 5)
    assert result.close_code == 1000 and result.complete["stats"]["input_seconds"] == pytest.approx(1.0)


async def test_sessions_past_the_drain_timeout_are_closed_with_1001():
    server = Server(make_config(drain_timeout_s=0.2))
    await server.start()
    result = SessionResult()
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps(PCM))
        reader = asyncio.create_task(collect(ws, result))
        await ws.send(b"\x00\x00" * 1600)
        await asyncio.wait_for(server.drain(), 5)
        await asyncio.wait_for(reader, 5)
    assert result.close_code == 1001
    assert server.service.active_sessions == 0


async def test_an_engine_that_fails_to_load_stops_the_server_with_exit_code_1(tmp_path):
    from fastvc.server import serve_until_signalled

    config = make_config(state_dir=str(tmp_path))
    config.engine.name = "no-such-engine"
    assert await asyncio.wait_for(serve_until_signalled(config), 10) == 1
    assert list(tmp_path.iterdir()) == []  # the state file is gone too
