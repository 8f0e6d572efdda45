"""Codecs: PCM decode/encode, Opus round trips and concealment, stateful resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from fastvc.codec import (OPUS_DECODE_RATE_HZ, OPUS_LOOKAHEAD_48K, AudioFormatError, OpusDecoder, OpusEncoder,
                          PcmDecoder, PcmEncoder, StreamResampler, UnknownCodecError, aligned_resamplers, make_decoder,
                          make_encoder)


def _sine(rate_hz: int, seconds: float, freq_hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize("bit_depth,dtype", [(16, "<i2"), (32, "<i4")])
def test_pcm_decodes_signed_little_endian(bit_depth, dtype):
    full_scale = 2 ** (bit_depth - 1)
    raw = np.array([0, 1, -1, full_scale - 1, -full_scale], dtype=dtype)
    decoded = PcmDecoder(bit_depth, 16000).decode(raw.tobytes())
    np.testing.assert_allclose(decoded, raw.astype(np.float64) / full_scale, atol=1e-7)


def test_pcm24_decodes_three_byte_samples():
    values = np.array([0, 1, -1, 2**23 - 1, -(2**23), 123456], dtype=np.int32)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
    np.testing.assert_allclose(PcmDecoder(24, 16000).decode(raw), values / 2**23, atol=1e-7)


def test_odd_byte_count_for_pcm16_is_refused():
    with pytest.raises(AudioFormatError, match="whole number"):
        PcmDecoder(16, 16000).decode(b"\x00\x01\x02")


def test_pcm_output_clips_instead_of_wrapping():
    loud = np.array([1.5, -1.5, 0.99999, -1.0, 0.0], np.float32)
    encoded = np.frombuffer(PcmEncoder(16000).encode(loud)[0], "<i2")
    assert encoded.tolist() == [32767, -32768, 32767, -32768, 0]


def test_unknown_codec_name_is_refused():
    with pytest.raises(UnknownCodecError):
        make_decoder("MP3", sample_rate_hz=16000)
    with pytest.raises(UnknownCodecError):
        make_encoder("FLAC", sample_rate_hz=16000)


@pytest.mark.parametrize("rate_hz,frame_ms", [(16000, 20), (48000, 10), (8000, 60), (24000, 40)])
def test_opus_round_trip_keeps_the_signal_and_its_length(rate_hz, frame_ms):
    source = _sine(rate_hz, 1.0)
    encoder = OpusEncoder(rate_hz, frame_ms)
    packets = encoder.encode(source[:7777]) + encoder.encode(source[7777:]) + encoder.flush()
    decoder = OpusDecoder(frame_ms)
    decoded = np.concatenate([decoder.decode(p) for p in packets])[OPUS_LOOKAHEAD_48K:]
    decoded = soxr.resample(decoded, OPUS_DECODE_RATE_HZ, rate_hz, "HQ")
    assert 0 <= decoded.shape[0] - source.shape[0] <= rate_hz * frame_ms // 1000
    n = source.shape[0] - rate_hz // 10
    assert np.corrcoef(source[: n], decoded[: n])[0, 1] > 0.98
    assert decoder.concealed_packets == 0


def test_corrupt_opus_packet_is_concealed_and_counted():
    encoder = OpusEncoder(16000, 20)
    packets = encoder.encode(_sine(16000, 0.2)) + encoder.flush()
    decoder = OpusDecoder(20)
    lengths = [decoder.decode(p).shape[0] for p in packets[:3]]
    concealed = decoder.decode(b"\xff\xfe\xfd not opus")
    assert concealed.shape[0] == 960 and not concealed.any()
    assert decoder.concealed_packets == 1
    assert decoder.decode(packets[3]).shape[0] == lengths[0]  # the stream goes on


@pytest.mark.parametrize("in_rate_hz,out_rate_hz", [(16000, 22050), (22050, 16000), (48000, 22050)])
def test_resampling_in_random_pieces_equals_one_shot_without_clicks(in_rate_hz, out_rate_hz):
    rng = np.random.default_rng(7)
    sine = _sine(in_rate_hz, 2.0, freq_hz=300.0)
    resampler = StreamResampler(in_rate_hz, out_rate_hz)
    pieces, start = [], 0
    while start < sine.shape[0]:
        size = int(rng.integers(1, 700))
        pieces.append(resampler.process(sine[start: start + size]))
        start += size
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)
    at_once = StreamResampler(in_rate_hz, out_rate_hz)
    one_shot = np.concatenate([at_once.process(sine), at_once.flush()])
    assert streamed.shape == one_shot.shape == (round(sine.shape[0] * out_rate_hz / in_rate_hz),)
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)
    steady = streamed[200:-200]
    expected_step = 0.5 * 2 * np.pi * 300.0 / out_rate_hz
    assert np.abs(np.diff(steady)).max() <= 1.05 * expected_step  # no click at any piece boundary


def _tone_lag_samples(output: np.ndarray, rate_hz: int, tone_hz: float) -> tuple[float, float]:
    """(lag in samples, amplitude) of a sine `output` against sin(2π·tone·t), fitted on its middle half."""
    times_s = np.arange(output.shape[0]) / rate_hz
    middle = slice(output.shape[0] // 4, 3 * output.shape[0] // 4)
    basis = np.stack([np.sin(2 * np.pi * tone_hz * times_s[middle]), np.cos(2 * np.pi * tone_hz * times_s[middle])])
    sine_part, cosine_part = np.linalg.lstsq(basis.T, output[middle].astype(np.float64), rcond=None)[0]
    return -np.arctan2(cosine_part, sine_part) / (2 * np.pi * tone_hz) * rate_hz, np.hypot(sine_part, cosine_part)


@pytest.mark.parametrize("in_rate_hz,out_rate_hz", [(16000, 22050), (22050, 16000), (48000, 22050),
                                                    (22050, 48000), (8000, 22050), (22050, 8000)])
def test_resampled_output_lines_up_with_the_input(in_rate_hz, out_rate_hz):
    resampler = StreamResampler(in_rate_hz, out_rate_hz)
    source = _sine(in_rate_hz, 1.0, freq_hz=200.0)
    output = np.concatenate([resampler.process(source[:7777]), resampler.process(source[7777:]), resampler.flush()])
    lag_samples, amplitude = _tone_lag_samples(output, out_rate_hz, 200.0)
    assert abs(lag_samples) <= 0.51  # output sample k is input sample k, within half a sample
    assert amplitude == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("rates_hz", [(16000, 22050, 16000), (8000, 22050, 16000), (48000, 22050, 16000),
                                      (16000, 22050, 48000), (8000, 22050, 8000)])
def test_a_session_s_input_and_output_resamplers_line_up_together(rates_hz):
    """Client audio through both resamplers comes back within a tenth of a sample of where it went in."""
    input_rate_hz, model_rate_hz, output_rate_hz = rates_hz
    to_model, to_client = aligned_resamplers(input_rate_hz, model_rate_hz, output_rate_hz)
    source = _sine(input_rate_hz, 1.0, freq_hz=200.0)
    model = np.concatenate([to_model.process(source[:5000]), to_model.process(source[5000:]), to_model.flush()])
    output = np.concatenate([to_client.process(model), to_client.flush()])
    assert output.shape[0] == output_rate_hz
    lag_samples, _ = _tone_lag_samples(output, output_rate_hz, 200.0)
    assert abs(lag_samples) <= 0.1


@pytest.mark.parametrize("in_rate_hz,out_rate_hz,max_holdback_ms", [
    (16000, 22050, 16), (22050, 16000, 12), (48000, 22050, 14), (22050, 48000, 12), (8000, 22050, 31)])
def test_a_live_stream_is_held_back_by_the_filter_delay_only(in_rate_hz, out_rate_hz, max_holdback_ms):
    """Fed 20 ms at a time, the output trails the input by a constant filter delay, never by an FFT block."""
    resampler = StreamResampler(in_rate_hz, out_rate_hz)
    piece = in_rate_hz // 50
    source = np.random.default_rng(3).standard_normal(in_rate_hz * 2).astype(np.float32) * 0.1
    output_samples, holdbacks_ms = 0, []
    for start in range(0, source.shape[0], piece):
        output_samples += resampler.process(source[start: start + piece]).shape[0]
        holdbacks_ms.append(1000 * ((start + piece) / in_rate_hz - output_samples / out_rate_hz))
    assert max(holdbacks_ms) <= max_holdback_ms
    assert max(holdbacks_ms[5:]) - min(holdbacks_ms[5:]) < 0.1  # the same delay whatever the position


def test_equal_rates_pass_samples_through():
    samples = _sine(16000, 0.1)
    resampler = StreamResampler(16000, 16000)
    np.testing.assert_array_equal(resampler.process(samples), samples)
    assert resampler.flush().shape == (0,)
