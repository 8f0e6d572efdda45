"""Audio front ends of the model: log-mel (22.05 kHz), Kaldi fbank (16 kHz) and windowed-sinc resampling.

Written from the oracle spec (../shared/oracle/README.md, sections 3.1, 3.2 and 3.9 step R2):

    LogMel          (B, N) waveform      -> (B, n_mels, T) natural-log mel magnitudes (Slaney filterbank)
    kaldi_fbank     (B, N) or (N,)       -> (B, T, num_mel_bins) Kaldi-compatible log filterbank energies
    sinc_resample   (..., N) at orig_hz  -> (..., ceil(N·new_hz/orig_hz)) at new_hz

Everything is batched over the leading axis and vectorised (no Python loops over samples or frames).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------------
# Log-mel spectrogram (spec 3.1)
# --------------------------------------------------------------------------------------------------------

_SLANEY_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL  # 15
_SLANEY_MELS_PER_LOG_HZ = 27.0 / math.log(6.4)


def slaney_hz_to_mel(freq_hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz (`3f/200`), logarithmic above."""
    linear = freq_hz / _SLANEY_LINEAR_HZ_PER_MEL
    log_part = _SLANEY_LOG_START_MEL + torch.log(freq_hz.clamp(min=_SLANEY_LOG_START_HZ) / _SLANEY_LOG_START_HZ) \
        * _SLANEY_MELS_PER_LOG_HZ
    return torch.where(freq_hz >= _SLANEY_LOG_START_HZ, log_part, linear)


def slaney_mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `slaney_hz_to_mel`."""
    linear = mel * _SLANEY_LINEAR_HZ_PER_MEL
    log_part = _SLANEY_LOG_START_HZ * torch.exp((mel - _SLANEY_LOG_START_MEL) / _SLANEY_MELS_PER_LOG_HZ)
    return torch.where(mel >= _SLANEY_LOG_START_MEL, log_part, linear)


def slaney_mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """librosa's default ("Slaney", area-normalised) mel filterbank, built in float64, returned float32.

    `fmax` None means sr / 2, as in librosa. Returns (n_mels, n_fft // 2 + 1).
    """
    fmax = sr / 2.0 if fmax is None else fmax
    fft_hz = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sr / n_fft)
    mel_edges = torch.linspace(float(slaney_hz_to_mel(torch.tensor(float(fmin), dtype=torch.float64))),
                               float(slaney_hz_to_mel(torch.tensor(float(fmax), dtype=torch.float64))),
                               n_mels + 2, dtype=torch.float64)
    hz_edges = slaney_mel_to_hz(mel_edges)                                  # (n_mels + 2,)
    widths = hz_edges[1:] - hz_edges[:-1]                                   # (n_mels + 1,)
    rising = (fft_hz[None, :] - hz_edges[:-2, None]) / widths[:-1, None]    # (n_mels, n_bins)
    falling = (hz_edges[2:, None] - fft_hz[None, :]) / widths[1:, None]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)
    area_norm = 2.0 / (hz_edges[2:] - hz_edges[:-2])
    return (triangles * area_norm[:, None]).to(torch.float32)


class LogMel(nn.Module):
    """Seed-VC's log-mel spectrogram: reflect pad, periodic Hann STFT, magnitude, Slaney mel, natural log.

    forward: wav (B, N) float32 -> (B, n_mels, T) with T = 1 + (N + 2·pad - n_fft) // hop_length,
    pad = (n_fft - hop_length) // 2. `mel_basis` is (n_mels, n_fft // 2 + 1).
    """

    def __init__(self, sr: int, n_fft: int, win_length: int, hop_length: int, n_mels: int,
                 fmin: float, fmax: float | None) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = int(n_fft), int(win_length), int(hop_length)
        self.pad = (self.n_fft - self.hop_length) // 2
        self.register_buffer("mel_basis", slaney_mel_basis(sr, self.n_fft, n_mels, fmin, fmax), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, N) -> STFT magnitude (B, n_fft // 2 + 1, T), with 1e-9 inside the square root."""
        padded = F.pad(wav.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        spec = torch.stft(padded, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=False, return_complex=True)
        spec = torch.view_as_real(spec)
        return torch.sqrt(spec.pow(2).sum(-1) + 1e-9)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_basis, self.magnitude(wav))
        return torch.log(torch.clamp(mel, min=1e-5))


# --------------------------------------------------------------------------------------------------------
# Kaldi-compatible filterbank (spec 3.2)
# --------------------------------------------------------------------------------------------------------

_FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.1920929e-07, Kaldi's log floor


def kaldi_mel(freq_hz: torch.Tensor) -> torch.Tensor:
    """Kaldi's mel scale `1127·ln(1 + f/700)`."""
    return 1127.0 * torch.log1p(freq_hz / 700.0)


def kaldi_window(window_type: str, length: int, blackman_coeff: float = 0.42) -> torch.Tensor:
    """Kaldi's frame windows of `length` samples (symmetric: the cosine period is length − 1). float64."""
    n = torch.arange(length, dtype=torch.float64)
    a = 2.0 * math.pi / (length - 1) if length > 1 else 0.0
    if window_type == "hanning":
        return 0.5 - 0.5 * torch.cos(a * n)
    if window_type == "hamming":
        return 0.54 - 0.46 * torch.cos(a * n)
    if window_type == "povey":
        return (0.5 - 0.5 * torch.cos(a * n)).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    if window_type == "blackman":
        return blackman_coeff - 0.5 * torch.cos(a * n) + (0.5 - blackman_coeff) * torch.cos(2.0 * a * n)
    raise ValueError(f"unknown Kaldi window_type {window_type!r}")


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_hz: float, low_freq: float,
                    high_freq: float) -> torch.Tensor:
    """Kaldi's triangular mel filters on the FFT bins, float64 (num_bins, padded_window // 2 + 1).

    `high_freq <= 0` counts back from Nyquist. The Nyquist bin's weight is always 0.
    """
    nyquist_hz = 0.5 * sample_hz
    high_hz = high_freq if high_freq > 0.0 else nyquist_hz + high_freq
    if not 0.0 <= low_freq < high_hz <= nyquist_hz:
        raise ValueError(f"bad Kaldi mel range low_freq={low_freq}, high_freq={high_freq} at {sample_hz} Hz")
    mel_low = kaldi_mel(torch.tensor(float(low_freq), dtype=torch.float64))
    mel_high = kaldi_mel(torch.tensor(float(high_hz), dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + torch.arange(num_bins, dtype=torch.float64)[:, None] * delta   # (num_bins, 1)
    centre, right = left + delta, left + 2.0 * delta
    fft_mel = kaldi_mel(torch.arange(padded_window // 2, dtype=torch.float64) * (sample_hz / padded_window))
    rising = (fft_mel - left) / (centre - left)
    falling = (right - fft_mel) / (right - centre)
    weights = torch.where(fft_mel <= centre, rising, falling)
    weights = torch.where((fft_mel > left) & (fft_mel < right), weights, torch.zeros_like(weights))
    return F.pad(weights, (0, 1))  # Nyquist bin


def _frame_starts(num_samples: int, window: int, shift: int, snip_edges: bool) -> tuple[int, int]:
    """(number of frames, first sample of frame 0) following Kaldi's framing rules."""
    if snip_edges:
        return (0 if num_samples < window else 1 + (num_samples - window) // shift), 0
    return (num_samples + shift // 2) // shift, shift // 2 - window // 2


def _cut_frames(wav: torch.Tensor, window: int, shift: int, snip_edges: bool) -> torch.Tensor:
    """wav (B, N) -> frames (B, T, window). Without snip_edges, out-of-range samples reflect symmetrically
    (the edge sample repeats), as Kaldi does."""
    num_samples = wav.shape[-1]
    num_frames, first = _frame_starts(num_samples, window, shift, snip_edges)
    if num_frames <= 0:
        raise ValueError(f"{num_samples} samples are shorter than one {window}-sample Kaldi frame")
    if snip_edges:
        return wav.unfold(-1, window, shift)[:, :num_frames]
    index = first + torch.arange(num_frames, device=wav.device)[:, None] * shift \
        + torch.arange(window, device=wav.device)[None, :]
    index = torch.remainder(index, 2 * num_samples)
    index = torch.where(index >= num_samples, 2 * num_samples - 1 - index, index)
    return wav[:, index]


def _log_energy(frames: torch.Tensor, energy_floor: float) -> torch.Tensor:
    """frames (B, T, W) -> (B, T) log energy, floored at log(energy_floor) when that is > 0."""
    log_energy = frames.pow(2).sum(-1).clamp(min=_FLOAT32_EPS).log()
    if energy_floor > 0.0:
        log_energy = log_energy.clamp(min=math.log(energy_floor))
    return log_energy


def kaldi_fbank(wav: torch.Tensor, *, num_mel_bins: int = 80, sample_frequency: float = 16000.0,
                frame_length: float = 25.0, frame_shift: float = 10.0, dither: float = 0.0,
                preemphasis_coefficient: float = 0.97, remove_dc_offset: bool = True,
                window_type: str = "povey", blackman_coeff: float = 0.42, round_to_power_of_two: bool = True,
                snip_edges: bool = True, low_freq: float = 20.0, high_freq: float = 0.0,
                use_log_fbank: bool = True, use_power: bool = True, use_energy: bool = False,
                energy_floor: float = 1.0, raw_energy: bool = True, htk_compat: bool = False,
                subtract_mean: bool = False, subtract_utterance_mean: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Kaldi-compatible log mel filterbank (Kaldi option names; defaults are Seed-VC's CAMPPlus settings).

    wav: (B, N) or (N,) float32 at `sample_frequency`, not scaled to 16-bit range. All items share N.
    Returns (B, T, num_mel_bins) float32 (a 1-D input is treated as B=1), plus a log-energy column first
    (last with `htk_compat`) when `use_energy`. `subtract_utterance_mean` is Seed-VC's step after Kaldi:
    the mean over the T frames is removed from each bin (as is Kaldi's own `subtract_mean`).
    `dither` > 0 needs `generator` for its Gaussian draws.
    """
    wav = wav.reshape(1, -1) if wav.dim() == 1 else wav
    wav = wav.to(torch.float32)
    window = int(sample_frequency * frame_length * 0.001)
    shift = int(sample_frequency * frame_shift * 0.001)
    padded = 1 << (window - 1).bit_length() if round_to_power_of_two else window
    frames = _cut_frames(wav, window, shift, snip_edges)                       # (B, T, window)
    if dither != 0.0:
        if generator is None:
            raise ValueError("kaldi_fbank with dither needs a torch.Generator")
        frames = frames + dither * torch.randn(frames.shape, generator=generator, dtype=frames.dtype)
    if remove_dc_offset:
        frames = frames - frames.mean(-1, keepdim=True)
    energy = _log_energy(frames, energy_floor) if use_energy and raw_energy else None
    if preemphasis_coefficient != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis_coefficient * previous
    frames = frames * kaldi_window(window_type, window, blackman_coeff).to(frames)
    if use_energy and not raw_energy:
        energy = _log_energy(frames, energy_floor)
    spectrum = torch.fft.rfft(frames, n=padded).abs()                          # (B, T, padded // 2 + 1)
    if use_power:
        spectrum = spectrum.pow(2)
    banks = kaldi_mel_banks(num_mel_bins, padded, sample_frequency, low_freq, high_freq).to(spectrum)
    features = torch.matmul(spectrum, banks.T)                                 # (B, T, num_mel_bins)
    if use_log_fbank:
        features = features.clamp(min=_FLOAT32_EPS).log()
    if energy is not None:
        parts = [features, energy[..., None]] if htk_compat else [energy[..., None], features]
        features = torch.cat(parts, dim=-1)
    if subtract_mean or subtract_utterance_mean:
        features = features - features.mean(dim=1, keepdim=True)
    return features


# --------------------------------------------------------------------------------------------------------
# Windowed-sinc resampling (spec 3.9, step R2: torchaudio's default resampler)
# --------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Kernel bank (new, 1, 2·width + orig) for gcd-reduced rates, and the half-width `width` in input
    samples. Row j holds the taps of output phase j: tap p weighs input sample m·orig − width + p for output
    m·new + j. Evaluated in float32 (Hann-squared-cos window), as torchaudio does for float32 audio.
    Built as a plain CPU tensor whatever the caller's context (inference mode, default device), since it
    is cached."""
    with torch.inference_mode(False), torch.device("cpu"):
        return _build_sinc_kernel(orig, new, lowpass_filter_width, rolloff)


def _build_sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    taps = torch.arange(-width, width + orig, dtype=torch.float32)[None, :] / orig      # (1, K)
    phases = torch.arange(0, -new, -1, dtype=torch.float32)[:, None] / new               # (new, 1)
    t = (phases + taps) * base_freq
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2).pow(2)
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * (base_freq / orig)
    return kernel.unsqueeze(1), width


def sinc_resample(x: torch.Tensor, orig_hz: int, new_hz: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited windowed-sinc resampling, torchaudio's default (rolloff 0.99, width 6, Hann window).

    x: (..., N) float -> (..., ceil(N·new_hz/orig_hz)). Samples outside x count as zero. One strided conv1d
    over a bank of per-phase kernels; the kernel is cached per reduced rate pair.
    """
    orig_hz, new_hz = int(orig_hz), int(new_hz)
    if orig_hz <= 0 or new_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_hz} -> {new_hz}")
    if orig_hz == new_hz:
        return x
    divisor = math.gcd(orig_hz, new_hz)
    orig, new = orig_hz // divisor, new_hz // divisor
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, float(rolloff))
    lead_shape, num_samples = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, 1, num_samples)
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded, kernel.to(dtype=x.dtype, device=x.device), stride=orig)   # (M, new, frames)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    out_length = math.ceil(new * num_samples / orig)
    return out[:, :out_length].reshape(*lead_shape, out_length)
