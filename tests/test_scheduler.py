"""The micro-batching scheduler, with a fake clock and a fake runner whose forward pass costs a + b·size."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from fastvc.scheduler import ForwardTimeModel, Scheduler, SchedulerSettings

KEY = (10, True, 44160, 5733)
BLOCK_S = 0.18


def fitted(a_ms: float, b_ms: float, steps: int = 10) -> ForwardTimeModel:
    """A forward-time model that already knows the cost a + b·size (ms, at `steps` steps)."""
    model = ForwardTimeModel()
    for size in (1, 8, 32, 64, 128):
        model.observe(size, steps, (a_ms + b_ms * size) / 1000.0)
    return model


def test_a_full_batch_goes_at_once():
    scheduler = Scheduler(SchedulerSettings(max_batch_size=4, max_wait_ms=50.0))
    for i in range(5):
        scheduler.add(f"s{i}", 0, KEY, 10, ready_s=0.0)
    decision = scheduler.decide(0.0)
    assert decision.batch is not None and decision.batch.size == 4
    assert [b.session_id for b in decision.batch.blocks] == ["s0", "s1", "s2", "s3"]


def active(scheduler: Scheduler, *session_ids: str, at_s: float) -> None:
    """Sessions that sent a block shortly before `at_s` (already run): the scheduler expects more from them."""
    for session_id in session_ids:
        scheduler.add(session_id, 0, KEY, 10, ready_s=at_s - 0.1)
    while scheduler.pending:
        scheduler.decide(at_s - 0.1)


def test_a_lone_block_waits_max_wait_then_goes():
    scheduler = Scheduler(SchedulerSettings(max_batch_size=8, max_wait_ms=20.0))
    active(scheduler, "other", at_s=1.0)
    scheduler.add("s", 1, KEY, 10, ready_s=1.0)
    waiting = scheduler.decide(1.005)
    assert waiting.batch is None and waiting.wake_at_s == pytest.approx(1.02)
    assert scheduler.decide(1.02).batch.size == 1


def test_it_waits_for_more_blocks_only_while_the_earliest_deadline_allows():
    """max_wait is long; the forward pass of 2 blocks takes 21 ms: the batch must start 21 ms before the deadline."""
    settings = SchedulerSettings(max_batch_size=64, max_wait_ms=1000.0, safety_margin_ms=20.0)
    scheduler = Scheduler(settings, forward_model=fitted(20.0, 0.5))
    active(scheduler, "c", "d", at_s=0.0)
    scheduler.add("a", 0, KEY, 10, ready_s=0.0)
    scheduler.add("b", 0, KEY, 10, ready_s=0.05)
    deadline = 0.0 + BLOCK_S - 0.020
    waiting = scheduler.decide(0.06)
    assert waiting.batch is None and waiting.wake_at_s == pytest.approx(deadline - 0.021)
    scheduler.add("c", 1, KEY, 10, ready_s=0.1)  # a third block: 21.5 ms, so it must start earlier
    assert scheduler.decide(0.1).wake_at_s == pytest.approx(deadline - 0.0215)
    batch = scheduler.decide(deadline - 0.0215).batch
    assert batch.size == 3 and not batch.late


def test_when_every_active_session_has_its_block_waiting_the_batch_goes_at_once():
    scheduler = Scheduler(SchedulerSettings(max_batch_size=64, max_wait_ms=50.0))
    active(scheduler, "a", "b", at_s=1.0)
    scheduler.add("a", 1, KEY, 10, ready_s=1.0)
    assert scheduler.decide(1.001).batch is None  # b will send its block too: wait for it
    scheduler.add("b", 1, KEY, 10, ready_s=1.002)
    batch = scheduler.decide(1.002).batch  # b is there: nothing more can join, go now (not at 1.05)
    assert batch is not None and batch.size == 2


def test_one_block_per_session_per_batch_in_session_order():
    scheduler = Scheduler(SchedulerSettings(max_batch_size=8, max_wait_ms=0.0))
    for k in range(3):
        scheduler.add("a", k, KEY, 10, ready_s=0.01 * k)
    scheduler.add("b", 0, KEY, 10, ready_s=0.0)
    order = []
    while scheduler.pending:
        batch = scheduler.decide(0.03 + 0.001 * len(order)).batch
        assert len({b.session_id for b in batch.blocks}) == batch.size
        order.append([(b.session_id, b.block_index) for b in batch.blocks])
    assert order == [[("a", 0), ("b", 0)], [("a", 1)], [("a", 2)]]


def test_a_reused_session_id_keeps_submission_order():
    scheduler = Scheduler(SchedulerSettings(max_wait_ms=0.0))
    scheduler.add("a", 7, KEY, 10, ready_s=0.0)
    scheduler.add("a", 0, KEY, 10, ready_s=0.001)  # a second connection with the same id
    first, second = scheduler.decide(0.01).batch, scheduler.decide(0.02).batch
    assert [b.block_index for b in first.blocks + second.blocks] == [7, 0]


def test_incompatible_blocks_never_share_a_batch_and_the_earliest_deadline_goes_first():
    scheduler = Scheduler(SchedulerSettings(max_batch_size=8, max_wait_ms=0.0))
    other = (4, False, 44160, 5733)
    scheduler.add("late-key", 0, other, 4, ready_s=0.0)
    scheduler.add("x", 0, KEY, 10, ready_s=0.01)
    scheduler.add("y", 0, KEY, 10, ready_s=0.02)
    scheduler.add("z", 0, other, 4, ready_s=0.03)
    first = scheduler.decide(0.05).batch
    second = scheduler.decide(0.06).batch
    assert [b.session_id for b in first.blocks] == ["late-key", "z"] and first.diffusion_steps == 4
    assert [b.session_id for b in second.blocks] == ["x", "y"] and second.diffusion_steps == 10


@pytest.mark.parametrize("buckets, expected_sizes", [(False, [3]), (True, [2, 1])])
def test_prompt_lengths_share_a_padded_batch_or_go_to_buckets(buckets, expected_sizes):
    scheduler = Scheduler(SchedulerSettings(max_wait_ms=0.0, prompt_buckets=buckets, prompt_bucket_frames=64))
    for sid, frames in (("a", 200), ("b", 250), ("c", 100)):
        scheduler.add(sid, 0, KEY, 10, ready_s=0.0, prompt_frames=frames)
    sizes = []
    while scheduler.pending:
        sizes.append(scheduler.decide(0.01).batch.size)
    assert sizes == expected_sizes


def test_a_session_that_left_has_its_pending_blocks_dropped():
    scheduler = Scheduler(SchedulerSettings(max_wait_ms=0.0))
    scheduler.add("gone", 0, KEY, 10, ready_s=0.0, payload="p0")
    scheduler.add("gone", 1, KEY, 10, ready_s=0.1, payload="p1")
    scheduler.add("stays", 0, KEY, 10, ready_s=0.0)
    assert [b.payload for b in scheduler.remove_session("gone")] == ["p0", "p1"]
    batch = scheduler.decide(0.2).batch
    assert [b.session_id for b in batch.blocks] == ["stays"] and scheduler.pending == 0
    assert scheduler.decide(0.3).batch is None


def test_a_cancelled_block_is_forgotten_and_its_session_goes_on():
    scheduler = Scheduler(SchedulerSettings(max_wait_ms=0.0))
    first = scheduler.add("s", 0, KEY, 10, ready_s=0.0)
    middle = scheduler.add("s", 1, KEY, 10, ready_s=0.01)
    scheduler.add("s", 2, KEY, 10, ready_s=0.02)
    scheduler.discard(middle)
    scheduler.discard(first)
    assert scheduler.pending == 1
    assert [(b.session_id, b.block_index) for b in scheduler.decide(0.03).batch.blocks] == [("s", 2)]


def test_the_forward_time_fit_learns_a_plus_b_size():
    model = ForwardTimeModel()
    rng = random.Random(1)
    for _ in range(200):
        size = rng.randint(1, 300)
        model.observe(size, 10, (20.0 + 0.5 * size) / 1000.0)
    assert model.predict(320, 10) == pytest.approx(0.180, rel=1e-6)
    assert model.predict(320, 5) == pytest.approx(0.090, rel=1e-6)


def test_one_observed_size_over_estimates_larger_batches():
    model = ForwardTimeModel()
    model.observe(4, 10, 0.022)
    assert model.predict(4, 10) == pytest.approx(0.022)
    assert model.predict(100, 10) > 0.020 + 0.0005 * 100


def test_steps_are_lowered_when_behind_never_below_the_floor_and_come_back():
    settings = SchedulerSettings(max_batch_size=4, max_wait_ms=0.0, min_diffusion_steps=7, recover_after_batches=2,
                                 conceal_late_ms=1000.0)
    scheduler = Scheduler(settings, forward_model=fitted(20.0, 0.5))
    steps_seen = []
    for k in range(5):  # each block is 200 ms late already: behind
        scheduler.add("s", k, KEY, 10, ready_s=k * BLOCK_S)
        batch = scheduler.decide(k * BLOCK_S + 0.2).batch
        assert batch.late
        steps_seen.append(batch.diffusion_steps)
    assert steps_seen == [9, 8, 7, 7, 7]
    assert scheduler.is_overloaded(1.0)
    for k in range(5, 12):  # on time again: one step back after every 2 calm batches
        scheduler.add("s", k, KEY, 10, ready_s=k * BLOCK_S)
        batch = scheduler.decide(k * BLOCK_S + 0.001).batch
        steps_seen.append(batch.diffusion_steps)
    assert steps_seen[5:] == [7, 8, 8, 9, 9, 10, 10]
    assert scheduler.steps_cut == 0


def test_an_idle_server_admits_again_after_an_overload_and_runs_full_steps():
    settings = SchedulerSettings(max_batch_size=4, max_wait_ms=0.0, min_diffusion_steps=4, overload_hold_s=2.0,
                                 conceal_late_ms=1000.0)
    scheduler = Scheduler(settings, forward_model=fitted(20.0, 0.5))
    for k in range(3):  # behind: steps are cut, new sessions refused
        scheduler.add("s", k, KEY, 10, ready_s=k * BLOCK_S)
        assert scheduler.decide(k * BLOCK_S + 0.2).batch.late
    assert scheduler.steps_cut > 0 and scheduler.is_overloaded(1.0)
    # the load leaves; nothing runs any more, so no on-time batch could bring the steps back
    assert scheduler.is_overloaded(2.0)  # still within the hold time
    assert not scheduler.is_overloaded(5.0)
    assert scheduler.steps_cut == 0
    scheduler.add("t", 0, KEY, 10, ready_s=5.0)
    assert scheduler.decide(5.0).batch.diffusion_steps == 10


def test_admission_is_refused_after_concealment_for_the_hold_time():
    settings = SchedulerSettings(max_wait_ms=0.0, adaptive_steps=False, overload_hold_s=2.0)
    scheduler = Scheduler(settings, forward_model=fitted(20.0, 0.5))
    assert not scheduler.is_overloaded(0.0)
    scheduler.add("s", 0, KEY, 10, ready_s=0.0)
    decision = scheduler.decide(0.5)  # far past its due time: concealed, not run
    assert decision.batch is None and [b.session_id for b in decision.concealed] == ["s"]
    assert scheduler.concealed_total == 1 and scheduler.pending == 0
    assert scheduler.is_overloaded(1.0) and not scheduler.is_overloaded(2.6)


# ---- the fake runner: a discrete-event simulation of sessions, scheduler and a worker ------------------------


@dataclass
class SimResult:
    latencies_s: list[tuple[float, float]] = field(default_factory=list)  # (ready_s, latency_s)
    concealed: int = 0
    batches: int = 0
    outcome_order: dict[str, list[int]] = field(default_factory=dict)
    overloaded_at_end: bool = False

    def max_latency(self, t0_s: float = 0.0, t1_s: float = float("inf")) -> float:
        return max(lat for ready, lat in self.latencies_s if t0_s <= ready < t1_s)


def simulate(scheduler: Scheduler, phases_s: list[float], duration_s: float, a_ms: float, b_ms: float,
             nominal_steps: int = 10) -> SimResult:
    """Sessions whose block k is ready at phase + k·block; the worker's forward takes (a + b·n)·steps/nominal."""
    arrivals = [(phase + k * BLOCK_S, sid, k) for sid, phase in enumerate(phases_s)
                for k in range(int((duration_s - phase) / BLOCK_S))]
    heapq.heapify(arrivals)
    result = SimResult()
    now = 0.0

    def admit(until_s: float) -> None:
        while arrivals and arrivals[0][0] <= until_s:
            ready, sid, k = heapq.heappop(arrivals)
            scheduler.add(f"s{sid}", k, KEY, nominal_steps, ready_s=ready)

    def outcome(block, done_s: float) -> None:
        result.latencies_s.append((block.ready_s, done_s - block.ready_s))
        result.outcome_order.setdefault(block.session_id, []).append(block.block_index)

    while arrivals or scheduler.pending:
        admit(now)
        decision = scheduler.decide(now)
        for block in decision.concealed:
            outcome(block, now)
            result.concealed += 1
        if decision.batch is not None:
            batch = decision.batch
            forward_s = (a_ms + b_ms * batch.size) / 1000.0 * batch.diffusion_steps / nominal_steps
            now += forward_s
            for block in batch.blocks:
                outcome(block, now)
            scheduler.batch_done(batch, forward_s)
            result.batches += 1
            continue
        next_s = min(decision.wake_at_s or float("inf"), arrivals[0][0] if arrivals else float("inf"))
        if next_s == float("inf"):
            break
        now = max(now, next_s)
    result.overloaded_at_end = scheduler.is_overloaded(now)
    return result


def test_phase_aligned_sessions_up_to_the_bound_share_one_batch_per_block():
    """a = 20 ms, b = 0.5 ms: 300 aligned sessions fit one 170 ms batch per 180 ms block (bound 320)."""
    settings = SchedulerSettings(max_batch_size=512, max_wait_ms=100.0, safety_margin_ms=5.0)
    rng = random.Random(0)
    phases = [0.010 + rng.uniform(0.0, 0.002) for _ in range(300)]
    result = simulate(Scheduler(settings, forward_model=fitted(20.0, 0.5)), phases, 20.0, a_ms=20.0, b_ms=0.5)
    blocks = len(result.latencies_s)
    assert result.concealed == 0
    assert result.max_latency() < BLOCK_S
    assert result.batches < 1.1 * blocks / 300  # about one batch per block period


def test_unbatched_capacity_is_what_one_forward_per_block_allows():
    """With max_batch_size = 1, 8 sessions fit (8 × 20.5 ms < 180 ms); 12 do not and get concealed."""
    settings = SchedulerSettings(max_batch_size=1, adaptive_steps=False)
    rng = random.Random(0)
    fits = simulate(Scheduler(settings), [rng.uniform(0, BLOCK_S) for _ in range(8)], 20.0, 20.0, 0.5)
    assert fits.concealed == 0 and fits.max_latency(t0_s=2.0) < BLOCK_S
    too_many = simulate(Scheduler(settings), [rng.uniform(0, BLOCK_S) for _ in range(12)], 20.0, 20.0, 0.5)
    assert too_many.concealed > 0


def test_an_overload_the_lowest_steps_can_absorb_costs_steps_not_blocks():
    """40 sessions need ~450 ms of compute per 180 ms block at 10 steps; at 4 steps they fit."""
    scheduler = Scheduler(SchedulerSettings(max_batch_size=64, min_diffusion_steps=4))
    rng = random.Random(3)
    result = simulate(scheduler, [rng.uniform(0.0, BLOCK_S) for _ in range(40)], 60.0, a_ms=20.0, b_ms=10.0)
    late_after_start = [lat for ready, lat in result.latencies_s if ready > 5.0 and lat > BLOCK_S]
    assert scheduler.steps_cut > 0 and not late_after_start
    assert result.concealed < 0.01 * len(result.latencies_s)


def test_ten_minutes_of_overload_keep_per_block_latency_bounded():
    """60 sessions on a worker that cannot hold them even at the lowest steps, for 10 minutes of audio.

    Every block gets exactly one outcome (converted or concealed), in its session's order; steps go down to
    the floor; no block comes back later than its due time + conceal_late_ms, from the first minute to the
    last; most blocks are still converted.
    """
    settings = SchedulerSettings(max_batch_size=64, min_diffusion_steps=4)
    scheduler = Scheduler(settings)
    rng = random.Random(3)
    phases = [rng.uniform(0.0, BLOCK_S) for _ in range(60)]
    duration_s = 600.0
    result = simulate(scheduler, phases, duration_s, a_ms=20.0, b_ms=10.0)
    expected_blocks = sum(int((duration_s - p) / BLOCK_S) for p in phases)
    assert len(result.latencies_s) == expected_blocks
    assert all(order == sorted(order) for order in result.outcome_order.values())
    assert result.concealed > 0 and result.overloaded_at_end
    assert scheduler.steps_for(10) == settings.min_diffusion_steps
    bound_s = BLOCK_S + settings.conceal_late_ms / 1000.0
    minutes = [result.max_latency(60.0 * m, 60.0 * (m + 1)) for m in range(10)]
    assert max(minutes) <= bound_s + 1e-9
    served = len(result.latencies_s) - result.concealed
    assert served > 0.5 * expected_blocks
