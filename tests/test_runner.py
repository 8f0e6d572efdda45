"""The engine loop with the scheduler: batching, worker thread, dropped and failed blocks, concealment."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from fastvc.config import Config, SchedulerConfig
from fastvc.engine.base import BlockRequest, BlockResult, EngineError
from fastvc.engine.cost_model import CostModelEngine
from fastvc.metrics import Metrics
from fastvc.runner import EngineRunner, size_label
from fastvc.stream import StreamSettings


class RecordingEngine(CostModelEngine):
    """The cost model, recording each batch (sessions, steps, thread); fails batches holding session 'bad'."""

    def __init__(self, a_ms: float = 5.0, b_ms: float = 0.1):
        super().__init__(StreamSettings(), cost_a_ms=a_ms, cost_b_ms=b_ms)
        self.batches: list[list[tuple[str, int, int]]] = []
        self.threads: set[int] = set()

    def run_batch(self, requests):
        self.threads.add(threading.get_ident())
        if any(r.session_id == "bad" for r in requests):
            raise RuntimeError("boom")
        results = super().run_batch(requests)
        self.batches.append([(r.session_id, r.block_index, r.diffusion_steps) for r in requests])
        return results


def request(engine, session_id: str, index: int, value: float = 0.1) -> BlockRequest:
    g = engine.geometry
    recent = np.full(g.return_samples + g.extra_right, value, np.float32)
    return BlockRequest(session_id, index, np.zeros(g.window_16k, np.float32), recent)


async def started(engine, **config) -> EngineRunner:
    config.setdefault("calibration_sizes", [])
    runner = EngineRunner(engine, config=SchedulerConfig(**config), metrics=Metrics())
    await runner.start()
    return runner


async def test_blocks_submitted_together_run_in_one_batch_on_the_worker_thread():
    engine = RecordingEngine()
    runner = await started(engine, max_wait_ms=10.0)
    try:
        futures = [runner.submit(request(engine, f"s{i}", 0, value=i / 10)) for i in range(8)]
        results = await asyncio.gather(*futures)
    finally:
        await runner.stop()
    assert engine.batches == [[(f"s{i}", 0, 10) for i in range(8)]]
    assert threading.get_ident() not in engine.threads and len(engine.threads) == 1
    for i, result in enumerate(results):
        assert result.session_id == f"s{i}" and not result.concealed
        np.testing.assert_allclose(result.audio, 0.5 * i / 10, rtol=1e-6)  # cost model: the input at -6 dB
        assert result.audio.shape == (engine.geometry.return_samples,)


async def test_the_event_loop_keeps_running_during_a_forward_pass():
    engine = RecordingEngine(a_ms=150.0)
    runner = await started(engine, max_wait_ms=0.0)
    try:
        future = runner.submit(request(engine, "s", 0))
        await asyncio.sleep(0.01)
        lags = []
        while not future.done():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)
        await future
    finally:
        await runner.stop()
    assert len(lags) > 10 and max(lags) < 0.05


async def test_a_session_blocks_resolve_in_order_one_per_batch():
    engine = RecordingEngine()
    runner = await started(engine, max_wait_ms=0.0)
    try:
        order: list[int] = []
        futures = [runner.submit(request(engine, "s", k)) for k in range(4)]
        for f in futures:
            f.add_done_callback(lambda fut: order.append(fut.result().block_index))
        await asyncio.gather(*futures)
    finally:
        await runner.stop()
    assert order == [0, 1, 2, 3]
    assert all(len(batch) == 1 for batch in engine.batches)


async def test_blocks_of_a_session_that_left_are_not_computed():
    engine = RecordingEngine(a_ms=50.0)
    runner = await started(engine, max_wait_ms=0.0)
    try:
        first = runner.submit(request(engine, "stays", 0))
        await asyncio.sleep(0.01)  # the worker is busy with `first`
        gone = runner.submit(request(engine, "gone", 0))
        second = runner.submit(request(engine, "stays", 1))
        gone.cancel()
        await asyncio.gather(first, second)
    finally:
        await runner.stop()
    assert [s for batch in engine.batches for s, _, _ in batch] == ["stays", "stays"]


async def test_a_failing_batch_fails_only_its_blocks_and_the_loop_goes_on(capsys):
    engine = RecordingEngine(a_ms=30.0)
    runner = await started(engine, max_wait_ms=0.0)
    try:
        first = runner.submit(request(engine, "good", 0))
        await asyncio.sleep(0.005)
        bad = [runner.submit(request(engine, "bad", 0)), runner.submit(request(engine, "other", 0))]
        outcomes = await asyncio.gather(first, *bad, return_exceptions=True)
        after = await runner.submit(request(engine, "other", 1))
    finally:
        await runner.stop()
    assert isinstance(outcomes[0], BlockResult)
    assert all(isinstance(o, EngineError) for o in outcomes[1:])
    assert after.block_index == 1 and not after.concealed
    assert runner.metrics.batches_failed._value.get() == 1
    assert "batch.failed" in capsys.readouterr().out


async def test_a_block_that_cannot_be_back_in_time_is_concealed_with_silence_and_counted():
    engine = RecordingEngine()
    runner = await started(engine, max_wait_ms=0.0)
    try:
        old = runner.submit(request(engine, "s", 0), ready_s=time.monotonic() - 1.0)
        result = await old
        fresh = await runner.submit(request(engine, "s", 1))
    finally:
        await runner.stop()
    assert result.concealed and result.audio.shape == (engine.geometry.return_samples,)
    assert not result.audio.any()
    assert not fresh.concealed and engine.batches == [[("s", 1, 10)]]
    assert runner.metrics.concealed_blocks._value.get() == 1
    assert runner.is_overloaded()  # new sessions are refused for a while


async def test_degraded_steps_reach_the_engine():
    engine = RecordingEngine()
    runner = await started(engine, max_wait_ms=0.0, min_diffusion_steps=4)
    runner.scheduler.steps_cut = 3
    try:
        await runner.submit(request(engine, "s", 0))
    finally:
        await runner.stop()
    assert engine.batches == [[("s", 0, 7)]]
    assert runner.metrics.degraded_blocks._value.get() == 1


async def test_calibration_seeds_the_forward_time_estimate():
    engine = RecordingEngine(a_ms=20.0, b_ms=2.0)
    runner = await started(engine, calibration_sizes=[1, 8])
    await runner.stop()
    assert runner.scheduler.forward.predict(16, 10) == pytest.approx(0.052, rel=0.25)


def test_cost_model_sleeps_a_plus_b_size_scaled_by_steps():
    engine = CostModelEngine(StreamSettings(), config=Config())
    assert (engine.cost_a_ms, engine.cost_b_ms, engine.reference_steps) == (20.0, 0.5, 10)
    assert engine.forward_ms(320, 10) == 180.0 and engine.forward_ms(320, 5) == 90.0
    requests = [request(engine, f"s{i}", 0) for i in range(40)]
    start = time.perf_counter()
    results = engine.run_batch(requests)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    assert 40.0 <= elapsed_ms < 60.0
    assert [r.session_id for r in results] == [f"s{i}" for i in range(40)]


def test_forward_time_labels_group_batch_sizes_by_powers_of_two():
    assert [size_label(n) for n in (1, 2, 3, 4, 5, 8, 9, 300)] == ["1", "2", "3-4", "3-4", "5-8", "5-8", "9-16",
                                                                    "257-512"]


async def test_the_silence_gate_answers_silent_blocks_without_the_model():
    engine = RecordingEngine()
    runner = EngineRunner(engine, config=SchedulerConfig(calibration_sizes=[], max_wait_ms=0.0), metrics=Metrics(),
                          silence_threshold_db=-60.0)
    await runner.start()
    try:
        silent = runner.submit(request(engine, "s", 0, value=0.0))
        assert silent.done() and not silent.result().audio.any()
        loud = await runner.submit(request(engine, "s", 1, value=0.1))
    finally:
        await runner.stop()
    assert engine.batches == [[("s", 1, 10)]] and loud.audio.any()
    assert runner.metrics.blocks_gated._value.get() == 1
