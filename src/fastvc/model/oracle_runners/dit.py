"""Oracle adapters for the length regulator, the DiT estimator and the CFM sampler (spec 3.5-3.7, section 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastvc.model.cfm import euler_sample
from fastvc.model.dit import DiT
from fastvc.model.length_regulator import LengthRegulator

# The real model's hyper-parameters (spec section 5), under the yaml `model_params` names, for key manifests
# whose section carries no config. Only the fields the modules read are given.
REAL_MODEL_PARAMS: dict[str, Any] = {
    "DiT": {"hidden_dim": 384, "num_heads": 6, "depth": 9, "in_channels": 80, "content_dim": 384,
            "content_codebook_size": 1024, "time_as_token": True, "style_as_token": True,
            "uvit_skip_connection": True, "final_layer_type": "mlp", "is_causal": False,
            "long_skip_connection": False, "zero_prompt_speech_token": False},
    "style_encoder": {"dim": 192},
    "length_regulator": {"channels": 384, "in_channels": 1024, "sampling_ratios": [1, 1, 1, 1],
                         "is_discrete": False, "content_codebook_size": 1024, "vector_quantize": False,
                         "n_codebooks": 1, "f0_condition": False},
}


def build_length_regulator(model_params: dict[str, Any]) -> LengthRegulator:
    return LengthRegulator(**model_params["length_regulator"])


def load_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    module.load_state_dict(state_dict, strict=True)
    return module.eval()


def run_length_regulator(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    regulator = load_strict(build_length_regulator(fixture["config"]), fixture["state_dict"])
    inputs = fixture["inputs"]
    return {"out": regulator(inputs["x"], inputs["ylens"])}


def run_dit(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    dit = load_strict(DiT.from_config(fixture["config"]), fixture["state_dict"])
    i = fixture["inputs"]
    return {"out": dit.estimator(i["x"], i["prompt_x"], i["x_lens"], i["t"], i["style"], i["cond"])}


def run_cfm(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    dit = load_strict(DiT.from_config(fixture["config"]), fixture["state_dict"])
    i = fixture["inputs"]
    mel = euler_sample(dit.estimator, i["mu"], i["x_lens"], i["prompt"], i["prompt_lens"], i["style"], i["z"],
                       n_timesteps=int(i["n_timesteps"]), cfg_rate=float(i["inference_cfg_rate"]))
    return {"mel": mel}


def section_model_params(section: dict[str, Any]) -> dict[str, Any]:
    """The section's own config if it carries one, else the real model's (spec section 5)."""
    return section.get("config") or REAL_MODEL_PARAMS


def key_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def keys_cfm(section: dict[str, Any]) -> dict[str, list[int]]:
    return key_shapes(DiT.from_config(section_model_params(section)))


def keys_length_regulator(section: dict[str, Any]) -> dict[str, list[int]]:
    return key_shapes(build_length_regulator(section_model_params(section)))
