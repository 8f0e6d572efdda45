#!/usr/bin/env python3
"""How many real-time sessions the scheduler sustains on a simulated GPU: the `cost-model` engine.

    python bench/scheduler_sim.py --json OUT [--a-ms 20 --b-ms 0.5] [--probe-s 10] [--client-procs 2]

Starts the real server (`python -m fastvc.server --engine cost-model`, one forward pass sleeps a + b·n ms) on
loopback and drives it with real WebSocket clients in separate processes. Every client streams PCM at the
model rate (22050 Hz: no resampling, so output message k answers input message k exactly) in block-sized
messages (180 ms), all sessions on one block clock: message k of every session leaves at t0 + k·block
(`--phase-spread-ms` spreads the sessions' phases instead). Block latency = arrival of output message k −
departure of input message k, measured by the client (the server's own stats are reported beside it).

A probe passes when every session completes, p99 block latency < block, and the server concealed nothing
(adaptive steps are off, so a probe cannot pass by degrading). On a shared machine another user's burst can
spoil one probe: a failing count is probed again (`--retries`), and every probe records the machine's load. A binary search finds the most sessions that
pass, with batching (max_batch_size = --max-batch-size) and without (max_batch_size = 1), in the same run.
`bound` = floor((block − a) / b): the most sessions whose one batch fits one block period.

Also written: CPU seconds per session-second of audio for the server and for the clients (from /proc and
getrusage over the streaming phase of each probe), and the machine's load, since this machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from fastvc.loadgen.machine import CpuMeter, process_cpu_s  # noqa: E402
from fastvc.loadgen.spawn import SpawnedServer  # noqa: E402

RATE_HZ = 22050
WARMUP_S = 2.0  # blocks sent in the first seconds are not counted (start-up, calibration transients)


@dataclass
class ProbeResult:
    sessions: int
    max_batch_size: int
    passed: bool = False
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    blocks: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    server_p99_ms_worst_session: float | None = None
    concealed: int = 0
    deadline_misses: int = 0
    mean_batch_size: float | None = None
    server_cpu_s_per_session_s: float | None = None
    client_cpu_s_per_session_s: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)


# ---- client processes ---------------------------------------------------------------------------------------


def client_process(url: str, session_ids: list[str], blocks: int, block_samples: int, phases_s: list[float],
                   conn) -> None:
    """Runs in its own process: connect every session, report, wait for t0, stream, report latencies."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(_client_main(url, session_ids, blocks, block_samples, phases_s, conn))
    conn.send(result)
    conn.close()


async def _client_main(url, session_ids, blocks, block_samples, phases_s, conn) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    rng = np.random.default_rng(len(session_ids))
    payload = (rng.standard_normal(block_samples) * 3000).astype("<i2").tobytes()
    config = {"type": "config", "sample_rate": RATE_HZ, "sample_rate_out": RATE_HZ, "bit_depth": 16,
              "channels": 1, "encoding": "PCM"}

    async def open_session(session_id: str):
        ws = await connect(url, compression=None, max_size=None, open_timeout=30, ping_interval=None)
        await ws.send(json.dumps({**config, "session_id": session_id}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            await ws.close()
            raise RuntimeError(f"{ready.get('error_code', ready.get('type'))}")
        return ws

    opened = await asyncio.gather(*(open_session(s) for s in session_ids), return_exceptions=True)
    errors = [f"connect: {o!r}" for o in opened if isinstance(o, BaseException)]
    sockets = [o for o in opened if not isinstance(o, BaseException)]
    conn.send({"connected": len(sockets), "errors": errors})
    t0 = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    cpu_before = _own_cpu_s()
    outcomes = await asyncio.gather(*(_stream(ws, payload, blocks, t0 + phases_s[i], block_samples)
                                      for i, ws in enumerate(sockets)), return_exceptions=True)
    cpu_s = _own_cpu_s() - cpu_before
    latencies, server_p99, completed = [], [], 0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            errors.append(f"stream: {outcome!r}")
            continue
        lat, stats = outcome
        latencies.append(lat)
        if stats is not None:
            completed += 1
            server_p99.append((stats.get("block_latency_ms") or {}).get("p99"))
    return {"latencies_ms": np.concatenate(latencies) if latencies else np.zeros(0), "errors": errors,
            "completed": completed, "server_p99_ms": [p for p in server_p99 if p is not None], "cpu_s": cpu_s}


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _stream(ws, payload: bytes, blocks: int, start_s: float, block_samples: int):
    """Send `blocks` messages on the block clock from `start_s`; latency of each answered block (ms)."""
    block_s = block_samples / RATE_HZ
    sent = np.full(blocks, np.nan)
    received: list[float] = []
    stats: dict[str, Any] | None = None

    async def receive() -> None:
        nonlocal stats
        async for message in ws:
            if isinstance(message, bytes):
                received.append(time.monotonic())
            else:
                event = json.loads(message)
                if event.get("type") == "complete":
                    stats = event["stats"]
                elif event.get("type") == "error":
                    raise RuntimeError(event.get("error_code"))

    receiver = asyncio.create_task(receive())
    for k in range(blocks):
        delay = start_s + k * block_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(payload)
        sent[k] = time.monotonic()
    await ws.send(json.dumps({"type": "end"}))
    await asyncio.wait_for(receiver, 30.0)
    n = min(blocks, len(received))
    counted = slice(int(math.ceil(WARMUP_S / block_s)), n)
    latency_ms = (np.asarray(received[:n]) - sent[:n])[counted] * 1000.0
    return latency_ms, stats


# ---- one probe ----------------------------------------------------------------------------------------------


def scrape(server: SpawnedServer) -> dict[str, float]:
    """The server's /metrics, as {series: value} for un-labelled series."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line.split(" ")[0]:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def probe(server: SpawnedServer, n: int, max_batch_size: int, args) -> ProbeResult:
    result = ProbeResult(n, max_batch_size)
    block_samples = round(args.block_ms / 1000.0 * RATE_HZ)
    blocks = int(args.probe_s * 1000.0 / args.block_ms)
    rng = np.random.default_rng(n)
    phases = list(rng.uniform(0.0, args.phase_spread_ms / 1000.0, n))
    procs, pipes = [], []
    ctx = mp.get_context("spawn")
    for p in range(args.client_procs):
        ids = [f"p{p}-s{i}" for i in range(p, n, args.client_procs)]
        if not ids:
            continue
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_process, daemon=True,
                           args=(server.url, ids, blocks, block_samples, phases[p::args.client_procs], child))
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    connected = [pipe.recv() for pipe in pipes]
    result.errors += [e for c in connected for e in c["errors"]][:5]
    before = scrape(server)
    meter = CpuMeter(server.pid)
    server_cpu_before = process_cpu_s(server.pid)
    t0 = time.monotonic() + 0.5
    for pipe in pipes:
        pipe.send(t0)
    outcomes = [pipe.recv() for pipe in pipes]
    server_cpu_s = process_cpu_s(server.pid) - server_cpu_before
    result.machine = meter.read()
    for proc in procs:
        proc.join(10)
    after = scrape(server)
    latencies = np.concatenate([o["latencies_ms"] for o in outcomes])
    result.errors += [e for o in outcomes for e in o["errors"]][:5]
    result.completed = sum(o["completed"] for o in outcomes)
    result.blocks = int(latencies.size)
    if latencies.size:
        result.p50_ms, result.p99_ms, result.max_ms = (round(float(v), 2) for v in
                                                       np.percentile(latencies, [50, 99, 100]))
    server_p99 = [p for o in outcomes for p in o["server_p99_ms"]]
    result.server_p99_ms_worst_session = max(server_p99) if server_p99 else None
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    result.concealed = int(delta.get("fastvc_concealed_blocks_total", 0))
    result.deadline_misses = int(delta.get("fastvc_deadline_misses_total", 0))
    batches = delta.get("fastvc_batch_size_count", 0)
    result.mean_batch_size = round(delta.get("fastvc_batch_size_sum", 0) / batches, 1) if batches else None
    session_s = n * blocks * args.block_ms / 1000.0
    result.server_cpu_s_per_session_s = round(server_cpu_s / session_s, 5)
    result.client_cpu_s_per_session_s = round(sum(o["cpu_s"] for o in outcomes) / session_s, 5)
    result.passed = (not result.errors and result.completed == n and result.p99_ms is not None
                     and result.p99_ms < args.block_ms and result.concealed == 0)
    return result


# ---- search -------------------------------------------------------------------------------------------------


def search(args, max_batch_size: int, hi: int, resolution: int,
           max_probes: int = 20) -> tuple[int, list[ProbeResult]]:
    """The most sessions that pass, by bisection in [0, hi], to within `resolution` sessions."""
    overrides = {
        "scheduler": {"max_batch_size": max_batch_size, "adaptive_steps": False,
                      "max_wait_ms": args.max_wait_ms, "safety_margin_ms": args.safety_margin_ms},
        "engine": {"cost_a_ms": args.a_ms, "cost_b_ms": args.b_ms},
        "stream": {"block_time_s": args.block_ms / 1000.0},
        "server": {"max_sessions": 4 * hi + 16},
        "logging": {"level": "warning"},
    }
    probes: list[ProbeResult] = []
    passing, failing = 0, hi + 1
    with SpawnedServer("cost-model", overrides=overrides) as server:
        n = min(args.first_probe or (passing + failing) // 2, hi)
        while failing - passing > resolution and len(probes) < max_probes:
            for _ in range(1 + args.retries):  # other users of a shared machine can spoil one probe
                result = probe(server, n, max_batch_size, args)
                probes.append(result)
                print(json.dumps({**{k: v for k, v in asdict(result).items() if k != "machine"},
                                  "others_cpu_pct": result.machine.get("others_cpu_pct")}), flush=True)
                time.sleep(args.settle_s)
                if result.passed:
                    break
            if result.passed:
                passing = n
            else:
                failing = n
            n = (passing + failing) // 2
    return passing, probes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="write the result here")
    parser.add_argument("--a-ms", type=float, default=20.0, help="cost model: fixed ms per forward pass")
    parser.add_argument("--b-ms", type=float, default=0.5, help="cost model: ms per session in the batch")
    parser.add_argument("--block-ms", type=float, default=180.0)
    parser.add_argument("--probe-s", type=float, default=10.0, help="seconds of audio per session per probe")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes (sessions split)")
    parser.add_argument("--phase-spread-ms", type=float, default=0.0,
                        help="spread session phases uniformly over this (0: one block clock for all)")
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--max-wait-ms", type=float, default=100.0,
                        help="[scheduler] max_wait_ms (longer than the default 20: on a busy host the sessions' "
                             "messages arrive spread over tens of ms, and a batch cut at 20 ms pays `a` twice)")
    parser.add_argument("--safety-margin-ms", type=float, default=5.0)
    parser.add_argument("--resolution", type=int, default=4, help="batched search stops within this many sessions")
    parser.add_argument("--first-probe", type=int, help="first session count tried (default: mid-range)")
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause between probes (admission hold)")
    parser.add_argument("--retries", type=int, default=1,
                        help="probe a failing count again this many times before calling it failed")
    parser.add_argument("--skip-unbatched", action="store_true")
    parser.add_argument("--probe", type=int, help="run one batched probe with this many sessions and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    bound = math.floor((args.block_ms - args.a_ms) / args.b_ms)
    unbatched_bound = math.floor(args.block_ms / (args.a_ms + args.b_ms))
    if args.probe:
        args.first_probe = args.probe
        search(args, args.max_batch_size, hi=args.probe, resolution=0, max_probes=1)
        return 0
    report: dict[str, Any] = {"bound": bound, "unbatched_bound": unbatched_bound, "a_ms": args.a_ms,
                              "b_ms": args.b_ms, "block_ms": args.block_ms, "probe_s": args.probe_s,
                              "client_procs": args.client_procs, "phase_spread_ms": args.phase_spread_ms,
                              "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    sustained, probes = search(args, args.max_batch_size, hi=int(bound * 1.1), resolution=args.resolution)
    report["sessions_sustained"] = sustained
    if not args.skip_unbatched:
        args.first_probe = None
        unbatched, more = search(args, 1, hi=2 * unbatched_bound, resolution=1)
        report["unbatched_sessions_sustained"] = unbatched
        probes += more
    report["probes"] = [asdict(p) for p in probes]
    best = [p for p in probes if p.passed and p.max_batch_size > 1]
    if best:
        top = max(best, key=lambda p: p.sessions)
        report["at_sustained"] = {k: getattr(top, k) for k in (
            "p50_ms", "p99_ms", "mean_batch_size", "server_cpu_s_per_session_s", "client_cpu_s_per_session_s")}
    report["wall_s"] = round(time.time() - started, 1)
    report["loadavg_after"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "probes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
