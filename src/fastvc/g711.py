"""G.711 μ-law and A-law (ITU-T G.711), vectorised with numpy lookup tables.

    int16 PCM (n,) --mulaw_encode / alaw_encode--> uint8 codes (n,)
    uint8 codes (n,) --mulaw_decode / alaw_decode--> int16 PCM (n,)
    G711Decoder / G711Encoder: the codecs "MULAW" and "ALAW" (float32 samples <-> code bytes)

Both laws split the magnitude into 8 segments of 16 steps each; the step doubles from one segment to the next.
Linear values are 16-bit: μ-law works on 14-bit magnitudes (16-bit / 4), A-law on 13-bit (16-bit / 8), so the
decoded values are the standard's decoder outputs times 4 (μ-law, largest 32124) or times 8 (A-law, 32256).

Code bytes are as sent on the wire, polarity bit 0x80 set for positive values: μ-law inverts the other bits
(silence is 0xFF), A-law inverts the even bits (XOR 0x55, silence is 0xD5). Encoding runs through a
65536-entry table indexed by the int16 sample's bit pattern, decoding through a 256-entry table: both pure,
no state, safe to share between sessions.

One code has no inverse: μ-law "negative zero" 0x7F decodes to 0, which encodes as positive zero 0xFF.
"""

from __future__ import annotations

import numpy as np

MULAW_BIAS_14 = 33
"""μ-law bias in 14-bit units: magnitude + 33 puts each segment's lower edge on a power of two."""

MULAW_MAX_14 = 8158
ALAW_MAX_13 = 4095


def _segment_of(value: np.ndarray, lowest_bit: int) -> np.ndarray:
    """Index of the highest set bit of `value` minus `lowest_bit`, clipped to 0..7 (value > 0)."""
    highest = np.frexp(np.maximum(value, 1))[1].astype(np.int32) - 1  # exact, unlike log2
    return np.clip(highest - lowest_bit, 0, 7)


def _mulaw_codes_for(pcm16: np.ndarray) -> np.ndarray:
    """Encode int32 16-bit samples (n,) into μ-law bytes (n,) with the standard's decision levels."""
    positive = pcm16 >= 0
    magnitude_14 = np.minimum(np.abs(pcm16) >> 2, MULAW_MAX_14) + MULAW_BIAS_14
    segment = _segment_of(magnitude_14, 5)
    mantissa = (magnitude_14 >> (segment + 1)) & 0x0F
    code = np.where(positive, 0x00, 0x80) | (segment << 4) | mantissa  # sign bit 1 = negative before inversion
    return (~code & 0xFF).astype(np.uint8)


def _mulaw_values_for(codes: np.ndarray) -> np.ndarray:
    """Decode μ-law bytes (n,) into int16 samples (n,)."""
    bits = ~codes.astype(np.int32) & 0xFF
    segment = (bits >> 4) & 0x07
    mantissa = bits & 0x0F
    magnitude_14 = ((2 * mantissa + MULAW_BIAS_14) << segment) - MULAW_BIAS_14
    return np.where(bits & 0x80, -4 * magnitude_14, 4 * magnitude_14).astype(np.int16)


def _alaw_codes_for(pcm16: np.ndarray) -> np.ndarray:
    """Encode int32 16-bit samples (n,) into A-law bytes (n,) with the standard's decision levels."""
    positive = pcm16 >= 0
    magnitude_13 = np.minimum(np.abs(pcm16) >> 3, ALAW_MAX_13)
    segment = _segment_of(magnitude_13, 4)  # segments 0 and 1 both step by 2 below 64
    shift = np.maximum(segment, 1)
    mantissa = (magnitude_13 >> shift) & 0x0F
    code = np.where(positive, 0x80, 0x00) | (segment << 4) | mantissa
    return (code ^ 0x55).astype(np.uint8)


def _alaw_values_for(codes: np.ndarray) -> np.ndarray:
    """Decode A-law bytes (n,) into int16 samples (n,)."""
    bits = codes.astype(np.int32) ^ 0x55
    segment = (bits >> 4) & 0x07
    mantissa = bits & 0x0F
    magnitude_13 = np.where(segment == 0, 2 * mantissa + 1, (2 * mantissa + 33) << np.maximum(segment - 1, 0))
    return np.where(bits & 0x80, 8 * magnitude_13, -8 * magnitude_13).astype(np.int16)


_ALL_PCM16 = np.arange(1 << 16, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
"""Every int16 value, indexed by its bit pattern as uint16."""
_ALL_CODES = np.arange(256, dtype=np.uint8)

MULAW_ENCODE_TABLE = _mulaw_codes_for(_ALL_PCM16)
MULAW_DECODE_TABLE = _mulaw_values_for(_ALL_CODES)
ALAW_ENCODE_TABLE = _alaw_codes_for(_ALL_PCM16)
ALAW_DECODE_TABLE = _alaw_values_for(_ALL_CODES)
for _table in (MULAW_ENCODE_TABLE, MULAW_DECODE_TABLE, ALAW_ENCODE_TABLE, ALAW_DECODE_TABLE):
    _table.setflags(write=False)


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    if pcm.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 PCM, got {pcm.dtype}")
    return pcm


def mulaw_encode(pcm16: np.ndarray) -> np.ndarray:
    """pcm16: (n,) int16 -> (n,) uint8 μ-law codes."""
    return MULAW_ENCODE_TABLE[_as_int16(pcm16).view(np.uint16)]


def mulaw_decode(codes: np.ndarray | bytes) -> np.ndarray:
    """codes: (n,) uint8 or bytes -> (n,) int16."""
    return MULAW_DECODE_TABLE[np.frombuffer(codes, dtype=np.uint8) if isinstance(codes, bytes) else codes]


def alaw_encode(pcm16: np.ndarray) -> np.ndarray:
    """pcm16: (n,) int16 -> (n,) uint8 A-law codes."""
    return ALAW_ENCODE_TABLE[_as_int16(pcm16).view(np.uint16)]


def alaw_decode(codes: np.ndarray | bytes) -> np.ndarray:
    """codes: (n,) uint8 or bytes -> (n,) int16."""
    return ALAW_DECODE_TABLE[np.frombuffer(codes, dtype=np.uint8) if isinstance(codes, bytes) else codes]


class G711Decoder:
    """Codec for the wire names "MULAW" / "ALAW": code bytes -> (n,) float32 in [-1, 1). Stateless."""

    costly = False

    def __init__(self, law: str, sample_rate_hz: int) -> None:
        self._decode = {"MULAW": mulaw_decode, "ALAW": alaw_decode}[law]
        self.law = law
        self.output_rate_hz = sample_rate_hz
        self.concealed_packets = 0

    def decode(self, payload: bytes) -> np.ndarray:
        return self._decode(payload).astype(np.float32) / np.float32(32768.0)


class G711Encoder:
    """(n,) float32 -> one message of code bytes per call, clipped (a loud sample saturates). Stateless."""

    costly = False

    def __init__(self, law: str, sample_rate_hz: int) -> None:
        self._encode = {"MULAW": mulaw_encode, "ALAW": alaw_encode}[law]
        self.law = law
        self.sample_rate_hz = sample_rate_hz

    def encode(self, samples: np.ndarray) -> list[bytes]:
        if samples.shape[0] == 0:
            return []
        pcm16 = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)
        return [self._encode(pcm16).tobytes()]

    def flush(self) -> list[bytes]:
        return []


G711_LAWS = ("MULAW", "ALAW")
