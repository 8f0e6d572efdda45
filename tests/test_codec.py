"""Codecs: PCM decode/encode, Opus round trips and concealment, stateful resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from fastvc.codec import (OPUS_DECODE_RATE_HZ, OPUS_LOOKAHEAD_48K, AudioFormatError, OpusDecoder, OpusEncoder,
                          PcmDecoder, PcmEncoder, StreamResampler, UnknownCodecError, make_decoder, make_encoder)


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


def test_resampling_in_random_pieces_equals_one_shot_without_clicks():
    rng = np.random.default_rng(7)
    sine = _sine(16000, 2.0, freq_hz=300.0)
    resampler = StreamResampler(16000, 22050)
    pieces, start = [], 0
    while start < sine.shape[0]:
        size = int(rng.integers(1, 700))
        pieces.append(resampler.process(sine[start: start + size]))
        start += size
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)
    one_shot = soxr.resample(sine, 16000, 22050, "HQ")
    assert streamed.shape == one_shot.shape
    np.testing.assert_allclose(streamed, one_shot, atol=1e-4)
    steady = streamed[200:-200]
    expected_step = 0.5 * 2 * np.pi * 300.0 / 22050
    assert np.abs(np.diff(steady)).max() <= 1.05 * expected_step  # no click at any piece boundary


def test_equal_rates_pass_samples_through():
    samples = _sine(16000, 0.1)
    resampler = StreamResampler(16000, 16000)
    np.testing.assert_array_equal(resampler.process(samples), samples)
    assert resampler.flush().shape == (0,)
