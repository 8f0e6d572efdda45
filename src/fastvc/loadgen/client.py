"""One load-test session over fastvc's native WebSocket protocol (docs/protocol.md).

    connect -> {"type":"config"} -> {"type":"ready"} -> audio frames (paced) -> {"type":"end"}
            <- converted audio (binary) ...            <- {"type":"complete","stats"} <- close 1000

Audio is paced against an absolute clock: frame k leaves at `start + k·frame_s` (never "sleep one frame"),
so a slow iteration delays one frame, not every later one. Timestamps come from `time.monotonic()` (the
event loop's clock may be quantised to 1 ms under uvloop). A session never raises: every failure ends up in
`SessionMetrics.error` as "<stage>: <detail>" (stage: connect, handshake, server, closed, timeout).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fastvc.loadgen.audio import AudioError, FrameSequence, payload_samples
from fastvc.loadgen.metrics import SessionMetrics, Timeline, session_metrics

PACES = ("realtime", "fast")
DEFAULT_BLOCK_MS = 180.0
OPUS_LOOKAHEAD_MS = 6.5
"""libopus's encoder look-ahead (pre-skip 312 samples at 48 kHz): decoded Opus starts this much late."""


@dataclass(frozen=True)
class ClientOptions:
    """How every session of a run talks to the server.

    block_ms / lead_in_ms: the server's block length and dropped lead-in (`ServerTiming`), used when its
        "ready" message does not state them (lead_in_ms also overrides it).
    holdback_ms: see `fastvc.loadgen.metrics` (None: half a block).
    jitter_buffer_ms: the simulated player's buffer before it starts and after each underrun.
    """

    url: str
    encoding: str = "PCM"
    output_encoding: str | None = None
    sample_rate_out_hz: int | None = None
    pace: str = "realtime"
    api_key: str = ""
    voice: str | None = None
    seed: int | None = None
    block_ms: float | None = None
    lead_in_ms: float | None = None
    holdback_ms: float | None = None
    jitter_buffer_ms: float = 100.0
    open_timeout_s: float = 10.0
    complete_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.pace not in PACES:
            raise ValueError(f"unknown pace {self.pace!r}; choose one of {', '.join(PACES)}")


def config_message(options: ClientOptions, frames: FrameSequence, session_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "config",
        "session_id": session_id,
        "api_key": options.api_key,
        "sample_rate": frames.sample_rate_hz,
        "bit_depth": 16,
        "channels": 1,
        "encoding": frames.encoding,
        "opus_frame_duration": round(1000 * frames.frame_s),
        "sample_rate_out": options.sample_rate_out_hz or frames.sample_rate_hz,
    }
    if options.output_encoding:
        message["output_encoding"] = options.output_encoding
    if options.voice is not None:
        message["voice"] = options.voice
    if options.seed is not None:
        message["seed"] = options.seed
    return message


@dataclass(frozen=True)
class ServerTiming:
    """The server's block timing, from its "ready" message (docs/protocol.md) or the client's fallbacks.

    lead_in_ms: output the server drops at the start so output sample k lines up with input sample k;
    fastvc's is its algorithmic latency minus one block (the SOLA/look-ahead lead-in).
    """

    block_ms: float
    algorithmic_latency_ms: float | None
    lead_in_ms: float

    @classmethod
    def from_ready(cls, ready: dict[str, Any], options: ClientOptions) -> ServerTiming:
        block_ms = float(ready.get("block_ms") or options.block_ms or DEFAULT_BLOCK_MS)
        latency_ms = ready.get("algorithmic_latency_ms")
        latency_ms = None if latency_ms is None else float(latency_ms)
        if options.lead_in_ms is not None:
            lead_in_ms = options.lead_in_ms
        elif "lead_in_ms" in ready:
            lead_in_ms = float(ready["lead_in_ms"])
        else:
            lead_in_ms = latency_ms - block_ms if latency_ms is not None else 0.0
        return cls(block_ms, latency_ms, lead_in_ms)


@dataclass
class SessionOutcome:
    """What a session learnt besides its timeline."""

    error: str | None = None
    close_code: int | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    ready_ms: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    completed: bool = False

    def fail(self, error: str) -> None:
        if self.error is None:  # the first failure is the cause; later ones are its consequences
            self.error = error


class ProgressCounters:
    """Counts shown while a run goes on; `cells` is a list or a shared multiprocessing array."""

    STARTED, READY, DONE, FAILED, OUTPUT_MS = range(5)
    SIZE = 5

    def __init__(self, cells=None) -> None:
        self.cells = cells if cells is not None else [0] * self.SIZE

    def add(self, index: int, amount: int = 1) -> None:
        self.cells[index] += amount


async def run_session(options: ClientOptions, frames: FrameSequence, session_id: str, start_at_s: float,
                      progress: ProgressCounters | None = None) -> SessionMetrics:
    """Stream `frames` as one session starting at `start_at_s` (time.monotonic()); never raises."""
    progress = progress or ProgressCounters()
    await asyncio.sleep(max(0.0, start_at_s - time.monotonic()))
    progress.add(ProgressCounters.STARTED)
    output_encoding = (options.output_encoding or frames.encoding).upper()
    timeline = Timeline(frames.sample_rate_hz, options.sample_rate_out_hz or frames.sample_rate_hz)
    outcome = SessionOutcome()
    try:
        await _converse(options, frames, session_id, timeline, outcome, output_encoding, progress)
    except (OSError, InvalidHandshake, InvalidURI) as error:
        outcome.fail(f"connect: {type(error).__name__}: {error}")
    except ConnectionClosed as closed:  # closed during the handshake (e.g. 1013 OVERLOADED before "ready")
        outcome.close_code = closed.rcvd.code if closed.rcvd else None
        outcome.fail(f"handshake: closed with code {outcome.close_code} {closed.rcvd.reason if closed.rcvd else ''}")
    except asyncio.TimeoutError:  # TimeoutError from 3.11 on
        outcome.fail("timeout: no ready" if not outcome.ready else "timeout: no complete")
    progress.add(ProgressCounters.FAILED if outcome.error else ProgressCounters.DONE)
    shift_ms = OPUS_LOOKAHEAD_MS * ((frames.encoding == "OPUS") + (output_encoding == "OPUS"))
    return _metrics(options, session_id, timeline, outcome, content_shift_ms=shift_ms)


async def _converse(options: ClientOptions, frames: FrameSequence, session_id: str, timeline: Timeline,
                    outcome: SessionOutcome, output_encoding: str, progress: ProgressCounters) -> None:
    opened_at = time.monotonic()
    async with connect(options.url, compression=None, max_size=None, open_timeout=options.open_timeout_s,
                       close_timeout=2.0) as ws:
        await ws.send(json.dumps(config_message(options, frames, session_id)))
        ready = await asyncio.wait_for(_await_ready(ws, outcome), options.open_timeout_s)
        if ready is None:  # refused: the server closes next, with the code that says why
            await asyncio.wait_for(ws.wait_closed(), options.open_timeout_s)
            outcome.close_code = ws.close_code
            return
        outcome.ready, outcome.ready_ms = ready, 1000.0 * (time.monotonic() - opened_at)
        progress.add(ProgressCounters.READY)
        receiver = asyncio.create_task(_receive(ws, timeline, outcome, output_encoding, progress))
        try:
            await _send_audio(ws, frames, options.pace, timeline)
            await ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # the receiver sees the close and records why
        await asyncio.wait_for(receiver, options.complete_timeout_s)
        outcome.close_code = ws.close_code
    if outcome.close_code != 1000:
        outcome.fail(f"closed: code {outcome.close_code}")
    elif not outcome.completed:
        outcome.fail("closed: before complete")


async def _await_ready(ws: ClientConnection, outcome: SessionOutcome) -> dict[str, Any] | None:
    """The server's "ready" message, or None after recording its error / the close."""
    try:
        message = await ws.recv()
    except ConnectionClosed as closed:
        outcome.fail(f"handshake: closed with code {closed.rcvd.code if closed.rcvd else None}")
        return None
    event = _parse_text(message)
    if event.get("type") == "ready":
        return event
    outcome.fail(f"server: {event.get('error_code', event.get('type', 'unexpected message'))}")
    return None


def _parse_text(message: str | bytes) -> dict[str, Any]:
    if isinstance(message, bytes):
        return {"type": "binary before ready"}
    try:
        event = json.loads(message)
    except json.JSONDecodeError:
        return {"type": "invalid json"}
    return event if isinstance(event, dict) else {"type": "invalid json"}


async def _receive(ws: ClientConnection, timeline: Timeline, outcome: SessionOutcome, output_encoding: str,
                   progress: ProgressCounters) -> None:
    rate_out = timeline.output_rate_hz
    try:
        async for message in ws:
            received_at = time.monotonic()
            if isinstance(message, bytes):
                try:
                    samples = payload_samples(message, output_encoding, rate_out)
                except AudioError as error:
                    outcome.fail(f"server: unreadable audio message ({error})")
                    continue
                timeline.record_receive(received_at, samples)
                progress.add(ProgressCounters.OUTPUT_MS, samples * 1000 // rate_out)
                continue
            event = _parse_text(message)
            if event.get("type") == "complete":
                outcome.completed, outcome.stats = True, event.get("stats") or {}
            elif event.get("type") == "error":
                outcome.fail(f"server: {event.get('error_code', 'unknown')}: {event.get('message', '')}")
    except ConnectionClosed:
        pass  # abnormal close: the code is read from the connection afterwards


async def _send_audio(ws: ClientConnection, frames: FrameSequence, pace: str, timeline: Timeline) -> None:
    """Send every frame: at `start + k·frame_s` when pace is realtime, back to back when fast."""
    frame_s = frames.frame_s
    start_s = time.monotonic()
    for k, payload in enumerate(frames.payloads):
        due_s = start_s + k * frame_s
        if pace == "realtime":
            delay_s = due_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        sent_at = time.monotonic()
        await ws.send(payload)
        timeline.record_send(sent_at, frames.frame_samples, max(0.0, sent_at - due_s) if pace == "realtime" else 0.0)


def _metrics(options: ClientOptions, session_id: str, timeline: Timeline, outcome: SessionOutcome, *,
             content_shift_ms: float) -> SessionMetrics:
    timing = ServerTiming.from_ready(outcome.ready, options)
    holdback_s = None if options.holdback_ms is None else options.holdback_ms / 1000.0
    metrics = session_metrics(session_id, timeline, timing.block_ms / 1000.0,
                              jitter_buffer_s=options.jitter_buffer_ms / 1000.0, holdback_s=holdback_s,
                              lead_in_s=timing.lead_in_ms / 1000.0, content_shift_s=content_shift_ms / 1000.0)
    metrics.error, metrics.close_code, metrics.ready_ms = outcome.error, outcome.close_code, outcome.ready_ms
    metrics.algorithmic_latency_ms = timing.algorithmic_latency_ms
    metrics.server_stats = outcome.stats
    return metrics
