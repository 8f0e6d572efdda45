"""Test helper: writes checkpoints in the official on-disk formats, as the hub serves them.

    write_official_files(root, parts) -> {source name: path}   the files themselves
    populate_hub_cache(cache_dir, files, model_config)          a huggingface_hub cache holding them (offline use)

`parts` holds module-format state dicts (what fastvc's modules load) and the yaml values; the writer converts
them to the official layouts: `{'net': {'cfm', 'length_regulator'}}` with DataParallel's `module.` prefix, a
transformers-style wav2vec2 directory holding a pre-training model (prefix `wav2vec2.`, `weight_g`/`weight_v`,
quantizer keys, more layers than the real-time model uses), and plain state dicts for CAMPPlus and HiFT.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fastvc.config import ModelConfig

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class OfficialParts:
    """Module-format weights and configs of one (tiny) model, to be written in the official formats."""

    cfm: dict[str, torch.Tensor]
    length_regulator: dict[str, torch.Tensor]
    wav2vec2: dict[str, torch.Tensor]  # Wav2Vec2Model keys (no prefix, parametrizations.weight.original0/1)
    wav2vec2_config: dict[str, Any]  # transformers config.json
    campplus: dict[str, torch.Tensor]
    hift: dict[str, torch.Tensor]
    model_params: dict[str, Any]  # yaml model_params
    mel: dict[str, Any] = field(default_factory=lambda: {"sr": 22050, "n_fft": 1024, "win_length": 1024,
                                                          "hop_length": 256, "n_mels": 80, "fmin": 0, "fmax": 8000})
    extra_layers: int = 1  # wav2vec2 layers in the file beyond what the model uses


def hub_wav2vec2(state: dict[str, torch.Tensor], extra_layers: int) -> dict[str, torch.Tensor]:
    """Wav2Vec2Model keys -> the hub's Wav2Vec2ForPreTraining file (with `extra_layers` copies of the last layer)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.replace("pos_conv_embed.conv.parametrizations.weight.original0", "pos_conv_embed.conv.weight_g")
        key = key.replace("pos_conv_embed.conv.parametrizations.weight.original1", "pos_conv_embed.conv.weight_v")
        out["wav2vec2." + key] = value.clone()
    layers = sorted({int(k.split(".")[3]) for k in out if k.startswith("wav2vec2.encoder.layers.")})
    last = layers[-1] if layers else -1
    for extra in range(1, extra_layers + 1):
        prefix = f"wav2vec2.encoder.layers.{last}."
        for key in [k for k in out if k.startswith(prefix)]:
            out[key.replace(prefix, f"wav2vec2.encoder.layers.{last + extra}.")] = out[key].clone()
    out["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    out["quantizer.weight_proj.weight"] = torch.zeros(4, 8)
    out["project_q.weight"] = torch.zeros(8, 8)
    out["project_hid.weight"] = torch.zeros(8, 8)
    return out


def dit_yaml(parts: OfficialParts) -> str:
    mel = parts.mel
    spect = {k: mel[k] for k in ("n_fft", "win_length", "hop_length", "n_mels", "fmin")}
    spect["fmax"] = "8000" if mel["fmax"] == 8000 else "None"
    return yaml.safe_dump({"log_dir": "./runs", "preprocess_params": {"sr": mel["sr"], "spect_params": spect},
                           "model_params": parts.model_params}, sort_keys=False)


def write_official_files(root: Path, parts: OfficialParts) -> dict[str, Path]:
    """Write every file under `root`; returns {source name (as in weights.weight_sources): path}."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "dit_config": root / "config_dit_mel_seed_uvit_xlsr_tiny.yml",
        "dit_checkpoint": root / "DiT_uvit_tat_xlsr_ema.pth",
        "campplus": root / "campplus_cn_common.bin",
        "hift": root / "hift.pt",
    }
    paths["dit_config"].write_text(dit_yaml(parts))
    net = {"cfm": {"module." + k: v for k, v in parts.cfm.items()},
           "length_regulator": {"module." + k: v for k, v in parts.length_regulator.items()}}
    torch.save({"net": net, "iters": 0}, paths["dit_checkpoint"])
    torch.save(parts.campplus, paths["campplus"])
    torch.save(parts.hift, paths["hift"])
    w2v_dir = root / "wav2vec2-xls-r"
    w2v_dir.mkdir(exist_ok=True)
    config = dict(parts.wav2vec2_config)
    config["num_hidden_layers"] = config["num_hidden_layers"] + parts.extra_layers
    config["architectures"] = ["Wav2Vec2ForPreTraining"]
    (w2v_dir / "config.json").write_text(json.dumps(config))
    (w2v_dir / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
         "padding_side": "right", "padding_value": 0, "return_attention_mask": True, "sampling_rate": 16000}))
    torch.save(hub_wav2vec2(parts.wav2vec2, parts.extra_layers), w2v_dir / "pytorch_model.bin")
    for name in ("config.json", "preprocessor_config.json", "pytorch_model.bin"):
        paths[f"wav2vec2:{name}"] = w2v_dir / name
    return paths


def populate_hub_cache(cache_dir: Path, files: dict[str, Path], model_config: ModelConfig) -> None:
    """Lay `files` out as huggingface_hub's cache would after downloading them (refs/main -> snapshot)."""
    from fastvc.model.weights import weight_sources

    for source in weight_sources(model_config):
        repo_dir = cache_dir / f"models--{source.repo_id.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(SNAPSHOT)
        target = repo_dir / "snapshots" / SNAPSHOT / source.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[source.name], target)


def local_model_config(files: dict[str, Path]) -> ModelConfig:
    """A ModelConfig whose local-path overrides point at `files` (the hub is never asked)."""
    return ModelConfig(dit_checkpoint_path=str(files["dit_checkpoint"]), dit_config_path=str(files["dit_config"]),
                       wav2vec2_path=str(files["wav2vec2:config.json"].parent), campplus_path=str(files["campplus"]),
                       hift_path=str(files["hift"]))


def parts_from_model(model, configs: dict[str, Any], extra_layers: int = 1) -> OfficialParts:
    """The official-format parts of a `SeedVCModel` built from `configs` (e.g. a preset with random weights)."""
    w2v_config = {k: v for k, v in configs["wav2vec2"].items() if k not in ("output_layer", "feature_extractor")}
    model_params = dict(configs["dit"])
    model_params["length_regulator"] = dict(configs["length_regulator"]["length_regulator"], n_codebooks=2)
    model_params["speech_tokenizer"] = {"type": "xlsr", "output_layer": configs["wav2vec2"]["output_layer"],
                                        "name": "facebook/wav2vec2-xls-r-300m"}
    mel = dict(configs["mel"])
    return OfficialParts(
        cfm=model.dit.state_dict(), length_regulator=model.length_regulator.state_dict(),
        wav2vec2=model.wav2vec2.state_dict(), wav2vec2_config=w2v_config, campplus=model.campplus.state_dict(),
        hift=model.hift.state_dict(), model_params=model_params, mel=mel, extra_layers=extra_layers)


def write_tiny_official(root: Path, seed: int = 11):
    """Tiny checkpoints in the official formats from a seeded random `tiny` model: (that model, files, hift config).

    The vocoder's config is in no downloaded file (upstream ships it in its code), so a test using these files
    must swap `weights.HIFT_CONFIG` for the returned one; everything else is read from the files."""
    from fastvc.model import presets

    configs = presets.preset_configs("tiny")
    source = presets.random_model("tiny", seed=seed)
    return source, write_official_files(root, parts_from_model(source, configs)), configs["hift"]
