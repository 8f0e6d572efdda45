"""G.711 against the standard's segment tables (ITU-T G.711 tables 1a/2a), and round trips a caller hears."""

from __future__ import annotations

import numpy as np
import pytest

from fastvc.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode

# Decoder outputs of the 16 intervals of each segment: first output and step, in the standard's own units
# (μ-law: 14-bit magnitudes 0..8159; A-law: 13-bit magnitudes 0..4095).
MULAW_SEGMENTS_14 = [(0, 2), (33, 4), (99, 8), (231, 16), (495, 32), (1023, 64), (2079, 128), (4191, 256)]
ALAW_SEGMENTS_13 = [(1, 2), (33, 2), (66, 4), (132, 8), (264, 16), (528, 32), (1056, 64), (2112, 128)]


def mulaw_standard_table() -> dict[int, int]:
    """code byte -> 16-bit value (14-bit output x 4). Positive codes carry the polarity bit 0x80."""
    table = {}
    for segment, (first, step) in enumerate(MULAW_SEGMENTS_14):
        for interval in range(16):
            value = 4 * (first + step * interval)
            position = 0x7F - (segment * 16 + interval)  # μ-law sends segment and interval bits inverted
            table[0x80 | position] = value
            table[position] = -value
    return table


def alaw_standard_table() -> dict[int, int]:
    """code byte -> 16-bit value (13-bit output x 8). Even bits inverted (XOR 0x55)."""
    table = {}
    for segment, (first, step) in enumerate(ALAW_SEGMENTS_13):
        for interval in range(16):
            value = 8 * (first + step * interval)
            position = segment * 16 + interval
            table[(0x80 | position) ^ 0x55] = value
            table[position ^ 0x55] = -value
    return table


def test_the_tables_cover_all_256_codes():
    assert sorted(mulaw_standard_table()) == list(range(256))
    assert sorted(alaw_standard_table()) == list(range(256))


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_every_code_decodes_to_its_defined_value(law):
    table = mulaw_standard_table() if law == "mulaw" else alaw_standard_table()
    decode = mulaw_decode if law == "mulaw" else alaw_decode
    codes = np.arange(256, dtype=np.uint8)
    expected = np.array([table[c] for c in range(256)], dtype=np.int16)
    np.testing.assert_array_equal(decode(codes), expected)
    np.testing.assert_array_equal(decode(codes.tobytes()), expected)


def test_well_known_codes():
    assert mulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert mulaw_encode(np.zeros(3, np.int16)).tolist() == [0xFF] * 3  # μ-law silence
    assert alaw_encode(np.zeros(3, np.int16)).tolist() == [0xD5] * 3  # A-law silence


def test_mulaw_encode_of_decode_is_the_identity():
    codes = np.arange(256, dtype=np.uint8)
    again = mulaw_encode(mulaw_decode(codes))
    negative_zero = codes == 0x7F  # decodes to 0 like 0xFF; 0 encodes as positive zero
    np.testing.assert_array_equal(again[~negative_zero], codes[~negative_zero])
    assert again[negative_zero].tolist() == [0xFF]


def test_alaw_encode_of_decode_is_the_identity():
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(alaw_encode(alaw_decode(codes)), codes)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_every_int16_lands_in_its_quantisation_interval(law):
    """Over all 65536 inputs: the output never moves backwards and stays within half a step of the input."""
    encode, decode = (mulaw_encode, mulaw_decode) if law == "mulaw" else (alaw_encode, alaw_decode)
    segments, scale = (MULAW_SEGMENTS_14, 4) if law == "mulaw" else (ALAW_SEGMENTS_13, 8)
    x = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    y = decode(encode(x)).astype(np.int32)
    assert np.all(np.diff(y) >= 0)
    largest = scale * (segments[-1][0] + 15 * segments[-1][1])
    inside = np.abs(x.astype(np.int32)) <= largest
    step = np.zeros(x.shape, np.int32)  # the step of the segment the output level belongs to
    for first, seg_step in segments:
        step = np.where(np.abs(y) >= scale * first, scale * seg_step, step)
    error = np.abs(y - x.astype(np.int32))
    assert np.all(error[inside] <= step[inside] // 2 + scale)  # half a step, plus the dropped low bits
    assert np.all(np.abs(y[~inside]) == largest)  # clipped to the largest level, sign kept


def test_speech_like_signal_survives_a_round_trip():
    t = np.arange(8000) / 8000.0
    pcm = (12000 * np.sin(2 * np.pi * 440 * t) * np.hanning(8000)).astype(np.int16)
    for encode, decode in ((mulaw_encode, mulaw_decode), (alaw_encode, alaw_decode)):
        back = decode(encode(pcm)).astype(np.float64)
        snr_db = 10 * np.log10(np.sum(pcm.astype(np.float64) ** 2) / np.sum((back - pcm) ** 2))
        assert snr_db > 30  # G.711 gives about 38 dB on a loud tone


def test_encode_refuses_float_input():
    with pytest.raises(TypeError):
        mulaw_encode(np.zeros(4, np.float32))
