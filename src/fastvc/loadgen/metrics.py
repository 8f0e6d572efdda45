"""Metrics of one load-test session, computed from what the client saw (pure: no I/O, no clock).

    Timeline (send and receive events on one monotonic clock) --session_metrics()--> SessionMetrics
    [SessionMetrics, ...] --summarize_point()--> one row of the sweep report

Definitions (all times are client-side, seconds on `time.monotonic()`; reported in ms):

first packet
    time from the first audio frame sent to the first converted-audio message received. It includes the
    block buffering (one block of input must arrive before anything comes back) plus compute and transport.

block latency (the server's turnaround per block, as the client sees it)
    The server cuts the input into blocks of `block_s` and emits exactly `block_s` of converted audio per
    block (SOLA keeps one block in, one block out). Received audio is attributed to blocks by cumulative
    sample counts, in integers at each side's own rate:

    - input block b is complete when the frame that brings the cumulative input to (b+1)·block_in samples
      was handed to the socket (`block_in = round(block_s · input_rate)`);
    - output block b has arrived when the message that brings the cumulative output to
      (b+1)·block_out − lead_in − holdback samples was received (`block_out = round(block_s · output_rate)`).
      `lead_in` is output the server drops by design at the start so that output sample k lines up with
      input sample k (fastvc drops its SOLA/look-ahead lead-in: algorithmic latency − block, 80 ms by
      default, stated by its "ready" message). `holdback` is output the server may keep past a block
      boundary (a streaming resampler's buffer, codec framing); it defaults to half a block, which makes the
      attribution immune to any holdback below block_s/2 while never crediting block b+1's audio to block b.

    block latency(b) = arrival(b) − complete(b). Blocks whose input completed but whose audio never came
    are counted as `lost_blocks`. A final partial block (flushed at "end") is not a block.

added latency (the headline: how much longer than an ideal server's a listener must delay playout)
    The worst-case delay of one sample through an ideal (zero-compute, zero-transport) server is the
    server's algorithmic latency: one block of buffering plus the lead-in (`StreamGeometry.
    algorithmic_latency_s`, 260 ms with the defaults). Per sample, the client knows when it was captured
    (its frame's send time minus the time from the sample to the frame's end: a live source sends a frame
    when its last sample is captured) and when its conversion arrived (the receive time of the message
    holding output sample k, which converts input sample k since the server drops its lead-in). Output
    block window b = output samples [b·block − lead_in, (b+1)·block − lead_in) (window 0 starts at 0):

        added(b) = max over the window's samples of (arrival − capture) − algorithmic latency

    with the algorithmic latency read off the same timeline (block b's completion minus the capture time of
    sample b·block − lead_in), so client pacing slips do not count against the server. An ideal server
    scores 0 (window 0, shorter by the lead-in, scores −lead_in). Unlike block latency, this counts output
    the server holds back past a block boundary (a streaming resampler's buffer) at its true, later arrival.
    Windows not fully received are lost. Opus shifts content: a decoded Opus stream starts with its
    encoder's look-ahead (6.5 ms), so with Opus input the server's output carries the client encoder's
    look-ahead and with Opus output its own (`content_shift_s`, the sum); they are real delay a listener
    hears, so added latency includes them.

jitter
    mean absolute difference of consecutive block latencies (RFC 3550's D, unsmoothed).

real-time factor (RTF)
    wall time the stream took / audio time it carried, over the blocks whose audio came back:
    (arrival(last block) − first frame sent + one frame) / (blocks · block_s). Frame k leaves when its audio
    would have been fully captured live, so an ideal server paced in real time scores exactly 1; a server
    that falls behind drifts above 1; `--pace fast` runs measure throughput (below 1: faster than real time).

underruns
    A simulated player starts `jitter_buffer_s` after the first converted audio arrives and plays in real
    time. When the audio it needs has not arrived, it has run dry: one underrun; it then waits for the next
    message and buffers `jitter_buffer_s` again before resuming (the stall time is summed). Running out
    after the last message of the stream is the end, not an underrun. fastvc's first message carries one
    block minus the lead-in (100 ms by default) minus its output resampler's filter delay (about 11 ms when
    the output rate is not 22.05 kHz), and the next comes one block (180 ms) later, so even an ideal fastvc
    stream needs a buffer above the lead-in plus that delay (about 91 ms): the load generator's default is
    100 ms, which leaves about 9 ms for jitter before the one underrun at the start.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 95, 99)


@dataclass
class Timeline:
    """What one session's client saw. Parallel lists; totals are cumulative samples after each event.

    send_times_s / input_totals: one entry per audio frame handed to the socket.
    send_lag_s: how late each frame left against its absolute schedule (0 when `pace` is fast).
    recv_times_s / output_totals: one entry per converted-audio message received.
    """

    input_rate_hz: int
    output_rate_hz: int
    send_times_s: list[float] = field(default_factory=list)
    input_totals: list[int] = field(default_factory=list)
    send_lag_s: list[float] = field(default_factory=list)
    recv_times_s: list[float] = field(default_factory=list)
    output_totals: list[int] = field(default_factory=list)

    def record_send(self, time_s: float, samples: int, lag_s: float = 0.0) -> None:
        total = (self.input_totals[-1] if self.input_totals else 0) + samples
        self.send_times_s.append(time_s)
        self.input_totals.append(total)
        self.send_lag_s.append(lag_s)

    def record_receive(self, time_s: float, samples: int) -> None:
        total = (self.output_totals[-1] if self.output_totals else 0) + samples
        self.recv_times_s.append(time_s)
        self.output_totals.append(total)

    @property
    def input_s(self) -> float:
        return (self.input_totals[-1] if self.input_totals else 0) / self.input_rate_hz

    @property
    def output_s(self) -> float:
        return (self.output_totals[-1] if self.output_totals else 0) / self.output_rate_hz

    def chunk_durations_s(self) -> list[float]:
        """Seconds of audio carried by each received message."""
        previous = [0, *self.output_totals[:-1]]
        return [(total - before) / self.output_rate_hz for total, before in zip(self.output_totals, previous)]


def crossing_times(times_s: Sequence[float], totals: Sequence[int], thresholds: Sequence[int]) -> list[float]:
    """For each threshold (ascending), the first time at which the running total reached it.

    Stops at the first threshold never reached, so the result may be shorter than `thresholds`.
    """
    crossings: list[float] = []
    event = 0
    for threshold in thresholds:
        while event < len(totals) and totals[event] < threshold:
            event += 1
        if event == len(totals):
            break
        crossings.append(times_s[event])
    return crossings


def block_latencies_s(timeline: Timeline, block_s: float, holdback_s: float | None = None,
                      lead_in_s: float = 0.0) -> tuple[list[float], int]:
    """Latency of each complete input block (see the module docstring) and the number of blocks lost."""
    block_in = round(block_s * timeline.input_rate_hz)
    block_out = round(block_s * timeline.output_rate_hz)
    if block_in <= 0 or block_out <= 0:
        raise ValueError(f"block_s={block_s} is shorter than one sample")
    holdback_out = block_out // 2 if holdback_s is None else round(holdback_s * timeline.output_rate_hz)
    if not 0 <= holdback_out < block_out:
        raise ValueError(f"holdback must lie in [0, block_s), got {holdback_s}")
    lead_in_out = round(lead_in_s * timeline.output_rate_hz)
    if not 0 <= lead_in_out < block_out:
        raise ValueError(f"lead-in must lie in [0, block_s), got {lead_in_s}")
    n_blocks = (timeline.input_totals[-1] if timeline.input_totals else 0) // block_in
    complete = crossing_times(timeline.send_times_s, timeline.input_totals,
                              [(b + 1) * block_in for b in range(n_blocks)])
    arrived = crossing_times(timeline.recv_times_s, timeline.output_totals,
                             [max(1, (b + 1) * block_out - lead_in_out - holdback_out) for b in range(n_blocks)])
    latencies = [out - sent for sent, out in zip(complete, arrived)]
    return latencies, n_blocks - len(latencies)


def capture_time_s(timeline: Timeline, position: float) -> float:
    """When input sample `position` was captured: its frame's send time minus the rest of the frame.

    Fractional positions are allowed; negative ones extrapolate before the first frame.
    """
    frame = bisect.bisect_right(timeline.input_totals, position)
    if frame == len(timeline.input_totals):
        raise ValueError(f"input sample {position} was never sent")
    return timeline.send_times_s[frame] - (timeline.input_totals[frame] - position) / timeline.input_rate_hz


def added_latencies_s(timeline: Timeline, block_s: float, lead_in_s: float = 0.0,
                      content_shift_s: float = 0.0) -> tuple[list[float], int]:
    """Added latency of each output block window (module docstring) and the number of windows lost.

    content_shift_s: codec look-ahead before the content in the received stream (output sample k + shift
    converts input sample k).
    """
    block_in = round(block_s * timeline.input_rate_hz)
    block_out = round(block_s * timeline.output_rate_hz)
    lead_in_out = round(lead_in_s * timeline.output_rate_hz)
    shift_out = round(content_shift_s * timeline.output_rate_hz)
    n_blocks = (timeline.input_totals[-1] if timeline.input_totals else 0) // block_in
    completed = crossing_times(timeline.send_times_s, timeline.input_totals,
                               [(b + 1) * block_in for b in range(n_blocks)])
    out_to_in = timeline.input_rate_hz / timeline.output_rate_hz
    received = timeline.output_totals[-1] if timeline.output_totals else 0
    added: list[float] = []
    message = 0
    for b in range(n_blocks):
        start = shift_out + max(0, b * block_out - lead_in_out)  # in received-stream samples
        end = shift_out + (b + 1) * block_out - lead_in_out
        if received < end:
            break
        while timeline.output_totals[message] <= start:
            message += 1
        worst_s, piece = float("-inf"), message
        while True:  # each message overlapping the window; its oldest sample there is the worst
            piece_start = max(start, timeline.output_totals[piece - 1] if piece else 0)
            captured_s = capture_time_s(timeline, (piece_start - shift_out) * out_to_in)
            worst_s = max(worst_s, timeline.recv_times_s[piece] - captured_s)
            if timeline.output_totals[piece] >= end:
                break
            piece += 1
        algorithmic_s = completed[b] - capture_time_s(timeline, (b * block_out - lead_in_out) * out_to_in)
        added.append(worst_s - algorithmic_s)
    return added, n_blocks - len(added)


def real_time_factor(timeline: Timeline, block_s: float, latencies_s: Sequence[float]) -> float | None:
    """Wall time / audio time over the blocks that came back (module docstring); None if none did."""
    if not latencies_s:
        return None
    block_in = round(block_s * timeline.input_rate_hz)
    n_blocks = len(latencies_s)
    complete = crossing_times(timeline.send_times_s, timeline.input_totals, [n_blocks * block_in])[0]
    arrival_s = complete + latencies_s[-1]
    first_frame_s = timeline.input_totals[0] / timeline.input_rate_hz
    return (arrival_s - timeline.send_times_s[0] + first_frame_s) / (n_blocks * block_s)


def jitter_s(latencies_s: Sequence[float]) -> float | None:
    """Mean absolute difference of consecutive latencies; None with fewer than two."""
    if len(latencies_s) < 2:
        return None
    return sum(abs(b - a) for a, b in zip(latencies_s, latencies_s[1:])) / (len(latencies_s) - 1)


@dataclass
class PlayerResult:
    underruns: int
    stall_s: float


def simulate_player(arrival_times_s: Sequence[float], chunk_durations_s: Sequence[float],
                    jitter_buffer_s: float) -> PlayerResult:
    """Play the received chunks in real time behind a jitter buffer; count the times it runs dry."""
    underruns, stall_s = 0, 0.0
    available_s = 0.0  # media seconds received so far
    run_start_t: float | None = None  # wall time at which the current playback run starts
    run_start_pos = 0.0  # media position at run_start_t
    for arrival_t, duration in zip(arrival_times_s, chunk_durations_s):
        if run_start_t is None:
            run_start_t = arrival_t + jitter_buffer_s
        elif arrival_t > run_start_t:
            position = run_start_pos + (arrival_t - run_start_t)
            if position > available_s + 1e-9:
                dry_t = run_start_t + (available_s - run_start_pos)
                underruns += 1
                run_start_t, run_start_pos = arrival_t + jitter_buffer_s, available_s
                stall_s += run_start_t - dry_t
        available_s += duration
    return PlayerResult(underruns, stall_s)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """p50/p95/p99/mean/max/count of `values` (None entries when empty)."""
    values = [v for v in values if v is not None]
    if not values:
        return {**{f"p{q}": None for q in PERCENTILES}, "mean": None, "max": None, "count": 0}
    summary: dict[str, float | int | None] = {f"p{q}": round(percentile(values, q), digits) for q in PERCENTILES}
    summary.update(mean=round(sum(values) / len(values), digits), max=round(max(values), digits), count=len(values))
    return summary


@dataclass
class SessionMetrics:
    """One session's results. Latencies in ms; `error` is None for a clean session."""

    session_id: str
    error: str | None = None
    close_code: int | None = None
    ready_ms: float | None = None
    first_packet_ms: float | None = None
    block_latencies_ms: list[float] = field(default_factory=list)
    added_latencies_ms: list[float] = field(default_factory=list)
    lost_blocks: int = 0
    jitter_ms: float | None = None
    rtf: float | None = None
    underruns: int = 0
    stall_ms: float = 0.0
    send_lag_max_ms: float = 0.0
    input_s: float = 0.0
    output_s: float = 0.0
    block_ms: float | None = None
    algorithmic_latency_ms: float | None = None
    server_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def session_metrics(session_id: str, timeline: Timeline, block_s: float, *, jitter_buffer_s: float,
                    holdback_s: float | None = None, lead_in_s: float = 0.0,
                    content_shift_s: float = 0.0) -> SessionMetrics:
    """Everything `SessionMetrics` holds that the timeline determines (errors and server info are added by the client)."""
    latencies, lost = block_latencies_s(timeline, block_s, holdback_s, lead_in_s)
    added, _ = added_latencies_s(timeline, block_s, lead_in_s, content_shift_s)
    metrics = SessionMetrics(session_id, block_latencies_ms=[1000.0 * x for x in latencies],
                             added_latencies_ms=[1000.0 * x for x in added], lost_blocks=lost,
                             input_s=timeline.input_s, output_s=timeline.output_s, block_ms=1000.0 * block_s)
    if timeline.send_times_s and timeline.recv_times_s:
        metrics.first_packet_ms = 1000.0 * (timeline.recv_times_s[0] - timeline.send_times_s[0])
    metrics.rtf = real_time_factor(timeline, block_s, latencies)
    jitter = jitter_s(latencies)
    metrics.jitter_ms = None if jitter is None else 1000.0 * jitter
    player = simulate_player(timeline.recv_times_s, timeline.chunk_durations_s(), jitter_buffer_s)
    metrics.underruns, metrics.stall_ms = player.underruns, 1000.0 * player.stall_s
    metrics.send_lag_max_ms = 1000.0 * max(timeline.send_lag_s, default=0.0)
    return metrics


def summarize_point(sessions: int, results: Sequence[SessionMetrics]) -> dict[str, Any]:
    """One sweep row: block latencies pooled over all blocks of all sessions; the rest per session."""
    close_codes: dict[str, int] = {}
    for r in results:
        key = "none" if r.close_code is None else str(r.close_code)
        close_codes[key] = close_codes.get(key, 0) + 1
    error_kinds: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            kind = r.error.split(":", 1)[0]
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
    all_blocks = [x for r in results for x in r.block_latencies_ms]
    return {
        "sessions": sessions,
        "completed": sum(r.ok for r in results),
        "blocks": len(all_blocks),
        "block_latency_ms": distribution(all_blocks),
        "added_latency_ms": distribution([x for r in results for x in r.added_latencies_ms]),
        "first_packet_ms": distribution([r.first_packet_ms for r in results]),
        "jitter_ms": distribution([r.jitter_ms for r in results]),
        "rtf": distribution([r.rtf for r in results], digits=4),
        "underruns": sum(r.underruns for r in results),
        "sessions_with_underruns": sum(r.underruns > 0 for r in results),
        "stall_ms": round(sum(r.stall_ms for r in results), 3),
        "lost_blocks": sum(r.lost_blocks for r in results),
        "errors": sum(not r.ok for r in results),
        "error_kinds": error_kinds,
        "close_codes": close_codes,
        "server_blocks": sum(int(r.server_stats.get("blocks") or 0) for r in results),
        "server_blocks_concealed": sum(int(r.server_stats.get("blocks_concealed") or 0) for r in results),
        "server_blocks_failed": sum(int(r.server_stats.get("blocks_failed") or 0) for r in results),
        "send_lag_max_ms": round(max((r.send_lag_max_ms for r in results), default=0.0), 3),
        "ready_ms": distribution([r.ready_ms for r in results]),
    }
