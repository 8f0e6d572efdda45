"""Oracle runner for the `stream` fixture (README 3.9): the whole real-time path, one stream, fixture noise.

The fixture's blocks go through the same code the server runs: `fastvc.stream.BlockStream` (B2–B3, B10) around
`SeedVCModel.prepare_voice` (R1–R5) and `SeedVCModel.convert` at batch 1 (B4–B8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastvc.model import weights
from fastvc.model.seedvc import BlockNoise, SeedVCModel
from fastvc.stream import BlockStream, StreamGeometry, StreamSettings

PREFIXED_GROUPS = ("wav2vec2", "length_regulator", "dit", "hift")


def split_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """`group.key` -> {group: {key: tensor}} for the fixture's prefixed groups; unknown prefixes fail."""
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXED_GROUPS}
    for key, value in state_dict.items():
        group, _, name = key.partition(".")
        if group not in groups:
            raise weights.WeightsError(f"stream fixture: key outside the known groups: {key}")
        groups[group][name] = value
    return groups


def build_model(fixture: dict[str, Any], fixture_dir: Path) -> SeedVCModel:
    model = SeedVCModel(fixture["config"])
    state_dicts = split_state_dict(fixture["state_dict"])
    state_dicts["campplus"] = weights.read_state_dict(Path(fixture_dir) / fixture["state_dict_file"])
    model.load_checkpoint(state_dicts)
    return model


def stream_settings(inputs: dict[str, Any]) -> StreamSettings:
    return StreamSettings(float(inputs["block_time"]), float(inputs["crossfade_time"]), float(inputs["extra_time_ce"]),
                          float(inputs["extra_time"]), float(inputs["extra_time_right"]))


def run_stream(fixture: dict[str, Any], fixture_dir: Path) -> dict[str, torch.Tensor]:
    """Every output of README 3.9 (per-block tensors stacked on axis 0)."""
    model = build_model(fixture, fixture_dir)
    inputs = fixture["inputs"]
    geometry = StreamGeometry.from_settings(stream_settings(inputs), model.sample_rate_hz, model.hop_length)
    voice = model.prepare_voice(inputs["reference"], float(inputs["max_prompt_length"]))
    stream = BlockStream(geometry)
    source = inputs["source"].numpy()
    per_block: dict[str, list[torch.Tensor]] = {key: [] for key in
                                                ("chunk16k", "content", "cond", "mel", "f0", "wav_slice",
                                                 "sola_scores", "sola_offset", "out")}
    for b in range(source.shape[0] // geometry.block):
        block_input = stream.push_block(source[b * geometry.block : (b + 1) * geometry.block])
        noise = BlockNoise(z=inputs["z"][b], hift_phase=inputs["hift_phase"][b], hift_noise=inputs["hift_noise"][b])
        outputs = model.convert(torch.from_numpy(block_input.window_16k)[None], [voice], [noise], geometry,
                                int(inputs["diffusion_steps"]), float(inputs["inference_cfg_rate"]),
                                keep_intermediates=True)
        stitched = stream.stitch(outputs.wav_slice[0].numpy())
        per_block["chunk16k"].append(torch.from_numpy(block_input.chunk_16k))
        for key in ("content", "cond", "mel", "f0", "wav_slice"):
            per_block[key].append(getattr(outputs, key)[0])
        per_block["sola_scores"].append(torch.from_numpy(stitched.scores).float())
        per_block["sola_offset"].append(torch.tensor(stitched.offset, dtype=torch.int64))
        per_block["out"].append(torch.from_numpy(stitched.out))
    stacked = {key: torch.stack(values) for key, values in per_block.items()}
    return {"ref16": voice.ref16, "prompt_mel": voice.prompt_mel, "style": voice.style,
            "prompt_condition": voice.prompt_condition, **stacked}
