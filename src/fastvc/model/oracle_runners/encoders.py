"""Oracle runners for the encoders: `campplus` (spec 3.3) and `wav2vec2` (spec 3.4), and their key manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastvc.model.campplus import CAMPPlus
from fastvc.model.wav2vec2 import (XLSR_OUTPUT_LAYER, Wav2Vec2Config, Wav2Vec2Encoder, checkpoint_key_shapes,
                                   split_checkpoint)


def load_campplus_weights(path: Path) -> dict[str, torch.Tensor]:
    """The real CAMPPlus state dict (saved from CUDA tensors upstream), on CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def run_campplus(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    """fbank (B, T, feat_dim) -> embedding (B, embedding_size), with the real weights strictly loaded."""
    model = CAMPPlus(**fixture["config"])
    model.load_state_dict(load_campplus_weights(fixture_dir / fixture["state_dict_file"]), strict=True)
    return {"embedding": model.eval()(fixture["inputs"]["fbank"])}


def keys_campplus(section: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the CAMPPlus checkpoint that `CAMPPlus()` (real config: 80 -> 192) expects."""
    with torch.device("meta"):
        model = CAMPPlus(feat_dim=80, embedding_size=192)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def run_wav2vec2(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    """wav (B, N) -> input_values (B, N) and features (B, T, hidden_size) of the first `output_layer` layers.

    The fixture holds all `num_hidden_layers` layers; `split_checkpoint` drops the unused ones before the
    strict load, as the real weight loader does."""
    config = Wav2Vec2Config.from_dict(fixture["config"])
    model = Wav2Vec2Encoder(config, config.output_layer)
    kept, _skipped = split_checkpoint(fixture["state_dict"], model.num_layers)
    model.load_state_dict(kept, strict=True)
    input_values = model.normalize(fixture["inputs"]["wav"])
    return {"input_values": input_values, "features": model.eval().encode(input_values)}


def keys_wav2vec2(section: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the full XLS-R-300m `Wav2Vec2Model` checkpoint (24 layers) for the real-time encoder
    (12 layers): its own keys plus the 12 unused layers that `split_checkpoint` skips on load."""
    return checkpoint_key_shapes(Wav2Vec2Config.from_dict(section["config"]), XLSR_OUTPUT_LAYER)
