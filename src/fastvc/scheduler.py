"""Which blocks run together, and when: the micro-batching scheduler. Pure: no I/O, no torch, no asyncio.

    runner --add(block)----------> Scheduler --decide(now_s)--> Decision(batch | wake_at_s, concealed)
    runner --batch_done(batch, forward_s, now_s)--> Scheduler   (forward-time fit, overload state)

The runner owns the clock, the worker thread and the futures; the scheduler only sees times in seconds and
opaque payloads, so it is tested with a fake clock and a fake runner (tests/test_scheduler.py).

Rules
-----
* A block is ready when its audio was complete (`ready_s`); its deadline is
  `ready_s + block_s − safety_margin_s`: the converted block must be back before the next one is due.
* Per-session order: only a session's oldest pending block is eligible, so a batch holds at most one block per
  session and a session's blocks are dispatched (and, on the one worker thread, completed) in order.
* Compatibility: blocks share a batch only when their batch key is equal (diffusion steps, CFG on/off, block
  shape; with `prompt_buckets`, also the prompt-length bucket; otherwise prompts of different lengths share
  one padded, masked batch).
* Earliest deadline first: the batch is formed from the key group holding the earliest deadline, in deadline
  order, up to `max_batch_size` blocks.
* Dispatch when the worker is free and one of: the batch is full; every session active in the last two
  block periods has its block in the batch (waiting cannot add one); waiting longer would miss the earliest
  deadline (`now + forward(n) >= deadline`, with `forward` an online fit `a + b·size` per diffusion step);
  the oldest block has waited `max_wait_ms`. Otherwise the runner sleeps until `Decision.wake_at_s` or the
  next arrival.

Overload policy (latency never grows without bound)
---------------------------------------------------
1. Adaptive steps. A batch dispatched when its earliest block can no longer make its deadline (by more than
   half the safety margin, so timer jitter does not count) means the queue is behind: the next batches run with one step fewer (`steps_step_down`), down to `min_diffusion_steps`.
   After `recover_after_batches` batches that would have been on time with one step more, a step comes back.
2. Concealment. A block whose predicted completion (even alone, at the lowest steps) is more than
   `conceal_late_ms` after its audio was due (`ready_s + block_s`) is not run: it is returned in
   `Decision.concealed` and the runner answers it with concealment (silence of the right length, which the
   session's SOLA cross-fade joins without a click). Every concealed block is counted. So no block's latency
   exceeds about `block + conceal_late_ms + one forward pass`, however deep the overload.
3. Admission control. `is_overloaded(now_s)` is true while steps are degraded, or within `overload_hold_s` of
   a late batch or a concealed block; the server then refuses new sessions (OVERLOADED, close code 1013).
   Once idle (nothing pending, no session active) past the hold time, full steps come back and it admits.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable


@dataclass
class SchedulerSettings:
    """Policy knobs, in the units their names say. The runner builds this from `[scheduler]` in server.toml."""

    block_s: float = 0.18
    max_batch_size: int = 64
    max_wait_ms: float = 20.0
    safety_margin_ms: float = 20.0
    conceal_late_ms: float = 40.0
    prompt_buckets: bool = False
    prompt_bucket_frames: int = 64
    adaptive_steps: bool = True
    min_diffusion_steps: int = 4
    steps_step_down: int = 1
    recover_after_batches: int = 20
    overload_hold_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.block_s <= 0:
            raise ValueError("block_s must be positive")
        if self.min_diffusion_steps < 1 or self.steps_step_down < 1:
            raise ValueError("min_diffusion_steps and steps_step_down must be at least 1")


@dataclass(eq=False)
class QueuedBlock:
    """One pending block as the scheduler sees it; `payload` is the runner's (request, future), untouched."""

    session_id: str
    block_index: int
    key: Hashable
    diffusion_steps: int
    ready_s: float
    deadline_s: float
    payload: Any = None
    ticket: int = 0
    dequeued: bool = False  # taken into a batch, concealed or dropped: its heap entry is skipped lazily


@dataclass
class Batch:
    """Blocks to run in one forward pass, earliest deadline first; `diffusion_steps` is what to run them with
    (lower than requested while degraded). `predicted_forward_s` is the fit's estimate at dispatch."""

    blocks: list[QueuedBlock]
    key: Hashable
    requested_steps: int
    diffusion_steps: int
    dispatched_s: float
    predicted_forward_s: float
    late: bool  # the earliest block could no longer make its deadline when the batch was formed

    @property
    def size(self) -> int:
        return len(self.blocks)

    @property
    def earliest_deadline_s(self) -> float:
        return self.blocks[0].deadline_s

    @property
    def degraded(self) -> bool:
        return self.diffusion_steps < self.requested_steps


@dataclass
class Decision:
    """What the runner does now: run `batch` (if any), answer `concealed` with concealment, and otherwise
    wait until `wake_at_s` (None: until the next arrival)."""

    batch: Batch | None = None
    concealed: list[QueuedBlock] = field(default_factory=list)
    wake_at_s: float | None = None


class ForwardTimeModel:
    """Online fit of forward time = steps · (a + b·size) seconds, exponentially forgetting old batches.

    Until two different sizes have been seen it assumes the cost is all per-item (proportional to size),
    which over-estimates large batches: the scheduler dispatches a little early rather than late.
    """

    def __init__(self, forgetting: float = 0.98) -> None:
        self.forgetting = forgetting
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    @property
    def observed(self) -> bool:
        return self._w > 0.0

    def observe(self, size: int, steps: int, forward_s: float) -> None:
        lam, x, y = self.forgetting, float(size), forward_s / max(steps, 1)
        self._w = lam * self._w + 1.0
        self._x = lam * self._x + x
        self._y = lam * self._y + y
        self._xx = lam * self._xx + x * x
        self._xy = lam * self._xy + x * y

    def coefficients(self) -> tuple[float, float]:
        """(a, b) in seconds per diffusion step; (0, 0) before any observation."""
        if not self.observed:
            return 0.0, 0.0
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x < 0.25:  # one size seen: all cost per item
            return 0.0, mean_y / max(mean_x, 1.0)
        b = (self._xy / self._w - mean_x * mean_y) / var_x
        a = mean_y - b * mean_x
        if b < 0.0:
            return mean_y, 0.0
        if a < 0.0:
            return 0.0, mean_y / max(mean_x, 1.0)
        return a, b

    def predict(self, size: int, steps: int) -> float:
        a, b = self.coefficients()
        return steps * (a + b * size)

    def largest_within(self, budget_s: float, steps: int) -> int:
        """The largest batch size whose predicted forward time fits in `budget_s` (a large number if any)."""
        a, b = self.coefficients()
        per_step_s = budget_s / max(steps, 1)
        if per_step_s < a:
            return 0
        if b <= 0.0:
            return 1 << 30
        return math.floor((per_step_s - a) / b)


class _KeyQueue:
    """The eligible blocks (each session's oldest) of one batch key, as a heap by deadline."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, QueuedBlock]] = []
        self.live = 0

    def push(self, block: QueuedBlock) -> None:
        heapq.heappush(self.heap, (block.deadline_s, block.ticket, block))
        self.live += 1

    def top(self) -> QueuedBlock | None:
        while self.heap and self.heap[0][2].dequeued:
            heapq.heappop(self.heap)
        return self.heap[0][2] if self.heap else None

    def in_order(self) -> list[QueuedBlock]:
        """The live blocks, earliest deadline first."""
        return [entry[2] for entry in sorted(e for e in self.heap if not e[2].dequeued)]

    def discard(self, block: QueuedBlock) -> None:
        block.dequeued = True
        self.live -= 1


class Scheduler:
    """Queue of pending blocks and the dispatch policy. Not thread-safe: the runner calls it from one task."""

    def __init__(self, settings: SchedulerSettings | None = None, *, forward_model: ForwardTimeModel | None = None):
        self.settings = settings or SchedulerSettings()
        self.forward = forward_model or ForwardTimeModel()
        self._sessions: dict[str, deque[QueuedBlock]] = {}
        self._queues: dict[Hashable, _KeyQueue] = {}
        self._tickets = itertools.count()
        self.steps_cut = 0
        self._on_time_streak = 0
        self._last_trouble_s = -math.inf
        self._worker_free_s = -math.inf
        self._last_seen: dict[str, float] = {}  # session -> ready time of its newest block
        self._seen_order: deque[tuple[float, str]] = deque()
        self.pending = 0
        self.concealed_total = 0
        self.late_batches_total = 0
        self.degraded_blocks_total = 0

    # ---- queue ------------------------------------------------------------------------------------------

    def add(self, session_id: str, block_index: int, key: Hashable, diffusion_steps: int, ready_s: float,
            payload: Any = None, prompt_frames: int = 0) -> QueuedBlock:
        """Queue one block whose audio was complete at `ready_s`. A session's blocks run in the order added
        (two connections that reuse one session id are simply kept in one order)."""
        s = self.settings
        if s.prompt_buckets:
            key = (key, math.ceil(prompt_frames / max(s.prompt_bucket_frames, 1)))
        block = QueuedBlock(session_id, block_index, key, diffusion_steps, ready_s,
                            ready_s + s.block_s - s.safety_margin_ms / 1000.0, payload, next(self._tickets))
        queue = self._sessions.setdefault(session_id, deque())
        queue.append(block)
        if len(queue) == 1:
            self._queue(key).push(block)
        self.pending += 1
        self._last_seen[session_id] = ready_s
        self._seen_order.append((ready_s, session_id))
        return block

    def remove_session(self, session_id: str) -> list[QueuedBlock]:
        """Forget a session that left; returns its pending blocks (the runner cancels them)."""
        queue = self._sessions.pop(session_id, deque())
        if queue:
            self._queues[queue[0].key].discard(queue[0])
        for block in queue:
            block.dequeued = True
        self.pending -= len(queue)
        return list(queue)

    def discard(self, block: QueuedBlock) -> None:
        """Forget one pending block (its session cancelled it); a block already taken is left alone."""
        session = self._sessions.get(block.session_id)
        if block.dequeued or session is None:
            return
        if session[0] is block:
            self._take(self._queues[block.key], block)
            return
        session.remove(block)
        block.dequeued = True
        self.pending -= 1

    def session_ids(self) -> list[str]:
        """Sessions with pending blocks."""
        return list(self._sessions)

    def _queue(self, key: Hashable) -> _KeyQueue:
        if key not in self._queues:
            self._queues[key] = _KeyQueue()
        return self._queues[key]

    def _take(self, queue: _KeyQueue, block: QueuedBlock) -> QueuedBlock:
        """Take `block` (its session's oldest) out of the queue and make the session's next block eligible."""
        queue.discard(block)
        session = self._sessions[block.session_id]
        session.popleft()
        if session:
            self._queue(session[0].key).push(session[0])
        else:
            del self._sessions[block.session_id]
        self.pending -= 1
        return block

    # ---- policy -----------------------------------------------------------------------------------------

    def steps_for(self, requested_steps: int) -> int:
        """Diffusion steps to run a block that asked for `requested_steps`, given the current degradation."""
        if self.steps_cut == 0 or requested_steps <= self.settings.min_diffusion_steps:
            return requested_steps
        return max(self.settings.min_diffusion_steps, requested_steps - self.steps_cut)

    def decide(self, now_s: float) -> Decision:
        """Call when the worker is free (and again at `wake_at_s` or on the next arrival)."""
        decision = Decision(concealed=self._conceal_late(now_s))
        candidates = []
        for key, queue in self._queues.items():
            top = queue.top()
            if top is not None:
                candidates.append((top.deadline_s, top.ticket, key, queue))
        candidates.sort()
        wake_at = math.inf
        for i, (deadline_s, _, key, queue) in enumerate(candidates):
            trigger_s = self._trigger_s(queue, now_s)
            if trigger_s <= now_s:
                earlier = candidates[:i]
                if earlier and self._would_starve(earlier[0][3], queue, now_s):
                    queue = earlier[0][3]
                decision.batch = self._form_batch(queue, now_s, decision.concealed)
                return decision
            wake_at = min(wake_at, trigger_s)
        if math.isfinite(wake_at):
            decision.wake_at_s = wake_at
        return decision

    def _active_sessions(self, now_s: float) -> int:
        """Sessions that queued a block within the last two block periods."""
        horizon_s = now_s - 2.0 * self.settings.block_s
        while self._seen_order and self._seen_order[0][0] < horizon_s:
            ready_s, session_id = self._seen_order.popleft()
            if self._last_seen.get(session_id) == ready_s:
                del self._last_seen[session_id]
        return len(self._last_seen)

    def _size(self, queue: _KeyQueue) -> int:
        return min(queue.live, self.settings.max_batch_size)

    def _trigger_s(self, queue: _KeyQueue, now_s: float) -> float:
        """When this key's batch must go: now if full, else the latest start or the end of max_wait."""
        top = queue.top()
        assert top is not None
        n = self._size(queue)
        if n >= self.settings.max_batch_size or queue.live >= self._active_sessions(now_s):
            return now_s  # full, or every active session has its block here: waiting cannot add any
        latest_start_s = top.deadline_s - self.forward.predict(n, self.steps_for(top.diffusion_steps))
        return min(latest_start_s, top.ready_s + self.settings.max_wait_ms / 1000.0)

    def _would_starve(self, earlier: _KeyQueue, chosen: _KeyQueue, now_s: float) -> bool:
        """Would running `chosen` first make the earlier-deadline group miss its deadline?"""
        e_top, c_top = earlier.top(), chosen.top()
        assert e_top is not None and c_top is not None
        chosen_s = self.forward.predict(self._size(chosen), self.steps_for(c_top.diffusion_steps))
        earlier_s = self.forward.predict(self._size(earlier), self.steps_for(e_top.diffusion_steps))
        return now_s + chosen_s + earlier_s > e_top.deadline_s

    def _form_batch(self, queue: _KeyQueue, now_s: float, concealed: list[QueuedBlock]) -> Batch:
        top = queue.top()
        assert top is not None
        requested = top.diffusion_steps
        in_order = queue.in_order()
        first, n = self._window(in_order, now_s, self.steps_for(requested))
        tolerance_s = self.settings.safety_margin_ms / 2000.0  # timer jitter must not count as falling behind
        finish_s = now_s + self.forward.predict(n, self.steps_for(requested))
        late = first > 0 or finish_s > in_order[0].deadline_s + tolerance_s
        self._adapt_steps(late, in_order[first : first + n], requested, now_s)
        steps = self.steps_for(requested)
        blocks = [self._take(queue, block) for block in in_order[first : first + n]]
        batch = Batch(blocks, blocks[0].key, requested, steps, now_s, self.forward.predict(n, steps), late)
        if batch.degraded:
            self.degraded_blocks_total += batch.size
        self._conceal_left_out(queue, in_order[:first], now_s + batch.predicted_forward_s, concealed)
        return batch

    def _conceal_left_out(self, queue: _KeyQueue, left_out: list[QueuedBlock], free_s: float,
                          concealed: list[QueuedBlock]) -> None:
        """Blocks left out of a batch that cannot make it after it, even alone, are concealed now."""
        late_s = self.settings.block_s + self.settings.conceal_late_ms / 1000.0
        hopeless = [b for b in left_out
                    if free_s + self.forward.predict(1, self.steps_for(b.diffusion_steps)) > b.ready_s + late_s]
        for block in hopeless:
            self._take(queue, block)
        self._count_concealed(hopeless, free_s)
        concealed.extend(hopeless)

    def _window(self, in_order: list[QueuedBlock], now_s: float, steps: int) -> tuple[int, int]:
        """(first, size) of the batch, a run of `in_order` (earliest deadline first).

        Normally `(0, min(len, max_batch_size))`. When the forward pass of that batch would return its earliest
        block more than `conceal_late_ms` after its due time, the oldest blocks are left out, as few as
        possible, so that the largest batch that is still in time runs (step 2 of the overload policy: the
        blocks left out are concealed once they cannot make it alone).
        """
        s = self.settings
        late_s = s.block_s + s.conceal_late_ms / 1000.0
        best_first, best_n = 0, 0
        for first, block in enumerate(in_order):
            room = min(s.max_batch_size, len(in_order) - first)
            if room <= best_n:
                break
            n = min(room, self.forward.largest_within(block.ready_s + late_s - now_s, steps))
            if n > best_n:
                best_first, best_n = first, n
            if n == room:
                break
        return best_first, max(best_n, 1)

    def _adapt_steps(self, late: bool, blocks: list[QueuedBlock], requested: int, now_s: float) -> None:
        """Step 1 of the overload policy: fewer diffusion steps while behind, back up after a calm run."""
        if late:
            self.late_batches_total += 1
            self._last_trouble_s = now_s
            self._on_time_streak = 0
            if self.settings.adaptive_steps and self.steps_for(requested) > self.settings.min_diffusion_steps:
                self.steps_cut += self.settings.steps_step_down
            return
        if self.steps_cut == 0:
            return
        # Had the batch gone as soon as the worker was free and its blocks were there, would one more step
        # have been in time? (Dispatch itself waits for the latest start, so `now_s` cannot tell.)
        one_more = min(requested, self.steps_for(requested) + 1)
        earliest_start_s = max(self._worker_free_s, max(b.ready_s for b in blocks))
        if earliest_start_s + self.forward.predict(len(blocks), one_more) <= blocks[0].deadline_s:
            self._on_time_streak += 1
            if self._on_time_streak >= self.settings.recover_after_batches:
                self.steps_cut -= 1
                self._on_time_streak = 0
        else:
            self._on_time_streak = 0

    def _conceal_late(self, now_s: float) -> list[QueuedBlock]:
        """Step 2 of the overload policy: take out blocks that cannot be back in time even alone."""
        s = self.settings
        concealed: list[QueuedBlock] = []
        for queue in list(self._queues.values()):
            while (top := queue.top()) is not None:
                alone_s = self.forward.predict(1, self.steps_for(top.diffusion_steps))
                if now_s + alone_s <= top.ready_s + s.block_s + s.conceal_late_ms / 1000.0:
                    break
                concealed.append(self._take(queue, top))
        self._count_concealed(concealed, now_s)
        return concealed

    def _count_concealed(self, blocks: list[QueuedBlock], now_s: float) -> None:
        if blocks:
            self.concealed_total += len(blocks)
            self._last_trouble_s = now_s

    def batch_done(self, batch: Batch, forward_s: float, ok: bool = True, size: int | None = None) -> None:
        """Report a finished forward pass of `size` blocks (default: the whole batch; fewer when some were
        dropped) and its measured duration, to refine the forward-time fit. A failed pass (`ok=False`) is not fit."""
        self._worker_free_s = batch.dispatched_s + forward_s
        if ok:
            self.forward.observe(batch.size if size is None else size, batch.diffusion_steps, forward_s)

    # ---- admission ----------------------------------------------------------------------------------------

    def is_overloaded(self, now_s: float) -> bool:
        """Step 3 of the overload policy: should the server refuse new sessions now?

        An idle scheduler (nothing pending, no session active in the last two block periods) is never behind:
        once `overload_hold_s` has passed since the last trouble, it restores full steps and admits again.
        Otherwise steps cut under load would only come back through on-time batches, which an idle server
        never runs, and it would refuse every new session for good.
        """
        if now_s - self._last_trouble_s < self.settings.overload_hold_s:
            return True
        if self.steps_cut > 0 and self.pending == 0 and self._active_sessions(now_s) == 0:
            self.steps_cut, self._on_time_streak = 0, 0
        return self.steps_cut > 0

    def snapshot(self) -> dict[str, Any]:
        """Counters and fit, for logs and stats."""
        a, b = self.forward.coefficients()
        return {"pending": self.pending, "sessions": len(self._sessions), "steps_cut": self.steps_cut,
                "concealed_total": self.concealed_total, "late_batches_total": self.late_batches_total,
                "degraded_blocks_total": self.degraded_blocks_total,
                "forward_a_ms_per_step": a * 1000.0, "forward_b_ms_per_step": b * 1000.0}
