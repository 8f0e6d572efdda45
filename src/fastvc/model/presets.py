"""Size presets of the real-time model, for running it with random weights (the `synthetic` engine, benchmarks).

    preset_configs(name) -> configs for `SeedVCModel` (same layout as `weights.SeedVCCheckpoint.configs`)
    random_model(name, seed) -> SeedVCModel with seeded random weights

`real` is the full-size seed-uvit-tat-xlsr-tiny (oracle README section 5: XLS-R-300m cut to 12 layers, DiT
384 wide and 9 deep, HiFT with 512 base channels). `small` and `tiny` keep the structure (rates, hop, strides,
up-sampling stages, odd DiT depth, the 12/24/16 CAMPPlus) and shrink widths and depths so the whole real-time
path runs on a CPU; `tiny` (the synthetic engine's default: 16 real-time sessions on 2 CPU cores) cuts further
(`shrink_tiny`). What no preset shrinks is the number of DiT tokens: prompt + block, every step, twice with CFG.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from fastvc.model import weights

REAL_MEL: dict[str, Any] = {"sr": 22050, "n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 80,
                            "fmin": 0.0, "fmax": 8000.0}
XLSR_300M: dict[str, Any] = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "feat_extract_norm": "layer", "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": True, "num_feat_extract_layers": 7, "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": True, "mask_time_prob": 0.075,
    "mask_feature_prob": 0.0,
}
REAL_DIT: dict[str, Any] = {
    "hidden_dim": 384, "num_heads": 6, "depth": 9, "in_channels": 80, "content_dim": 384,
    "content_codebook_size": 1024, "time_as_token": True, "style_as_token": True, "uvit_skip_connection": True,
    "final_layer_type": "mlp", "is_causal": False, "long_skip_connection": False, "zero_prompt_speech_token": False,
}
REAL_LENGTH_REGULATOR: dict[str, Any] = {
    "channels": 384, "in_channels": 1024, "sampling_ratios": [1, 1, 1, 1], "is_discrete": False,
    "content_codebook_size": 1024, "vector_quantize": False, "n_codebooks": 1, "f0_condition": False,
}

SHRINK: dict[str, dict[str, Any]] = {
    # name: XLS-R width/layers/heads/FFN/conv width/pos-conv; DiT width/heads/depth; HiFT base and f0 widths
    "small": {"hidden": 128, "layers": 2, "heads": 2, "ffn": 256, "conv": 64, "pos_kernel": 32, "pos_groups": 4,
              "dit": 96, "dit_heads": 2, "depth": 3, "hift": 64},
    "tiny": {"hidden": 16, "layers": 1, "heads": 1, "ffn": 32, "conv": 8, "pos_kernel": 16, "pos_groups": 2,
             "dit": 16, "dit_heads": 1, "depth": 1, "hift": 8},
}
PRESETS = ("real", *SHRINK)


def real_configs() -> dict[str, dict[str, Any]]:
    """The full-size model's configs (what `weights.read_checkpoint` gives for the official files)."""
    wav2vec2 = dict(XLSR_300M, output_layer=weights.DEFAULT_OUTPUT_LAYER,
                    feature_extractor=dict(weights.FEATURE_EXTRACTOR_DEFAULTS))
    return {
        "mel": dict(REAL_MEL),
        "fbank": dict(weights.KALDI_FBANK_CONFIG),
        "campplus": {"feat_dim": 80, "embedding_size": 192},
        "wav2vec2": wav2vec2,
        "length_regulator": {"length_regulator": dict(REAL_LENGTH_REGULATOR)},
        "dit": {"DiT": dict(REAL_DIT), "style_encoder": {"dim": 192}},
        "hift": copy.deepcopy(weights.HIFT_CONFIG),
    }


def preset_configs(name: str) -> dict[str, dict[str, Any]]:
    """Configs of the preset `name` (one of PRESETS); ValueError for others."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    configs = real_configs()
    if name == "real":
        return configs
    s = SHRINK[name]
    configs["wav2vec2"].update(hidden_size=s["hidden"], num_hidden_layers=s["layers"], output_layer=s["layers"],
                               num_attention_heads=s["heads"], intermediate_size=s["ffn"], conv_dim=[s["conv"]] * 7,
                               num_conv_pos_embeddings=s["pos_kernel"], num_conv_pos_embedding_groups=s["pos_groups"])
    configs["length_regulator"]["length_regulator"].update(channels=s["dit"], in_channels=s["hidden"],
                                                           content_codebook_size=16)
    configs["dit"]["DiT"].update(hidden_dim=s["dit"], num_heads=s["dit_heads"], depth=s["depth"],
                                 content_dim=s["dit"], content_codebook_size=16)
    configs["hift"]["hift"]["base_channels"] = s["hift"]
    configs["hift"]["f0_predictor"]["cond_channels"] = s["hift"]
    if name == "tiny":
        shrink_tiny(configs)
    return configs


def shrink_tiny(configs: dict[str, dict[str, Any]]) -> None:
    """What `tiny` cuts beyond widths and depths: XLS-R's feature encoder in 3 convs (kernels 10, 8, 8, strides
    5, 8, 8: the same 320 samples a frame and 137 frames for the 2.76 s window as the real 7), the DiT's FFN 3x
    its width like the real one's 2.7x (int(8D/3) rounded up to 16, not 256: 48), one conv block in the length
    regulator, and in the vocoder 2 harmonics and one residual branch of one conv pair per stage."""
    configs["wav2vec2"].update(conv_dim=[SHRINK["tiny"]["conv"]] * 3, conv_kernel=[10, 8, 8], conv_stride=[5, 8, 8],
                               num_feat_extract_layers=3)
    configs["dit"]["DiT"]["ffn_multiple"] = 16
    configs["length_regulator"]["length_regulator"]["sampling_ratios"] = [1]
    configs["hift"]["hift"].update(nb_harmonics=2, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
                                   source_resblock_dilation_sizes=[[1], [1]])


def random_model(name: str, seed: int = 0, precision: str = "float32", device: str | torch.device = "cpu"):
    """A `SeedVCModel` of preset `name` with random weights drawn from `seed` (torch's global generator is
    forked for the construction and left as it was)."""
    from fastvc.model.seedvc import SeedVCModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SeedVCModel(preset_configs(name), precision=precision)
    return model.to(device)
