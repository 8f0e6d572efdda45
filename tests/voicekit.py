"""Test helpers: WAV voices written on the fly (tones), so tests need no audio files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_pcm16(path, samples: np.ndarray, rate_hz: int) -> None:
    """samples: (n,) or (n, channels) float in [-1, 1]."""
    frames = samples.reshape(samples.shape[0], -1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(np.round(frames * 32767).astype("<i2").tobytes())


def tone(seconds: float, rate_hz: int, freq_hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def voices_dir(tmp_path: Path) -> Path:
    """Three voices of different lengths, hence different prompt lengths (P = 258, 129 and 86 frames)."""
    directory = tmp_path / "voices"
    directory.mkdir(exist_ok=True)
    for name, seconds, freq in (("long", 4.0, 180.0), ("mid", 1.5, 260.0), ("short", 1.0, 320.0)):
        write_pcm16(directory / f"{name}.wav", tone(seconds, 16000, freq), 16000)
    return directory


def restore_torch_threads():
    """Generator for an autouse fixture: engines and benches may call torch.set_num_threads; undo it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
