"""HiFT vocoder: mel frames -> waveform (oracle README, section 3.8), written from the spec.

    mel (B, n_mels, T) --predict_f0--> f0 (B, T) Hz
    f0 + random draws --source------> excitation (B, 1, L)          L = U·T, U = prod(upsample_rates)·hop_len
    mel + excitation --decode-------> wav (B, L)

`decode` is a HiFi-GAN-style up-sampler whose stages also receive the STFT of the excitation; its last layer
predicts a magnitude/phase spectrogram that an inverse STFT turns into audio. Module attributes mirror the
official `hift.pt` keys (`conv_pre`, `ups.{i}`, `resblocks.{j}`, `source_downs.{i}`, `source_resblocks.{i}`,
`conv_post`, `m_source.l_linear`, `f0_predictor.*`) so the file loads with `load_state_dict(strict=True)`.
Weight-normed layers store `weight_g`/`weight_v`; the effective weight is recomputed on every call.

Random draws (the source's initial phases and noise) never come from torch's global generator: `forward`
takes a `torch.Generator`, or call `draw_source_noise` and `source` yourself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAGNITUDE_CLIP = 100.0  # the largest STFT magnitude conv_post may produce
POST_LRELU_SLOPE = 0.01  # slope before conv_post: PyTorch's default, not `lrelu_slope`
SNAKE_EPS = 1e-9


@dataclass(frozen=True)
class HiFTConfig:
    """The vocoder's hyper-parameters under the official field names (`hift` and `f0_predictor` sections)."""

    in_channels: int
    base_channels: int
    nb_harmonics: int
    sampling_rate: int
    nsf_alpha: float
    nsf_sigma: float
    nsf_voiced_threshold: float
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    n_fft: int
    hop_len: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    source_resblock_kernel_sizes: tuple[int, ...]
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    lrelu_slope: float
    audio_limit: float
    f0_in_channels: int
    f0_cond_channels: int
    f0_num_class: int

    @classmethod
    def from_dicts(cls, hift_cfg: dict[str, Any], f0_cfg: dict[str, Any]) -> HiFTConfig:
        return cls(
            in_channels=int(hift_cfg["in_channels"]),
            base_channels=int(hift_cfg["base_channels"]),
            nb_harmonics=int(hift_cfg["nb_harmonics"]),
            sampling_rate=int(hift_cfg["sampling_rate"]),
            nsf_alpha=float(hift_cfg["nsf_alpha"]),
            nsf_sigma=float(hift_cfg["nsf_sigma"]),
            nsf_voiced_threshold=float(hift_cfg["nsf_voiced_threshold"]),
            upsample_rates=tuple(int(r) for r in hift_cfg["upsample_rates"]),
            upsample_kernel_sizes=tuple(int(k) for k in hift_cfg["upsample_kernel_sizes"]),
            n_fft=int(hift_cfg["istft_params"]["n_fft"]),
            hop_len=int(hift_cfg["istft_params"]["hop_len"]),
            resblock_kernel_sizes=tuple(int(k) for k in hift_cfg["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in hift_cfg["resblock_dilation_sizes"]),
            source_resblock_kernel_sizes=tuple(int(k) for k in hift_cfg["source_resblock_kernel_sizes"]),
            source_resblock_dilation_sizes=tuple(
                tuple(int(d) for d in ds) for ds in hift_cfg["source_resblock_dilation_sizes"]
            ),
            lrelu_slope=float(hift_cfg["lrelu_slope"]),
            audio_limit=float(hift_cfg["audio_limit"]),
            f0_in_channels=int(f0_cfg["in_channels"]),
            f0_cond_channels=int(f0_cfg["cond_channels"]),
            f0_num_class=int(f0_cfg["num_class"]),
        )

    @property
    def samples_per_frame(self) -> int:
        """U: output samples per mel frame."""
        return math.prod(self.upsample_rates) * self.hop_len

    @property
    def decoder_left_context_frames(self) -> int:
        """An upper bound on how many mel frames before an output sample's own frame can change it in `decode`.

        Sums each layer's left reach in output samples: conv_pre, then per stage the transposed conv (and the
        one-sample reflect pad) or the source branch, whichever reaches further, plus the widest residual block;
        then conv_post and one iSTFT frame. f0 and the source are not included: compute those on the full block.
        """
        frame = self.samples_per_frame
        reach = 3 * frame  # conv_pre: kernel 7, pad 3
        spacing = frame  # output samples per sample of the current stage's input
        for i, (rate, kernel) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
            x_reach = reach + math.ceil(kernel / rate) * spacing
            spacing //= rate
            later_rate = math.prod(self.upsample_rates[i + 1 :])
            source_reach = self.n_fft + 2 * later_rate * self.hop_len + spacing * residual_reach(
                self.source_resblock_kernel_sizes[i], self.source_resblock_dilation_sizes[i]
            )
            block_reach = max(
                residual_reach(k, ds) for k, ds in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes)
            )
            reach = max(x_reach + spacing, source_reach) + block_reach * spacing
        reach += 3 * self.hop_len + self.n_fft  # conv_post, one iSTFT frame
        return math.ceil(reach / frame)

    @property
    def n_harmonic_channels(self) -> int:
        """H + 1: the fundamental and its `nb_harmonics` overtones."""
        return self.nb_harmonics + 1


def residual_reach(kernel_size: int, dilations: Sequence[int]) -> int:
    """Left reach of one `ResBlock` in its own samples: the padding of every conv it chains."""
    return sum((kernel_size * d - d) // 2 + (kernel_size - 1) // 2 for d in dilations)


def weight_norm_weight(weight_g: Tensor, weight_v: Tensor) -> Tensor:
    """`g · v / ‖v‖`, the norm over every axis of `v` but axis 0 (out channels of a Conv1d, in channels of a
    ConvTranspose1d stored in × out × k)."""
    norm = weight_v.flatten(1).norm(dim=1).view(-1, *([1] * (weight_v.dim() - 1)))
    return weight_v * (weight_g / norm)


class WeightNormed(nn.Module):
    """Holds a weight-normed layer's `weight_g`, `weight_v` and `bias`. `weight()` is `g · v / ‖v‖`; outside
    autograd it is kept until g or v change (loaded, moved, edited in place), as the weights of a served model
    never do: a block then costs no weight-norm ops (about 4 per conv, a third of the tiny vocoder's ops)."""

    def __init__(self, g_rows: int, v_shape: tuple[int, int, int], bias_size: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(g_rows, 1, 1))
        self.weight_v = nn.Parameter(torch.randn(*v_shape) * 0.01)
        self.bias = nn.Parameter(torch.zeros(bias_size))
        self._kept: tuple[tuple[int, ...], Tensor] | None = None

    def weight(self) -> Tensor:
        g, v = self.weight_g, self.weight_v
        if torch.is_grad_enabled() or g.is_inference() or v.is_inference():  # the latter have no version counter
            return weight_norm_weight(g, v)
        key = (g.data_ptr(), v.data_ptr(), g._version, v._version)
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, weight_norm_weight(g, v))
        return self._kept[1]


class WNConv1d(WeightNormed):
    """Weight-normed Conv1d: `(B, in, T) -> (B, out, T')`; keys `weight_g`, `weight_v`, `bias`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, padding: int = 0):
        super().__init__(out_channels, (out_channels, in_channels, kernel_size), out_channels)
        self.dilation, self.padding = dilation, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, dilation=self.dilation)


class WNConvTranspose1d(WeightNormed):
    """Weight-normed ConvTranspose1d: `(B, in, T) -> (B, out, (T−1)·stride − 2·padding + k)`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__(in_channels, (in_channels, out_channels, kernel_size), out_channels)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose1d(x, self.weight(), self.bias, stride=self.stride, padding=self.padding)


class Snake(nn.Module):
    """`x + sin²(α·x) / (α + 1e-9)`, one α per channel (linear scale): `(B, C, T) -> (B, C, T)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha.view(1, -1, 1)
        return x + torch.sin(alpha * x).pow(2) / (alpha + SNAKE_EPS)


class ResBlock(nn.Module):
    """Snake → dilated conv → Snake → conv, added back, once per dilation: `(B, C, T) -> (B, C, T)`."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """Five weight-normed conv+ELU layers, a per-frame Linear and `abs`: mel `(B, in, T) -> f0 (B, T)` in Hz."""

    def __init__(self, in_channels: int, cond_channels: int, num_class: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [WNConv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # keys condnet.{0,2,4,6,8}
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: Tensor) -> Tensor:
        hidden = self.condnet(mel).transpose(1, 2)  # (B, T, cond)
        return self.classifier(hidden).abs().squeeze(-1)


class SourceModule(nn.Module):
    """Harmonic-plus-noise excitation (neural source filter), merged to one channel by `l_linear` + tanh."""

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.config = config
        self.l_linear = nn.Linear(config.n_harmonic_channels, 1)

    def harmonics(self, f0: Tensor, phase: Tensor, noise: Tensor, first_sample: int = 0) -> tuple[Tensor, Tensor]:
        """f0 `(B, T)` Hz, phase `(B, H+1, 1)`, noise `(B, H+1, L)` -> sine_waves `(B, H+1, L)`, uv `(B, 1, L)`.

        With `first_sample` k only samples k… of both come back, `(…, L − k)`: the phases still accumulate from
        sample 0, so they equal the full result's samples k…."""
        cfg = self.config
        per_frame = cfg.samples_per_frame
        first_frame = first_sample // per_frame
        f0_samples = f0[:, None, first_frame:].repeat_interleave(per_frame, dim=2)[:, :, first_sample % per_frame:]
        theta = 2 * math.pi * torch.remainder(self.cycles(f0, first_sample), 1.0)
        sines = cfg.nsf_alpha * torch.sin(theta + phase)
        uv = (f0_samples > cfg.nsf_voiced_threshold).to(f0.dtype)
        noise_amp = uv * cfg.nsf_sigma + (1 - uv) * (cfg.nsf_alpha / 3)
        return sines * uv + noise_amp * noise[:, :, first_sample:], uv

    def cycles(self, f0: Tensor, first_sample: int = 0) -> Tensor:
        """Each harmonic's phase in cycles at samples first_sample…, summed sample by sample from sample 0:
        f0 `(B, T)` Hz -> `(B, H+1, L − first_sample)`.

        A sample advances by inc = f0·h / sampling_rate (float32). f0 holds for a frame's U samples, so sample k of
        frame f has summed base_f + (k + 1)·inc_f, base_f = the earlier frames' U·inc, all in float64 as PyTorch's
        CPU cumsum of float32 accumulates: the same float32 values as that cumsum over every sample, without it.
        """
        cfg = self.config
        per_frame = cfg.samples_per_frame
        first_frame = first_sample // per_frame
        harmonic_numbers = torch.arange(1, cfg.n_harmonic_channels + 1, device=f0.device, dtype=f0.dtype)
        increments = (f0[:, None, :] * harmonic_numbers.view(1, -1, 1) / cfg.sampling_rate).double()  # (B, H+1, T)
        whole_frames = increments * per_frame
        before = F.pad(torch.cumsum(whole_frames, dim=2)[:, :, :-1], (1, 0))  # sum over the frames before each
        steps = torch.arange(1, per_frame + 1, device=f0.device, dtype=torch.float64)
        summed = before[:, :, first_frame:, None] + steps * increments[:, :, first_frame:, None]  # (B, H+1, T', U)
        return summed.flatten(2)[:, :, first_sample % per_frame:].to(f0.dtype)

    def forward(self, f0: Tensor, phase: Tensor, noise: Tensor, first_sample: int = 0
                ) -> tuple[Tensor, Tensor, Tensor]:
        """-> source `(B, 1, L)`, sine_waves `(B, H+1, L)`, uv `(B, 1, L)`; from `first_sample` on (see `harmonics`)."""
        sine_waves, uv = self.harmonics(f0, phase, noise, first_sample)
        source = torch.tanh(self.l_linear(sine_waves.transpose(1, 2))).transpose(1, 2)
        return source, sine_waves, uv


def source_down(spec_channels: int, channels: int, later_rate: int) -> nn.Conv1d:
    """Plain Conv1d bringing the excitation's STFT frames to a stage's rate (`later_rate` = the rates after it)."""
    if later_rate == 1:
        return nn.Conv1d(spec_channels, channels, 1)
    return nn.Conv1d(spec_channels, channels, 2 * later_rate, stride=later_rate, padding=later_rate // 2)


class HiFTGenerator(nn.Module):
    """The HiFT vocoder with the official key layout. All methods take a batch; items never interact."""

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.config = config
        cfg = config
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(cfg.source_resblock_kernel_sizes) != len(cfg.upsample_rates):
            raise ValueError("one source resblock per up-sampling stage is required")
        base, spec_channels = cfg.base_channels, cfg.n_fft + 2
        self.m_source = SourceModule(cfg)
        self.conv_pre = WNConv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList()
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = base // 2**i, base // 2 ** (i + 1)
            self.ups.append(WNConvTranspose1d(c_in, c_out, kernel, stride=rate, padding=(kernel - rate) // 2))
            self.source_downs.append(source_down(spec_channels, c_out, math.prod(cfg.upsample_rates[i + 1 :])))
            self.source_resblocks.append(
                ResBlock(c_out, cfg.source_resblock_kernel_sizes[i], cfg.source_resblock_dilation_sizes[i])
            )
            for kernel_size, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(c_out, kernel_size, dilations))
        last_channels = base // 2 ** len(cfg.upsample_rates)
        self.conv_post = WNConv1d(last_channels, spec_channels, 7, padding=3)
        self.f0_predictor = F0Predictor(cfg.f0_in_channels, cfg.f0_cond_channels, cfg.f0_num_class)
        self.register_buffer("stft_window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    @classmethod
    def from_config(cls, hift_cfg: dict[str, Any], f0_cfg: dict[str, Any]) -> HiFTGenerator:
        """Build from the `hift` and `f0_predictor` config sections (official field names)."""
        return cls(HiFTConfig.from_dicts(hift_cfg, f0_cfg))

    @property
    def samples_per_frame(self) -> int:
        """U: output samples per mel frame (256 for the real model)."""
        return self.config.samples_per_frame

    def predict_f0(self, mel: Tensor) -> Tensor:
        """mel `(B, n_mels, T)` -> f0 `(B, T)` in Hz."""
        return self.f0_predictor(mel)

    def draw_source_noise(self, batch: int, n_frames: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Fresh draws for `source`: phase `(B, H+1, 1)` uniform in [−π, π) with the fundamental's 0, and
        standard-normal noise `(B, H+1, U·n_frames)`, both from `generator` (on the module's device and dtype)."""
        like = {"device": self.stft_window.device, "dtype": self.stft_window.dtype}
        channels = self.config.n_harmonic_channels
        uniform = torch.rand(batch, channels, 1, generator=generator, **like)
        phase = uniform * (2 * math.pi) - math.pi
        phase[:, 0] = 0.0
        noise = torch.randn(batch, channels, n_frames * self.samples_per_frame, generator=generator, **like)
        return phase, noise

    def source(self, f0: Tensor, phase: Tensor, noise: Tensor, first_sample: int = 0) -> Tensor:
        """f0 `(B, T)` Hz, phase `(B, H+1, 1)`, noise `(B, H+1, U·T)` -> excitation `(B, 1, U·T − first_sample)`:
        the samples from `first_sample` on, equal to the whole block's (its phases accumulate from the start)."""
        return self.m_source(f0, phase, noise, first_sample)[0]

    def source_stft(self, source: Tensor) -> Tensor:
        """Excitation `(B, 1, L)` -> `[real; imag]` `(B, n_fft+2, L/hop_len + 1)` (centred, periodic Hann)."""
        cfg = self.config
        spectrum = torch.stft(
            source.squeeze(1), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window,
            center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
        )
        return torch.cat([spectrum.real, spectrum.imag], dim=1)

    def decode_stft(self, mel: Tensor, s_stft: Tensor) -> Tensor:
        """mel `(B, n_mels, T)` and the excitation's `source_stft` -> wav `(B, U·T)` in [−audio_limit, audio_limit]."""
        cfg = self.config
        x = self.conv_pre(mel)
        n_kernels = len(cfg.resblock_kernel_sizes)
        last_stage = len(self.ups) - 1
        for i, (up, down, source_block) in enumerate(zip(self.ups, self.source_downs, self.source_resblocks)):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == last_stage:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + source_block(down(s_stft))
            x = self.mean_of_resblocks(x, self.resblocks[i * n_kernels : (i + 1) * n_kernels])
        x = self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE))
        return self.inverse_stft(x).clamp(-cfg.audio_limit, cfg.audio_limit)

    @staticmethod
    def mean_of_resblocks(x: Tensor, blocks: nn.ModuleList) -> Tensor:
        """Mean of the parallel residual blocks (multi-receptive-field fusion): `(B, C, T) -> (B, C, T)`."""
        total = blocks[0](x)
        for block in blocks[1:]:
            total = total + block(x)
        return total / len(blocks)

    def inverse_stft(self, spec: Tensor) -> Tensor:
        """conv_post output `(B, n_fft+2, frames)`: log-magnitudes then phase logits -> `(B, hop·(frames−1))`."""
        cfg = self.config
        n_bins = cfg.n_fft // 2 + 1
        magnitude = torch.exp(spec[:, :n_bins]).clamp(max=MAGNITUDE_CLIP)
        phase = torch.sin(spec[:, n_bins:])
        spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(
            spectrum, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.stft_window,
            center=True, normalized=False, onesided=True,
        )

    def decode(self, mel: Tensor, source: Tensor) -> Tensor:
        """mel `(B, n_mels, T)`, excitation `(B, 1, U·T)` -> wav `(B, U·T)`."""
        return self.decode_stft(mel, self.source_stft(source))

    def first_decoded_frame(self, n_frames: int, n_samples: int) -> int:
        """The first of `n_frames` mel frames that the last `n_samples` of their decoded audio depend on."""
        frame = self.samples_per_frame
        first_needed_frame = (n_frames * frame - n_samples) // frame
        return max(0, first_needed_frame - self.config.decoder_left_context_frames)

    def decode_last(self, mel: Tensor, source: Tensor, n_samples: int) -> Tensor:
        """The last `n_samples` of `decode(mel, source)`, from only the mel frames (and excitation) they depend on.

        The real-time path keeps only the end of each vocoded block, so this skips up to half the vocoder's work.
        Pass the excitation of the whole block (its sine phases accumulate from the block's start). Agrees with
        `decode` to float rounding. mel `(B, n_mels, T)`, source `(B, 1, U·T)` -> `(B, n_samples)`.
        """
        first_frame = self.first_decoded_frame(mel.shape[2], n_samples)
        return self.decode_from(mel, source[:, :, first_frame * self.samples_per_frame :], first_frame, n_samples)

    def decode_from(self, mel: Tensor, source_tail: Tensor, first_frame: int, n_samples: int) -> Tensor:
        """`decode_last` given only the excitation from `first_frame = first_decoded_frame(T, n_samples)` on
        (`source(…, first_sample=first_frame·U)`, `(B, 1, U·(T − first_frame))`) -> `(B, n_samples)`."""
        wav = self.decode(mel[:, :, first_frame:], source_tail)
        return wav[:, wav.shape[1] - n_samples :]

    def forward(self, mel: Tensor, generator: torch.Generator) -> Tensor:
        """mel `(B, n_mels, T)` -> wav `(B, U·T)`, with fresh source draws from `generator`."""
        f0 = self.predict_f0(mel)
        phase, noise = self.draw_source_noise(mel.shape[0], mel.shape[2], generator)
        return self.decode(mel, self.source(f0, phase, noise))
