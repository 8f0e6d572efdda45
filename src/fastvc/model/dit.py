"""The DiT velocity estimator of Seed-VC's real-time model (oracle spec 3.6).

    tokens = [t1, s, u_0 … u_{T-1}]                       (B, T+2, D): time token, style token, frames
    L x [U-ViT skip in, x + Attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x)), U-ViT skip out]
    h = adaptive RMSNorm(h; t1), drop the two prefix tokens, final MLP   -> (B, 80, T)

Attention uses a key-padding mask from `x_lens` and interleaved-pair RoPE over positions 0…T+1. For a sampler,
`condition` prepares what its steps share (the prompt, content and style rows, mask, RoPE tables, the frames it
changes) once, and `velocity` then takes x at only those frames and returns the velocity there alone. `DiT` holds the
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
        """x: (..., D) -> (..., D), normalised in float32 (float32 input: one fused op, the same numbers)."""
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, RMS_NORM_EPS)
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
        """h: (B, N, D), t1: (B or 1, D) -> scale · RMSNorm(h) + shift, (B, N, D)."""
        scale, shift = self.project_layer(t1)[:, None, :].chunk(2, dim=-1)
        return scale * self.norm(h) + shift


def rope_cos_sin(n_tokens: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles p · base^(−2j/head_dim), in float32: each (n_tokens, head_dim // 2)."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(n_tokens, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


@dataclass(frozen=True)
class Rope:
    """RoPE tables laid out per value: cos (N, head_dim) = [c_0, c_0, c_1, c_1, …] and sin (N, head_dim) =
    [−s_0, s_0, −s_1, s_1, …], so that rotating adjacent pairs is x·cos + swap_pairs(x)·sin."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def for_tokens(cls, n_tokens: int, head_dim: int, device: torch.device) -> Rope:
        cos, sin = rope_cos_sin(n_tokens, head_dim, device)
        return cls(cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2))

    def at(self, positions: torch.Tensor) -> Rope:
        """The tables at positions (B, Q) int64, shaped (B, 1, Q, head_dim) to rotate (B, H, Q, head_dim)."""
        return Rope(self.cos[positions][:, None], self.sin[positions][:, None])


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate adjacent pairs (2j, 2j+1): (a, b) -> (a·c − b·s, b·c + a·s), in float32. x: (B, H, N, head_dim)
    with rope tables (N, head_dim) or (B, 1, N, head_dim) -> like x."""
    x32 = x.float()
    pairs = x32.unflatten(-1, (-1, 2))
    swapped = torch.stack((pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (b, a) per pair
    return (x32 * rope.cos + swapped * rope.sin).type_as(x)


@dataclass(frozen=True)
class Queries:
    """The token positions whose outputs a pass computes, with the index views that gather them, made once.

    rows: (B, Q, D) int64, each position repeated over the width (gathers h, scatters x's rows); heads:
    (B, H, Q, head_dim) int64, the same over heads (gathers q); rope: the RoPE tables there.
    """

    rows: torch.Tensor
    heads: torch.Tensor
    rope: Rope

    @classmethod
    def at(cls, positions: torch.Tensor, dim: int, num_heads: int, rope: Rope) -> Queries:
        """positions: (B, Q) int64 token positions; rope: the tables of every token."""
        return cls(rows=positions[:, :, None].expand(-1, -1, dim),
                   heads=positions[:, None, :, None].expand(-1, num_heads, -1, dim // num_heads),
                   rope=rope.at(positions))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, z: torch.Tensor, rope: Rope, key_mask: torch.Tensor, queries: Queries | None = None
                ) -> torch.Tensor:
        """z: (B, N, D); key_mask: (B, 1, 1, N) bool, True = may be attended to; queries: the Q tokens whose
        output is wanted, or None for all -> (B, Q or N, D)."""
        q, k, v = self.wqkv(z).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        if queries is None:
            q = apply_rope(q, rope)
        else:
            q = apply_rope(torch.gather(q, 2, queries.heads), queries.rope)
        attended = F.scaled_dot_product_attention(q, apply_rope(k, rope), v, attn_mask=key_mask)
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

    def forward(self, h: torch.Tensor, rope: Rope, key_mask: torch.Tensor, skip: torch.Tensor | None,
                queries: Queries | None = None) -> torch.Tensor:
        """h: (B, N, D), skip: (B, N, D) or None -> (B, Q or N, D): with `queries` the outputs of those tokens
        only (every token still serves as a key)."""
        if skip is not None:
            h = self.skip_in_linear(torch.cat([h, skip], dim=-1))
        attended = self.attention(self.attention_norm.norm(h), rope, key_mask, queries)
        h = (h if queries is None else torch.gather(h, 1, queries.rows)) + attended
        return h + self.feed_forward(self.ffn_norm.norm(h))


class Transformer(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.head_dim, self.num_heads = config.head_dim, config.num_heads
        self.layers = nn.ModuleList(TransformerBlock(config.hidden_dim, config.num_heads) for _ in range(config.depth))
        self.norm = AdaptiveNorm(config.hidden_dim)

    def forward(self, h: torch.Tensor, t1: torch.Tensor, key_mask: torch.Tensor, rope: Rope,
                queries: Queries | None = None) -> torch.Tensor:
        """h: (B, N, D) tokens, t1: (B or 1, D) time embedding, key_mask: (B, 1, 1, N) bool, rope: tables for N
        tokens, queries: the Q tokens wanted, or None for all -> (B, Q or N, D).

        U-ViT skips: layers i < L//2 store their output, layers i > L//2 take the latest stored one (LIFO).
        Every layer but the last needs all tokens (they are the next layer's keys); the last one computes only
        the `queries` (the sampler asks for the generated frames: a fifth of the tokens with a 3 s prompt).
        """
        half, last = len(self.layers) // 2, len(self.layers) - 1
        stored: list[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            skip = stored.pop() if index > half else None
            h = layer(h, rope, key_mask, skip, queries if index == last else None)
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


@dataclass
class Conditioning:
    """`VelocityEstimator.condition`'s result: what a sampler's steps share, for the N = T + 2 tokens
    [time, style, frames] and the frames whose velocity is wanted (all T, or Q given ones).

    base: (B, N, D) the tokens without the time embedding (row 0 zero) and without x's share of the frame rows;
    x_weight: (D, 80) x's block of `cond_x_merge_linear`; key_mask: (B, 1, 1, N) bool; rope: tables for N
    tokens; queries: the Q frames' tokens, or None for all; out_mask: (B, T or Q, 1), 1 where frame < x_lens.
    """

    base: torch.Tensor
    x_weight: torch.Tensor
    key_mask: torch.Tensor
    rope: Rope
    queries: Queries | None
    out_mask: torch.Tensor


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
        return self.velocity(x, self.embed_time(t), self.condition(prompt_x, x_lens, style, cond))

    def condition(self, prompt_x: torch.Tensor, x_lens: torch.Tensor, style: torch.Tensor, cond: torch.Tensor,
                  frames: torch.Tensor | None = None) -> Conditioning:
        """The inputs that stay fixed over a sampler's steps, prepared once: prompt_x (B, 80, T), x_lens (B,),
        style (B, S), cond (B, T, content_dim); frames (B, Q) int64 in [0, T): the only frames where x may be
        nonzero and whose velocity is wanted (None: all). `cond_x_merge_linear` is split by its input blocks:
        the prompt and content block (and the bias) is applied here, x's at every step."""
        n_mels, n_frames = prompt_x.shape[1], prompt_x.shape[2]
        merge = self.cond_x_merge_linear
        rows = F.linear(torch.cat([prompt_x.transpose(1, 2), self.cond_projection(cond)], dim=-1),
                        merge.weight[:, n_mels:], merge.bias)
        style_token = self.style_in(style)
        base = torch.cat([torch.zeros_like(style_token)[:, None], style_token[:, None], rows], dim=1)
        valid = torch.arange(n_frames, device=prompt_x.device) < x_lens[:, None]  # (B, T)
        key_mask = F.pad(valid, (PREFIX_TOKENS, 0), value=True)[:, None, None, :]
        rope = Rope.for_tokens(base.shape[1], self.transformer.head_dim, base.device)
        queries = None
        if frames is not None:
            queries = Queries.at(frames + PREFIX_TOKENS, base.shape[2], self.transformer.num_heads, rope)
            valid = torch.gather(valid, 1, frames)
        return Conditioning(base=base, x_weight=merge.weight[:, :n_mels], key_mask=key_mask, rope=rope,
                            queries=queries, out_mask=valid[:, :, None].to(base.dtype))

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) or a single t -> t1 (B or 1, D), the time token (and the final norm's condition)."""
        return self.t_embedder(t.reshape(-1))

    def velocity(self, x: torch.Tensor, t1: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The velocity given the time token t1 (B or 1, D) (`embed_time`) and the `condition`ed inputs.

        x: (B, 80, T), or (B, 80, Q) at the conditioning's frames (zero at every other frame) -> the velocity at
        the same frames, zero at frames >= x_lens. With frames, the last layer and the final MLP run on them alone.
        """
        x_rows = F.linear(x.transpose(1, 2), conditioning.x_weight)  # (B, T or Q, D)
        tokens = conditioning.base.clone()
        tokens[:, 0] = t1
        queries = conditioning.queries
        if queries is None:
            tokens[:, PREFIX_TOKENS:] += x_rows
            h = self.transformer(tokens, t1, conditioning.key_mask, conditioning.rope)[:, PREFIX_TOKENS:]
        else:
            tokens.scatter_add_(1, queries.rows, x_rows)
            h = self.transformer(tokens, t1, conditioning.key_mask, conditioning.rope, queries)
        return (self.final_mlp(h) * conditioning.out_mask).transpose(1, 2)


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
