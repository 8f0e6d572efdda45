"""Run N concurrent sessions against one server: in one asyncio process, or fanned out over processes.

    run_sessions(url, n, audio, duration_s, ...)    -> [SessionMetrics]      (the simple API)
    run_load(url, n, audio, duration_s, ...)        -> LoadRun (+ the client's own event-loop lag)
    await run_load_async(url, n, audio, ...)        -> LoadRun, in the caller's event loop

Past `sessions_per_process` sessions the run is split over worker processes (spawned, so they share no
event loop or socket state); each prepares its frames, waits at a start barrier, runs its share of the
sessions on one common monotonic clock (session i of n starts at `start + i·ramp_s/n`), and sends back its
SessionMetrics, which are merged in session order. Progress counters live in shared memory and are shown by
the `progress` callback about once a second.

The client's event-loop lag is sampled throughout (a 10 ms timer's overshoot): when it is high, the load
generator itself was starved of CPU and the latencies it measured are inflated by it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastvc.loadgen.audio import Clip, FrameSequence, encode_frames, read_wav
from fastvc.loadgen.client import ClientOptions, ProgressCounters, run_session
from fastvc.loadgen.metrics import SessionMetrics, distribution

LOOP_LAG_PERIOD_S = 0.01
PROGRESS_PERIOD_S = 1.0
ProgressCallback = Callable[[dict[str, int]], None]


@dataclass
class LoadRun:
    """sessions: in session order; loop_lag_ms: distribution of the client's event-loop lag."""

    sessions: list[SessionMetrics]
    loop_lag_ms: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    processes: int = 1


@dataclass(frozen=True)
class _Share:
    """The sessions one process runs: indices first, first+stride, ... of n."""

    n: int
    first: int
    stride: int
    ramp_s: float
    tag: str

    def indices(self) -> range:
        return range(self.first, self.n, self.stride)


def run_sessions(url: str, n: int, audio: str | Path | Clip, duration_s: float, frame_ms: float = 20.0,
                 encoding: str = "PCM", pace: str = "realtime", ramp_s: float = 0.0, **options: Any) -> list[SessionMetrics]:
    """N concurrent sessions streaming `audio` (a WAV path or a Clip) for `duration_s` each; see `run_load`."""
    return run_load(url, n, audio, duration_s, frame_ms, encoding, pace, ramp_s, **options).sessions


def run_load(url: str, n: int, audio: str | Path | Clip, duration_s: float, frame_ms: float = 20.0,
             encoding: str = "PCM", pace: str = "realtime", ramp_s: float = 0.0, *,
             sessions_per_process: int = 200, processes: int | None = None,
             progress: ProgressCallback | None = None, sample_rate_hz: int | None = None,
             **client_options: Any) -> LoadRun:
    """Run the sessions (blocking). `client_options` are `ClientOptions` fields (api_key, block_ms, ...)."""
    options = ClientOptions(url=url, encoding=encoding.upper(), pace=pace, **client_options)
    processes = processes or max(1, -(-n // sessions_per_process))
    if processes == 1:
        return _run_in_loop(run_load_async(url, n, audio, duration_s, frame_ms, encoding, pace, ramp_s,
                                           progress=progress, sample_rate_hz=sample_rate_hz, **client_options))
    args = (options, audio, duration_s, frame_ms, sample_rate_hz)
    return _run_in_processes(args, n, ramp_s, _run_tag(), processes, progress)


async def run_load_async(url: str, n: int, audio: str | Path | Clip, duration_s: float, frame_ms: float = 20.0,
                         encoding: str = "PCM", pace: str = "realtime", ramp_s: float = 0.0, *,
                         progress: ProgressCallback | None = None, sample_rate_hz: int | None = None,
                         **client_options: Any) -> LoadRun:
    """`run_load` inside the caller's event loop (one process)."""
    options = ClientOptions(url=url, encoding=encoding.upper(), pace=pace, **client_options)
    frames = _frames(audio, duration_s, frame_ms, options.encoding, sample_rate_hz)
    return await _run_share(options, frames, _Share(n, 0, 1, ramp_s, _run_tag()), ProgressCounters(), progress,
                            start_at_s=None)


def _run_tag() -> str:
    """Makes session ids unique across runs and processes."""
    return f"{os.getpid():x}{int(time.time() * 1000) % 0xFFFFFF:06x}"


def _frames(audio: str | Path | Clip, duration_s: float, frame_ms: float, encoding: str,
            sample_rate_hz: int | None) -> FrameSequence:
    clip = audio if isinstance(audio, Clip) else read_wav(audio, sample_rate_hz)
    if isinstance(audio, Clip) and sample_rate_hz not in (None, clip.sample_rate_hz):
        raise ValueError("pass a WAV path (not a Clip) to resample with sample_rate_hz")
    return encode_frames(clip, duration_s, frame_ms, encoding)


def _run_in_loop(coroutine):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def _run_share(options: ClientOptions, frames: FrameSequence, share: _Share, counters: ProgressCounters,
                     progress: ProgressCallback | None, start_at_s: float | None) -> LoadRun:
    """This process's sessions, all in one event loop, plus the loop-lag sampler and the progress printer."""
    start_at_s = start_at_s if start_at_s is not None else time.monotonic() + 0.05
    lags_s: list[float] = []
    sampler = asyncio.create_task(_sample_loop_lag(lags_s))
    reporter = asyncio.create_task(_report_progress(counters, progress)) if progress else None
    sessions = [run_session(options, frames, f"lg-{share.tag}-{i:05d}", start_at_s + i * share.ramp_s / share.n,
                            counters) for i in share.indices()]
    results = await asyncio.gather(*sessions)
    for task in (sampler, reporter):
        if task is not None:
            task.cancel()
    await asyncio.gather(sampler, *(t for t in [reporter] if t), return_exceptions=True)
    if progress:
        progress(_snapshot([counters]))
    return LoadRun(list(results), distribution([1000.0 * x for x in lags_s]), time.monotonic() - start_at_s)


async def _sample_loop_lag(lags_s: list[float]) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(LOOP_LAG_PERIOD_S)
        lags_s.append(max(0.0, time.monotonic() - before - LOOP_LAG_PERIOD_S))


async def _report_progress(counters: ProgressCounters, progress: ProgressCallback) -> None:
    while True:
        await asyncio.sleep(PROGRESS_PERIOD_S)
        progress(_snapshot([counters]))


def _snapshot(all_counters: list[ProgressCounters]) -> dict[str, int]:
    names = ("started", "ready", "done", "failed", "output_ms")
    return {name: sum(c.cells[i] for c in all_counters) for i, name in enumerate(names)}


def _run_in_processes(args: tuple, n: int, ramp_s: float, tag: str, processes: int,
                      progress: ProgressCallback | None) -> LoadRun:
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    prepared, go = context.Semaphore(0), context.Event()
    start_at = context.Value("d", 0.0)
    counters = [ProgressCounters(context.Array("q", ProgressCounters.SIZE, lock=False)) for _ in range(processes)]
    workers = [context.Process(target=_worker_main, name=f"fastvc-load-{p}", daemon=True,
                               args=(args, _Share(n, p, processes, ramp_s, tag), counters[p].cells, prepared, go,
                                     start_at, results))
               for p in range(processes)]
    for worker in workers:
        worker.start()
    try:
        runs = _collect(workers, results, prepared, go, start_at, counters, progress)
    finally:
        for worker in workers:
            worker.join(timeout=5.0)
            if worker.is_alive():
                worker.terminate()
    return _merge(runs, n, processes)


def _collect(workers, results, prepared, go, start_at, counters, progress) -> list[tuple[_Share, LoadRun]]:
    for _ in workers:
        if not prepared.acquire(timeout=60.0):
            raise RuntimeError("a load worker process did not start within 60 s")
    start_at.value = time.monotonic() + 0.2  # CLOCK_MONOTONIC is system-wide on Linux
    go.set()
    runs: list[tuple[_Share, LoadRun]] = []
    while len(runs) < len(workers):
        try:
            item = results.get(timeout=PROGRESS_PERIOD_S)
        except queue.Empty:
            if progress:
                progress(_snapshot(counters))
            if not any(w.is_alive() for w in workers) and results.empty():
                raise RuntimeError("load worker processes exited without results") from None
            continue
        if isinstance(item, BaseException):
            raise item
        runs.append(item)
    if progress:
        progress(_snapshot(counters))
    return runs


def _worker_main(args: tuple, share: _Share, cells, prepared, go, start_at, results) -> None:
    options, audio, duration_s, frame_ms, sample_rate_hz = args
    try:
        frames = _frames(audio, duration_s, frame_ms, options.encoding, sample_rate_hz)
    except (OSError, ValueError) as error:
        results.put(error)
        prepared.release()
        return
    prepared.release()
    go.wait()
    run = _run_in_loop(_run_share(options, frames, share, ProgressCounters(cells), None, start_at.value))
    results.put((share, run))


def _merge(runs: list[tuple[_Share, LoadRun]], n: int, processes: int) -> LoadRun:
    by_index: dict[int, SessionMetrics] = {}
    worst_lag: dict[str, Any] = {}
    for share, run in runs:
        by_index.update(zip(share.indices(), run.sessions))
        if (run.loop_lag_ms.get("p99") or 0) >= (worst_lag.get("p99") or 0):
            worst_lag = run.loop_lag_ms  # the most starved process bounds the measurement's trust
    return LoadRun([by_index[i] for i in range(n)], worst_lag, max(run.wall_s for _, run in runs), processes)
