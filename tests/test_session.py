"""The session core with fake runners: block order, failures, backpressure, end-of-stream length, seeds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastvc.engine.base import BlockResult, EngineError
from fastvc.engine.passthrough import PassthroughEngine
from fastvc.session import Session, SessionParams, SessionState, SessionStateError, block_seed
from fastvc.stream import StreamSettings

ENGINE = PassthroughEngine(StreamSettings())
GEOMETRY = ENGINE.geometry


class FakeRunner:
    """Resolves blocks when told to (in any order), with the passthrough engine's output."""

    def __init__(self, *, auto: bool = True, fail: set[int] = frozenset()) -> None:
        self.auto = auto
        self.fail = fail
        self.submitted: list = []
        self.ready_s: list = []

    def submit(self, request, ready_s=None, *, stream=None):
        future = asyncio.get_running_loop().create_future()
        self.submitted.append((request, future))
        self.ready_s.append(ready_s)
        if self.auto:
            self.resolve(len(self.submitted) - 1)
        return future

    def resolve(self, index: int) -> None:
        request, future = self.submitted[index]
        if request.block_index in self.fail:
            future.set_exception(EngineError("boom"))
        else:
            future.set_result(ENGINE.run_batch([request])[0])


class ListSink:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    async def send_audio(self, samples: np.ndarray) -> None:
        self.chunks.append(samples)

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def _session(runner, *, rate_in=22050, rate_out=22050, seed=1, max_blocks=8):
    sink = ListSink()
    params = SessionParams("s", rate_in, rate_out, seed=seed, max_blocks_in_flight=max_blocks)
    session = Session(params, GEOMETRY, runner, sink)
    session.start()
    return session, sink


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


async def test_output_is_the_input_aligned_sample_for_sample():
    signal = _noise(GEOMETRY.block * 5 + 1234)
    session, sink = _session(FakeRunner())
    for start in range(0, signal.shape[0], 1000):
        await session.feed(signal[start: start + 1000])
    await session.finish()
    np.testing.assert_allclose(sink.samples, signal, atol=1e-6)
    assert session.state is SessionState.COMPLETE


@pytest.mark.parametrize("n_samples", [0, 1, GEOMETRY.block, GEOMETRY.block - GEOMETRY.lead_in_samples, 12345])
@pytest.mark.parametrize("rates", [(16000, 16000), (8000, 48000), (48000, 16000)])
async def test_output_lasts_exactly_as_long_as_the_input(n_samples, rates):
    session, sink = _session(FakeRunner(), rate_in=rates[0], rate_out=rates[1])
    await session.feed(_noise(n_samples))
    stats = await session.finish()
    assert sink.samples.shape[0] == round(n_samples * rates[1] / rates[0]) == stats.output_samples


async def test_results_arriving_out_of_order_are_sent_in_block_order():
    signal = _noise(GEOMETRY.block * 4)
    runner = FakeRunner(auto=False)
    session, sink = _session(runner)
    await session.feed(signal)
    for index in (3, 1, 2):
        runner.resolve(index)
    await asyncio.sleep(0.01)
    assert sink.chunks == []  # block 0 is still computing: nothing may overtake it
    runner.resolve(0)
    finishing = asyncio.create_task(session.finish())
    await asyncio.sleep(0.01)
    for index in range(4, len(runner.submitted)):
        runner.resolve(index)
    await finishing
    np.testing.assert_allclose(sink.samples, signal, atol=1e-6)


async def test_a_failed_block_is_concealed_and_the_stream_goes_on():
    signal = _noise(GEOMETRY.block * 6, seed=3)
    session, sink = _session(FakeRunner(fail={2}))
    await session.feed(signal)
    stats = await session.finish()
    assert stats.blocks_failed == 1 and sink.samples.shape == signal.shape
    start = 3 * GEOMETRY.block - GEOMETRY.lead_in_samples + GEOMETRY.sola_buffer + GEOMETRY.sola_search
    np.testing.assert_allclose(sink.samples[start:], signal[start:], atol=1e-6)  # later blocks are intact


async def test_a_client_faster_than_the_engine_is_held_back():
    runner = FakeRunner(auto=False)
    session, _ = _session(runner, max_blocks=3)
    feeding = asyncio.create_task(session.feed(_noise(GEOMETRY.block * 20)))
    await asyncio.sleep(0.05)
    assert not feeding.done() and len(runner.submitted) == 4  # 3 in flight + the one waiting for room
    runner.resolve(0)
    await asyncio.sleep(0.01)
    assert len(runner.submitted) == 5
    await session.abort()
    feeding.cancel()
    assert all(future.cancelled() for _, future in runner.submitted[1:4])


async def test_audio_after_the_end_is_refused():
    session, _ = _session(FakeRunner())
    await session.finish()
    with pytest.raises(SessionStateError):
        await session.feed(_noise(10))


async def test_block_seeds_follow_the_session_seed_not_the_batching():
    runner = FakeRunner()
    session, _ = _session(runner, seed=42)
    await session.feed(_noise(GEOMETRY.block * 3))
    seeds = [request.seed for request, _ in runner.submitted]
    assert seeds == [block_seed(42, i) for i in range(3)]
    assert len(set(seeds)) == 3 and block_seed(43, 0) != seeds[0]
    assert all(0 <= seed < 2**63 for seed in seeds)
    await session.abort()


async def test_a_sink_failure_reaches_the_caller():
    class BrokenSink(ListSink):
        async def send_audio(self, samples):
            raise ConnectionResetError("client gone")

    session = Session(SessionParams("s", 22050, 22050), GEOMETRY, FakeRunner(), BrokenSink())
    session.start()
    with pytest.raises(ConnectionResetError):
        for _ in range(10):
            await session.feed(_noise(GEOMETRY.block))
            await asyncio.sleep(0)
        await session.finish()
    await session.abort()


async def test_the_blocks_of_the_final_flush_are_due_at_the_real_time_pace():
    """The flush at the end must not make every block due now: the scheduler runs one block per session per
    batch, so their deadlines are spaced one block apart."""
    runner = FakeRunner()
    session, _ = _session(runner)
    await session.feed(_noise(GEOMETRY.block * 3))
    await session.finish()
    block_s = GEOMETRY.block / GEOMETRY.model_rate_hz
    flush_gaps = np.diff(runner.ready_s[2:])  # from the last block fed to each block of the flush
    assert len(runner.ready_s) >= 4 and np.all(flush_gaps >= block_s - 1e-9)


async def test_one_late_message_does_not_delay_the_deadlines_after_it():
    now = [0.0]
    runner = FakeRunner()
    sink = ListSink()
    session = Session(SessionParams("s", 22050, 22050), GEOMETRY, runner, sink, clock=lambda: now[0])
    session.start()
    block_s = GEOMETRY.block / GEOMETRY.model_rate_hz
    for k, delay_s in enumerate([0.0, 0.0, 0.05, 0.0, 0.0]):  # message 2 arrives 50 ms late
        now[0] = k * block_s + delay_s
        await session.feed(_noise(GEOMETRY.block, seed=k))
    np.testing.assert_allclose(runner.ready_s, [0.0, block_s, 2 * block_s + 0.05, 3 * block_s, 4 * block_s])
    await session.abort()
