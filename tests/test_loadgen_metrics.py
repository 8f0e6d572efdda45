"""Load-test metrics on synthetic timelines whose answers are known by construction."""

from __future__ import annotations

import pytest

from fastvc.loadgen.audio import Clip, encode_frames, opus_packet_samples, payload_samples
from fastvc.loadgen.metrics import (
    Timeline,
    added_latencies_s,
    block_latencies_s,
    capture_time_s,
    crossing_times,
    jitter_s,
    percentile,
    session_metrics,
    simulate_player,
    summarize_point,
)
from fastvc.loadgen.report import batching_ratios, format_ratio_table, format_table, worst_sample_latency
from fastvc.loadgen.search import find_max_passing

RATE_IN, RATE_OUT = 16000, 48000
FRAME_S, BLOCK_S = 0.02, 0.18
FRAMES_PER_BLOCK = 9


def paced_timeline(n_blocks: int, latencies_s: list[float], *, pieces: int = 1, holdback_out: int = 0,
                   rate_out: int = RATE_OUT) -> Timeline:
    """Frames every 20 ms from t=0; block b's audio arrives latencies_s[b] after its last frame, in `pieces`."""
    timeline = Timeline(RATE_IN, rate_out)
    for k in range(n_blocks * FRAMES_PER_BLOCK):
        timeline.record_send(k * FRAME_S, round(FRAME_S * RATE_IN))
    block_out = round(BLOCK_S * rate_out)
    for b, latency in enumerate(latencies_s):
        completed_at = (b + 1) * FRAMES_PER_BLOCK * FRAME_S - FRAME_S  # send time of the block's last frame
        sizes = [block_out // pieces] * pieces
        sizes[-1] += block_out - sum(sizes)
        if b == 0:
            sizes[0] -= holdback_out  # the server keeps `holdback_out` samples back, for ever after
        for i, size in enumerate(sizes):
            timeline.record_receive(completed_at + latency + 1e-4 * i, size)
    return timeline


def test_crossing_times_finds_the_first_event_reaching_each_threshold():
    times, totals = [1.0, 2.0, 3.0, 4.0], [100, 200, 300, 400]
    assert crossing_times(times, totals, [50, 100, 101, 400]) == [1.0, 1.0, 2.0, 4.0]
    assert crossing_times(times, totals, [250, 401, 500]) == [3.0]  # stops at the first unreached


def test_block_latency_is_the_known_delay_of_each_block():
    latencies = [0.005, 0.012, 0.030, 0.007]
    measured, lost = block_latencies_s(paced_timeline(4, latencies), BLOCK_S)
    assert measured == pytest.approx(latencies)
    assert lost == 0


def test_block_audio_split_over_many_messages_counts_when_it_has_all_arrived():
    measured, _ = block_latencies_s(paced_timeline(3, [0.01, 0.01, 0.01], pieces=9), BLOCK_S, holdback_s=0.0)
    assert measured == pytest.approx([0.01 + 8e-4] * 3)  # the 9th piece arrives 0.8 ms after the first


def test_a_server_holding_back_a_few_ms_of_output_does_not_shift_blocks():
    timeline = paced_timeline(4, [0.004] * 4, holdback_out=round(0.007 * RATE_OUT))
    measured, lost = block_latencies_s(timeline, BLOCK_S)  # default holdback tolerance: half a block
    assert measured == pytest.approx([0.004] * 4) and lost == 0
    strict, _ = block_latencies_s(timeline, BLOCK_S, holdback_s=0.0)
    assert strict[0] == pytest.approx(0.004 + BLOCK_S)  # without tolerance, block 0 waits for block 1's audio


def test_a_server_dropping_its_lead_in_and_holding_back_resampler_output_is_attributed_per_block():
    # fastvc: the first block emits block - 80 ms (lead-in dropped); a streaming resampler keeps 30 ms more.
    lead_in_out, holdback_out = round(0.08 * RATE_OUT), round(0.03 * RATE_OUT)
    timeline = paced_timeline(4, [0.004, 0.005, 0.006, 0.007], holdback_out=lead_in_out + holdback_out)
    measured, lost = block_latencies_s(timeline, BLOCK_S, lead_in_s=0.08)
    assert measured == pytest.approx([0.004, 0.005, 0.006, 0.007]) and lost == 0
    unaware, _ = block_latencies_s(timeline, BLOCK_S)  # ignoring the lead-in: 110 ms short > half a block
    assert unaware[0] == pytest.approx(0.005 + BLOCK_S)


def test_blocks_whose_audio_never_came_are_lost_and_a_partial_block_is_not_a_block():
    timeline = paced_timeline(5, [0.01, 0.01, 0.01])
    timeline.record_send(5 * BLOCK_S, 320)  # 20 ms more input: not a whole block
    measured, lost = block_latencies_s(timeline, BLOCK_S)
    assert len(measured) == 3 and lost == 2


def test_pcm_at_a_different_output_rate_is_attributed_by_duration():
    measured, _ = block_latencies_s(paced_timeline(3, [0.02, 0.03, 0.04], rate_out=22050), BLOCK_S)
    assert measured == pytest.approx([0.02, 0.03, 0.04])


def test_an_ideal_paced_server_runs_at_real_time_factor_one_and_a_fast_one_below():
    ideal = session_metrics("s", paced_timeline(5, [0.0] * 5), BLOCK_S, jitter_buffer_s=0.06)
    assert ideal.rtf == pytest.approx(1.0)
    fast = Timeline(RATE_IN, RATE_OUT)  # all 0.36 s of input sent at once, both blocks back 90 ms later
    for _ in range(18):
        fast.record_send(0.0, 320)
    fast.record_receive(0.09, 2 * round(BLOCK_S * RATE_OUT))
    assert session_metrics("f", fast, BLOCK_S, jitter_buffer_s=0.06).rtf == pytest.approx((0.09 + 0.02) / 0.36)


def test_jitter_is_the_mean_absolute_change_of_latency():
    assert jitter_s([0.010, 0.020, 0.010, 0.010]) == pytest.approx(0.02 / 3)
    assert jitter_s([0.01]) is None


def test_percentiles_interpolate_like_numpy():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_player_fed_on_time_never_runs_dry():
    arrivals = [0.18 * b for b in range(10)]
    assert simulate_player(arrivals, [0.18] * 10, jitter_buffer_s=0.0).underruns == 0


def test_player_runs_dry_when_a_block_comes_late_and_rebuffers():
    # Blocks of 180 ms every 180 ms; block 3 arrives 100 ms late. Player starts at 0.06 (60 ms buffer), so it
    # needs block 3 at 0.06 + 0.54 = 0.60 but gets it at 0.64: one underrun, dry from 0.60, resumes at 0.70.
    arrivals = [0.0, 0.18, 0.36, 0.64, 0.72]
    result = simulate_player(arrivals, [0.18] * 5, jitter_buffer_s=0.06)
    assert result.underruns == 1
    assert result.stall_s == pytest.approx(0.10)


def test_player_does_not_count_the_end_of_the_stream():
    assert simulate_player([0.0, 0.18], [0.18, 0.18], jitter_buffer_s=0.0).underruns == 0


def test_session_metrics_of_a_paced_session():
    timeline = paced_timeline(4, [0.010, 0.010, 0.020, 0.010])
    metrics = session_metrics("s", timeline, BLOCK_S, jitter_buffer_s=0.06)
    assert metrics.first_packet_ms == pytest.approx(160 + 10)  # first frame at 0, block 0 done at 160 ms
    assert metrics.block_latencies_ms == pytest.approx([10, 10, 20, 10])
    assert metrics.jitter_ms == pytest.approx(20 / 3)
    assert metrics.rtf == pytest.approx((0.70 + 0.010 + 0.02) / 0.72)  # 4 blocks' audio back at 0.71 s
    assert metrics.underruns == 0 and metrics.ok


def test_sweep_row_pools_blocks_and_counts_failures():
    good = session_metrics("a", paced_timeline(2, [0.01, 0.02]), BLOCK_S, jitter_buffer_s=0.06)
    good.close_code, good.server_stats = 1000, {"blocks": 3, "blocks_concealed": 2}
    bad = session_metrics("b", paced_timeline(2, [0.03]), BLOCK_S, jitter_buffer_s=0.06)
    bad.error, bad.close_code = "closed: code 1011", 1011
    row = summarize_point(2, [good, bad])
    assert row["blocks"] == 3 and row["lost_blocks"] == 1
    assert row["block_latency_ms"]["p50"] == pytest.approx(20.0)
    assert row["errors"] == 1 and row["completed"] == 1
    assert row["close_codes"] == {"1000": 1, "1011": 1} and row["error_kinds"] == {"closed": 1}
    assert row["server_blocks_concealed"] == 2 and row["server_blocks"] == 3
    assert "   2 " in format_table([row])


def test_worst_sample_latency_adds_the_algorithmic_latency_and_ratios_compare_batching():
    on_ms = {"p50": 10.0, "p95": 20.0, "p99": 25.0, "max": 30.0}
    off_ms = {"p50": 30.0, "p95": 60.0, "p99": 100.0, "max": 120.0}
    on = {"sessions": 8, "errors": 0, "block_latency_ms": on_ms, "added_latency_ms": on_ms}
    off = {"sessions": 8, "errors": 1, "block_latency_ms": off_ms, "added_latency_ms": off_ms}
    assert worst_sample_latency(on, 260.0) == {"p50": 270.0, "p95": 280.0, "p99": 285.0, "max": 290.0}
    ratio = batching_ratios([on], [off])[0]
    assert ratio["block_p99_off_over_on"] == pytest.approx(4.0) and ratio["added_p50_off_over_on"] == 3.0
    table = format_ratio_table([on], [off])
    assert "4.00" in table and "0/1" in table


@pytest.mark.parametrize("toc_and_rest, samples_48k", [
    (bytes([(1 << 3) | 0]), 960),  # SILK 20 ms, one frame
    (bytes([(16 << 3) | 0]), 120),  # CELT 2.5 ms
    (bytes([(31 << 3) | 1]), 1920),  # CELT 20 ms, two frames
    (bytes([(13 << 3) | 3, 3]), 2880),  # hybrid 20 ms, code 3 with three frames
])
def test_opus_packet_duration_is_read_from_its_toc(toc_and_rest, samples_48k):
    assert opus_packet_samples(toc_and_rest, 48000) == samples_48k
    assert opus_packet_samples(toc_and_rest, 16000) == samples_48k // 3


def test_encoded_frames_loop_the_clip_and_carry_one_frame_each():
    import numpy as np

    clip = Clip(np.arange(1000, dtype=np.int16), 16000)
    pcm = encode_frames(clip, duration_s=0.1, frame_ms=20, encoding="PCM")
    assert len(pcm.payloads) == 5 and all(payload_samples(p, "PCM", 16000) == 320 for p in pcm.payloads)
    assert np.frombuffer(pcm.payloads[3], "<i2")[40] == (3 * 320 + 40) % 1000  # looped
    opus = encode_frames(clip, duration_s=0.1, frame_ms=20, encoding="OPUS")
    assert len(opus.payloads) == 5 and all(opus_packet_samples(p, 16000) == 320 for p in opus.payloads)


def lead_in_server_timeline(latencies_s: list[float], lead_in_s: float, held_s: float) -> Timeline:
    """fastvc-like: one message per block, the lead-in dropped, `held_s` of output held back to the next block."""
    return paced_timeline(len(latencies_s), latencies_s, holdback_out=round((lead_in_s + held_s) * RATE_OUT))


def test_added_latency_of_a_server_that_holds_nothing_back_is_its_block_latency():
    latencies = [0.004, 0.009, 0.006, 0.012]
    added, lost = added_latencies_s(lead_in_server_timeline(latencies, 0.08, 0.0), BLOCK_S, lead_in_s=0.08)
    assert added[1:] == pytest.approx(latencies[1:]) and lost == 0
    assert added[0] == pytest.approx(latencies[0] - 0.08)  # window 0 is shorter by the lead-in


def test_added_latency_counts_output_held_back_to_the_next_block_at_its_late_arrival():
    # 30 ms of each window arrive with the next block: those samples are 30 ms + that block's latency late
    latencies = [0.004, 0.005, 0.006, 0.007, 0.008]
    added, lost = added_latencies_s(lead_in_server_timeline(latencies, 0.08, 0.03), BLOCK_S, lead_in_s=0.08)
    assert added == pytest.approx([0.03 + x for x in latencies[1:]])  # the last window's tail never came
    assert lost == 1
    blocks, _ = block_latencies_s(lead_in_server_timeline(latencies, 0.08, 0.03), BLOCK_S, lead_in_s=0.08)
    assert blocks == pytest.approx(latencies)  # block latency tolerates the hold-back by design


def test_capture_time_is_the_frame_send_time_minus_the_rest_of_the_frame():
    timeline = paced_timeline(1, [])
    assert capture_time_s(timeline, 0) == pytest.approx(-0.02)
    assert capture_time_s(timeline, 330) == pytest.approx(0.02 - 310 / RATE_IN)
    assert capture_time_s(timeline, -160) == pytest.approx(-0.03)  # extrapolated before the stream


def test_codec_look_ahead_before_the_content_is_not_taken_for_content():
    # Opus both ways: the received stream starts with 13 ms of look-ahead, so each message ends 13 ms of
    # content later in the stream than the server's block; the content of window b is exactly message b.
    latencies = [0.004, 0.006, 0.008, 0.010]
    timeline = paced_timeline(4, latencies, holdback_out=round((0.08 - 0.013) * RATE_OUT))
    shifted, lost = added_latencies_s(timeline, BLOCK_S, lead_in_s=0.08, content_shift_s=0.013)
    assert shifted[1:] == pytest.approx(latencies[1:]) and lost == 0
    naive, _ = added_latencies_s(timeline, BLOCK_S, lead_in_s=0.08)  # look-ahead taken for content
    assert naive[1:] == pytest.approx([x - 0.013 for x in latencies[1:]])


@pytest.mark.parametrize("capacity, expected", [(100, 96), (8, 8), (0, 0), (5000, 1024)])
def test_find_max_doubles_then_bisects_to_the_largest_passing_load(capacity, expected):
    tried: list[int] = []

    def evaluate(n: int) -> bool:
        tried.append(n)
        return n <= capacity

    assert find_max_passing(evaluate, start=16, limit=1024, tolerance=0.1) == expected
    assert len(tried) <= 12
