"""The sweep report: one row per concurrency, as JSON, a console table and a PNG (matplotlib optional).

    rows = [summarize_point(...) + run extras, ...]
    build_report(rows, rows_off, run_info) -> dict (the --json file)
    format_table(rows) -> str;  format_ratio_table(rows, rows_off) -> str
    plot_sweep(rows, rows_off, path, budget_ms) -> None (raises PlotUnavailable without matplotlib)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFINITIONS = {
    "added_latency_ms": "per output block window: worst (arrival - capture) delay of its samples minus the "
                        "algorithmic latency; what a listener's playout delay must add to an ideal server's. "
                        "Counts output held back past a block boundary at its real arrival. See "
                        "fastvc.loadgen.metrics.",
    "block_latency_ms": "last input sample of a block sent -> that block's converted audio received (blocks "
                        "attributed by cumulative sample counts, tolerating a hold-back below half a block): "
                        "the server's per-block turnaround as the client sees it.",
    "algorithmic_latency_ms": "worst-case sample delay of an ideal zero-compute server: one block + the "
                              "SOLA/look-ahead lead-in (from the server's ready message).",
    "worst_sample_latency_ms": "algorithmic_latency_ms + added_latency_ms: worst-case delay of one sample.",
    "first_packet_ms": "first audio frame sent -> first converted audio received (includes one block).",
    "jitter_ms": "per session: mean |difference| of consecutive block latencies.",
    "rtf": "(last converted audio received - first frame sent) / input seconds.",
    "underruns": "times a simulated player (started jitter_buffer_ms after the first audio, re-buffering "
                 "jitter_buffer_ms after each stall) ran dry, summed over sessions.",
    "loop_lag_ms": "the load generator's own event-loop lag: high values mean the client was CPU-starved.",
    "server_blocks_concealed": "blocks the server answered with silence because they could not be computed in "
                               "time (from its complete stats): low latency with many of these is not success.",
    "machine": "CPU use during the point, % of one core: whole machine, server process, load generator, others.",
}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed (it is the `plot` extra)."""


def worst_sample_latency(row: dict[str, Any], algorithmic_latency_ms: float | None) -> dict[str, float] | None:
    """Percentiles of algorithmic + added latency (a constant shift of the added latency distribution)."""
    if algorithmic_latency_ms is None or row["added_latency_ms"].get("p50") is None:
        return None
    return {k: round(algorithmic_latency_ms + row["added_latency_ms"][k], 3) for k in ("p50", "p95", "p99", "max")}


def batching_ratios(rows_on: Sequence[dict], rows_off: Sequence[dict]) -> list[dict[str, Any]]:
    """Per concurrency, block latency with batching off divided by with batching on (>1: batching helps)."""
    off_by_n = {row["sessions"]: row for row in rows_off}
    ratios = []
    for row in rows_on:
        off = off_by_n.get(row["sessions"])
        if off is None:
            continue
        entry: dict[str, Any] = {"sessions": row["sessions"]}
        for metric in ("block_latency_ms", "added_latency_ms"):
            for q in ("p50", "p99"):
                on_ms, off_ms = row[metric][q], off[metric][q]
                ratio = round(off_ms / on_ms, 3) if on_ms and on_ms > 0 and off_ms is not None else None
                entry[f"{metric.removesuffix('_latency_ms')}_{q}_off_over_on"] = ratio
        entry["errors_on"], entry["errors_off"] = row["errors"], off["errors"]
        ratios.append(entry)
    return ratios


def build_report(rows: Sequence[dict], rows_off: Sequence[dict] | None, run_info: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"sweep": list(rows)}
    if rows_off is not None:
        report["sweep_batching_off"] = list(rows_off)
        report["batching_ratio"] = batching_ratios(rows, rows_off)
    report["run"] = run_info
    report["definitions"] = DEFINITIONS
    return report


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (  # header, width, decimals, how to read the cell from a row
    ("streams", 7, 1, lambda r: r["sessions"]),
    ("ok", 5, 1, lambda r: r["completed"]),
    ("blocks", 7, 1, lambda r: r["blocks"]),
    ("add p50", 8, 1, lambda r: r["added_latency_ms"]["p50"]),
    ("add p95", 8, 1, lambda r: r["added_latency_ms"]["p95"]),
    ("add p99", 8, 1, lambda r: r["added_latency_ms"]["p99"]),
    ("add max", 8, 1, lambda r: r["added_latency_ms"]["max"]),
    ("blk p50", 8, 1, lambda r: r["block_latency_ms"]["p50"]),
    ("blk p99", 8, 1, lambda r: r["block_latency_ms"]["p99"]),
    ("1st p50", 8, 1, lambda r: r["first_packet_ms"]["p50"]),
    ("1st p99", 8, 1, lambda r: r["first_packet_ms"]["p99"]),
    ("jit p99", 8, 1, lambda r: r["jitter_ms"]["p99"]),
    ("rtf p99", 8, 3, lambda r: r["rtf"]["p99"]),
    ("under", 6, 1, lambda r: r["underruns"]),
    ("concl", 6, 1, lambda r: r.get("server_blocks_concealed")),
    ("err", 4, 1, lambda r: r["errors"]),
    ("lag p99", 8, 1, lambda r: r.get("loop_lag_ms", {}).get("p99")),
    ("srv cpu", 8, 1, lambda r: r.get("machine", {}).get("server_cpu_pct")),
    ("cli cpu", 8, 1, lambda r: r.get("machine", {}).get("client_cpu_pct")),
    ("other", 6, 1, lambda r: r.get("machine", {}).get("others_cpu_pct")),
    ("load1", 6, 1, lambda r: r.get("machine", {}).get("loadavg_1m_after")),
)


def format_table(rows: Sequence[dict], title: str = "") -> str:
    header = " ".join(name.rjust(width) for name, width, _, _ in COLUMNS)
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for row in rows:
        lines.append(" ".join(_fmt(read(row), digits).rjust(width) for _, width, digits, read in COLUMNS))
    lines.append("latencies in ms: add = added latency (worst sample delay - algorithmic latency), "
                 "blk = block turnaround, 1st = first packet, jit = jitter; rtf = real-time factor;")
    lines.append("under = player underruns; concl = blocks the server concealed (silence: too late to compute); "
                 "lag = load generator's event-loop lag;")
    lines.append("cpu/other in % of one core (other = the rest of the machine); load1 = 1-min load average.")
    return "\n".join(lines)


def format_ratio_table(rows_on: Sequence[dict], rows_off: Sequence[dict]) -> str:
    lines = ["batching off vs on: block turnaround p50/p99 and added p99 (ms), ratio off/on (> 1: batching helps)",
             " ".join(h.rjust(w) for h, w in (("streams", 7), ("blk50 on", 9), ("off", 7), ("x", 6),
                                               ("blk99 on", 9), ("off", 7), ("x", 6), ("add99 on", 9),
                                               ("off", 7), ("x", 6), ("err on/off", 11)))]
    off_by_n = {row["sessions"]: row for row in rows_off}
    for ratio in batching_ratios(rows_on, rows_off):
        row = next(r for r in rows_on if r["sessions"] == ratio["sessions"])
        off = off_by_n[ratio["sessions"]]
        cells = [f"{ratio['sessions']:>7}"]
        for metric, q, short in (("block_latency_ms", "p50", "block"), ("block_latency_ms", "p99", "block"),
                                 ("added_latency_ms", "p99", "added")):
            cells += [_fmt(row[metric][q]).rjust(9), _fmt(off[metric][q]).rjust(7),
                      _fmt(ratio[f"{short}_{q}_off_over_on"], 2).rjust(6)]
        cells.append(f"{ratio['errors_on']}/{ratio['errors_off']}".rjust(11))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict], rows_off: Sequence[dict] | None, path: str | Path,
               budget_ms: float | None = None, title: str = "") -> None:
    """Block latency p50/p95/p99 (and first packet p50/p99) against concurrent streams, saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise PlotUnavailable("matplotlib is not installed: pip install 'fastvc[plot]' for the PNG") from error
    figure, all_axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (("added_latency_ms", "added latency [ms]", ("p50", "p95", "p99")),
              ("block_latency_ms", "block turnaround [ms]", ("p50", "p95", "p99")),
              ("first_packet_ms", "first packet [ms]", ("p50", "p99")))
    markers = {"p50": "o", "p95": "s", "p99": "^"}
    for series, style, label in ((rows, "-", "batching on"), (rows_off, "--", "batching off")):
        if not series:
            continue
        streams = [r["sessions"] for r in series]
        for axes, (metric, _, quantiles) in zip(all_axes, panels):
            for q in quantiles:
                axes.plot(streams, [r[metric][q] for r in series], style, marker=markers[q],
                          label=f"{q} {label}" if rows_off else q)
    if budget_ms is not None:
        all_axes[0].axhline(budget_ms, color="grey", linestyle=":", label=f"{budget_ms:g} ms budget")
    for axes, (_, name, _) in zip(all_axes, panels):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted({r["sessions"] for r in rows}), [str(n) for n in sorted({r["sessions"] for r in rows})])
        axes.set_xlabel("concurrent streams")
        axes.set_ylabel(name)
        axes.set_ylim(bottom=min(0.0, axes.get_ylim()[0]))
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title or "fastvc load sweep")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
