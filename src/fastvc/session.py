"""One conversion session: decoded input samples in, converted samples out, independent of the wire dialect.

    feed(samples @ input rate) -> input resampler -> model-rate pending buffer -> blocks of geometry.block
      -> BlockStream.push_block -> BlockRequest -> runner.submit -> (futures, in block order)
      -> BlockStream.stitch -> drop the lead-in -> output resampler -> sink.send_audio(samples @ output rate)
    finish() -> zero blocks until the output covers the input -> trim -> flush -> stats

Output sample k lines up with input sample k (the first `geometry.lead_in_samples` emitted at the model rate
precede the input and are dropped), and the output lasts exactly as long as the input.

Memory is bounded whatever the client does: less than one block waits in the pending buffer, at most
`max_blocks_in_flight` blocks are queued or computing, and a client sending faster than they are computed is
slowed down (backpressure: `feed` waits for room, so the transport stops reading that client). Keep that cap
small (2: one computing, one next): the scheduler gives each block about one block duration from submission,
and runs a session's blocks one per forward pass, so a deeper queue of one session's blocks misses deadlines. Stats keep the
latencies of the most recent `LATENCY_WINDOW` blocks only.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from fastvc.codec import aligned_resamplers
from fastvc.engine.base import BlockRequest, BlockResult, EngineError
from fastvc.stream import BlockStream, StreamGeometry

LATENCY_WINDOW = 4096
"""Per-block latencies kept for the percentiles (about 12 minutes of 180 ms blocks)."""


class SessionState(enum.Enum):
    STREAMING = "streaming"  # accepting audio
    FLUSHING = "flushing"  # end received: computing the last blocks
    COMPLETE = "complete"  # every sample sent
    ABORTED = "aborted"  # client gone or error: in-flight work cancelled


class SessionStateError(RuntimeError):
    """An operation the session's current state does not allow (e.g. audio after the end)."""


class AudioSink(Protocol):
    """Where a session's output goes; a wire dialect encodes and frames it."""

    async def send_audio(self, samples: np.ndarray) -> None:
        """samples: (n,) float32 at the session's output rate."""


class BlockSubmitter(Protocol):
    def submit(self, request: BlockRequest, ready_s: float | None = None, *,
               stream: BlockStream | None = None) -> asyncio.Future[BlockResult]: ...


class SessionObserver(Protocol):
    """Optional hooks (metrics, recordings); every method is cheap and never raises."""

    def on_input(self, samples: np.ndarray, sample_rate_hz: int) -> None: ...

    def on_output(self, samples: np.ndarray, sample_rate_hz: int) -> None: ...

    def on_block(self, latency_s: float, failed: bool) -> None: ...


@dataclass(frozen=True)
class SessionParams:
    session_id: str
    input_rate_hz: int
    output_rate_hz: int
    voice_id: str = "default"
    diffusion_steps: int = 10
    cfg_rate: float = 0.7
    seed: int = 0
    max_blocks_in_flight: int = 2


_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that spreads every input bit."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def block_seed(session_seed: int, block_index: int) -> int:
    """A 63-bit seed for one block, fixed by the session seed and block index (not by batching).

    Integer mixing (about 1 µs) rather than numpy's SeedSequence (about 18 µs), on the per-block hot path.
    """
    return _mix64((_mix64(session_seed & _MASK64) + (block_index + 1) * 0x9E3779B97F4A7C15) & _MASK64) >> 1


@dataclass
class SessionStats:
    """What the `complete` message reports. Times come from the session's monotonic clock (seconds)."""

    input_rate_hz: int
    output_rate_hz: int
    block_s: float
    algorithmic_latency_s: float
    input_samples: int = 0
    output_samples: int = 0
    blocks: int = 0
    blocks_failed: int = 0
    blocks_concealed: int = 0  # not computed in time (overload): sent as silence
    concealed_packets: int = 0
    started_at: float = 0.0
    first_input_at: float | None = None
    first_output_at: float | None = None
    compute_s_total: float = 0.0
    block_latencies_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def to_dict(self) -> dict[str, Any]:
        latencies_ms = np.asarray(self.block_latencies_s, dtype=np.float64) * 1000.0
        percentiles = np.percentile(latencies_ms, [50, 95, 99]) if latencies_ms.size else [None] * 3
        first_packet_ms = None
        if self.first_input_at is not None and self.first_output_at is not None:
            first_packet_ms = round((self.first_output_at - self.first_input_at) * 1000.0, 2)
        rtf = self.compute_s_total / (self.blocks * self.block_s) if self.blocks else None
        return {
            "input_seconds": round(self.input_samples / self.input_rate_hz, 4),
            "output_seconds": round(self.output_samples / self.output_rate_hz, 4),
            "blocks": self.blocks,
            "blocks_failed": self.blocks_failed,
            "blocks_concealed": self.blocks_concealed,
            "concealed_packets": self.concealed_packets,
            "first_packet_latency_ms": first_packet_ms,
            "block_latency_ms": {name: None if value is None else round(float(value), 2)
                                 for name, value in zip(("p50", "p95", "p99"), percentiles)},
            "real_time_factor": None if rtf is None else round(rtf, 4),
            "algorithmic_latency_ms": round(self.algorithmic_latency_s * 1000.0, 2),
        }


@dataclass
class _InFlight:
    block_index: int
    future: asyncio.Future[BlockResult]
    completed_at: float  # when the block's last input sample arrived (it was submitted then)


class Session:
    """Owns one session's state; driven by one wire connection. Call `start`, `feed`..., then `finish`."""

    def __init__(self, params: SessionParams, geometry: StreamGeometry, runner: BlockSubmitter, sink: AudioSink,
                 *, observer: SessionObserver | None = None, clock: Callable[[], float] = time.monotonic,
                 logger=None, content_window: bool = True) -> None:
        """content_window: False when the engine never reads the 16 kHz window (skips step B3 per block)."""
        self.params = params
        self.geometry = geometry
        self.runner = runner
        self.sink = sink
        self.observer = observer
        self.clock = clock
        self.log = logger or structlog.get_logger("fastvc.session").bind(session_id=params.session_id)
        self.state = SessionState.STREAMING
        self.stream = BlockStream(geometry, content_window=content_window)
        self.input_resampler, self.output_resampler = aligned_resamplers(
            params.input_rate_hz, geometry.model_rate_hz, params.output_rate_hz)
        self.stats = SessionStats(params.input_rate_hz, params.output_rate_hz,
                                  geometry.block / geometry.model_rate_hz, geometry.algorithmic_latency_s,
                                  started_at=clock())
        self._pending = np.zeros(0, np.float32)  # model-rate samples not yet in a block: < geometry.block
        self._model_samples_in = 0
        self._model_target: int | None = None  # model-rate samples to emit in all, known at the end
        self._model_emitted = 0
        self._lead_in_left = geometry.lead_in_samples
        self._pace_start_s = float("inf")
        self._last_ready_s = -float("inf")
        # the emitter holds one block while it waits for it: the queue holds the rest of max_blocks_in_flight
        self._queue: asyncio.Queue[_InFlight | None] = asyncio.Queue(maxsize=max(1, params.max_blocks_in_flight - 1))
        self._failure: Exception | None = None
        self._emitter: asyncio.Task | None = None

    def start(self) -> None:
        self._emitter = asyncio.create_task(self._emit_loop(), name=f"fastvc-session-{self.params.session_id}")

    async def feed(self, samples: np.ndarray) -> None:
        """Take decoded input `samples` (n,) float32 at `params.input_rate_hz`; waits when blocks pile up."""
        self._require(SessionState.STREAMING)
        self._raise_failure()
        if samples.shape[0] == 0:
            return
        if self.stats.first_input_at is None:
            self.stats.first_input_at = self.clock()
        self.stats.input_samples += samples.shape[0]
        if self.observer is not None:
            self.observer.on_input(samples, self.params.input_rate_hz)
        model_samples = self.input_resampler.process(samples)
        self._model_samples_in += model_samples.shape[0]
        self._pending = np.concatenate([self._pending, model_samples])
        block = self.geometry.block
        while self._pending.shape[0] >= block:
            chunk, self._pending = self._pending[:block], self._pending[block:]
            await self._submit(chunk)

    async def finish(self) -> SessionStats:
        """End of input: push zero blocks until the output covers the input, wait for every sample to be sent."""
        self._require(SessionState.STREAMING)
        self.state = SessionState.FLUSHING
        tail = self.input_resampler.flush()
        self._model_samples_in += tail.shape[0]
        self._model_target = self._model_samples_in
        pending = np.concatenate([self._pending, tail])
        self._pending = np.zeros(0, np.float32)
        g = self.geometry
        while self.stream.blocks_pushed * g.block - g.lead_in_samples < self._model_target:
            chunk = np.zeros(g.block, np.float32)
            taken = min(g.block, pending.shape[0])
            chunk[:taken], pending = pending[:taken], pending[taken:]
            await self._submit(chunk, flushing=True)
        await self._queue.put(None)
        await asyncio.shield(self._emitter)
        self._raise_failure()
        self.state = SessionState.COMPLETE
        return self.stats

    async def abort(self) -> None:
        """Stop now: cancel queued and computing blocks (the runner drops their late results)."""
        if self.state in (SessionState.COMPLETE, SessionState.ABORTED):
            return
        self.state = SessionState.ABORTED
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item.future.cancel()
        if self._emitter is not None:
            self._emitter.cancel()
            await asyncio.gather(self._emitter, return_exceptions=True)

    def _require(self, state: SessionState) -> None:
        if self.state is not state:
            raise SessionStateError(f"session is {self.state.value}, not {state.value}")

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _submit(self, chunk: np.ndarray, *, flushing: bool = False) -> None:
        block_input = self.stream.push_block(chunk)
        index = block_input.block_index
        request = BlockRequest(
            session_id=self.params.session_id,
            block_index=index,
            window_16k=block_input.window_16k,
            recent=block_input.recent,
            voice_id=self.params.voice_id,
            diffusion_steps=self.params.diffusion_steps,
            cfg_rate=self.params.cfg_rate,
            seed=block_seed(self.params.seed, index),
        )
        # The block's deadline counts from when its audio was complete, but never earlier than the real-time
        # pace allows (the scheduler runs one block per session per batch): the blocks of the final flush are
        # due one block apart; a block that came early is due when the stream's pace says. The pace is anchored
        # on the earliest start the arrivals imply, so one late message does not delay later deadlines.
        now = self.clock()
        block_s = self.stats.block_s
        if flushing:
            ready_s = max(now, self._last_ready_s + block_s)
        else:
            self._pace_start_s = min(self._pace_start_s, now - index * block_s)
            ready_s = max(now, self._pace_start_s + index * block_s)
        self._last_ready_s = ready_s
        future = self.runner.submit(request, ready_s, stream=self.stream)
        await self._queue.put(_InFlight(index, future, now))
        self._raise_failure()

    async def _emit_loop(self) -> None:
        """Stitch results in block order and send them; after a failure, keep draining so `feed` never hangs."""
        while (item := await self._queue.get()) is not None:
            if self._failure is not None:
                item.future.cancel()
                continue
            try:
                await self._emit_block(item)
            except Exception as error:  # noqa: BLE001 - kept and re-raised to the caller by feed()/finish()
                self._failure = error
        if self._failure is None:
            try:
                await self._emit_tail()
            except Exception as error:  # noqa: BLE001 - re-raised by finish()
                self._failure = error

    async def _emit_block(self, item: _InFlight) -> None:
        g = self.geometry
        failed = False
        stitched = None
        try:
            result = await item.future
            audio, stitched = result.audio, result.stitched
            self.stats.blocks_concealed += result.concealed
        except EngineError as error:
            failed = True
            audio = np.zeros(g.return_samples, np.float32)
            self.stats.blocks_failed += 1
            self.log.warning("block.failed", block_index=item.block_index, error=str(error))
        self.stats.compute_s_total += self.clock() - item.completed_at
        if stitched is None:  # not stitched with its batch (gated, concealed, failed, or an earlier block pending)
            stitched = self.stream.stitch(audio)
        emitted = self._trim(stitched.out)
        await self._send(self.output_resampler.process(emitted))
        latency_s = self.clock() - item.completed_at
        self.stats.blocks += 1
        self.stats.block_latencies_s.append(latency_s)
        if self.observer is not None:
            self.observer.on_block(latency_s, failed)

    def _trim(self, samples: np.ndarray) -> np.ndarray:
        """Drop the lead-in at the start and anything past the input's length at the end (model rate)."""
        skip = min(self._lead_in_left, samples.shape[0])
        self._lead_in_left -= skip
        samples = samples[skip:]
        if self._model_target is not None:
            samples = samples[: max(self._model_target - self._model_emitted, 0)]
        self._model_emitted += samples.shape[0]
        return samples

    async def _emit_tail(self) -> None:
        """Flush the output resampler; pad or cut its last samples so the output lasts as long as the input."""
        tail = self.output_resampler.flush()
        expected = round(self.stats.input_samples * self.params.output_rate_hz / self.params.input_rate_hz)
        missing = expected - (self.stats.output_samples + tail.shape[0])
        if missing > 0:
            tail = np.concatenate([tail, np.zeros(missing, np.float32)])
        elif missing < 0:
            tail = tail[: max(tail.shape[0] + missing, 0)]
        await self._send(tail)

    async def _send(self, samples: np.ndarray) -> None:
        if samples.shape[0] == 0:
            return
        self.stats.output_samples += samples.shape[0]
        if self.observer is not None:
            self.observer.on_output(samples, self.params.output_rate_hz)
        await self.sink.send_audio(samples)
        if self.stats.first_output_at is None:
            self.stats.first_output_at = self.clock()
