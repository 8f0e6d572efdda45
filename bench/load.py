#!/usr/bin/env python3
"""Load-test a fastvc server: N concurrent real-time streams, latency percentiles per concurrency.

    python bench/load.py --spawn-server --engine passthrough --sweep 1,16,64 --duration 8 --json out.json
    python bench/load.py --url ws://host:8765/ --sessions 32 --encoding OPUS
    python bench/load.py --spawn-server --engine cost-model --sweep 1,8,32 --batching off   (side by side)
    python bench/load.py --spawn-server --engine passthrough --find-max --budget-ms 20

Every session streams the WAV (looped to --duration) paced on an absolute clock, in --frame-ms frames,
as PCM or Opus. The metrics are defined in fastvc.loadgen.metrics (block latency there is the latency the
server ADDS to its algorithmic latency). Output: a console table, --json OUT, and a PNG (--plot, or next
to the JSON) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from fastvc.loadgen.client import PACES  # noqa: E402
from fastvc.loadgen.machine import CpuMeter  # noqa: E402
from fastvc.loadgen.metrics import summarize_point  # noqa: E402
from fastvc.loadgen.report import (  # noqa: E402
    PlotUnavailable,
    build_report,
    format_ratio_table,
    format_table,
    plot_sweep,
    worst_sample_latency,
)
from fastvc.loadgen.search import find_max_passing  # noqa: E402
from fastvc.loadgen.spawn import SpawnedServer, SpawnError  # noqa: E402
from fastvc.loadgen.sweep import run_load  # noqa: E402

DEFAULT_AUDIO = REPO_ROOT.parent / "shared" / "audio" / "speech-2spk-30s-16k.wav"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    target = parser.add_argument_group("server")
    target.add_argument("--url", help="WebSocket URL of a running server (ws://host:port/path)")
    target.add_argument("--spawn-server", action="store_true", help="start a fastvc server for the run")
    target.add_argument("--engine", default="passthrough", help="engine of the spawned server")
    target.add_argument("--config", help="server config file for the spawned server (defaults otherwise)")
    target.add_argument("--ws-path", default="/ws", help="WebSocket path of the spawned server")
    target.add_argument("--batching", choices=("on", "off"), default="on",
                        help="off: repeat the sweep with max_batch_size = 1 and print the ratio (needs --spawn-server)")
    target.add_argument("--server-option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config option of the spawned server (TOML value), e.g. "
                             "scheduler.max_wait_ms=0; repeatable")
    target.add_argument("--api-key", default="")
    load = parser.add_argument_group("load")
    load.add_argument("--sessions", type=int, default=1, help="concurrent sessions (one point)")
    load.add_argument("--sweep", help="comma-separated session counts, e.g. 1,16,64,256")
    load.add_argument("--duration", type=float, default=10.0, help="seconds of audio per session (file looped)")
    load.add_argument("--audio", default=str(DEFAULT_AUDIO), help="16-bit WAV to stream")
    load.add_argument("--sample-rate", type=int, help="resample the WAV to this rate before sending")
    load.add_argument("--sample-rate-out", type=int, help="rate asked for the converted audio (default: input)")
    load.add_argument("--frame-ms", type=float, default=20.0)
    load.add_argument("--encoding", choices=("PCM", "OPUS"), default="PCM", type=str.upper)
    load.add_argument("--output-encoding", choices=("PCM", "OPUS"), type=str.upper)
    load.add_argument("--pace", choices=PACES, default="realtime")
    load.add_argument("--ramp", type=float, default=1.0, help="seconds over which session starts are spread")
    load.add_argument("--settle", type=float, default=2.5,
                      help="pause between sweep points (s); above the server's overload hold (2 s)")
    target.add_argument("--restart-per-point", action="store_true",
                        help="a fresh spawned server for every point (no state carried over, e.g. an overload)")
    load.add_argument("--voice")
    load.add_argument("--sessions-per-process", type=int, default=200)
    load.add_argument("--processes", type=int, help="load processes (default: one per --sessions-per-process)")
    measure = parser.add_argument_group("metrics")
    measure.add_argument("--block-ms", type=float, help="server block length if its ready message omits it")
    measure.add_argument("--lead-in-ms", type=float,
                         help="output the server drops at the start (default: from ready, algorithmic latency - block)")
    measure.add_argument("--holdback-ms", type=float, help="output the server may hold back (default: half a block)")
    measure.add_argument("--jitter-buffer-ms", type=float, default=100.0,
                         help="simulated player's buffer (fastvc: keep it above the 80 ms lead-in, see metrics)")
    measure.add_argument("--budget-ms", type=float, default=20.0, help="p99 added-latency budget (plot, --find-max)")
    measure.add_argument("--find-max", action="store_true",
                         help="after the sweep, search the most sessions with p99 added latency <= budget, no errors")
    measure.add_argument("--find-max-start", type=int, default=16)
    measure.add_argument("--find-max-limit", type=int, default=1024)
    out = parser.add_argument_group("output")
    out.add_argument("--json", help="write the report here")
    out.add_argument("--plot", help="PNG of latency against streams (default: next to --json)")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if bool(args.url) == bool(args.spawn_server):
        parser.error("give exactly one of --url and --spawn-server")
    if args.batching == "off" and not args.spawn_server:
        parser.error("--batching off restarts the server with max_batch_size = 1: it needs --spawn-server")
    try:
        args.server_overrides = parse_server_options(args.server_option)
    except ValueError as error:
        parser.error(str(error))
    if args.server_overrides and not args.spawn_server:
        parser.error("--server-option configures the spawned server: it needs --spawn-server")
    args.points = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.sessions]
    if any(n < 1 for n in args.points):
        parser.error("session counts must be positive")
    return args


def parse_server_options(options: list[str]) -> dict[str, dict[str, Any]]:
    """["scheduler.max_wait_ms=0", ...] -> {"scheduler": {"max_wait_ms": 0}}; values are TOML (bare words: strings)."""
    overrides: dict[str, dict[str, Any]] = {}
    for option in options:
        name, equals, text = option.partition("=")
        section, dot, key = name.strip().partition(".")
        if not equals or not dot or not section or not key:
            raise ValueError(f"--server-option {option!r}: expected SECTION.KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        overrides.setdefault(section, {})[key] = value
    return overrides


class ProgressLine:
    """Prints `[64 streams] 3.2 s: started 64/64 ...` about once a second on stderr."""

    def __init__(self, sessions: int, label: str, quiet: bool) -> None:
        self.sessions, self.label, self.quiet = sessions, label, quiet
        self.started_at = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, counts: dict[str, int]) -> None:
        if self.quiet:
            return
        elapsed_s = time.monotonic() - self.started_at
        line = (f"[{self.label}{self.sessions} streams] {elapsed_s:5.1f} s: started {counts['started']}/{self.sessions}"
                f" ready {counts['ready']} done {counts['done']} failed {counts['failed']}"
                f" audio back {counts['output_ms'] / 1000:.1f} s")
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def finish(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def run_point(args: argparse.Namespace, url: str, sessions: int, server_pid: int | None, label: str) -> dict[str, Any]:
    """One concurrency level: run the sessions, summarise them, note the machine's load."""
    meter = CpuMeter(server_pid)
    progress = ProgressLine(sessions, label, args.quiet)
    run = run_load(url, sessions, args.audio, args.duration, args.frame_ms, args.encoding, args.pace,
                   args.ramp, sessions_per_process=args.sessions_per_process, processes=args.processes,
                   progress=progress, sample_rate_hz=args.sample_rate, api_key=args.api_key,
                   output_encoding=args.output_encoding, sample_rate_out_hz=args.sample_rate_out,
                   voice=args.voice, block_ms=args.block_ms, lead_in_ms=args.lead_in_ms, holdback_ms=args.holdback_ms,
                   jitter_buffer_ms=args.jitter_buffer_ms)
    progress.finish()
    row = summarize_point(sessions, run.sessions)
    row["loop_lag_ms"] = run.loop_lag_ms
    row["machine"] = meter.read()
    row["wall_s"] = round(run.wall_s, 2)
    row["processes"] = run.processes
    timings = next((s for s in run.sessions if s.block_ms), None)
    row["block_ms"] = timings.block_ms if timings else None
    row["algorithmic_latency_ms"] = next((s.algorithmic_latency_ms for s in run.sessions
                                          if s.algorithmic_latency_ms is not None), None)
    row["worst_sample_latency_ms"] = worst_sample_latency(row, row["algorithmic_latency_ms"])
    stats = next((s.server_stats for s in run.sessions if s.server_stats), None)
    if stats:
        row["server_stats_example"] = stats
    if row["errors"] and not args.quiet:
        example = next(s.error for s in run.sessions if s.error)
        print(f"  {row['errors']} session(s) failed, e.g. {example}", file=sys.stderr)
    return row


def passes(row: dict[str, Any], budget_ms: float) -> bool:
    p99 = row["added_latency_ms"]["p99"]
    return row["errors"] == 0 and row["lost_blocks"] == 0 and p99 is not None and p99 <= budget_ms


class Target:
    """The server under test: `--url`, or a spawned server (a fresh one per point with --restart-per-point)."""

    def __init__(self, args: argparse.Namespace, overrides: dict | None) -> None:
        self.args = args
        self.server: SpawnedServer | None = None
        needed = max(args.points + ([args.find_max_limit] if args.find_max else []))
        self.sections: dict[str, dict[str, Any]] = {"server": {"max_sessions": max(needed, 256)}}
        for section, values in [*args.server_overrides.items(), *(overrides or {}).items()]:
            self.sections.setdefault(section, {}).update(values)

    @property
    def url(self) -> str:
        return self.server.url if self.server else self.args.url

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else None

    def before_point(self) -> None:
        """Start the spawned server (again, when restarting per point); otherwise let the last point settle."""
        if not self.args.spawn_server:
            return
        if self.server is not None and not self.args.restart_per_point:
            time.sleep(self.args.settle)
            return
        self.close()
        print(f"starting server: engine {self.args.engine} {json.dumps(self.sections)}", file=sys.stderr)
        server = SpawnedServer(self.args.engine, config_path=self.args.config, overrides=self.sections,
                               ws_path=self.args.ws_path)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        self.server = server

    def close(self) -> None:
        if self.server is None:
            return
        code = self.server.stop()
        if code not in (0, None, -15):
            print(f"server exited with code {code}:\n{self.server.log_tail()}", file=sys.stderr)
        self.server.close()
        self.server = None


def run_sweep(args: argparse.Namespace, label: str = "", overrides: dict | None = None) -> tuple[list, dict]:
    """All points (spawning the server when asked), then the --find-max search."""
    target = Target(args, overrides)
    rows: list[dict[str, Any]] = []
    search: dict[str, Any] = {}
    try:
        for index, sessions in enumerate(args.points):
            if index and not args.spawn_server:
                time.sleep(args.settle)
            target.before_point()
            rows.append(run_point(args, target.url, sessions, target.pid, label))
        if args.find_max:
            search = find_max(args, target, label)
    finally:
        target.close()
    return rows, search


def find_max(args: argparse.Namespace, target: Target, label: str) -> dict[str, Any]:
    tried: dict[int, dict[str, Any]] = {}

    def evaluate(sessions: int) -> bool:
        target.before_point()
        if not args.spawn_server:
            time.sleep(args.settle)
        row = run_point(args, target.url, sessions, target.pid, f"{label}find-max ")
        tried[sessions] = row
        ok = passes(row, args.budget_ms)
        if not args.quiet:
            print(f"  find-max: {sessions} streams -> added p99 {row['added_latency_ms']['p99']} ms, "
                  f"errors {row['errors']}: {'pass' if ok else 'fail'}", file=sys.stderr)
        return ok

    best = find_max_passing(evaluate, args.find_max_start, args.find_max_limit)
    return {"budget_ms": args.budget_ms, "max_sessions": best,
            "criterion": "p99 added latency <= budget_ms, no failed session, no lost block",
            "tried": [tried[n] for n in sorted(tried)]}


def run_info(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    return {
        "command": " ".join(["bench/load.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": "spawned" if args.spawn_server else args.url,
        "engine": args.engine if args.spawn_server else None,
        "audio": args.audio, "duration_s": args.duration, "frame_ms": args.frame_ms, "encoding": args.encoding,
        "output_encoding": args.output_encoding or args.encoding, "pace": args.pace, "ramp_s": args.ramp,
        "jitter_buffer_ms": args.jitter_buffer_ms, "holdback_ms": args.holdback_ms,
        "sample_rate_hz": args.sample_rate, "sample_rate_out_hz": args.sample_rate_out,
        "server_options": args.server_overrides, "config": args.config, "restart_per_point": args.restart_per_point,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        rows, search = run_sweep(args)
        rows_off = None
        if args.batching == "off":
            rows_off, _ = run_sweep(args, "batching off: ", {"scheduler": {"max_batch_size": 1}})
    except SpawnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows, title=f"fastvc load: {args.engine if args.spawn_server else args.url}, "
                                   f"{args.encoding}, {args.duration:g} s per stream"))
    if rows_off is not None:
        print()
        print(format_table(rows_off, title="batching off (max_batch_size = 1)"))
        print()
        print(format_ratio_table(rows, rows_off))
    if search:
        print(f"\nmost streams with p99 added latency <= {args.budget_ms:g} ms and no errors: "
              f"{search['max_sessions']}")
    report = build_report(rows, rows_off, run_info(args, argv))
    if search:
        report["find_max"] = search
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"report: {args.json}")
    plot_path = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot_path:
        try:
            plot_sweep(rows, rows_off, plot_path, args.budget_ms, title=f"fastvc {args.engine} {args.encoding}")
            print(f"plot: {plot_path}")
        except PlotUnavailable as error:
            print(f"plot skipped: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
