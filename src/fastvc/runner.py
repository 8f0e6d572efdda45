"""The engine loop: takes block requests from sessions, runs them in batches on the model worker thread.

    session --submit(request)--> EngineRunner --batch--> worker thread: engine.run_batch --> futures resolved

The model runs on ONE dedicated thread; the event loop only queues requests and resolves futures. Results
for sessions that left while their block was in flight are dropped. An exception in a batch fails only that
batch's futures (with `EngineError`); the loop keeps serving.

This first version dispatches everything pending at once (grouped by `BlockRequest.batch_key`); the
deadline-aware policy lives in `fastvc.scheduler`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import defaultdict
from dataclasses import dataclass

import structlog

from fastvc.engine.base import BlockRequest, BlockResult, Engine, EngineError


@dataclass
class PendingBlock:
    request: BlockRequest
    future: asyncio.Future[BlockResult]


class EngineRunner:
    """Owns the engine and its worker thread. One per server process."""

    def __init__(self, engine: Engine, *, max_batch_size: int = 64, logger=None) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.log = logger or structlog.get_logger("fastvc.runner")
        self._pending: list[PendingBlock] = []
        self._wakeup = asyncio.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastvc-model")
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self.engine.warmup)
        self._task = asyncio.create_task(self._serve(), name="fastvc-engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(EngineError("engine stopped"))
        self._pending.clear()
        self._worker.shutdown(wait=True)

    def submit(self, request: BlockRequest) -> asyncio.Future[BlockResult]:
        """Queue one block; the future resolves with its result or fails with `EngineError`."""
        future: asyncio.Future[BlockResult] = asyncio.get_running_loop().create_future()
        self._pending.append(PendingBlock(request, future))
        self._wakeup.set()
        return future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                await self._run(loop, batch)

    def _take_batch(self) -> list[PendingBlock]:
        """The oldest compatible requests, at most one per session, at most max_batch_size."""
        live = [p for p in self._pending if not p.future.cancelled()]
        groups: dict[tuple, list[PendingBlock]] = defaultdict(list)
        seen_sessions: set[str] = set()
        key = live[0].request.batch_key() if live else None
        for pending in live:
            sid = pending.request.session_id
            if pending.request.batch_key() == key and sid not in seen_sessions:
                if len(groups[key]) < self.max_batch_size:
                    groups[key].append(pending)
                    seen_sessions.add(sid)
        batch = groups[key] if key is not None else []
        taken = {id(p) for p in batch}
        self._pending = [p for p in live if id(p) not in taken]
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[PendingBlock]) -> None:
        if not batch:
            return
        requests = [p.request for p in batch]
        try:
            results = await loop.run_in_executor(self._worker, self.engine.run_batch, requests)
        except Exception as error:  # noqa: BLE001 - a failed batch fails its blocks only, logged with context
            self.log.error("batch.failed", size=len(batch), error=repr(error),
                           sessions=[r.session_id for r in requests][:16])
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(EngineError(str(error)))
            return
        for p, result in zip(batch, results):
            if not p.future.done():  # a session that left cancelled its future: drop the late result
                p.future.set_result(result)
