"""HiFT vocoder (fastvc.model.hift) against the oracle fixtures and the real `hift.pt` key manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fastvc.model.check import check_file, manifest_section
from fastvc.model.hift import HiFTGenerator
from fastvc.model.oracle_runners.hift import build_generator, keys_hift

HIFT_FIXTURES = ["hift_f0-b1", "hift_f0-b2", "hift_source-b1", "hift_source-b2", "hift_decode-b1",
                 "hift_decode-b2-clamped"]


def load_fixture(oracle_dir: Path, name: str) -> dict:
    return torch.load(oracle_dir / f"{name}.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", HIFT_FIXTURES)
def test_fixture_matches_oracle(oracle_dir: Path, name: str) -> None:
    line = check_file(oracle_dir / f"{name}.pt")
    assert line["ok"], line


def test_keys_equal_the_real_hift_checkpoint(oracle_dir: Path) -> None:
    manifest = json.loads((oracle_dir / "keys-full.json").read_text())
    section, entries = manifest_section(manifest, "hift.keys")
    expected = {key: tuple(shape) for key, shape in entries}
    assert len(expected) == 227
    assert keys_hift(section) == expected


def test_batch_item_alone_equals_item_in_batch(oracle_dir: Path) -> None:
    fixture = load_fixture(oracle_dir, "hift_decode-b2-clamped")
    generator = build_generator(fixture["config"], fixture["state_dict"])
    mel, source = fixture["inputs"]["mel"], fixture["inputs"]["source"]
    with torch.inference_mode():
        f0 = generator.predict_f0(mel)
        phase, noise = generator.draw_source_noise(2, mel.shape[2], torch.Generator().manual_seed(3))
        batched = (generator.decode(mel, source), generator.source(f0, phase, noise))
        for item in range(2):
            alone_wav = generator.decode(mel[item : item + 1], source[item : item + 1])
            alone_src = generator.source(f0[item : item + 1], phase[item : item + 1], noise[item : item + 1])
            assert torch.allclose(alone_wav[0], batched[0][item], atol=1e-5)
            assert torch.allclose(alone_src[0], batched[1][item], atol=1e-6)
            assert torch.allclose(generator.predict_f0(mel[item : item + 1])[0], f0[item], rtol=1e-5, atol=1e-3)


def test_loud_vocoder_is_clamped_to_audio_limit(oracle_dir: Path) -> None:
    fixture = load_fixture(oracle_dir, "hift_decode-b2-clamped")
    generator = build_generator(fixture["config"], fixture["state_dict"])
    limit = fixture["config"]["hift"]["audio_limit"]
    with torch.inference_mode():
        wav = generator.decode(fixture["inputs"]["mel"], fixture["inputs"]["source"])
    expected = fixture["outputs"]["wav"]
    assert wav.abs().max() <= limit
    clamped = expected.abs() >= limit
    assert clamped.float().mean() > 0.05  # the case really exercises the clamp
    assert torch.equal(wav.abs()[clamped], torch.full_like(wav[clamped], limit))


def test_draws_have_the_fixture_shapes_and_follow_the_generator(oracle_dir: Path) -> None:
    fixture = load_fixture(oracle_dir, "hift_source-b2")
    generator = build_generator(fixture["config"], fixture["state_dict"])
    batch, n_frames = fixture["inputs"]["f0"].shape
    phase, noise = generator.draw_source_noise(batch, n_frames, torch.Generator().manual_seed(7))
    assert phase.shape == fixture["inputs"]["phase"].shape
    assert noise.shape == fixture["inputs"]["noise"].shape
    assert torch.all(phase[:, 0] == 0)
    assert torch.all(phase >= -math.pi) and torch.all(phase < math.pi)
    again, _ = generator.draw_source_noise(batch, n_frames, torch.Generator().manual_seed(7))
    other, _ = generator.draw_source_noise(batch, n_frames, torch.Generator().manual_seed(8))
    assert torch.equal(phase, again) and not torch.equal(phase, other)


def test_unvoiced_frames_get_only_noise(oracle_dir: Path) -> None:
    fixture = load_fixture(oracle_dir, "hift_source-b2")
    generator = build_generator(fixture["config"], fixture["state_dict"])
    cfg = fixture["config"]["hift"]
    f0 = torch.tensor([[0.0, cfg["nsf_voiced_threshold"], 200.0]])
    phase, noise = generator.draw_source_noise(1, 3, torch.Generator().manual_seed(1))
    sine_waves, uv = generator.m_source.harmonics(f0, phase, noise)
    samples = generator.samples_per_frame
    assert uv[0, 0].tolist() == [0.0] * 2 * samples + [1.0] * samples  # strictly above the threshold
    assert torch.allclose(sine_waves[..., : 2 * samples], noise[..., : 2 * samples] * cfg["nsf_alpha"] / 3)


LAYOUTS = [([5, 3], [11, 7], 8, 2), ([4, 4, 2], [8, 8, 4], 16, 4), ([6], [12], 12, 3), ([8, 8], [16, 16], 16, 4)]


def small_generator(rates: list[int], kernels: list[int], n_fft: int, hop: int) -> HiFTGenerator:
    """A random generator with another up-sampling layout, loud enough that edge effects would show."""
    hift_cfg = {
        "in_channels": 20, "base_channels": 16, "nb_harmonics": 3, "sampling_rate": 16000, "nsf_alpha": 0.1,
        "nsf_sigma": 0.003, "nsf_voiced_threshold": 5, "upsample_rates": rates, "upsample_kernel_sizes": kernels,
        "istft_params": {"n_fft": n_fft, "hop_len": hop}, "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5]] * 3, "source_resblock_kernel_sizes": [7] * len(rates),
        "source_resblock_dilation_sizes": [[1, 3, 5]] * len(rates), "lrelu_slope": 0.2, "audio_limit": 0.99,
    }
    torch.manual_seed(0)
    model = HiFTGenerator.from_config(hift_cfg, {"num_class": 1, "in_channels": 20, "cond_channels": 8})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize(("rates", "kernels", "n_fft", "hop"), LAYOUTS)
def test_other_upsampling_layouts_give_u_samples_per_frame(rates: list[int], kernels: list[int], n_fft: int,
                                                           hop: int) -> None:
    model = small_generator(rates, kernels, n_fft, hop)
    with torch.inference_mode():
        wav = model(torch.randn(2, 20, 5), torch.Generator().manual_seed(0))
    assert wav.shape == (2, 5 * math.prod(rates) * hop)
    assert torch.isfinite(wav).all() and wav.abs().max() <= 0.99


@pytest.mark.parametrize(("rates", "kernels", "n_fft", "hop"), LAYOUTS)
def test_decoding_only_the_kept_tail_changes_nothing(rates: list[int], kernels: list[int], n_fft: int,
                                                     hop: int) -> None:
    model = small_generator(rates, kernels, n_fft, hop).double()
    n_frames, frame = 60, model.samples_per_frame
    n_samples = 7 * frame + frame // 3
    mel = torch.randn(2, 20, n_frames, dtype=torch.float64)
    with torch.inference_mode():
        f0 = 100 + 50 * model.predict_f0(mel)
        phase, noise = model.draw_source_noise(2, n_frames, torch.Generator().manual_seed(0))
        source = model.source(f0, phase, noise)
        full = model.decode(mel, source)
        tail = model.decode_last(mel, source, n_samples)
    assert model.config.decoder_left_context_frames + 8 < n_frames  # the test really crops
    assert tail.shape == (2, n_samples)
    assert torch.allclose(tail, full[:, -n_samples:], rtol=0, atol=1e-9)


@pytest.mark.parametrize(("rates", "kernels", "n_fft", "hop"), LAYOUTS[:1])
def test_the_excitation_made_from_the_first_decoded_frame_gives_the_same_tail(rates: list[int], kernels: list[int],
                                                                              n_fft: int, hop: int) -> None:
    model = small_generator(rates, kernels, n_fft, hop)
    n_frames, frame = 60, model.samples_per_frame
    n_samples = 7 * frame + frame // 3
    mel = torch.randn(2, 20, n_frames)
    with torch.inference_mode():
        f0 = 100 + 50 * model.predict_f0(mel)
        phase, noise = model.draw_source_noise(2, n_frames, torch.Generator().manual_seed(1))
        source = model.source(f0, phase, noise)
        first_frame = model.first_decoded_frame(n_frames, n_samples)
        source_tail = model.source(f0, phase, noise, first_sample=first_frame * frame)
        tail = model.decode_from(mel, source_tail, first_frame, n_samples)
        expected = model.decode_last(mel, source, n_samples)
    assert first_frame > 0  # the excitation really starts later
    assert torch.equal(source_tail, source[:, :, first_frame * frame :])  # phases accumulated from sample 0
    assert torch.equal(tail, expected)


def test_kept_weight_norms_follow_loaded_weights() -> None:
    model, fresh = small_generator(*LAYOUTS[0]), small_generator(*LAYOUTS[0])
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.mul_(1.1)
    mel = torch.randn(1, 20, 6)
    source = 0.1 * torch.randn(1, 1, 6 * model.samples_per_frame)
    with torch.inference_mode():
        before = model.decode(mel, source)  # keeps its weight norms
        model.load_state_dict(fresh.state_dict())
        after, expected = model.decode(mel, source), fresh.decode(mel, source)
    assert torch.equal(after, expected)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("first_sample", [0, 5 * 32, 5 * 32 + 7])
def test_summed_phases_equal_the_cumsum_over_every_sample(first_sample: int) -> None:
    model = small_generator(*LAYOUTS[1])  # 32 samples a frame
    f0 = 80.0 + 300.0 * torch.rand(2, 40, generator=torch.Generator().manual_seed(5))
    f0[:, 10:14] = 0.0  # unvoiced frames
    source = model.m_source
    harmonics = torch.arange(1, model.config.n_harmonic_channels + 1, dtype=torch.float32).view(1, -1, 1)
    f0_samples = f0.repeat_interleave(model.samples_per_frame, dim=1)[:, None, :]
    expected = torch.cumsum(f0_samples * harmonics / model.config.sampling_rate, dim=2)[:, :, first_sample:]
    assert torch.equal(source.cycles(f0, first_sample), expected)
