"""The audio a load-test client sends, prepared once per process, and the sizes of what comes back.

    WAV file --read_wav()--> Clip --encode_frames()--> FrameSequence (one wire payload per frame)
    received payload --payload_samples()--> samples it carries (PCM: by length; Opus: by its TOC byte)

Every session of a run sends the same pre-encoded frames, so the client spends its CPU on the sockets, not
on encoding (on a 2-core machine the load generator shares the cores with the server it measures).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENCODINGS = ("PCM", "OPUS")
OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0)


class AudioError(ValueError):
    """The file cannot be read or the encoding parameters are unsupported."""


@dataclass(frozen=True)
class Clip:
    """samples: (n,) int16 mono at sample_rate_hz."""

    samples: np.ndarray
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate_hz


def read_wav(path: str | Path, sample_rate_hz: int | None = None) -> Clip:
    """A 16-bit PCM WAV as mono int16, down-mixed if needed and resampled to `sample_rate_hz` if given."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise AudioError(f"{path}: only 16-bit PCM WAV is supported (got {8 * wav.getsampwidth()}-bit)")
            channels, rate = wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise AudioError(f"{path}: not a PCM WAV file ({error})") from error
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
    mono = samples[:, 0] if channels == 1 else samples.astype(np.int32).mean(axis=1).astype(np.int16)
    if not mono.size:
        raise AudioError(f"{path}: no audio")
    if sample_rate_hz is not None and sample_rate_hz != rate:
        import soxr

        resampled = soxr.resample(mono.astype(np.float32) / 32768.0, rate, sample_rate_hz, "HQ")
        mono = (np.clip(resampled, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
        rate = sample_rate_hz
    return Clip(np.ascontiguousarray(mono), rate)


@dataclass(frozen=True)
class FrameSequence:
    """The payloads one session sends, in order; each carries `frame_samples` input samples."""

    payloads: list[bytes]
    frame_samples: int
    sample_rate_hz: int
    encoding: str

    @property
    def frame_s(self) -> float:
        return self.frame_samples / self.sample_rate_hz

    @property
    def duration_s(self) -> float:
        return len(self.payloads) * self.frame_s


def frame_samples_for(frame_ms: float, sample_rate_hz: int) -> int:
    samples = frame_ms * sample_rate_hz / 1000.0
    if samples <= 0 or abs(samples - round(samples)) > 1e-9:
        raise AudioError(f"a {frame_ms} ms frame is not a whole number of samples at {sample_rate_hz} Hz")
    return round(samples)


def encode_frames(clip: Clip, duration_s: float, frame_ms: float = 20.0, encoding: str = "PCM") -> FrameSequence:
    """`duration_s` of the clip, looped, cut into frames of `frame_ms` (rounded up to whole frames)."""
    encoding = encoding.upper()
    if encoding not in ENCODINGS:
        raise AudioError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    frame = frame_samples_for(frame_ms, clip.sample_rate_hz)
    n_frames = max(1, int(np.ceil(round(duration_s * clip.sample_rate_hz) / frame)))
    looped = np.resize(clip.samples, n_frames * frame).reshape(n_frames, frame)
    if encoding == "PCM":
        payloads = [row.astype("<i2").tobytes() for row in looped]
    else:
        payloads = _opus_packets(looped, clip.sample_rate_hz, frame_ms)
    return FrameSequence(payloads, frame, clip.sample_rate_hz, encoding)


def _opus_packets(frames: np.ndarray, sample_rate_hz: int, frame_ms: float) -> list[bytes]:
    """frames: (n_frames, frame_samples) int16 -> exactly n_frames Opus packets (one per frame)."""
    if sample_rate_hz not in OPUS_RATES_HZ:
        raise AudioError(f"Opus needs a rate in {OPUS_RATES_HZ}, got {sample_rate_hz}; pass --sample-rate")
    if frame_ms not in OPUS_FRAME_MS:
        raise AudioError(f"Opus frames last one of {OPUS_FRAME_MS} ms, got {frame_ms}")
    import av

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = sample_rate_hz
    codec.layout = "mono"
    codec.format = "s16"
    codec.options = {"frame_duration": f"{frame_ms:g}", "application": "voip"}
    packets: list[bytes] = []
    for index, row in enumerate(frames):
        audio_frame = av.AudioFrame.from_ndarray(row.reshape(1, -1), format="s16", layout="mono")
        audio_frame.sample_rate = sample_rate_hz
        audio_frame.pts = index * row.shape[0]
        packets.extend(bytes(p) for p in codec.encode(audio_frame))
    packets.extend(bytes(p) for p in codec.encode(None))
    # The encoder's look-ahead yields one packet late; the flush returns it. Keep exactly one per frame.
    return packets[: frames.shape[0]]


_OPUS_FRAME_48K = {  # TOC config -> samples per frame at 48 kHz (RFC 6716, section 3.1)
    **{config: (480, 960, 1920, 2880)[config % 4] for config in range(0, 12)},  # SILK 10/20/40/60 ms
    **{config: (480, 960)[config % 2] for config in range(12, 16)},  # hybrid 10/20 ms
    **{config: (120, 240, 480, 960)[config % 4] for config in range(16, 32)},  # CELT 2.5/5/10/20 ms
}


def opus_packet_samples(packet: bytes, sample_rate_hz: int) -> int:
    """Samples at `sample_rate_hz` that one Opus packet decodes to, read from its TOC byte (no decoding)."""
    if not packet:
        raise AudioError("empty Opus packet")
    toc = packet[0]
    per_frame_48k = _OPUS_FRAME_48K[toc >> 3]
    code = toc & 0x3
    if code == 0:
        n_frames = 1
    elif code in (1, 2):
        n_frames = 2
    else:
        if len(packet) < 2:
            raise AudioError("Opus code-3 packet without its frame-count byte")
        n_frames = packet[1] & 0x3F
    return n_frames * per_frame_48k * sample_rate_hz // 48000


def payload_samples(payload: bytes, encoding: str, sample_rate_hz: int, channels: int = 1) -> int:
    """Samples per channel carried by one received binary message."""
    if encoding == "OPUS":
        return opus_packet_samples(payload, sample_rate_hz)
    return len(payload) // (2 * channels)
