"""Length regulator, DiT estimator and Euler/CFG sampler: oracle fixtures, key manifests, batching, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastvc.model.cfm import euler_sample
from fastvc.model.check import check_file, manifest_section
from fastvc.model.dit import DiT
from fastvc.model.length_regulator import LengthRegulator, nearest_source_index
from fastvc.model.oracle_runners.dit import REAL_MODEL_PARAMS, keys_cfm, keys_length_regulator

ORACLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "oracle"  # as in conftest.py
FIXTURES = sorted(p.name for pattern in ("length_regulator-*.pt", "dit-*.pt", "cfm-*.pt")
                  for p in ORACLE_DIR.glob(pattern))

SMALL_PARAMS = {
    "DiT": {"hidden_dim": 32, "num_heads": 4, "depth": 5, "in_channels": 80, "content_dim": 24,
            "content_codebook_size": 16, "time_as_token": True, "style_as_token": True,
            "uvit_skip_connection": True, "final_layer_type": "mlp", "is_causal": False,
            "long_skip_connection": False},
    "style_encoder": {"dim": 12},
}
SMALL_REGULATOR = {"channels": 16, "in_channels": 20, "sampling_ratios": [1, 1, 1], "is_discrete": False,
                   "content_codebook_size": 8, "vector_quantize": False, "n_codebooks": 1, "f0_condition": False}


def seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every float tensor with seeded random values (norm gains and biases too) so mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor.shape[-1] ** 0.5 + 0.1)
    return module.eval()


@pytest.mark.skipif(not FIXTURES, reason="../shared/oracle is not beside the checkout")
@pytest.mark.parametrize("name", FIXTURES)
def test_oracle_fixture_passes(name: str) -> None:
    line = check_file(ORACLE_DIR / name)
    assert line["ok"], line


@pytest.mark.parametrize("section_name, builder", [("seed_vc_dit_checkpoint.cfm", keys_cfm),
                                                   ("seed_vc_dit_checkpoint.length_regulator", keys_length_regulator)])
def test_key_manifest_matches_full_checkpoint(oracle_dir: Path, section_name: str, builder) -> None:
    section, key_list = manifest_section(json.loads((oracle_dir / "keys-full.json").read_text()), section_name)
    expected = {key: list(shape) for key, shape in key_list}
    assert builder(section) == expected


def test_real_size_dit_has_the_published_parameter_count() -> None:
    dit = DiT.from_config(REAL_MODEL_PARAMS)
    assert sum(p.numel() for p in dit.parameters()) == 25_668_176  # spec section 5: 25.67 M stored
    assert dit.estimator.input_pos.dtype == torch.int64


@pytest.mark.parametrize("n_in, n_out", [(37, 65), (39, 66), (50, 86), (20, 40), (33, 33), (40, 17), (7, 100)])
def test_nearest_index_equals_torch_nearest_interpolation(n_in: int, n_out: int) -> None:
    ramp = torch.arange(n_in, dtype=torch.float32)[None, None, :]
    torch_index = F.interpolate(ramp, size=n_out, mode="nearest")[0, 0].long()
    ours = nearest_source_index(torch.tensor([n_in]), torch.tensor([n_out]), n_out)[0]
    assert torch.equal(ours, torch_index)


def test_nearest_index_keeps_the_float32_quirk() -> None:
    index = nearest_source_index(torch.tensor([39]), torch.tensor([66]), 66)[0]
    exact = torch.arange(66) * 39 // 66
    assert torch.nonzero(index != exact).flatten().tolist() == [22, 44]


def test_length_regulator_item_alone_equals_item_in_batch_with_other_lengths() -> None:
    regulator = seeded(LengthRegulator(**SMALL_REGULATOR), seed=1)
    in_lens, ylens = [30, 17, 24], [52, 40, 24]
    x = torch.randn(3, max(in_lens), 20)
    batch = regulator(x, torch.tensor(ylens), x_lens=torch.tensor(in_lens))
    assert batch.shape == (3, max(ylens), 16)
    for b, (n_in, n_out) in enumerate(zip(in_lens, ylens)):
        alone = regulator(x[b:b + 1, :n_in], torch.tensor([n_out]))
        torch.testing.assert_close(batch[b:b + 1, :n_out], alone, atol=1e-5, rtol=1e-5)
        assert not batch[b, n_out:].any(), "frames past ylens must be zero"


def test_length_regulator_upstream_batch_with_equal_lengths_equals_per_item() -> None:
    regulator = seeded(LengthRegulator(**SMALL_REGULATOR), seed=2)
    x = torch.randn(2, 25, 20)
    ylens = torch.tensor([43, 43])
    upstream = regulator(x, ylens)
    per_item = regulator(x, ylens, x_lens=torch.tensor([25, 25]))
    torch.testing.assert_close(upstream, per_item, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [4, 5])
def test_dit_item_alone_equals_item_in_padded_batch(depth: int) -> None:
    params = {**SMALL_PARAMS, "DiT": {**SMALL_PARAMS["DiT"], "depth": depth}}
    dit = seeded(DiT.from_config(params), seed=3)
    lens = [30, 21]
    x, prompt_x = torch.randn(2, 80, 30), torch.randn(2, 80, 30)
    t, style, cond = torch.tensor([0.2, 0.9]), torch.randn(2, 12), torch.randn(2, 30, 24)
    batch = dit.estimator(x, prompt_x, torch.tensor(lens), t, style, cond)
    for b, n in enumerate(lens):
        alone = dit.estimator(x[b:b + 1, :, :n], prompt_x[b:b + 1, :, :n], torch.tensor([n]), t[b:b + 1],
                              style[b:b + 1], cond[b:b + 1, :n])
        torch.testing.assert_close(batch[b:b + 1, :, :n], alone, atol=1e-5, rtol=1e-5)
    assert not batch[1, :, lens[1]:].any()


@pytest.mark.parametrize("depth", [1, 4, 5])
def test_velocity_at_some_frames_equals_the_full_velocity_there(depth: int) -> None:
    params = {**SMALL_PARAMS, "DiT": {**SMALL_PARAMS["DiT"], "depth": depth}}
    estimator = seeded(DiT.from_config(params), seed=6).estimator
    lens, n_frames = torch.tensor([30, 21]), 30
    frames = torch.tensor([[12, 13, 14, 29], [3, 4, 5, 20]])  # x is zero at every other frame
    x_at = torch.randn(2, 80, 4)
    x = torch.zeros(2, 80, n_frames).scatter(2, frames[:, None, :].expand(-1, 80, -1), x_at)
    prompt_x, style, cond = torch.randn(2, 80, n_frames), torch.randn(2, 12), torch.randn(2, n_frames, 24)
    t = torch.tensor([0.3])
    with torch.inference_mode():
        full = estimator(x, prompt_x, lens, t, style, cond)
        conditioning = estimator.condition(prompt_x, lens, style, cond, frames)
        at = estimator.velocity(x_at.transpose(1, 2), estimator.embed_time(t), conditioning).transpose(1, 2)
    expected = torch.gather(full, 2, frames[:, None, :].expand(-1, 80, -1))
    torch.testing.assert_close(at, expected, atol=1e-5, rtol=1e-5)
    assert at[:, :, :3].abs().min() > 0


@pytest.mark.parametrize(("prompt_lens", "x_lens"), [([12, 5, 9], [28, 19, 24]), ([5, 20, 9], [25, 24, 12])])
@pytest.mark.parametrize("cfg_rate", [0.0, 0.7])
def test_sampler_item_alone_equals_item_in_batch_with_other_prompt_lengths(cfg_rate: float, prompt_lens: list[int],
                                                                           x_lens: list[int]) -> None:
    dit = seeded(DiT.from_config(SMALL_PARAMS), seed=4)
    n_frames, p_max = max(x_lens), max(prompt_lens)
    mu, z = torch.randn(3, n_frames, 24), torch.randn(3, 80, n_frames)
    prompt, style = torch.randn(3, 80, p_max), torch.randn(3, 12)
    batch = euler_sample(dit.estimator, mu, torch.tensor(x_lens), prompt, torch.tensor(prompt_lens), style, z,
                         n_timesteps=3, cfg_rate=cfg_rate)
    for b, (p, n) in enumerate(zip(prompt_lens, x_lens)):
        alone = euler_sample(dit.estimator, mu[b:b + 1, :n], torch.tensor([n]), prompt[b:b + 1, :, :p],
                             torch.tensor([p]), style[b:b + 1], z[b:b + 1, :, :n], n_timesteps=3, cfg_rate=cfg_rate)
        torch.testing.assert_close(batch[b:b + 1, :, :n], alone, atol=1e-5, rtol=1e-5)
        assert not batch[b, :, :p].any(), "prompt region must be zero"
        assert not batch[b, :, n:].any(), "padding must be zero"
        assert batch[b, :, p:n].abs().min() > 0, "generated frames must be filled"


def test_sampler_guidance_changes_the_result() -> None:
    dit = seeded(DiT.from_config(SMALL_PARAMS), seed=5)
    args = (torch.randn(1, 20, 24), torch.tensor([20]), torch.randn(1, 80, 6), torch.tensor([6]),
            torch.randn(1, 12), torch.randn(1, 80, 20))
    plain = euler_sample(dit.estimator, *args, n_timesteps=2, cfg_rate=0.0)
    guided = euler_sample(dit.estimator, *args, n_timesteps=2, cfg_rate=0.7)
    assert (plain - guided).abs().max() > 1e-3


def test_dit_strict_loading_fails_loudly_on_a_wrong_key_set() -> None:
    state = DiT.from_config(SMALL_PARAMS).state_dict()
    missing = {k: v for k, v in state.items() if k != "estimator.x_embedder.weight_g"}
    with pytest.raises(RuntimeError, match="Missing key.*estimator.x_embedder.weight_g"):
        DiT.from_config(SMALL_PARAMS).load_state_dict(missing, strict=True)
    unprefixed = {k.removeprefix("estimator."): v for k, v in state.items()}
    with pytest.raises(RuntimeError, match="Unexpected key"):
        DiT.from_config(SMALL_PARAMS).load_state_dict(unprefixed, strict=True)
    deeper = {**SMALL_PARAMS, "DiT": {**SMALL_PARAMS["DiT"], "depth": 6}}
    with pytest.raises(RuntimeError, match="Unexpected key.*layers.5"):
        DiT.from_config(SMALL_PARAMS).load_state_dict(DiT.from_config(deeper).state_dict(), strict=True)


def test_length_regulator_strict_loading_fails_loudly_on_a_wrong_key_set() -> None:
    state = LengthRegulator(**SMALL_REGULATOR).state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*mask_token"):
        LengthRegulator(**SMALL_REGULATOR).load_state_dict({k: v for k, v in state.items() if k != "mask_token"})
    wider = LengthRegulator(**{**SMALL_REGULATOR, "channels": 24}).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        LengthRegulator(**SMALL_REGULATOR).load_state_dict(wider)


def test_unsupported_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="is_causal"):
        DiT.from_config({**SMALL_PARAMS, "DiT": {**SMALL_PARAMS["DiT"], "is_causal": True}})
    with pytest.raises(ValueError, match="is_discrete"):
        LengthRegulator(**{**SMALL_REGULATOR, "is_discrete": True})


def test_yaml_n_codebooks_is_ignored_as_upstream_does() -> None:
    yaml_section = {**SMALL_REGULATOR, "n_codebooks": 2}
    shapes = {k: v.shape for k, v in LengthRegulator(**yaml_section).state_dict().items()}
    assert shapes == {k: v.shape for k, v in LengthRegulator(**SMALL_REGULATOR).state_dict().items()}
