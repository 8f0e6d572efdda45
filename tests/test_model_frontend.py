"""Audio front ends (oracle spec 3.1, 3.2, 3.9 R2): log-mel, Kaldi fbank, windowed-sinc resampling."""

from __future__ import annotations

import math

import pytest
import torch

from fastvc.model.audio import LogMel, kaldi_fbank, sinc_resample
from fastvc.model.check import check_file

FRONTEND_FIXTURES = ["mel-speech1s", "mel-b2", "fbank-speech1s", "fbank-short"]
REAL_MEL = dict(sr=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80, fmin=0, fmax=8000)


@pytest.mark.parametrize("name", FRONTEND_FIXTURES)
def test_frontend_fixture_matches_oracle(oracle_dir, name):
    line = check_file(oracle_dir / f"{name}.pt")
    assert line["ok"], line


def speech_like(batch: int, num_samples: int, sample_hz: int, seed: int = 0) -> torch.Tensor:
    """(batch, num_samples) harmonic tones with noise at clearly different levels per item."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / sample_hz
    f0 = 110.0 + 40.0 * torch.rand(batch, 1, generator=generator)
    tone = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    noise = 0.05 * torch.randn(batch, num_samples, generator=generator)
    levels = torch.logspace(-2, -0.5, batch)[:, None]
    return (levels * (tone + noise) / 3.0).float()


def test_mel_of_a_batch_equals_mel_of_each_item():
    log_mel = LogMel(**REAL_MEL)
    wav = speech_like(3, 11025, 22050)
    batched = log_mel(wav)
    assert batched.shape == (3, 80, 11025 // 256)
    for b in range(3):
        torch.testing.assert_close(batched[b], log_mel(wav[b:b + 1])[0], atol=1e-5, rtol=0)


def test_mel_peaks_at_the_tone_frequency_and_floors_silence():
    log_mel = LogMel(**REAL_MEL)
    t = torch.arange(22050) / 22050
    wav = torch.stack([0.5 * torch.sin(2 * math.pi * 1000.0 * t), torch.zeros(22050)]).float()
    mel = log_mel(wav)
    peak_bin = int(mel[0, :, 40].argmax())
    assert abs(float(log_mel.mel_basis[peak_bin].argmax()) * 22050 / 1024 - 1000.0) < 60.0
    assert torch.allclose(mel[1], torch.full_like(mel[1], math.log(1e-5)), atol=0.05)


def test_fbank_of_a_batch_equals_fbank_of_each_item():
    wav = speech_like(3, 8000, 16000, seed=1)
    batched = kaldi_fbank(wav)
    assert batched.shape == (3, 1 + (8000 - 400) // 160, 80)
    for b in range(3):
        torch.testing.assert_close(batched[b], kaldi_fbank(wav[b])[0], atol=1e-4, rtol=0)
    assert batched.mean(dim=1).abs().max() < 1e-4  # utterance mean removed


def test_fbank_without_snip_edges_centres_frames():
    wav = speech_like(1, 4321, 16000, seed=2)
    features = kaldi_fbank(wav, snip_edges=False)
    assert features.shape == (1, (4321 + 80) // 160, 80)


def spec_sinc_resample(x: torch.Tensor, orig_hz: int, new_hz: int) -> torch.Tensor:
    """Spec 3.9 R2 evaluated literally in float64: y[n] = Σ_i x[i]·k(i/orig − n/new). x (N,) -> (M,)."""
    divisor = math.gcd(orig_hz, new_hz)
    orig, new = orig_hz // divisor, new_hz // divisor
    base = 0.99 * min(orig, new)
    out_length = math.ceil(x.shape[-1] * new / orig)
    i = torch.arange(x.shape[-1], dtype=torch.float64)[None, :]
    n = torch.arange(out_length, dtype=torch.float64)[:, None]
    bt = (base * (i / orig - n / new)).clamp(-6, 6)
    sinc = torch.where(bt == 0, torch.ones_like(bt), torch.sin(math.pi * bt) / (math.pi * bt))
    kernel = (base / orig) * sinc * torch.cos(math.pi * bt / 12) ** 2
    kernel = kernel * ((i - orig * n / new).abs() <= math.ceil(6 * orig / base))
    return kernel @ x.double()


@pytest.mark.parametrize("orig_hz,new_hz", [(22050, 16000), (16000, 22050), (48000, 16000), (8000, 22050)])
def test_sinc_resample_follows_the_spec_formula(orig_hz, new_hz):
    x = speech_like(2, 1234, orig_hz, seed=3)
    y = sinc_resample(x, orig_hz, new_hz)
    assert y.shape == (2, math.ceil(1234 * new_hz / orig_hz)) and y.dtype == torch.float32
    for b in range(2):
        assert (y[b].double() - spec_sinc_resample(x[b], orig_hz, new_hz)).abs().max() < 2e-5


def test_sinc_resample_keeps_a_low_sine_away_from_the_edges():
    seconds, freq_hz = 0.5, 440.0
    x = torch.sin(2 * math.pi * freq_hz * torch.arange(int(22050 * seconds)) / 22050).float()
    y = sinc_resample(x, 22050, 16000)
    expected = torch.sin(2 * math.pi * freq_hz * torch.arange(y.shape[-1]) / 16000)
    assert y.shape == (math.ceil(int(22050 * seconds) * 320 / 441),)
    assert (y - expected)[100:-100].abs().max() < 1e-3


def test_sinc_resample_is_identity_at_equal_rates_and_batched_over_leading_axes():
    x = speech_like(4, 999, 22050).reshape(2, 2, 999)
    assert sinc_resample(x, 22050, 22050) is x
    y = sinc_resample(x, 22050, 16000)
    torch.testing.assert_close(y[1, 0], sinc_resample(x[1, 0], 22050, 16000))
