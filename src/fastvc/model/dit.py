"""The DiT velocity estimator of Seed-VC's real-time model (oracle spec 3.6).

    tokens = [t1, s, u_0 … u_{T-1}]                       (B, T+2, D): time token, style token, frames
    L x [U-ViT skip in, x + Attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x)), U-ViT skip out]
    h = adaptive RMSNorm(h; t1), drop the two prefix tokens, final MLP   -> (B, 80, T)

Attention uses a key-padding mask from `x_lens` and interleaved-pair RoPE over positions 0…T+1. For a sampler,
`condition` prepares once what its steps share (the prompt, content and style tokens, the first layer's keys and
values of every frame the sampler never changes, masks, RoPE tables) and `velocity` then takes x at only the
frames it changes and returns the velocity there alone. `DiT` holds the
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


def ffn_width(dim: int, multiple: int = FFN_MULTIPLE) -> int:
    """SwiGLU inner width: int(8·dim/3) rounded up to a multiple of `multiple` (256: 1024 for dim 384)."""
    width = int(8 * dim / 3)
    return -(-width // multiple) * multiple


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
    ffn_multiple: int = FFN_MULTIPLE  # fastvc's small presets only (key `ffn_multiple`); official configs: 256

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
                   content_codebook_size=dit["content_codebook_size"], style_dim=model_params["style_encoder"]["dim"],
                   ffn_multiple=dit.get("ffn_multiple", FFN_MULTIPLE))


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
    """RoPE as complex turns: (…, N, head_dim // 2) complex64, cos + i·sin of each token's angles. Rotating the
    adjacent pair (a, b) is multiplying a + i·b by its turn: (a·c − b·s, a·s + b·c), one op for q and k."""

    turns: torch.Tensor

    @classmethod
    def for_tokens(cls, n_tokens: int, head_dim: int, device: torch.device) -> Rope:
        """Turns (n_tokens, head_dim // 2) for positions 0 … n_tokens − 1."""
        return cls(torch.complex(*rope_cos_sin(n_tokens, head_dim, device)))

    def at(self, positions: torch.Tensor) -> Rope:
        """The turns at positions (B, N) int64: (B, N, head_dim // 2)."""
        return Rope(self.turns[positions])

    def rows(self, start: int, stop: int | None = None) -> Rope:
        """Turns of the tokens start … stop − 1 (along the token axis, −2)."""
        return Rope(self.turns[..., start:stop, :])


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate adjacent pairs (2j, 2j+1) in float32. x: (…, N, heads, head_dim), turns (…, N, head_dim // 2)
    -> like x (contiguous)."""
    x32 = x if x.dtype == torch.float32 else x.float()
    pairs = torch.view_as_complex(x32.unflatten(-1, (-1, 2)))  # (…, N, heads, head_dim // 2)
    rotated = torch.view_as_real(pairs * rope.turns[..., None, :]).flatten(-2)
    return rotated if x.dtype == torch.float32 else rotated.type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def project(self, z: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (B, N, D) normed tokens -> q, k, v (B, H, N, head_dim), q and k rotated by `rope`."""
        qkv = self.wqkv(z)
        dim = qkv.shape[-1] // 3
        qk = apply_rope(qkv[..., : 2 * dim].unflatten(-1, (2 * self.num_heads, -1)), rope)  # (B, N, 2H, hd)
        q, k = qk.transpose(1, 2).chunk(2, dim=1)
        return q, k, qkv[..., 2 * dim :].unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
               ) -> torch.Tensor:
        """q: (B, H, Q, hd), k, v: (B, H, N, hd), key_mask: (B, 1, 1, N) bool, True = may be attended to (None: all)
        -> (B, Q, D)."""
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.wo(attended.transpose(1, 2).flatten(2))


@dataclass(frozen=True)
class FixedKeys:
    """The first layer's view of the fixed tokens (their input never changes between sampler steps), made once.

    tokens: (B, F, D) its input; q (or None when the first layer is also the last), k, v: (B, H, F, head_dim).
    """

    tokens: torch.Tensor
    q: torch.Tensor | None
    k: torch.Tensor
    v: torch.Tensor


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, inner, bias=False)
        self.w3 = nn.Linear(dim, inner, bias=False)
        self.w2 = nn.Linear(inner, dim, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """SwiGLU: (B, N, D) -> (B, N, D)."""
        return self.w2(F.silu(self.w1(z)) * self.w3(z))


class TransformerBlock(nn.Module):
    """Pre-norm attention and SwiGLU. `skip_in_linear` (2D -> D) merges a U-ViT skip in receiving layers; every
    layer stores it. The norms' `project_layer`s are unused here."""

    def __init__(self, dim: int, num_heads: int, ffn_inner: int) -> None:
        super().__init__()
        self.attention = Attention(dim, num_heads)
        self.feed_forward = FeedForward(dim, ffn_inner)
        self.attention_norm = AdaptiveNorm(dim)
        self.ffn_norm = AdaptiveNorm(dim)
        self.skip_in_linear = nn.Linear(2 * dim, dim)

    def forward(self, h: torch.Tensor, rope: Rope, key_mask: torch.Tensor | None, skip: torch.Tensor | None,
                n_queries: int | None = None) -> torch.Tensor:
        """h: (B, N, D), skip: (B, N, D) or None -> (B, N, D), or with `n_queries` the outputs of the last
        n_queries tokens only (every token still serves as a key)."""
        if skip is not None:
            h = self.skip_in_linear(torch.cat([h, skip], dim=-1))
        q, k, v = self.attention.project(self.attention_norm.norm(h), rope)
        if n_queries is not None:
            q, h = q[:, :, -n_queries:], h[:, -n_queries:]
        return self._finish(h + self.attention.attend(q, k, v, key_mask))

    def fixed_keys(self, tokens: torch.Tensor, rope: Rope, with_queries: bool) -> FixedKeys:
        """What this (first) layer computes of the fixed tokens (B, F, D) at every step, computed once."""
        q, k, v = (part.contiguous() for part in self.attention.project(self.attention_norm.norm(tokens), rope))
        return FixedKeys(tokens=tokens, q=q if with_queries else None, k=k, v=v)  # contiguous: cheap to concatenate

    def forward_moving(self, moving: torch.Tensor, fixed: FixedKeys, rope: Rope, key_mask: torch.Tensor | None
                       ) -> torch.Tensor:
        """The first layer over [fixed | moving] tokens given `fixed_keys`: moving (B, M, D) with its tables
        -> (B, F + M, D), or when the layer is also the last (fixed.q None) the outputs of moving[:, 1:] only."""
        q, k, v = self.attention.project(self.attention_norm.norm(moving), rope)
        k, v = torch.cat([fixed.k, k], dim=2), torch.cat([fixed.v, v], dim=2)
        if fixed.q is None:
            q, h = q[:, :, 1:], moving[:, 1:]
        else:
            q, h = torch.cat([fixed.q, q], dim=2), torch.cat([fixed.tokens, moving], dim=1)
        return self._finish(h + self.attention.attend(q, k, v, key_mask))

    def _finish(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.feed_forward(self.ffn_norm.norm(h))


class Transformer(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.head_dim, self.num_heads = config.head_dim, config.num_heads
        inner = ffn_width(config.hidden_dim, config.ffn_multiple)
        self.layers = nn.ModuleList(TransformerBlock(config.hidden_dim, config.num_heads, inner)
                                    for _ in range(config.depth))
        self.norm = AdaptiveNorm(config.hidden_dim)

    def forward(self, moving: torch.Tensor, t1: torch.Tensor, layout: Conditioning) -> torch.Tensor:
        """moving: (B, 1 + G, D) the time token and the G wanted frames' tokens, t1: (B or 1, D) -> (B, G, D).

        Tokens lie as [fixed | time | frames] (`Conditioning`); the first layer reuses its view of the fixed ones.
        U-ViT skips: layers i < L//2 store their output, layers i > L//2 take the latest stored one (LIFO).
        Every layer but the last needs all tokens (they are the next layer's keys); the last one computes only
        the frames' (the sampler's generated frames: a fifth of the tokens with a 3 s prompt).
        """
        n_frames = moving.shape[1] - 1
        h = self.layers[0].forward_moving(moving, layout.first_layer, layout.moving_rope, layout.key_mask)
        half, last = len(self.layers) // 2, len(self.layers) - 1
        stored: list[torch.Tensor] = [h] if half > 0 else []
        for index in range(1, len(self.layers)):
            skip = stored.pop() if index > half else None
            h = self.layers[index](h, layout.rope, layout.key_mask, skip, n_frames if index == last else None)
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
    """`VelocityEstimator.condition`'s result: what a sampler's steps share.

    The N = T + 2 tokens lie as [fixed | time | frames]: fixed = the style token and the F − 1 frames where x is
    zero (their input never changes), then the time token and the G frames whose velocity is wanted; attention
    does not depend on the order (RoPE keeps each token's own position 0 time, 1 style, f + 2 frame f).

    frames_base: (B, G, D) the frames' tokens without x's share; x_weight: (D, 80) x's block of
    `cond_x_merge_linear`; first_layer: the first layer's view of the fixed tokens; key_mask: (B, 1, 1, N)
    bool, None when no item has padding (attention runs ~10 % faster unmasked); rope: the tables of every token (B, 1, N, head_dim), moving_rope those of [time | frames];
    out_mask: (B, G, 1), 1 where the frame is < x_lens.
    """

    frames_base: torch.Tensor
    x_weight: torch.Tensor
    first_layer: FixedKeys
    key_mask: torch.Tensor | None
    rope: Rope
    moving_rope: Rope
    out_mask: torch.Tensor


def frames_outside(frames: torch.Tensor, n_frames: int) -> torch.Tensor:
    """frames: (B, G) distinct indices in [0, n_frames) -> (B, n_frames − G) the other frames, ascending."""
    chosen = torch.zeros(frames.shape[0], n_frames, dtype=torch.uint8, device=frames.device)
    chosen.scatter_(1, frames, 1)
    return torch.argsort(chosen, dim=1, stable=True)[:, : n_frames - frames.shape[1]]


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
        self._rope_tables: dict[tuple[int, str], Rope] = {}

    def forward(self, x: torch.Tensor, prompt_x: torch.Tensor, x_lens: torch.Tensor, t: torch.Tensor,
                style: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity of the flow at time t.

        x, prompt_x: (B, 80, T); x_lens: (B,) int64; t: (B,); style: (B, S); cond: (B, T, content_dim)
        -> (B, 80, T), zero in frames >= x_lens. A single t (0-dim or (1,)) applies to every item.
        """
        every_frame = torch.arange(x.shape[2], device=x.device).expand(x.shape[0], -1)
        conditioning = self.condition(prompt_x, x_lens, style, cond, every_frame)
        return self.velocity(x.transpose(1, 2), self.embed_time(t), conditioning).transpose(1, 2)

    def condition(self, prompt_x: torch.Tensor, x_lens: torch.Tensor, style: torch.Tensor, cond: torch.Tensor,
                  frames: torch.Tensor) -> Conditioning:
        """The inputs that stay fixed over a sampler's steps, prepared once: prompt_x (B, 80, T), x_lens (B,),
        style (B, S), cond (B, T, content_dim); frames (B, G) int64: distinct frames in [0, T), the only ones
        where x may be nonzero and whose velocity is wanted. `cond_x_merge_linear` is split by its input
        blocks: the prompt and content block (and the bias) is applied here, x's at every step."""
        n_mels, n_frames = prompt_x.shape[1], prompt_x.shape[2]
        merge = self.cond_x_merge_linear
        rows = F.linear(torch.cat([prompt_x.transpose(1, 2), self.cond_projection(cond)], dim=-1),
                        merge.weight[:, n_mels:], merge.bias)  # (B, T, D)
        others = frames_outside(frames, n_frames)
        fixed = torch.cat([self.style_in(style)[:, None], take_rows(rows, others)], dim=1)
        positions = torch.cat([torch.ones_like(frames[:, :1]), others + PREFIX_TOKENS,
                               torch.zeros_like(frames[:, :1]), frames + PREFIX_TOKENS], dim=1)  # (B, N)
        rope = self.rope_tables(n_frames + PREFIX_TOKENS, rows.device).at(positions)
        valid = torch.arange(n_frames + PREFIX_TOKENS, device=rows.device) < (x_lens + PREFIX_TOKENS)[:, None]
        valid[:, :PREFIX_TOKENS] = True
        key_mask = torch.gather(valid, 1, positions)
        first_layer = self.transformer.layers[0].fixed_keys(fixed, rope.rows(0, fixed.shape[1]),
                                                            with_queries=len(self.transformer.layers) > 1)
        out_mask = key_mask[:, -frames.shape[1]:, None].to(rows.dtype)
        attention_mask = None if key_mask.all() else key_mask[:, None, None, :]
        return Conditioning(frames_base=take_rows(rows, frames), x_weight=merge.weight[:, :n_mels],
                            first_layer=first_layer, key_mask=attention_mask, rope=rope,
                            moving_rope=rope.rows(fixed.shape[1]), out_mask=out_mask)

    def rope_tables(self, n_tokens: int, device: torch.device) -> Rope:
        """RoPE turns for positions 0 … n_tokens − 1, kept per (n_tokens, device): they depend on nothing else."""
        key = (n_tokens, str(device))
        if key not in self._rope_tables:
            self._rope_tables[key] = Rope.for_tokens(n_tokens, self.transformer.head_dim, device)
        return self._rope_tables[key]

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) or a single t -> t1 (B or 1, D), the time token (and the final norm's condition)."""
        return self.t_embedder(t.reshape(-1))

    def velocity(self, x: torch.Tensor, t1: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The velocity at the conditioning's frames, time-major: x (B, G, 80) there (zero at every other frame),
        t1 (B or 1, D) from `embed_time` -> (B, G, 80), zero at frames >= x_lens. The last layer and the final MLP
        run on those frames alone."""
        frames = conditioning.frames_base + F.linear(x, conditioning.x_weight)  # (B, G, D)
        moving = torch.cat([t1[:, None].expand(frames.shape[0], 1, -1), frames], dim=1)
        h = self.transformer(moving, t1, conditioning)
        return self.final_mlp(h) * conditioning.out_mask


def take_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows: (B, T, D), index: (B, G) int64 -> (B, G, D), rows[b, index[b, g]]."""
    return torch.gather(rows, 1, index[:, :, None].expand(-1, -1, rows.shape[2]))


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
