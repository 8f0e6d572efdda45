"""Audio codecs: wire bytes <-> float32 samples, and stateful resampling between rates.

    PcmDecoder(bit_depth)      bytes (16/24/32-bit signed little-endian mono) -> (n,) float32 in [-1, 1)
    OpusDecoder()              one Opus packet per message -> (n,) float32 at 48 kHz; a corrupt packet is
                               concealed (silence of one frame) and counted, never fatal
    PcmEncoder()               (n,) float32 -> int16 little-endian bytes, clipped (never wraps around)
    OpusEncoder(rate, frame)   (n,) float32 -> Opus packets, one per frame; `flush` pads the last frame
    G711Decoder/G711Encoder    "MULAW" / "ALAW" telephony bytes <-> float32 (fastvc.g711)
    StreamResampler(in, out)   soxr.ResampleStream (variable-rate engine): chunked output equals the same
                               resampler fed at once, about 11-15 ms behind its input; `flush` at end

Pick them by wire name with `make_decoder` / `make_encoder`; an unknown name raises `UnknownCodecError`.
Decoders and encoders hold per-stream state: one instance per session, used from one thread at a time.
Opus encoding costs CPU: callers run a codec whose `costly` is True in an executor, off the event loop.
"""

from __future__ import annotations

import fractions
import functools
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
    """Stateful resampling of one stream: pieces of any size give the result of feeding it all at once.

    process: (n,) float32 -> (m,) float32 at out_rate_hz; flush: the rest (call once, at the end), so that the
    whole output has round(n_total · out / in) samples.

    Why soxr's variable-rate engine (`vr=True`), not its HQ preset: libsoxr's fixed-rate presets filter in
    FFT blocks and release output a block at a time, so a live stream's resampler holds back its filter delay
    plus up to one FFT block. Measured with 20 ms input pieces (filter delay / worst hold-back, ms):

        rates (Hz)        HQ          MQ          LQ          VHQ         variable-rate
        16000 -> 22050    6.6 / 58    5.4 / 59    1.3 / 1.3   8.9 / 56    15.0 / 15.0
        22050 -> 16000    6.4 / 40    5.3 / 41    1.5 / 22    8.7 / 84    10.9 / 10.9
        48000 -> 22050    4.7 / 38    3.9 / 39    1.1 / 20    6.4 / 79    12.5 / 12.6
        22050 -> 48000    4.8 / 42    3.9 / 43    0.9 / 1.0   6.4 / 40    10.9 / 10.9
        8000 -> 22050    13.2 / 116  10.8 / 118   2.6 / 2.6  17.8 / 111   30.0 / 30.0
        22050 -> 8000    12.9 / 80   10.6 / 83    2.9 / 44   17.5 / 169   27.2 / 27.3

    The block part is not tunable through python-soxr (libsoxr sizes the FFT from the filter length), LQ keeps
    only 68 % of the band (-2 dB at 0.8 x Nyquist, -20 dB at 0.9) and still blocks when downsampling, and QQ
    does not filter at all. The variable-rate engine filters sample by sample: its hold-back is its filter
    delay alone, constant whatever the feeding pattern, with HQ-like quality (flat to 0.9 x Nyquist, aliases
    and images below -110 dB; its downsampling half-band filter is not linear-phase, inaudibly). It costs about
    4x HQ's CPU (16 kHz client: 0.8 ms in + 0.6 ms out per audio second; 48 kHz: 2.8 + 1.2 ms). Its output
    lags a perfectly aligned resample by -0.5 to 1.9 samples (`resampling_lag`): `shift_samples` whole output
    samples are cut (or, below 0, zeros put) at the start to line it up (see `aligned_resamplers`).
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, *, shift_samples: int | None = None) -> None:
        """shift_samples: leading output samples to drop (< 0: zeros to put first); None: the whole-sample part
        of the engine's lag, so that output sample k lines up with input sample k within half a sample."""
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._stream = None
        self._samples_in = 0
        self._samples_out = 0
        if shift_samples is None:
            shift_samples = round(resampling_lag(in_rate_hz, out_rate_hz))
        if in_rate_hz == out_rate_hz and shift_samples:
            raise ValueError("equal rates pass samples through unshifted")
        if in_rate_hz != out_rate_hz:
            self._stream = _variable_rate_stream(in_rate_hz, out_rate_hz)
        self.shift_samples = shift_samples
        self._skip_out = max(shift_samples, 0)  # leading output samples still to drop
        self._lead_zeros = max(-shift_samples, 0)  # zeros still to put before the first output

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        self._samples_in += samples.shape[0]
        return self._aligned(self._stream.resample_chunk(samples, last=False))

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, np.float32)
        expected = round(self._samples_in * self.out_rate_hz / self.in_rate_hz)
        # silence after the input brings out as many samples as were cut at the start; then cut to length
        silence = np.zeros(-(-(max(self.shift_samples, 0) + 2) * self.in_rate_hz // self.out_rate_hz), np.float32)
        emitted = self._samples_out
        tail = self._aligned(np.concatenate([self._stream.resample_chunk(silence, last=False),
                                             self._stream.resample_chunk(np.zeros(0, np.float32), last=True)]))
        wanted = max(expected - emitted, 0)
        if tail.shape[0] < wanted:
            tail = np.concatenate([tail, np.zeros(wanted - tail.shape[0], np.float32)])
        return tail[:wanted]

    def _aligned(self, samples: np.ndarray) -> np.ndarray:
        """Apply the whole-sample shift at the start of the stream; count what goes out."""
        if self._skip_out:
            cut = min(self._skip_out, samples.shape[0])
            self._skip_out -= cut
            samples = samples[cut:]
        if self._lead_zeros and samples.shape[0]:
            samples = np.concatenate([np.zeros(self._lead_zeros, np.float32), samples])
            self._lead_zeros = 0
        self._samples_out += samples.shape[0]
        return samples


def aligned_resamplers(input_rate_hz: int, model_rate_hz: int,
                       output_rate_hz: int) -> tuple[StreamResampler, StreamResampler]:
    """A session's input (client -> model) and output (model -> client) resamplers, shifted together.

    Each resampler alone lines up within half a sample; two half samples can add up (16 kHz in and out: 0.5
    sample, enough to cost a passthrough 1 % of correlation on speech). The input shift is picked among a few
    whole model-rate samples so that the output shift cancels what is left: client output sample k lines up
    with client input sample k within about 0.1 output sample whenever both sides resample.
    """
    lag_in = resampling_lag(input_rate_hz, model_rate_hz)
    lag_out = resampling_lag(model_rate_hz, output_rate_hz)
    out_per_model = output_rate_hz / model_rate_hz
    shifts_in = [0] if input_rate_hz == model_rate_hz else [round(lag_in) + step for step in (0, -1, 1, -2, 2)]
    best = None
    for shift_in in shifts_in:
        left = (lag_in - shift_in) * out_per_model + lag_out  # output samples still to cancel
        shift_out = 0 if output_rate_hz == model_rate_hz else round(left)
        error = abs(left - shift_out)
        if best is None or error < best[0] - 1e-3:
            best = (error, shift_in, shift_out)
    _, shift_in, shift_out = best
    return (StreamResampler(input_rate_hz, model_rate_hz, shift_samples=shift_in),
            StreamResampler(model_rate_hz, output_rate_hz, shift_samples=shift_out))


def resampling_lag(in_rate_hz: int, out_rate_hz: int) -> float:
    """Output samples by which soxr's variable-rate engine lags a perfectly aligned resample (0 at equal rates)."""
    return 0.0 if in_rate_hz == out_rate_hz else _variable_rate_lag(in_rate_hz, out_rate_hz)


def _variable_rate_stream(in_rate_hz: int, out_rate_hz: int) -> soxr.ResampleStream:
    return soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="float32", vr=True)


@functools.cache
def _variable_rate_lag(in_rate_hz: int, out_rate_hz: int) -> float:
    """How many output samples libsoxr's variable-rate engine lags a perfectly aligned resample (may be < 0).

    Measured on a low tone (1/64 of the lower rate, where the engine's delay is flat): its phase after
    resampling, against the same tone computed at the output rate. Under 1 ms of CPU, once per rate pair.
    """
    tone_hz = min(in_rate_hz, out_rate_hz) / 64
    length_s = 0.25
    source = np.sin(2 * np.pi * tone_hz * np.arange(int(in_rate_hz * length_s)) / in_rate_hz)
    resampled = _variable_rate_stream(in_rate_hz, out_rate_hz).resample_chunk(
        source.astype(np.float32), last=True).astype(np.float64)
    times_s = np.arange(resampled.shape[0]) / out_rate_hz
    middle = slice(resampled.shape[0] // 4, 3 * resampled.shape[0] // 4)
    basis = np.stack([np.sin(2 * np.pi * tone_hz * times_s[middle]), np.cos(2 * np.pi * tone_hz * times_s[middle])])
    sine_part, cosine_part = np.linalg.lstsq(basis.T, resampled[middle], rcond=None)[0]
    lag_s = -np.arctan2(cosine_part, sine_part) / (2 * np.pi * tone_hz)
    return float(lag_s * out_rate_hz)
