"""SOLA stitching off the event loop: one thread stitches the model outputs of every session.

    session --stitch(stream, audio)--> StitchThread (queue) --thread: stream.stitch(audio)--> future resolved

Step B10 (`BlockStream.stitch`) is the most expensive per-block step left on the host once the model runs
elsewhere (about 60 µs: a 442-offset normalised cross-correlation). After a batch of N sessions returns, the
event loop would run N of them back to back before the last session's audio leaves; on this thread they
overlap with the loop's sending (numpy's correlation releases the GIL), and the loop wakes once per group of
finished stitches, not once per block.

Order: each session awaits its own stitch before it asks for the next, so a stream's blocks are stitched in
order. Only `stitch` touches `BlockStream.prev`; `push_block` (on the loop) touches the windows: the two
threads never share state.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import numpy as np

from fastvc.stream import BlockStream, StitchResult

MAX_GROUP = 512
"""Most stitches done before their results are handed back to the loop together."""

_STOP = object()


class StitchThread:
    """One daemon thread stitching for every session of a server. Use `start()`, `stitch()`, `close()`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fastvc-stitch", daemon=True)

    def start(self) -> StitchThread:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=5.0)

    def stitch(self, stream: BlockStream, model_slice: np.ndarray) -> asyncio.Future[StitchResult]:
        """`stream.stitch(model_slice)` on the thread; call from the event loop, await the future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StitchResult] = loop.create_future()
        self._queue.put((loop, future, stream, model_slice))
        return future

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in group)
            done: dict[asyncio.AbstractEventLoop, list] = {}
            for item in group:
                if item is _STOP:
                    continue
                loop, future, stream, model_slice = item
                try:
                    outcome: Any = stream.stitch(model_slice)
                except Exception as error:  # noqa: BLE001 - handed to the session that asked, re-raised there
                    outcome = error
                done.setdefault(loop, []).append((future, outcome))
            for loop, results in done.items():
                try:
                    loop.call_soon_threadsafe(_resolve, results)
                except RuntimeError:  # the loop closed meanwhile: nobody waits for these results
                    pass
            if stop:
                return


def _resolve(results: list[tuple[asyncio.Future, Any]]) -> None:
    """On the loop: hand each stitch result (or its exception) to the session awaiting it."""
    for future, outcome in results:
        if future.done():  # the session was aborted meanwhile
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
