"""Target voices: reference recordings in a directory, one voice per WAV file (voice id = file stem).

    VoiceLibrary(directory, model_rate_hz, max_prompt_seconds)
      .ids()                      sorted voice ids (no audio is read)
      .resolve(voice_id)          the id itself, or the default voice for "" / "default"; UnknownVoiceError
      .reference(voice_id)        (N,) float32 at the model rate, at most max_prompt_seconds long

A reference is read like upstream's `librosa.load(path, sr=model_rate)`: decoded to float32, mixed down to mono
(channel mean), resampled with libsoxr HQ and trimmed/padded to ceil(n·new/old) samples; then cut to
`int(model_rate·max_prompt_seconds)` samples (oracle README 3.9, R1). No torch here: the server validates
voice ids with this module alone. Exceptions:

    VoiceError (ValueError)     a reference file cannot be used
     └── UnknownVoiceError      no voice has that id (the server answers INVALID_CONFIG)
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import soxr

SHIPPED_VOICES_DIR = Path(__file__).resolve().parents[1] / "voices"
"""The example voices that ship with fastvc (see its README for their licence)."""

DEFAULT_ALIASES = ("", "default")
WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


class VoiceError(ValueError):
    """A reference recording cannot be read or used."""


class UnknownVoiceError(VoiceError):
    """No voice has this id."""


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Decode a RIFF/WAVE file: PCM 8/16/24/32-bit or IEEE float 32/64, any channel count.

    Returns (samples (n_frames, n_channels) float32 in [-1, 1], sample_rate_hz). Integer PCM is scaled by
    1/2^(bits−1) (8-bit is unsigned, centred on 128), as soundfile does.
    """
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise VoiceError(f"{path}: not a RIFF/WAVE file")
    fmt, payload = None, None
    position = 12
    while position + 8 <= len(data):
        chunk_id, size = data[position : position + 4], struct.unpack("<I", data[position + 4 : position + 8])[0]
        body = data[position + 8 : position + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body
        position += 8 + size + (size & 1)
    if fmt is None or payload is None or len(fmt) < 16:
        raise VoiceError(f"{path}: WAV file without a 'fmt ' or 'data' chunk")
    format_tag, channels, rate_hz, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if format_tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        format_tag = struct.unpack("<H", fmt[24:26])[0]
    return _decode_samples(path, payload, format_tag, bits, channels), rate_hz


def _decode_samples(path: Path, payload: bytes, format_tag: int, bits: int, channels: int) -> np.ndarray:
    width = bits // 8
    if channels < 1 or width < 1:
        raise VoiceError(f"{path}: invalid WAV header ({channels} channels, {bits} bits)")
    usable = len(payload) - len(payload) % (width * channels)
    raw = np.frombuffer(payload[:usable], dtype=np.uint8)
    if format_tag == WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        samples = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    elif format_tag == WAVE_FORMAT_PCM and bits == 8:
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif format_tag == WAVE_FORMAT_PCM and bits in (16, 24, 32):
        as_bytes = raw.reshape(-1, width)
        padded = np.zeros((as_bytes.shape[0], 4), dtype=np.uint8)
        padded[:, 4 - width :] = as_bytes  # little-endian: shift into the top bytes of an int32
        samples = (padded.view("<i4")[:, 0].astype(np.float64) / 2.0**31).astype(np.float32)
    else:
        raise VoiceError(f"{path}: unsupported WAV encoding (format {format_tag}, {bits} bits)")
    return samples.reshape(-1, channels)


def load_reference(path: Path, model_rate_hz: int, max_prompt_seconds: float) -> np.ndarray:
    """A reference recording as the model uses it: (N,) float32, mono, at `model_rate_hz`, cut to the prompt."""
    samples, rate_hz = read_wav(path)
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if rate_hz != model_rate_hz:
        expected = math.ceil(mono.shape[0] * model_rate_hz / rate_hz)
        mono = soxr.resample(mono, rate_hz, model_rate_hz, "HQ").astype(np.float32, copy=False)
        mono = np.pad(mono[:expected], (0, max(0, expected - mono.shape[0])))
    cut = int(model_rate_hz * max_prompt_seconds)
    if mono.shape[0] == 0:
        raise VoiceError(f"{path}: the recording is empty")
    return np.ascontiguousarray(mono[:cut], dtype=np.float32)


class VoiceLibrary:
    """The voices of one directory. Ids are listed at construction; audio is read on demand."""

    def __init__(self, directory: str | Path | None, model_rate_hz: int, max_prompt_seconds: float = 3.0,
                 default_voice: str = "") -> None:
        self.directory = Path(directory).expanduser() if directory else SHIPPED_VOICES_DIR
        if not self.directory.is_dir():
            raise VoiceError(f"voices directory not found: {self.directory}")
        if max_prompt_seconds <= 0:
            raise VoiceError("max_prompt_seconds must be positive")
        self.model_rate_hz = model_rate_hz
        self.max_prompt_seconds = max_prompt_seconds
        self._paths: dict[str, Path] = {}
        for path in sorted(self.directory.iterdir()):
            if path.is_file() and path.suffix.lower() == ".wav":
                if path.stem in self._paths:
                    raise VoiceError(f"two voice files share the id {path.stem!r} in {self.directory}")
                self._paths[path.stem] = path
        if not self._paths:
            raise VoiceError(f"no .wav voices in {self.directory}")
        if default_voice and default_voice not in self._paths:
            raise UnknownVoiceError(f"default voice {default_voice!r} is not in {self.directory}")
        self.default_voice = default_voice or next(iter(self._paths))

    def ids(self) -> list[str]:
        return list(self._paths)

    def resolve(self, voice_id: str) -> str:
        """The voice id to use for `voice_id` ("" and "default" mean the default voice)."""
        if voice_id in DEFAULT_ALIASES:
            return self.default_voice
        if voice_id not in self._paths:
            raise UnknownVoiceError(f"unknown voice {voice_id!r}; available: {', '.join(self._paths)}")
        return voice_id

    def reference(self, voice_id: str) -> np.ndarray:
        """(N,) float32 at the model rate, N <= int(model_rate_hz·max_prompt_seconds)."""
        return load_reference(self._paths[self.resolve(voice_id)], self.model_rate_hz, self.max_prompt_seconds)
