"""Checkpoint files: hub cache or local paths, the official layouts, and strict loading that names every problem."""

from __future__ import annotations

import pytest
import torch

from fastvc.config import ModelConfig
from fastvc.model import weights
from fastvc.model.weights import MissingWeightsError, WeightsError
from official_files import OfficialParts, local_model_config, populate_hub_cache, write_official_files


def toy_parts() -> OfficialParts:
    """Official-format parts whose tensors are placeholders: enough to test the file layer."""
    w2v = {"masked_spec_embed": torch.zeros(8),
           "encoder.pos_conv_embed.conv.parametrizations.weight.original0": torch.ones(1, 1, 4),
           "encoder.pos_conv_embed.conv.parametrizations.weight.original1": torch.ones(8, 2, 4)}
    for layer in range(2):
        w2v[f"encoder.layers.{layer}.attention.q_proj.weight"] = torch.full((8, 8), float(layer))
    model_params = {"DiT": {"hidden_dim": 8, "depth": 3}, "style_encoder": {"dim": 192},
                    "length_regulator": {"channels": 8, "in_channels": 8, "n_codebooks": 2, "sampling_ratios": [1]},
                    "speech_tokenizer": {"type": "xlsr", "output_layer": 2, "name": "facebook/wav2vec2-xls-r-300m"}}
    return OfficialParts(
        cfm={"estimator.input_pos": torch.arange(16), "estimator.final_mlp.2.weight": torch.ones(80, 8)},
        length_regulator={"content_in_proj.weight": torch.ones(8, 8)},
        wav2vec2=w2v, wav2vec2_config={"hidden_size": 8, "num_hidden_layers": 2},
        campplus={"head.conv1.weight": torch.ones(32, 1, 3, 3)}, hift={"conv_pre.bias": torch.ones(4)},
        model_params=model_params)


@pytest.fixture
def official(tmp_path):
    return write_official_files(tmp_path / "files", toy_parts())


def test_files_come_from_the_hub_cache_offline(tmp_path, official, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ModelConfig(cache_dir=str(tmp_path / "hub"))
    populate_hub_cache(tmp_path / "hub", official, config)
    files = weights.resolve_weight_files(config)
    assert files.dit_checkpoint.read_bytes() == official["dit_checkpoint"].read_bytes()
    assert (files.wav2vec2_dir / "config.json").is_file() and (files.wav2vec2_dir / "pytorch_model.bin").is_file()
    assert str(files.hift).startswith(str(tmp_path / "hub"))


def test_local_paths_override_the_hub(tmp_path, official, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = weights.resolve_weight_files(local_model_config(official))
    assert files.campplus == official["campplus"] and files.wav2vec2_dir == official["wav2vec2:config.json"].parent


def test_missing_files_are_all_named_with_the_download_command(tmp_path, official, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ModelConfig(cache_dir=str(tmp_path / "empty"), hift_path=str(tmp_path / "nowhere" / "hift.pt"))
    with pytest.raises(MissingWeightsError) as caught:
        weights.resolve_weight_files(config, download=True)  # offline: download is refused, nothing hangs
    message = str(caught.value)
    assert "fastvc download" in message
    assert "Plachta/Seed-VC/DiT_uvit_tat_xlsr_ema.pth" in message and "funasr/campplus/campplus_cn_common.bin" in message
    assert "facebook/wav2vec2-xls-r-300m/pytorch_model.bin" in message
    assert str(tmp_path / "nowhere" / "hift.pt") in message and "hift_path" in message
    assert len(caught.value.missing) == 7


def test_official_layouts_are_read_into_module_keys_and_configs(official):
    checkpoint = weights.read_checkpoint(weights.resolve_weight_files(local_model_config(official)))
    assert set(checkpoint.state_dicts["dit"]) == {"estimator.input_pos", "estimator.final_mlp.2.weight"}  # no module.
    assert set(checkpoint.state_dicts["length_regulator"]) == {"content_in_proj.weight"}
    w2v = checkpoint.state_dicts["wav2vec2"]
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in w2v
    assert not any(k.startswith(("wav2vec2.", "quantizer", "project_")) for k in w2v)
    assert "encoder.layers.1.attention.q_proj.weight" in w2v and "encoder.layers.2.attention.q_proj.weight" not in w2v
    assert "encoder.layers.2.attention.q_proj.weight" in {k.removeprefix("wav2vec2.") for k in checkpoint.dropped["wav2vec2"]}
    configs = checkpoint.configs
    assert configs["mel"]["fmax"] == 8000.0 and configs["mel"]["sr"] == 22050
    assert configs["length_regulator"]["length_regulator"]["n_codebooks"] == 1  # yaml says 2; upstream never passes it
    assert configs["wav2vec2"]["output_layer"] == 2 and configs["wav2vec2"]["feature_extractor"]["do_normalize"]
    assert configs["hift"]["hift"]["base_channels"] == 512 and configs["campplus"]["embedding_size"] == 192


def test_yaml_fmax_none_means_half_the_sample_rate(tmp_path):
    parts = toy_parts()
    parts.mel = dict(parts.mel, fmax=None)
    files = write_official_files(tmp_path, parts)
    _, mel = weights.read_dit_yaml(files["dit_config"])
    assert mel["fmax"] == 11025.0


def test_a_dit_file_without_net_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(WeightsError, match="'net'"):
        weights.read_dit_checkpoint(path)


def test_unknown_keys_outside_the_wav2vec2_encoder_fail():
    with pytest.raises(WeightsError, match="lm_extra.weight"):
        weights.wav2vec2_state_dict({"wav2vec2.encoder.layer_norm.weight": torch.ones(2),
                                     "lm_extra.weight": torch.ones(2)}, output_layer=1)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


def toy_state() -> dict[str, torch.Tensor]:
    return {k: torch.randn(v.shape) for k, v in Toy().state_dict().items()}


def test_strict_loading_loads_every_value():
    state = toy_state()
    module = Toy()
    assert weights.load_strict(module, state, component="toy") == []
    assert torch.equal(module.proj.weight, state["proj.weight"])


def test_strict_loading_lists_missing_unexpected_and_misshapen_keys_together():
    state = toy_state()
    del state["norm.bias"]
    state["proj.extra"] = torch.ones(1)
    state["proj.weight"] = torch.ones(3, 5)
    with pytest.raises(WeightsError) as caught:
        weights.load_strict(Toy(), state, component="toy")
    message = str(caught.value)
    assert "missing keys (1: norm.bias)" in message
    assert "unexpected keys (1: proj.extra)" in message
    assert "proj.weight (3, 5) != (3, 4)" in message


def test_documented_unused_keys_are_dropped_and_reported():
    state = toy_state()
    state["estimator.input_pos"] = torch.arange(4)
    dropped = weights.load_strict(Toy(), state, component="dit")
    assert dropped == ["estimator.input_pos"]
    state["estimator.not_documented"] = torch.ones(1)
    with pytest.raises(WeightsError, match="estimator.not_documented"):
        weights.load_strict(Toy(), state, component="dit")


def test_fastvc_download_fetches_then_verifies_strict_loading(tmp_path, monkeypatch, capsys):
    from fastvc.cli import main
    from official_files import write_tiny_official

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is "reached" through a pre-populated cache
    _, files, hift_config = write_tiny_official(tmp_path / "official")
    monkeypatch.setattr(weights, "HIFT_CONFIG", hift_config)
    populate_hub_cache(tmp_path / "hub", files, ModelConfig())
    assert main(["download", "--cache-dir", str(tmp_path / "hub")]) == 0
    out = capsys.readouterr().out
    assert "dit_checkpoint: " + str(tmp_path / "hub") in out and "verified: every checkpoint loads strictly" in out
    assert main(["download", "--cache-dir", str(tmp_path / "empty")]) == 1
    assert "could not fetch 7 file(s)" in capsys.readouterr().err


def test_server_without_weights_exits_with_the_download_hint(tmp_path):
    """Offline with no weights: `python -m fastvc.server` (default engine seedvc) says what to do, no traceback."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO_ROOT / "src"))
    done = subprocess.run([sys.executable, "-m", "fastvc.server", "--port", "0", "--state-dir", str(tmp_path / "s")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "fastvc download" in done.stderr and "DiT_uvit_tat_xlsr_ema.pth" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_the_real_size_model_expects_exactly_the_official_checkpoint_keys(oracle_dir, monkeypatch):
    """What `fastvc download` fetches must load: the real-size model (built on the meta device, no memory)
    has the keys and shapes of keys-full.json, wav2vec2 cut to its first 12 layers."""
    import json
    import re

    from fastvc.model import seedvc
    from fastvc.model.presets import XLSR_300M, real_configs

    def log_mel_on_cpu(**config):  # its filterbank is computed at construction: not on the meta device
        with torch.device("cpu"):
            return log_mel(**config)

    log_mel = seedvc.LogMel
    monkeypatch.setattr(seedvc, "LogMel", log_mel_on_cpu)

    manifest = json.loads((oracle_dir / "keys-full.json").read_text())
    assert manifest["hift"]["config"] == weights.HIFT_CONFIG
    assert {k: manifest["wav2vec2"]["config"][k] for k in XLSR_300M} == XLSR_300M
    with torch.device("meta"):
        model = seedvc.SeedVCModel(real_configs())
    w2v_used = [(k, s) for k, s in manifest["wav2vec2"]["keys"]
                if not (m := re.match(r"encoder\.layers\.(\d+)\.", k)) or int(m.group(1)) < 12]
    expected = {"dit": manifest["seed_vc_dit_checkpoint"]["cfm"],
                "length_regulator": manifest["seed_vc_dit_checkpoint"]["length_regulator"],
                "campplus": manifest["campplus"]["keys"], "hift": manifest["hift"]["keys"], "wav2vec2": w2v_used}
    for group, pairs in expected.items():
        ours = {key: list(tensor.shape) for key, tensor in getattr(model, group).state_dict().items()}
        assert ours == {key: list(shape) for key, shape in pairs}, group
