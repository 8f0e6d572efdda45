"""The stream runner reads every size from the fixture: a stream "fixture" with other widths, depths (even),
heads, rates, vocoder stages, harmonics, block settings and prompt length runs and gives README 3.9's shapes.

(The oracle's hidden fixtures change all of these; the visible one is checked numerically in test_model_check.)
"""

from __future__ import annotations

import copy
import math

import torch

from fastvc.model.oracle_runners.stream import run_stream, stream_settings
from fastvc.model.seedvc import SeedVCModel
from fastvc.stream import StreamGeometry


def other_config(visible: dict) -> dict:
    config = copy.deepcopy(visible)
    config["mel"].update(sr=24000, n_fft=960, win_length=960, hop_length=240, fmax=9000)
    config["wav2vec2"].update(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_hidden_layers=4,
                              output_layer=3, conv_dim=[12] * 7, num_conv_pos_embeddings=15,
                              num_conv_pos_embedding_groups=3)
    config["length_regulator"]["length_regulator"].update(channels=12, in_channels=24, sampling_ratios=[1, 1, 1])
    config["dit"]["DiT"].update(hidden_dim=36, num_heads=3, depth=4, content_dim=12)
    config["hift"]["hift"].update(sampling_rate=24000, nb_harmonics=4, base_channels=16, upsample_rates=[4, 6],
                                  upsample_kernel_sizes=[8, 12], istft_params={"n_fft": 20, "hop_len": 10})
    return config


def test_a_stream_fixture_with_other_sizes_runs_with_the_spec_shapes(oracle_dir):
    visible = torch.load(oracle_dir / "stream-visible.pt", weights_only=True)
    config = other_config(visible["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SeedVCModel(config)
    state = {f"{group}.{key}": value for group in ("wav2vec2", "length_regulator", "dit", "hift")
             for key, value in getattr(model, group).state_dict().items()}
    inputs = {"block_time": 0.24, "crossfade_time": 0.06, "extra_time_ce": 1.0, "extra_time": 0.3,
              "extra_time_right": 0.04, "diffusion_steps": 2, "inference_cfg_rate": 0.5, "max_prompt_length": 1.5}
    g = StreamGeometry.from_settings(stream_settings(inputs), 24000, 240)
    harmonics, samples_per_frame, n_blocks = 5, 4 * 6 * 10, 2
    generator = torch.Generator().manual_seed(1)
    inputs.update(reference=0.1 * torch.randn(48000, generator=generator),
                  source=0.1 * torch.randn(n_blocks * g.block, generator=generator),
                  z=torch.randn(n_blocks, 80, g.target_frames, generator=generator),
                  hift_phase=torch.zeros(n_blocks, harmonics, 1),
                  hift_noise=torch.randn(n_blocks, harmonics, samples_per_frame * g.target_frames, generator=generator))
    fixture = {"component": "stream", "config": config, "state_dict": state, "inputs": inputs,
               "state_dict_file": visible["state_dict_file"]}
    outputs = run_stream(fixture, oracle_dir)
    n_cut = int(24000 * 1.5)
    prompt = n_cut // 240
    expected = {"ref16": (math.ceil(n_cut * 16000 / 24000),), "prompt_mel": (80, prompt), "style": (192,),
                "prompt_condition": (prompt, 12), "chunk16k": (n_blocks, g.chunk_16k),
                "content": (n_blocks, g.content_frames_kept, 24), "cond": (n_blocks, g.target_frames, 12),
                "mel": (n_blocks, 80, g.target_frames), "f0": (n_blocks, g.target_frames),
                "wav_slice": (n_blocks, g.return_samples), "sola_scores": (n_blocks, g.sola_search + 1),
                "sola_offset": (n_blocks,), "out": (n_blocks, g.block)}
    assert {name: tuple(t.shape) for name, t in outputs.items()} == expected
    assert all(torch.isfinite(t.float()).all() for t in outputs.values())
    assert outputs["sola_offset"].dtype == torch.int64
