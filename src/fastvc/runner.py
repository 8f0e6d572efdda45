"""The engine loop: the scheduler decides which blocks run together and when; the runner executes.

    session --submit(request, ready_s)--> EngineRunner --add--> Scheduler
    EngineRunner._serve: decide(now) -> batch -> model worker thread: engine.run_batch -> futures resolved
                                     -> concealed -> futures resolved with silence (BlockResult.concealed)

The model runs on ONE dedicated thread; the event loop only queues requests, asks the scheduler, and resolves
futures. Futures resolve in each session's block order (the scheduler dispatches a session's blocks in order
and the single worker completes batches in order). Blocks whose session left (future cancelled) are dropped
before the forward pass; late results for them are dropped too. An exception in a batch fails only that
batch's blocks (with `EngineError`; the session conceals them and counts an error), logged with the batch's
context; the loop keeps serving. `is_overloaded()` is the admission signal for new sessions.

Silence gate (`[stream] silence_gate`): a block whose input, over everything its output slice is made from,
stays below `silence_threshold_db` skips the model and gets silence at once (see `loudest_frame_db`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import structlog

from fastvc.config import SchedulerConfig
from fastvc.engine.base import BlockRequest, BlockResult, Engine, EngineError
from fastvc.scheduler import Batch, QueuedBlock, Scheduler, SchedulerSettings
from fastvc.stream import BlockStream, loudest_frame_db, stitch_batch

LOG_SESSIONS_PER_BATCH = 16


def scheduler_settings(config: SchedulerConfig, block_s: float, **overrides: Any) -> SchedulerSettings:
    """The scheduler's policy from `[scheduler]` in server.toml (fields of the same names)."""
    names = {f.name for f in dataclasses.fields(SchedulerSettings)}
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}
    values.update(overrides)
    return SchedulerSettings(block_s=block_s, **values)


@dataclasses.dataclass
class PendingBlock:
    """The runner's payload of a queued block."""

    request: BlockRequest
    future: asyncio.Future[BlockResult]
    stream: BlockStream | None = None  # the session's stream: its result is stitched with the batch's others


class EngineRunner:
    """Owns the engine, its worker thread and the scheduler. One per server process.

    metrics: optional object with the series of `fastvc.metrics.Metrics` (batch_size, queue_wait,
        forward_time, deadline_misses, degraded_blocks, concealed_blocks, steps_cut, blocks_gated); missing
        series are skipped.
    silence_threshold_db: the silence gate's threshold (dBFS), or None for no gate.
    """

    def __init__(self, engine: Engine, *, config: SchedulerConfig | None = None, max_batch_size: int | None = None,
                 metrics: Any = None, logger=None, clock: Callable[[], float] = time.monotonic,
                 silence_threshold_db: float | None = None) -> None:
        self.engine = engine
        self.silence_threshold_db = silence_threshold_db
        geometry = engine.geometry
        self.block_s = geometry.block / geometry.model_rate_hz
        overrides = {} if max_batch_size is None else {"max_batch_size": max_batch_size}
        self.config = config or SchedulerConfig()
        self.scheduler = Scheduler(scheduler_settings(self.config, self.block_s, **overrides))
        self.metrics = metrics
        self.clock = clock
        self.log = logger or structlog.get_logger("fastvc.runner")
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvc-model")
        self._task: asyncio.Task | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._silence = np.zeros(geometry.return_samples, np.float32)
        self._silence.flags.writeable = False

    @property
    def max_batch_size(self) -> int:
        return self.scheduler.settings.max_batch_size

    async def start(self) -> None:
        """Warm the engine up and time a few batch sizes on the worker thread, then start serving."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self.engine.warmup)
        await loop.run_in_executor(self._worker, self._calibrate)
        self._task = asyncio.create_task(self._serve(), name="fastvc-engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for session_id in list(self.scheduler.session_ids()):
            for block in self.scheduler.remove_session(session_id):
                if not block.payload.future.done():
                    block.payload.future.set_exception(EngineError("engine stopped"))
        self._worker.shutdown(wait=True)

    def submit(self, request: BlockRequest, ready_s: float | None = None, *,
               stream: BlockStream | None = None) -> asyncio.Future[BlockResult]:
        """Queue one block whose audio was complete at `ready_s` (default: now, on `clock`).

        The future resolves with its result (`result.concealed` when it could not be computed in time) or fails
        with `EngineError` when its batch failed. Cancel it to drop the block (its session left).
        stream: the session's `BlockStream`; when every earlier block of it is stitched by the time the batch
            returns, the result comes back stitched (`result.stitched`), all of the batch's at once.
        """
        future: asyncio.Future[BlockResult] = asyncio.get_running_loop().create_future()
        if self._is_silent(request):
            future.set_result(BlockResult(request.session_id, request.block_index, self._silence))
            self._inc("blocks_gated", 1)
            return future
        block = self.scheduler.add(request.session_id, request.block_index, request.batch_key(),
                                   request.diffusion_steps, self.clock() if ready_s is None else ready_s,
                                   PendingBlock(request, future, stream), prompt_frames=self._prompt_frames(request))
        future.add_done_callback(lambda f: f.cancelled() and self.scheduler.discard(block))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return future

    @property
    def pending(self) -> int:
        """Blocks queued, not yet in a forward pass."""
        return self.scheduler.pending

    def is_overloaded(self) -> bool:
        """Admission control: True while new sessions should be refused (OVERLOADED, close code 1013)."""
        return self.scheduler.is_overloaded(self.clock())

    def _is_silent(self, request: BlockRequest) -> bool:
        if self.silence_threshold_db is None:
            return False
        return loudest_frame_db(request.recent, self.engine.geometry.zc) < self.silence_threshold_db

    def _prompt_frames(self, request: BlockRequest) -> int:
        if not self.scheduler.settings.prompt_buckets:
            return 0
        return self.engine.prompt_frames(request.voice_id)

    # ---- the loop -----------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            decision = self.scheduler.decide(self.clock())
            if decision.concealed:
                self._conceal(decision.concealed)
            if decision.batch is not None:
                await self._run(loop, decision.batch)
                continue
            await self._sleep(loop, decision.wake_at_s)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, wake_at_s: float | None) -> None:
        """Until the next submit, or `wake_at_s` on the runner's clock."""
        self._waiter = loop.create_future()
        timer = None
        if wake_at_s is not None:
            timer = loop.call_later(max(wake_at_s - self.clock(), 0.0), self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        live = [block for block in batch.blocks if not block.payload.future.done()]  # drop sessions that left
        if not live:
            self.scheduler.batch_done(batch, 0.0, ok=False)
            return
        requests = [block.payload.request for block in live]
        if batch.degraded:
            requests = [dataclasses.replace(r, diffusion_steps=batch.diffusion_steps) for r in requests]
        try:
            results, forward_s = await loop.run_in_executor(self._worker, self._forward, requests)
        except Exception as error:  # noqa: BLE001 - a failed batch fails its blocks only; logged with context
            self.scheduler.batch_done(batch, self.clock() - batch.dispatched_s, ok=False)
            self._fail(batch, live, error)
            return
        self.scheduler.batch_done(batch, forward_s, size=len(live))
        self._stitch(live, results)
        done_s = self.clock()
        misses = 0
        for block, result in zip(live, results):
            if done_s > block.ready_s + self.block_s:
                misses += 1
            if not block.payload.future.done():  # a session that left cancelled its future: drop the result
                block.payload.future.set_result(result)
        self._record_batch(batch, live, forward_s, misses)

    def _stitch(self, live: list[QueuedBlock], results: list[BlockResult]) -> None:
        """SOLA for the batch's blocks in one pass, where the session's stream is at that block (every earlier
        block stitched: the tail is the right one); the others (and malformed outputs, which fail in their
        session's own stitch) are stitched by their session, in order."""
        shape = (self.engine.geometry.return_samples,)
        ready = [(block.payload.stream, result) for block, result in zip(live, results)
                 if block.payload.stream is not None and not block.payload.future.done()
                 and block.payload.stream.blocks_stitched == block.block_index and result.audio.shape == shape]
        stitched = stitch_batch([stream for stream, _ in ready], [result.audio for _, result in ready])
        for (_, result), one in zip(ready, stitched):
            result.stitched = one

    def _forward(self, requests: Sequence[BlockRequest]) -> tuple[list[BlockResult], float]:
        """On the worker thread: one batched forward pass, timed."""
        start_s = time.perf_counter()
        results = self.engine.run_batch(requests)
        forward_s = time.perf_counter() - start_s
        if len(results) != len(requests):
            raise EngineError(f"engine returned {len(results)} results for {len(requests)} requests")
        return results, forward_s

    def _calibrate(self) -> None:
        """On the worker thread: time the configured batch sizes to seed the forward-time estimate."""
        g = self.engine.geometry
        voice = self.engine.voices()[0]
        for size in self.config.calibration_sizes:
            size = min(size, self.max_batch_size)
            requests = [BlockRequest(f"calibration-{i}", 0, np.zeros(g.window_16k, np.float32),
                                     np.zeros(g.return_samples + g.extra_right, np.float32), voice_id=voice)
                        for i in range(size)]
            _, forward_s = self._forward(requests)
            self.scheduler.forward.observe(size, requests[0].diffusion_steps, forward_s)
            self.log.info("runner.calibrated", batch_size=size, forward_ms=round(forward_s * 1000.0, 2))

    def _conceal(self, blocks: list[QueuedBlock]) -> None:
        """Answer blocks that cannot be back in time with silence of the right length."""
        for block in blocks:
            future = block.payload.future
            if not future.done():
                future.set_result(BlockResult(block.session_id, block.block_index, self._silence, concealed=True))
        self._inc("concealed_blocks", len(blocks))
        self.log.debug("blocks.concealed", count=len(blocks), total=self.scheduler.concealed_total)

    def _fail(self, batch: Batch, live: list[QueuedBlock], error: Exception) -> None:
        self.log.error("batch.failed", size=len(live), key=repr(batch.key), diffusion_steps=batch.diffusion_steps,
                       sessions=[b.session_id for b in live][:LOG_SESSIONS_PER_BATCH],
                       blocks=[b.block_index for b in live][:LOG_SESSIONS_PER_BATCH], error=repr(error),
                       exc_info=error)
        for block in live:
            if not block.payload.future.done():
                block.payload.future.set_exception(EngineError(f"batch failed: {error!r}"))
        self._inc("batches_failed", 1)

    # ---- metrics ------------------------------------------------------------------------------------------

    def _record_batch(self, batch: Batch, live: list[QueuedBlock], forward_s: float, misses: int) -> None:
        wait_s = [batch.dispatched_s - block.ready_s for block in live]
        m = self.metrics
        if m is not None:
            m.batch_size.observe(len(live))
            if hasattr(m, "queue_wait"):
                for w in wait_s:
                    m.queue_wait.observe(w)
            if hasattr(m, "forward_time"):
                m.forward_time.labels(batch_size=size_label(len(live))).observe(forward_s)
            if hasattr(m, "steps_cut"):
                m.steps_cut.set(self.scheduler.steps_cut)
        if misses:
            self._inc("deadline_misses", misses)
        if batch.degraded:
            self._inc("degraded_blocks", len(live))
        self.log.debug("batch.done", size=len(live), steps=batch.diffusion_steps, late=batch.late,
                       wait_ms=round(max(wait_s) * 1000.0, 2), forward_ms=round(forward_s * 1000.0, 2),
                       predicted_ms=round(batch.predicted_forward_s * 1000.0, 2), deadline_misses=misses,
                       pending=self.scheduler.pending)

    def _inc(self, name: str, amount: int) -> None:
        counter = getattr(self.metrics, name, None)
        if counter is not None and amount:
            counter.inc(amount)


def size_label(batch_size: int) -> str:
    """Batch sizes bucketed by powers of two for the forward-time label: '1', '2', '3-4', '5-8', ..."""
    upper = 1 << max(batch_size - 1, 0).bit_length()
    lower = upper // 2 + 1
    return str(upper) if lower >= upper else f"{lower}-{upper}"
