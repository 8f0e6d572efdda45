"""SOLA of many streams at once (`stitch_batch`, the runner's path) against each stream's own `stitch`."""

from __future__ import annotations

import asyncio

import numpy as np

from fastvc.engine.passthrough import PassthroughEngine
from fastvc.stream import BlockStream, StreamSettings, stitch_batch

GEOMETRY = PassthroughEngine(StreamSettings()).geometry


def _slices(rng: np.random.Generator, block: int, count: int) -> list[np.ndarray]:
    """Noise, tones, a chirp-like mix, silence and a constant: shapes that give clear maxima, ties and zeros."""
    n = GEOMETRY.return_samples
    t = (np.arange(n) + block * GEOMETRY.block) / GEOMETRY.model_rate_hz
    kinds = [
        lambda: rng.standard_normal(n) * 0.1,
        lambda: 0.5 * np.sin(2 * np.pi * 220.0 * t),
        lambda: 0.3 * np.sin(2 * np.pi * 441.0 * t),  # 50 samples a period: near-equal scores a period apart
        lambda: np.sin(2 * np.pi * 180.0 * t) * rng.uniform(0.0, 0.5, n),
        lambda: np.zeros(n),
        lambda: np.full(n, 0.25),
    ]
    return [kinds[i % len(kinds)]().astype(np.float32) for i in range(count)]


def test_batched_stitch_gives_each_stream_the_offsets_and_samples_of_its_own_stitch():
    rng = np.random.default_rng(3)
    count = 21  # not a multiple of the rows per pass
    alone = [BlockStream(GEOMETRY, content_window=False) for _ in range(count)]
    batched = [BlockStream(GEOMETRY, content_window=False) for _ in range(count)]
    for block in range(6):
        slices = _slices(rng, block, count)
        rng.shuffle(slices)
        expected = [stream.stitch(s) for stream, s in zip(alone, slices)]
        got = stitch_batch(batched, slices)
        assert [r.offset for r in got] == [r.offset for r in expected]
        for mine, theirs in zip(got, expected):
            np.testing.assert_array_equal(mine.out, theirs.out)
    for mine, theirs in zip(batched, alone):
        np.testing.assert_array_equal(mine.prev, theirs.prev)
        assert mine.blocks_stitched == theirs.blocks_stitched == 6


def test_a_tie_goes_to_the_lowest_offset_as_in_stitch():
    stream = BlockStream(GEOMETRY, content_window=False)
    stream.prev = np.ones(GEOMETRY.sola_buffer, np.float32)
    flat = np.full(GEOMETRY.return_samples, 0.5, np.float32)  # every offset scores the same
    assert stitch_batch([stream], [flat])[0].offset == 0



def _request(session_id: str, index: int, stream: BlockStream, rng: np.random.Generator):
    from fastvc.engine.base import BlockRequest

    pushed = stream.push_block((rng.standard_normal(stream.geometry.block) * 0.1).astype(np.float32))
    assert pushed.block_index == index
    return BlockRequest(session_id, index, pushed.window_16k, pushed.recent)


async def test_the_runner_stitches_a_batch_where_each_stream_is_at_that_block():
    from fastvc.config import SchedulerConfig
    from fastvc.engine.cost_model import CostModelEngine
    from fastvc.runner import EngineRunner

    engine = CostModelEngine(StreamSettings(), cost_a_ms=1.0, cost_b_ms=0.0)
    runner = EngineRunner(engine, config=SchedulerConfig(calibration_sizes=[], max_wait_ms=10.0))
    await runner.start()
    rng = np.random.default_rng(5)
    streams = [BlockStream(engine.geometry, content_window=False) for _ in range(4)]
    behind = BlockStream(engine.geometry, content_window=False)
    try:
        futures = [runner.submit(_request(f"s{i}", 0, s, rng), stream=s) for i, s in enumerate(streams)]
        _request("behind", 0, behind, rng)  # pushed, never stitched: its block 1 is left to its session
        futures.append(runner.submit(_request("behind", 1, behind, rng), stream=behind))
        results = await asyncio.gather(*futures)
    finally:
        await runner.stop()
    for result, stream in zip(results[:4], streams):
        twin = BlockStream(engine.geometry, content_window=False)
        expected = twin.stitch(result.audio)
        assert result.stitched is not None and result.stitched.offset == expected.offset
        np.testing.assert_array_equal(result.stitched.out, expected.out)
        assert stream.blocks_stitched == 1
    assert results[4].stitched is None and behind.blocks_stitched == 0
