"""SOLA on the stitch thread gives exactly what inline stitching gives, per stream, in order."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from fastvc.engine.passthrough import PassthroughEngine
from fastvc.stitcher import StitchThread
from fastvc.stream import BlockStream, StreamSettings

GEOMETRY = PassthroughEngine(StreamSettings()).geometry


def _slices(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(GEOMETRY.return_samples).astype(np.float32) * 0.1 for _ in range(n)]


async def test_threaded_stitching_matches_inline_for_interleaved_streams():
    stitcher = StitchThread().start()
    try:
        streams = [BlockStream(GEOMETRY, content_window=False) for _ in range(3)]
        references = [BlockStream(GEOMETRY, content_window=False) for _ in range(3)]
        inputs = [_slices(seed, 6) for seed in range(3)]

        async def run(i: int) -> list[np.ndarray]:
            return [(await stitcher.stitch(streams[i], s)).out for s in inputs[i]]

        threaded = await asyncio.gather(*(run(i) for i in range(3)))
    finally:
        stitcher.close()
    for i in range(3):
        expected = [references[i].stitch(s).out for s in inputs[i]]
        for got, want in zip(threaded[i], expected):
            np.testing.assert_array_equal(got, want)


async def test_a_stitch_error_reaches_the_session_that_asked():
    stitcher = StitchThread().start()
    try:
        with pytest.raises(ValueError, match="model slice"):
            await stitcher.stitch(BlockStream(GEOMETRY), np.zeros(5, np.float32))
        ok = await stitcher.stitch(BlockStream(GEOMETRY), np.zeros(GEOMETRY.return_samples, np.float32))
    finally:
        stitcher.close()
    assert ok.out.shape == (GEOMETRY.block,)


def test_close_stops_the_thread():
    stitcher = StitchThread().start()
    stitcher.close()
    assert not any(t.name == "fastvc-stitch" and t is stitcher._thread and t.is_alive()
                   for t in threading.enumerate())
