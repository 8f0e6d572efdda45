"""The per-stream block algorithm: geometry arithmetic, 16 kHz window, SOLA stitching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvc.engine.base import BlockRequest
from fastvc.engine.passthrough import PassthroughEngine
from fastvc.stream import BlockStream, StreamGeometry, StreamSettings, loudest_frame_db, sola_scores


def test_geometry_matches_the_worked_example():
    g = StreamGeometry.from_settings(StreamSettings(0.18, 0.04, 2.5, 0.5, 0.02), 22050, 256)
    assert (g.block, g.crossfade, g.sola_buffer, g.sola_search, g.extra, g.extra_right) == (3969, 882, 882, 441, 55125, 441)
    assert (g.window, g.window_16k, g.block_16k, g.chunk_16k) == (60858, 44160, 2880, 3200)
    assert (g.skip_head_units, g.skip_tail_units, g.return_units, g.dropped_frames, g.target_frames) == (125, 1, 12, 100, 65)
    assert g.content_frames == 137 and g.content_frames_kept == 37
    assert g.vocoder_slice(16640) == slice(10907, 16199)


def test_extra_time_is_truncated_not_rounded():
    g = StreamGeometry.from_settings(StreamSettings(0.18, 0.04, 0.7, 0.5, 0.02), 22050, 256)
    assert g.dropped_frames == 9  # (0.7 - 0.5) * 50 = 9.999999999999998


def test_half_units_round_to_even():
    g = StreamGeometry.from_settings(StreamSettings(0.25, 0.15, 2.5, 0.5, 0.02), 22050, 256)
    assert g.block == 12 * 441 and g.crossfade == 8 * 441


@pytest.mark.parametrize("bad", [dict(extra_time_right=0.0), dict(extra_time=0.0), dict(block_time=0.001)])
def test_settings_that_break_upstream_arithmetic_are_refused(bad):
    values = dict(block_time=0.18, crossfade_time=0.04, extra_time_ce=2.5, extra_time=0.5, extra_time_right=0.02)
    values.update(bad)
    with pytest.raises(ValueError):
        StreamGeometry.from_settings(StreamSettings(*values.values()), 22050, 256)


def test_stream_fixture_16k_chunks_and_sola(oracle_dir):
    """Steps B3 and B10 against the official real-time path (the model output is taken from the fixture)."""
    fixture = torch.load(oracle_dir / "stream-visible.pt", weights_only=True)
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    settings = StreamSettings(inputs["block_time"], inputs["crossfade_time"], inputs["extra_time_ce"],
                              inputs["extra_time"], inputs["extra_time_right"])
    g = StreamGeometry.from_settings(settings, fixture["config"]["mel"]["sr"], fixture["config"]["mel"]["hop_length"])
    stream = BlockStream(g)
    source = inputs["source"].numpy()
    for b in range(source.shape[0] // g.block):
        block_input = stream.push_block(source[b * g.block : (b + 1) * g.block])
        np.testing.assert_allclose(block_input.chunk_16k, outputs["chunk16k"][b].numpy(), atol=1e-6)
        stitched = stream.stitch(outputs["wav_slice"][b].numpy())
        assert stitched.offset == int(outputs["sola_offset"][b])
        np.testing.assert_allclose(stitched.out, outputs["out"][b].numpy(), atol=1e-5)


def test_sola_prefers_the_lowest_offset_on_ties():
    scores = sola_scores(np.ones(20, np.float32), np.zeros(8, np.float32), 12)
    assert scores.shape == (13,) and int(np.argmax(scores)) == 0


def _passthrough_stream(signal: np.ndarray, settings: StreamSettings) -> tuple[np.ndarray, StreamGeometry]:
    engine = PassthroughEngine(settings)
    g = engine.geometry
    stream = BlockStream(g)
    out = []
    for b in range(signal.shape[0] // g.block):
        block_input = stream.push_block(signal[b * g.block : (b + 1) * g.block])
        request = BlockRequest("s", b, block_input.window_16k, block_input.recent)
        out.append(stream.stitch(engine.run_batch([request])[0].audio).out)
    return np.concatenate(out), g


def test_sine_cut_into_blocks_is_stitched_without_discontinuity():
    rate = 22050
    t = np.arange(rate * 3) / rate
    sine = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    out, g = _passthrough_stream(sine, StreamSettings())
    steady = out[g.window:]  # after the window has filled
    original_jump = np.abs(np.diff(sine)).max()
    assert np.abs(np.diff(steady)).max() <= 1.5 * original_jump


def test_passthrough_emits_the_input_delayed_by_the_lead_in():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(22050 * 2).astype(np.float32) * 0.1
    out, g = _passthrough_stream(signal, StreamSettings())
    delay = g.lead_in_samples
    n = out.shape[0] - delay
    np.testing.assert_allclose(out[delay:], signal[:n], atol=1e-6)


def test_reused_b3_resampler_matches_a_one_shot_resample_every_block():
    import soxr

    g = PassthroughEngine(StreamSettings()).geometry
    stream = BlockStream(g)
    rng = np.random.default_rng(1)
    for _ in range(4):
        stream.push_block(rng.standard_normal(g.block).astype(np.float32) * 0.1)
        segment = stream.window[-(g.block + 2 * g.zc) :]
        expected = soxr.resample(segment, g.model_rate_hz, 16000, "HQ")[320:]
        np.testing.assert_array_equal(stream.window_16k[-g.chunk_16k :], expected)


def test_a_stream_without_content_window_gives_the_same_model_rate_input():
    g = PassthroughEngine(StreamSettings()).geometry
    full, lean = BlockStream(g), BlockStream(g, content_window=False)
    block = np.linspace(-0.5, 0.5, g.block, dtype=np.float32)
    a, b = full.push_block(block), lean.push_block(block)
    np.testing.assert_array_equal(a.recent, b.recent)
    assert b.window_16k.shape == (0,) and a.window_16k.shape == (g.window_16k,)


def _gated_stream(signal, model, threshold_db):
    """Stream `signal` through `model(recent) -> slice`, skipping it for blocks the silence gate calls silent."""
    g = PassthroughEngine(StreamSettings()).geometry
    stream = BlockStream(g, content_window=False)
    out, gated = [], 0
    for b in range(signal.shape[0] // g.block):
        block_input = stream.push_block(signal[b * g.block : (b + 1) * g.block])
        if threshold_db is not None and loudest_frame_db(block_input.recent, g.zc) < threshold_db:
            model_slice, gated = np.zeros(g.return_samples, np.float32), gated + 1
        else:
            model_slice = model(block_input.recent[: g.return_samples])
        out.append(stream.stitch(model_slice).out)
    return np.concatenate(out), gated


def _silence_then_tone(rate=22050):
    t = np.arange(rate * 4) / rate
    tone = (0.5 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    gate = ((t >= 1.0) & (t < 2.0)) | (t >= 2.9)  # onsets at zero crossings, not on block boundaries
    return np.where(gate, tone, np.float32(0.0)).astype(np.float32)


def test_the_silence_gate_never_cuts_speech_the_model_would_have_converted():
    signal = _silence_then_tone()
    passthrough = lambda recent: recent.copy()  # noqa: E731
    ungated, _ = _gated_stream(signal, passthrough, None)
    gated_out, gated = _gated_stream(signal, passthrough, -60.0)
    assert gated >= 5
    np.testing.assert_array_equal(gated_out, ungated)


def test_the_silence_gate_joins_a_model_that_hums_without_a_click():
    """A model whose output is never silent (a 300 Hz hum): the gated blocks are silence, and SOLA's fade
    joins silence and hum with no jump larger than the hum's own sample-to-sample steps."""
    signal = _silence_then_tone()
    n = PassthroughEngine(StreamSettings()).geometry.return_samples
    hum = (0.3 * np.sin(2 * np.pi * 300.0 * np.arange(n) / 22050 + 1.0)).astype(np.float32)
    out, gated = _gated_stream(signal, lambda recent: hum + recent, -60.0)
    assert gated >= 5
    hum_step = np.abs(np.diff(hum)).max() + np.abs(np.diff(signal)).max()
    assert np.abs(np.diff(out)).max() <= 1.5 * hum_step
    assert np.abs(out[: n // 2]).max() == 0.0  # the silent start stays silent: the model was skipped
