"""Oracle runners for the HiFT vocoder: `hift_f0`, `hift_source`, `hift_decode` and the `hift.pt` key list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from fastvc.model.hift import HiFTGenerator


def build_generator(config: dict[str, Any], state_dict: dict[str, Tensor] | None = None) -> HiFTGenerator:
    """A generator from a fixture/manifest config `{"hift": …, "f0_predictor": …}`, loaded strictly if given."""
    generator = HiFTGenerator.from_config(config["hift"], config["f0_predictor"])
    if state_dict is not None:
        generator.load_state_dict(state_dict, strict=True)
    return generator.eval()


def run_hift_f0(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, Tensor]:
    generator = build_generator(fixture["config"], fixture["state_dict"])
    return {"f0": generator.predict_f0(fixture["inputs"]["mel"])}


def run_hift_source(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, Tensor]:
    generator = build_generator(fixture["config"], fixture["state_dict"])
    inputs = fixture["inputs"]
    source, sine_waves, uv = generator.m_source(inputs["f0"], inputs["phase"], inputs["noise"])
    return {"source": source, "sine_waves": sine_waves, "uv": uv}


def run_hift_decode(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, Tensor]:
    generator = build_generator(fixture["config"], fixture["state_dict"])
    inputs = fixture["inputs"]
    s_stft = generator.source_stft(inputs["source"])
    return {"s_stft": s_stft, "wav": generator.decode_stft(inputs["mel"], s_stft)}


def keys_hift(section: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of the generator built from the manifest section's real config (`hift.pt`'s layout)."""
    generator = build_generator(section["config"])
    return {key: tuple(tensor.shape) for key, tensor in generator.state_dict().items()}
