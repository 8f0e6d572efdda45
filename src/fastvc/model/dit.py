"""The DiT velocity estimator of Seed-VC's real-time model (oracle spec 3.6).

    tokens = [t1, s, u_0 … u_{T-1}]                       (B, T+2, D): time token, style token, frames
    L x [U-ViT skip in, x + Attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x)), U-ViT skip out]
    h = adaptive RMSNorm(h; t1), drop the two prefix tokens, final MLP   -> (B, 80, T)

Attention uses a key-padding mask from `x_lens` and interleaved-pair RoPE over positions 0…T+1. `DiT` holds the
estimator as `estimator` so that its state dict keys equal the checkpoint's `net['cfm']` (`estimator.…`),
including the keys the forward pass never uses (listed in `VelocityEstimator`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RMS_NORM_EPS = 1e-5
ROPE_BASE = 10000.0
TIME_FREQ_COUNT = 128  # sinusoidal time embedding: 128 frequencies -> 256 values
TIME_SCALE = 1000.0
INPUT_POS_LENGTH = 16384  # length of the unused `input_pos` buffer, fixed by the upstream code
FFN_MULTIPLE = 256
PREFIX_TOKENS = 2  # time token, style token


def ffn_width(dim: int) -> int:
    """SwiGLU inner width: int(8·dim/3) rounded up to a multiple of 256 (1024 for dim 384)."""
    width = int(8 * dim / 3)
    return -(-width // FFN_MULTIPLE) * FFN_MULTIPLE


@dataclass(frozen=True)
class DiTConfig:
    """The hyper-parameters the estimator's shapes depend on, read from the yaml `model_params` dict."""

    hidden_dim: int
    num_heads: int
    depth: int
    in_channels: int
    content_dim: int
    content_codebook_size: int
    style_dim: int

    @property
    def head_dim(self) -> int:
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not a multiple of num_heads {self.num_heads}")
        return self.hidden_dim // self.num_heads

    @classmethod
    def from_model_params(cls, model_params: dict[str, Any]) -> DiTConfig:
        dit = model_params["DiT"]
        check_supported(dit)
        return cls(hidden_dim=dit["hidden_dim"], num_heads=dit["num_heads"], depth=dit["depth"],
                   in_channels=dit["in_channels"], content_dim=dit["content_dim"],
                   content_codebook_size=dit["content_codebook_size"], style_dim=model_params["style_encoder"]["dim"])


SUPPORTED_FLAGS = {"time_as_token": True, "style_as_token": True, "uvit_skip_connection": True,
                   "final_layer_type": "mlp", "is_causal": False, "long_skip_connection": False,
                   "zero_prompt_speech_token": False, "f0_condition": False, "add_resblock_in_transformer": False}


def check_supported(dit: dict[str, Any]) -> None:
    """Refuse DiT variants other than seed-uvit-tat (spec 3.6) instead of computing something else silently."""
    wrong = {name: dit[name] for name, value in SUPPORTED_FLAGS.items() if name in dit and dit[name] != value}
    if wrong:
        raise ValueError(f"unsupported DiT variant {wrong}; only {SUPPORTED_FLAGS} is implemented")


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D), normalised in float32."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + RMS_NORM_EPS)
        return normed.type_as(x) * self.weight


class AdaptiveNorm(nn.Module):
    """RMSNorm with a D -> 2D scale/shift projection. Inside the layers the projection is unused (time is a
    token) and only `norm` runs; the final norm uses it with the time embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project_layer = nn.Linear(dim, 2 * dim)
        self.norm = RMSNorm(dim)

    def forward(self, h: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D), t1: (B, D) -> scale · RMSNorm(h) + shift, (B, N, D)."""
        scale, shift = self.project_layer(t1)[:, None, :].chunk(2, dim=-1)
        return scale * self.norm(h) + shift


def rope_cos_sin(n_tokens: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles p · base^(−2j/head_dim), in float32: each (n_tokens, head_dim // 2)."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(n_tokens, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2j, 2j+1). x: (B, H, N, head_dim); cos, sin: (N, head_dim // 2) -> like x."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, z: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor) -> torch.Tensor:
        """z: (B, N, D); key_mask: (B, 1, 1, N) bool, True = may be attended to -> (B, N, D)."""
        q, k, v = (part.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for part in self.wqkv(z).chunk(3, dim=-1))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.wo(attended.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = ffn_width(dim)
        self.w1 = nn.Linear(dim, inner, bias=False)
        self.w3 = nn.Linear(dim, inner, bias=False)
        self.w2 = nn.Linear(inner, dim, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """SwiGLU: (B, N, D) -> (B, N, D)."""
        return self.w2(F.silu(self.w1(z)) * self.w3(z))


class TransformerBlock(nn.Module):
    """Pre-norm attention and SwiGLU. `skip_in_linear` (2D -> D) merges a U-ViT skip in receiving layers; every
    layer stores it. The norms' `project_layer`s are unused here."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention = Attention(dim, num_heads)
        self.feed_forward = FeedForward(dim)
        self.attention_norm = AdaptiveNorm(dim)
        self.ffn_norm = AdaptiveNorm(dim)
        self.skip_in_linear = nn.Linear(2 * dim, dim)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor,
                skip: torch.Tensor | None) -> torch.Tensor:
        """h: (B, N, D), skip: (B, N, D) or None -> (B, N, D)."""
        if skip is not None:
            h = self.skip_in_linear(torch.cat([h, skip], dim=-1))
        h = h + self.attention(self.attention_norm.norm(h), rope, key_mask)
        return h + self.feed_forward(self.ffn_norm.norm(h))


class Transformer(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.layers = nn.ModuleList(TransformerBlock(config.hidden_dim, config.num_heads) for _ in range(config.depth))
        self.norm = AdaptiveNorm(config.hidden_dim)

    def forward(self, h: torch.Tensor, t1: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """h: (B, N, D) tokens, t1: (B, D) time embedding, key_mask: (B, 1, 1, N) bool -> (B, N, D).

        U-ViT skips: layers i < L//2 store their output, layers i > L//2 take the latest stored one (LIFO).
        """
        rope = rope_cos_sin(h.shape[1], self.head_dim, h.device)
        half = len(self.layers) // 2
        stored: list[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            skip = stored.pop() if index > half else None
            h = layer(h, rope, key_mask, skip)
            if index < half:
                stored.append(h)
        return self.norm(h, t1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        freqs = torch.exp(-math.log(10000.0) * torch.arange(TIME_FREQ_COUNT, dtype=torch.float32) / TIME_FREQ_COUNT)
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(2 * TIME_FREQ_COUNT, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) flow time in [0, 1] -> (B, D); the sinusoid is [cos; sin], cos first."""
        args = TIME_SCALE * t[:, None].float() * self.freqs[None, :]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class WeightNormLinearWeights(nn.Module):
    """Holds a weight-normed Linear's `weight_g` (out, 1), `weight_v` (out, in) and `bias` (out); never run."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))


class VelocityEstimator(nn.Module):
    """The DiT itself. Unused, kept for strict loading: `x_embedder`, `cond_embedder`, `skip_linear`,
    `content_mask_embedder`, `input_pos`, the layers' norm `project_layer`s and `skip_in_linear` of layers ≤ L//2."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim, mels = config.hidden_dim, config.in_channels
        self.transformer = Transformer(config)
        self.t_embedder = TimestepEmbedder(dim)
        self.cond_projection = nn.Linear(config.content_dim, dim)
        self.cond_x_merge_linear = nn.Linear(2 * mels + dim, dim)
        self.style_in = nn.Linear(config.style_dim, dim)
        self.final_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, mels))
        self.x_embedder = WeightNormLinearWeights(mels, dim)
        self.cond_embedder = nn.Embedding(config.content_codebook_size, dim)
        self.skip_linear = nn.Linear(dim + mels, dim)
        self.content_mask_embedder = nn.Embedding(1, dim)
        self.register_buffer("input_pos", torch.arange(INPUT_POS_LENGTH))

    def forward(self, x: torch.Tensor, prompt_x: torch.Tensor, x_lens: torch.Tensor, t: torch.Tensor,
                style: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity of the flow at time t.

        x, prompt_x: (B, 80, T); x_lens: (B,) int64; t: (B,); style: (B, S); cond: (B, T, content_dim)
        -> (B, 80, T), zero in frames >= x_lens. A single t (0-dim or (1,)) applies to every item.
        """
        t1 = self.t_embedder(t.reshape(-1).expand(x.shape[0]))
        frames = self.cond_x_merge_linear(torch.cat([x.transpose(1, 2), prompt_x.transpose(1, 2),
                                                     self.cond_projection(cond)], dim=-1))
        tokens = torch.cat([t1[:, None, :], self.style_in(style)[:, None, :], frames], dim=1)
        valid = torch.arange(x.shape[2], device=x.device) < x_lens[:, None]  # (B, T)
        key_mask = F.pad(valid, (PREFIX_TOKENS, 0), value=True)[:, None, None, :]
        h = self.transformer(tokens, t1, key_mask)[:, PREFIX_TOKENS:]
        return (self.final_mlp(h) * valid[:, :, None]).transpose(1, 2)


class DiT(nn.Module):
    """The checkpoint's `net['cfm']` container: `estimator` is the velocity estimator."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.estimator = VelocityEstimator(config)

    @classmethod
    def from_config(cls, model_params: dict[str, Any]) -> DiT:
        """model_params: the yaml `model_params` dict (needs its `DiT` and `style_encoder` sections)."""
        return cls(DiTConfig.from_model_params(model_params))

    def forward(self, x: torch.Tensor, prompt_x: torch.Tensor, x_lens: torch.Tensor, t: torch.Tensor,
                style: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Same as `estimator(...)`: (B, 80, T) velocity."""
        return self.estimator(x, prompt_x, x_lens, t, style, cond)
