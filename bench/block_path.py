#!/usr/bin/env python3
"""Host CPU of the server's per-block path on the event loop, without the network: µs per block, each direction.

    python bench/block_path.py [--sessions 200] [--blocks 40] [--rate 22050]

N real `Session`s (the cost-model engine's geometry, content window off) on one asyncio loop, all on one
block clock as in `bench/scheduler_sim.py`. Each period: every session is fed one block-sized PCM message
(decode -> feed -> push_block -> submit: the "in" direction), then one batch's results are handed back at
once (the engine's output is the passthrough slice at half amplitude, computed off the clock), stitched
in one pass as the runner does (`--per-session-stitch`: each session stitches its own), and every session
encodes and sends it to a sink that keeps the bytes (the "out" direction). What it leaves
out: WebSocket framing and the kernel (about 15 µs per message each way with websockets 17 on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fastvc.codec import PcmDecoder, PcmEncoder  # noqa: E402
from fastvc.engine.base import BlockResult  # noqa: E402
from fastvc.session import Session, SessionParams  # noqa: E402
from fastvc.stream import StreamGeometry, StreamSettings, stitch_batch  # noqa: E402


class BatchRunner:
    """Holds submitted blocks; `complete` resolves them all as one batch would (passthrough at half gain)."""

    def __init__(self, geometry: StreamGeometry) -> None:
        self.geometry = geometry
        self.queued = []

    def submit(self, request, ready_s=None, *, stream=None):
        future = asyncio.get_running_loop().create_future()
        self.queued.append((request, future, stream))
        return future

    def results(self):
        n = self.geometry.return_samples
        return [(f, s, BlockResult(r.session_id, r.block_index, r.recent[:n] * np.float32(0.5)))
                for r, f, s in self.queued]

    def stitch(self, batch) -> None:
        """As `EngineRunner._stitch`: the batch's SOLA in one pass (off with --per-session-stitch)."""
        ready = [(s, result) for _, s, result in batch if s is not None and s.blocks_stitched == result.block_index]
        for (_, result), one in zip(ready, stitch_batch([s for s, _ in ready], [r.audio for _, r in ready])):
            result.stitched = one


class BytesSink:
    def __init__(self) -> None:
        self.encoder = PcmEncoder(22050)
        self.sent_bytes = 0

    async def send_audio(self, samples):
        for message in self.encoder.encode(samples):
            self.sent_bytes += len(message)


async def run(sessions: int, blocks: int, rate_hz: int, batched_stitch: bool = True) -> dict:
    geometry = StreamGeometry.from_settings(StreamSettings(), rate_hz, 256)
    runner = BatchRunner(geometry)
    rng = np.random.default_rng(0)
    payload = (rng.standard_normal(geometry.block) * 3000).astype("<i2").tobytes()
    decoder = PcmDecoder(16, rate_hz)
    all_sessions = []
    for i in range(sessions):
        session = Session(SessionParams(f"s{i}", rate_hz, rate_hz), geometry, runner, BytesSink(),
                          content_window=False)
        session.start()
        all_sessions.append(session)
    in_s = out_s = 0.0
    for block in range(blocks):
        start = time.process_time()
        for session in all_sessions:
            await session.feed(decoder.decode(payload))
        middle = time.process_time()
        batch, runner.queued = runner.results(), []
        middle_end = time.process_time()
        if batched_stitch:
            runner.stitch(batch)
        for future, _, result in batch:
            future.set_result(result)
        await asyncio.sleep(0)  # every emitter runs once
        await asyncio.sleep(0)
        end = time.process_time()
        if block >= 2:  # the first blocks warm up allocations
            in_s += middle - start
            out_s += end - middle_end
    for session in all_sessions:
        await session.abort()
    counted = sessions * (blocks - 2)
    return {"sessions": sessions, "blocks": blocks, "batched_stitch": batched_stitch, "in_us_per_block": round(in_s / counted * 1e6, 1),
            "out_us_per_block": round(out_s / counted * 1e6, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--rate", type=int, default=22050, help="client and model rate (Hz)")
    parser.add_argument("--per-session-stitch", action="store_true", help="each session stitches its own block")
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    print(json.dumps(runner(run(args.sessions, args.blocks, args.rate, not args.per_session_stitch))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
