"""Oracle runners for the audio front ends: `mel` (spec 3.1) and `fbank` (spec 3.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastvc.model.audio import LogMel, kaldi_fbank


def run_mel(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    """wav (B, N) -> mel (B, n_mels, T) and the filterbank used, mel_basis (n_mels, n_fft // 2 + 1)."""
    log_mel = LogMel(**fixture["config"])
    return {"mel": log_mel(fixture["inputs"]["wav"]), "mel_basis": log_mel.mel_basis}


def run_fbank(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    """wav (N,) -> fbank (T, num_mel_bins), utterance-mean removed when the config says so."""
    wav = fixture["inputs"]["wav"]
    features = kaldi_fbank(wav, **fixture["config"])
    return {"fbank": features[0] if wav.dim() == 1 else features}
