"""Helpers for the dialect tests: clients that speak Twilio, L16 and the simple protocol to a real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fastvc.g711 import mulaw_decode, mulaw_encode
from serverkit import best_alignment

STREAM_SID = "MZ00000000000000000000000000000001"
MULAW_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def mulaw_bytes(samples: np.ndarray) -> bytes:
    return mulaw_encode(to_int16(samples)).tobytes()


def mulaw_samples(data: bytes) -> np.ndarray:
    return mulaw_decode(data).astype(np.float32) / 32768.0


def twilio_start(parameters: dict | None = None, media_format: dict | None = None) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
        "start": {"accountSid": "AC" + "0" * 32, "streamSid": STREAM_SID, "callSid": "CA" + "0" * 32,
                  "tracks": ["inbound"], "mediaFormat": media_format or MULAW_FORMAT,
                  "customParameters": parameters or {}}})


def twilio_media(payload: bytes | str, chunk: int) -> str:
    encoded = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(chunk + 1), "streamSid": STREAM_SID,
                       "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * (chunk - 1)),
                                 "payload": encoded}})


def twilio_stop() -> str:
    return json.dumps({"event": "stop", "sequenceNumber": "999", "streamSid": STREAM_SID,
                       "stop": {"accountSid": "AC" + "0" * 32, "callSid": "CA" + "0" * 32}})


@dataclass
class TwilioResult:
    media: list[bytes] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def audio(self) -> np.ndarray:
        return mulaw_samples(b"".join(self.media))


async def twilio_call(url: str, messages: list[str], *, echo_marks: bool = True) -> TwilioResult:
    """Play Twilio's side: send every message, echo marks back as Twilio does once played, collect all."""
    result = TwilioResult()
    async with connect(url, max_size=None, compression=None) as ws:
        echoes: list[asyncio.Task] = []

        async def echo(mark: dict) -> None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": mark}))

        async def read() -> None:
            try:
                async for message in ws:
                    event = json.loads(message)
                    result.events.append(event)
                    if event["event"] == "media":
                        result.media.append(base64.b64decode(event["media"]["payload"]))
                    elif event["event"] == "mark" and echo_marks:  # never block reading on a write
                        echoes.append(asyncio.create_task(echo(event["mark"])))
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        try:
            for message in messages:
                await ws.send(message)
        except ConnectionClosed:
            pass
        await reader
        await asyncio.gather(*echoes)
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


def assert_same_audio(reference: np.ndarray, output: np.ndarray, rate_hz: int, *, max_duration_error_s: float,
                      min_correlation: float, max_lag_s: float = 0.005) -> None:
    """Same duration (within the bound) and, after the best alignment, correlated at least as asked."""
    duration_error_s = abs(output.shape[0] - reference.shape[0]) / rate_hz
    assert duration_error_s <= max_duration_error_s, (output.shape[0], reference.shape[0])
    lag, correlation = best_alignment(reference, output, max_lag=max(2, int(max_lag_s * rate_hz)))
    assert correlation >= min_correlation, (lag, correlation)
