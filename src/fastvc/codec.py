"""Audio codecs: wire bytes <-> float32 samples, and stateful resampling between rates.

    PcmDecoder(bit_depth)      bytes (16/24/32-bit signed little-endian mono) -> (n,) float32 in [-1, 1)
    OpusDecoder()              one Opus packet per message -> (n,) float32 at 48 kHz; a corrupt packet is
                               concealed (silence of one frame) and counted, never fatal
    PcmEncoder()               (n,) float32 -> int16 little-endian bytes, clipped (never wraps around)
    OpusEncoder(rate, frame)   (n,) float32 -> Opus packets, one per frame; `flush` pads the last frame
    G711Decoder/G711Encoder    "MULAW" / "ALAW" telephony bytes <-> float32 (fastvc.g711)
    StreamResampler(in, out)   soxr.ResampleStream: chunked output equals a one-shot resample; `flush` at end

Pick them by wire name with `make_decoder` / `make_encoder`; an unknown name raises `UnknownCodecError`.
Decoders and encoders hold per-stream state: one instance per session, used from one thread at a time.
Opus encoding costs CPU: callers run a codec whose `costly` is True in an executor, off the event loop.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass

import av
import numpy as np
import soxr

from fastvc.g711 import G711_LAWS, G711Decoder, G711Encoder

OPUS_DECODE_RATE_HZ = 48000
"""libopus always decodes at 48 kHz here (PyAV's decoder ignores a requested rate)."""

OPUS_LOOKAHEAD_48K = 312
"""libopus's encoder delay (pre-skip) at 48 kHz: a decoder of our packets sees this much leading delay."""


class UnknownCodecError(ValueError):
    """No codec of that name."""


class AudioFormatError(ValueError):
    """Bytes that cannot be decoded in the declared format (e.g. an odd length for 16-bit PCM)."""


@dataclass(frozen=True)
class AudioChunk:
    """samples: (n,) float32 mono at sample_rate_hz."""

    samples: np.ndarray
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate_hz


class PcmDecoder:
    """Signed little-endian integer PCM -> float32 in [-1, 1). Stateless."""

    costly = False

    def __init__(self, bit_depth: int, sample_rate_hz: int) -> None:
        if bit_depth not in (16, 24, 32):
            raise AudioFormatError(f"unsupported PCM bit depth {bit_depth}")
        self.bit_depth = bit_depth
        self.bytes_per_sample = bit_depth // 8
        self.output_rate_hz = sample_rate_hz
        self.concealed_packets = 0

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) % self.bytes_per_sample:
            raise AudioFormatError(f"{len(payload)} bytes is not a whole number of {self.bit_depth}-bit samples")
        if self.bit_depth == 16:
            return np.frombuffer(payload, "<i2").astype(np.float32) / np.float32(32768.0)
        if self.bit_depth == 32:
            return (np.frombuffer(payload, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
        triplets = np.frombuffer(payload, np.uint8).reshape(-1, 3).astype(np.int32)
        value = triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / np.float32(1 << 23)


class OpusDecoder:
    """One Opus packet per call -> float32 at 48 kHz. Corrupt packets become one frame of silence."""

    costly = False  # ~30 us per 20 ms packet (1.6 ms per audio second): cheaper than a hop to an executor

    def __init__(self, frame_ms: int) -> None:
        self.frame_ms = frame_ms
        self.output_rate_hz = OPUS_DECODE_RATE_HZ
        self.concealed_packets = 0
        self._context = av.CodecContext.create("libopus", "r")
        self._context.sample_rate = OPUS_DECODE_RATE_HZ
        self._context.layout = "mono"

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:
            return self._conceal()
        try:
            frames = self._context.decode(av.Packet(payload))
        except av.error.InvalidDataError:
            return self._conceal()
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([_frame_to_float(frame) for frame in frames])

    def _conceal(self) -> np.ndarray:
        self.concealed_packets += 1
        return np.zeros(OPUS_DECODE_RATE_HZ * self.frame_ms // 1000, np.float32)


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    data = frame.to_ndarray().reshape(-1)
    if data.dtype == np.int16:
        return data.astype(np.float32) / np.float32(32768.0)
    return data.astype(np.float32, copy=False)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """(n,) float -> (n,) int16, clipped to [-32768, 32767] (a loud sample saturates, never wraps)."""
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


class PcmEncoder:
    """float32 -> int16 little-endian bytes, one message per call. Stateless."""

    costly = False

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz

    def encode(self, samples: np.ndarray) -> list[bytes]:
        if samples.shape[0] == 0:
            return []
        return [to_int16(samples).astype("<i2", copy=False).tobytes()]

    def flush(self) -> list[bytes]:
        return []


class OpusEncoder:
    """float32 -> Opus packets of `frame_ms`, one per message. Holds the partial frame between calls."""

    costly = True  # ~9 ms per audio second (libopus complexity 10): a block's packets go to the executor

    def __init__(self, sample_rate_hz: int, frame_ms: int, bitrate_bps: int = 32000) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.frame_samples = sample_rate_hz * frame_ms // 1000
        self._pending = np.zeros(0, np.int16)
        self._pts = 0
        context = av.CodecContext.create("libopus", "w")
        context.sample_rate = sample_rate_hz
        context.layout = "mono"
        context.format = "s16"
        context.bit_rate = bitrate_bps
        context.time_base = fractions.Fraction(1, sample_rate_hz)
        context.options = {"frame_duration": str(frame_ms)}
        context.open()
        self._context = context

    def encode(self, samples: np.ndarray) -> list[bytes]:
        self._pending = np.concatenate([self._pending, to_int16(samples)])
        whole = self._pending.shape[0] // self.frame_samples * self.frame_samples
        frames, self._pending = self._pending[:whole], self._pending[whole:]
        return [packet for start in range(0, whole, self.frame_samples)
                for packet in self._encode_frame(frames[start : start + self.frame_samples])]

    def flush(self) -> list[bytes]:
        """Pad with silence to whole frames covering the encoder's look-ahead, so the tail is never lost."""
        lookahead = -(-OPUS_LOOKAHEAD_48K * self.sample_rate_hz // OPUS_DECODE_RATE_HZ)
        needed = self._pending.shape[0] + lookahead
        padded = -(-needed // self.frame_samples) * self.frame_samples
        tail = np.zeros(padded, np.int16)
        tail[: self._pending.shape[0]] = self._pending
        self._pending = np.zeros(0, np.int16)
        return [packet for start in range(0, padded, self.frame_samples)
                for packet in self._encode_frame(tail[start : start + self.frame_samples])]

    def _encode_frame(self, frame_samples: np.ndarray) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(frame_samples[None, :], format="s16", layout="mono")
        frame.sample_rate = self.sample_rate_hz
        frame.pts = self._pts
        self._pts += frame_samples.shape[0]
        return [bytes(packet) for packet in self._context.encode(frame)]


Decoder = PcmDecoder | OpusDecoder | G711Decoder
Encoder = PcmEncoder | OpusEncoder | G711Encoder


def make_decoder(encoding: str, *, sample_rate_hz: int, bit_depth: int = 16, frame_ms: int = 20) -> Decoder:
    """The decoder for a wire `encoding` ("PCM" or "OPUS")."""
    if encoding == "PCM":
        return PcmDecoder(bit_depth, sample_rate_hz)
    if encoding == "OPUS":
        return OpusDecoder(frame_ms)
    if encoding in G711_LAWS:
        return G711Decoder(encoding, sample_rate_hz)
    raise UnknownCodecError(f"unknown encoding {encoding!r}; choose PCM, OPUS, MULAW or ALAW")


def make_encoder(encoding: str, *, sample_rate_hz: int, frame_ms: int = 20) -> Encoder:
    """The encoder for a wire `encoding` ("PCM" -> int16 LE, or "OPUS")."""
    if encoding == "PCM":
        return PcmEncoder(sample_rate_hz)
    if encoding == "OPUS":
        return OpusEncoder(sample_rate_hz, frame_ms)
    if encoding in G711_LAWS:
        return G711Encoder(encoding, sample_rate_hz)
    raise UnknownCodecError(f"unknown encoding {encoding!r}; choose PCM, OPUS, MULAW or ALAW")


class StreamResampler:
    """Stateful resampling of one stream (soxr HQ): pieces of any size give the one-shot result.

    process: (n,) float32 -> (m,) float32 at out_rate_hz; flush: the remaining samples (call once, at end).
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._stream = None if in_rate_hz == out_rate_hz else soxr.ResampleStream(
            in_rate_hz, out_rate_hz, 1, dtype="float32", quality=quality)

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
