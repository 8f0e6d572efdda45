"""Helpers for end-to-end tests: a real server on an ephemeral loopback port and a real websockets client."""

from __future__ import annotations

import contextlib
import json
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fastvc.config import Config
from fastvc.server import Server


def make_config(**server_overrides) -> Config:
    """Passthrough on a free loopback port, `[server]` fields overridden by keyword.

    The scheduler's overload policy is off (no concealment, no adaptive steps, no admission hold): the tests
    stream faster than real time on a shared machine, where a stalled event loop would otherwise turn blocks
    into silence and refuse the next session. The policy has its own tests (test_scheduler, test_runner).
    """
    config = Config()
    config.engine.name = "passthrough"
    config.server.host = "127.0.0.1"
    config.server.port = 0
    config.auth.api_keys_env = ""
    config.scheduler.adaptive_steps = False
    config.scheduler.conceal_late_ms = 1e9
    config.scheduler.overload_hold_s = 0.0
    for name, value in server_overrides.items():
        setattr(config.server, name, value)
    return config


@contextlib.asynccontextmanager
async def running_server(config: Config | None = None) -> AsyncIterator[Server]:
    server = Server(config or make_config())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def ws_url(server: Server, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(n,) float32 mono and its rate."""
    with wave.open(str(path)) as wav:
        frames = wav.readframes(wav.getnframes())
        return np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0, wav.getframerate()


def speech(audio_dir: Path, rate_hz: int, seconds: float = 4.0, offset_s: float = 1.0) -> np.ndarray:
    """A speech excerpt of ../shared/audio at `rate_hz`."""
    samples, rate = read_wav(audio_dir / "speech-2spk-30s-16k.wav")
    excerpt = samples[int(offset_s * rate): int((offset_s + seconds) * rate)]
    return soxr.resample(excerpt, rate, rate_hz, "HQ").astype(np.float32) if rate != rate_hz else excerpt


def pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


@dataclass
class SessionResult:
    ready: dict | None = None
    audio: list[bytes] = field(default_factory=list)
    complete: dict | None = None
    error: dict | None = None
    close_code: int | None = None

    def pcm_samples(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.audio), "<i2").astype(np.float32) / 32768.0


async def collect(ws, result: SessionResult) -> SessionResult:
    """Read every server message until the connection closes."""
    try:
        async for message in ws:
            if isinstance(message, bytes):
                result.audio.append(message)
                continue
            fields = json.loads(message)
            if fields["type"] == "ready":
                result.ready = fields
            elif fields["type"] == "complete":
                result.complete = fields
            elif fields["type"] == "error":
                result.error = fields
    except ConnectionClosed:
        pass
    result.close_code = ws.close_code
    return result


async def run_session(url: str, config: dict, chunks: list[bytes], *, end: bool = True) -> SessionResult:
    """Send config, every chunk (as fast as possible), then end; return everything the server sent."""
    import asyncio

    result = SessionResult()
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", **config}))
        reader = asyncio.create_task(collect(ws, result))
        for chunk in chunks:
            await ws.send(chunk)
        if end:
            await ws.send(json.dumps({"type": "end"}))
        await reader
    return result


def split_bytes(data: bytes, piece_bytes: int) -> list[bytes]:
    return [data[i: i + piece_bytes] for i in range(0, len(data), piece_bytes)]


def best_alignment(reference: np.ndarray, output: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag (output behind reference, in samples) with the highest correlation, and that correlation."""
    best = (0, -1.0)
    n = min(reference.shape[0], output.shape[0]) - max_lag
    for lag in range(-max_lag, max_lag + 1):
        a = reference[max(0, -lag): max(0, -lag) + n]
        b = output[max(0, lag): max(0, lag) + n]
        corr = float(np.corrcoef(a, b)[0, 1])
        if corr > best[1]:
            best = (lag, corr)
    return best


def opus_packets(samples: np.ndarray, rate_hz: int, frame_ms: int = 20) -> list[bytes]:
    """What an Opus client sends: one packet per message."""
    from fastvc.codec import OpusEncoder

    encoder = OpusEncoder(rate_hz, frame_ms)
    return encoder.encode(samples) + encoder.flush()


def decode_opus(packets: list[bytes], rate_hz: int, frame_ms: int = 20, drop_lookahead: bool = False) -> np.ndarray:
    """What an Opus client hears, resampled to `rate_hz` (optionally without the encoder's look-ahead)."""
    from fastvc.codec import OPUS_DECODE_RATE_HZ, OPUS_LOOKAHEAD_48K, OpusDecoder

    decoder = OpusDecoder(frame_ms)
    decoded = np.concatenate([decoder.decode(packet) for packet in packets])
    if drop_lookahead:
        decoded = decoded[OPUS_LOOKAHEAD_48K:]
    return soxr.resample(decoded, OPUS_DECODE_RATE_HZ, rate_hz, "HQ").astype(np.float32)


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET on loopback: status, headers (lower-case names), body."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:  # a repeated header is joined, as HTTP does: duplicates show
        name, value = line.split(": ", 1)
        headers[name.lower()] = f"{headers[name.lower()]}, {value}" if name.lower() in headers else value
    return int(lines[0].split()[1]), headers, body
