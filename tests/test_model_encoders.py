"""Encoders (oracle spec 3.3, 3.4): CAMPPlus with the real weights, the XLS-R content encoder, key manifests."""

from __future__ import annotations

import json

import pytest
import torch

from fastvc.model.audio import kaldi_fbank
from fastvc.model.campplus import CAMPPlus
from fastvc.model.check import check_file
from fastvc.model.oracle_runners.encoders import keys_campplus, keys_wav2vec2, load_campplus_weights
from fastvc.model.wav2vec2 import (Wav2Vec2Config, Wav2Vec2Encoder, channel_layer_norm, conv_output_frames,
                                   convert_hub_state_dict, split_checkpoint)

ENCODER_FIXTURES = ["campplus-t250", "campplus-b2-t120", "wav2vec2-b1", "wav2vec2-b2"]


@pytest.mark.parametrize("name", ENCODER_FIXTURES)
def test_encoder_fixture_matches_oracle(oracle_dir, name):
    line = check_file(oracle_dir / f"{name}.pt")
    assert line["ok"], line


@pytest.mark.parametrize("section_name,builder", [("campplus", keys_campplus), ("wav2vec2", keys_wav2vec2)])
def test_modules_expect_exactly_the_full_checkpoint_keys(oracle_dir, section_name, builder):
    section = json.loads((oracle_dir / "keys-full.json").read_text())[section_name]
    expected = {key: tuple(shape) for key, shape in section["keys"]}
    assert builder(section) == expected


@pytest.fixture
def campplus(oracle_dir) -> CAMPPlus:
    model = CAMPPlus()
    model.load_state_dict(load_campplus_weights(oracle_dir / "campplus_cn_common.pt"), strict=True)
    return model


def test_campplus_items_of_a_batch_are_independent(campplus):
    generator = torch.Generator().manual_seed(0)
    fbank = kaldi_fbank(0.1 * torch.randn(2, 16000, generator=generator))     # (2, 98, 80)
    batched = campplus(fbank)
    assert batched.shape == (2, 192)
    for b in range(2):
        torch.testing.assert_close(batched[b], campplus(fbank[b:b + 1])[0], atol=1e-4, rtol=0)


def test_campplus_ignores_train_mode(campplus):
    fbank = kaldi_fbank(0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(campplus.train()(fbank), campplus.eval()(fbank))


def small_config(**changes) -> Wav2Vec2Config:
    values = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=3, intermediate_size=96,
                  feat_extract_norm="layer", conv_dim=[16] * 7, conv_bias=True, num_conv_pos_embeddings=7,
                  num_conv_pos_embedding_groups=3, do_stable_layer_norm=True, output_layer=2)
    values.update(changes)
    return Wav2Vec2Config.from_dict(values)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator) + (parameter.dim() == 1) * 0.5)
    return model


def test_wav2vec2_items_are_normalised_and_encoded_independently():
    model = randomised(Wav2Vec2Encoder(small_config()))
    generator = torch.Generator().manual_seed(2)
    wav = torch.randn(3, 6400, generator=generator) * torch.tensor([[1e-3], [0.1], [0.9]])
    batched = model(wav)
    assert batched.shape == (3, conv_output_frames(6400, model.config), 48) and batched.shape[1] == 19
    for b in range(3):
        torch.testing.assert_close(batched[b], model(wav[b:b + 1])[0], atol=1e-4, rtol=0)
    # per-item normalisation: the level of an item does not change its features
    torch.testing.assert_close(model(wav[1:2]), model(wav[1:2] * 8.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels", [8, 64])
def test_conv_layer_norm_of_narrow_and_wide_layers_equals_layer_norm_over_channels(channels):
    norm = randomised(torch.nn.LayerNorm(channels, eps=1e-5))
    x = 3.0 + torch.randn(2, channels, 50, generator=torch.Generator().manual_seed(4))
    expected = torch.nn.functional.layer_norm(x.transpose(1, 2), (channels,), norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(channel_layer_norm(x, norm), expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_wav2vec2_uses_only_the_first_output_layer_layers():
    full = randomised(Wav2Vec2Encoder(small_config(), num_layers=4))
    cut = Wav2Vec2Encoder(small_config(), num_layers=2)
    kept, skipped = split_checkpoint(full.state_dict(), 2)
    assert sorted({key.split(".")[2] for key in skipped}) == ["2", "3"] and len(skipped) == 2 * 16
    cut.load_state_dict(kept, strict=True)
    wav = torch.randn(1, 4000, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(cut(wav), full(wav), atol=1e-3)
    cut_by_hand = full.encoder.layer_norm(full.encoder.layers[1](full.encoder.layers[0](
        full.encoder.pos_conv_embed(full.feature_projection(full.feature_extractor(full.normalize(wav)).transpose(1, 2)))
        + full.feature_projection(full.feature_extractor(full.normalize(wav)).transpose(1, 2)))))
    torch.testing.assert_close(cut(wav), cut_by_hand, atol=1e-5, rtol=0)


def test_hub_checkpoint_names_map_to_the_model_names():
    model = Wav2Vec2Encoder(small_config(), num_layers=4)
    ours = model.state_dict()
    hub = {f"wav2vec2.{key}": value for key, value in ours.items()}
    for suffix, name in (("original0", "weight_g"), ("original1", "weight_v")):
        hub[f"wav2vec2.encoder.pos_conv_embed.conv.{name}"] = hub.pop(
            f"wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.{suffix}")
    hub["quantizer.codevectors"] = torch.zeros(1, 8, 4)
    hub["project_q.weight"] = torch.zeros(4, 4)
    converted, ignored = convert_hub_state_dict(hub)
    assert sorted(ignored) == ["project_q.weight", "quantizer.codevectors"]
    assert converted.keys() == ours.keys()
    model.load_state_dict(converted, strict=True)


def test_wav2vec2_refuses_variants_it_does_not_implement():
    with pytest.raises(ValueError):
        Wav2Vec2Encoder(small_config(do_stable_layer_norm=False))
    with pytest.raises(ValueError):
        Wav2Vec2Encoder(small_config(feat_extract_norm="group"))
