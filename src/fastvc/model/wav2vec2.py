"""XLS-R (wav2vec 2.0, "stable layer norm" variant) content encoder, as Seed-VC's real-time model uses it.

Written from oracle spec 3.4:

    wav (B, N16) --per-item zero-mean/unit-variance--> input_values (B, N16)
      --7 strided convs (conv -> LayerNorm over channels -> GELU)--> (B, T, conv_dim[-1])    T = N16 / 320 roughly
      --LayerNorm, Linear--> (B, T, hidden) --+ GELU(weight-normed grouped positional conv)-->
      --first `num_layers` pre-norm transformer layers--> --encoder.layer_norm--> features (B, T, hidden)

Module attribute names mirror transformers' `Wav2Vec2Model.state_dict()` keys, so a checkpoint loads with
`load_state_dict(strict=True)` once `split_checkpoint` has removed the layers past `num_layers`
(XLS-R-300m has 24, the real-time model uses 12). `convert_hub_state_dict` maps the hub's pre-training file
(`wav2vec2.` prefix, `weight_g`/`weight_v`) to these names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

XLSR_OUTPUT_LAYER = 12  # Seed-VC's speech_tokenizer.output_layer for the real-time model
NORMALIZE_EPS = 1e-7    # Wav2Vec2FeatureExtractor's zero-mean/unit-variance epsilon

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class Wav2Vec2Config:
    """The transformers `Wav2Vec2Config` fields the encoder reads (transformers' defaults where absent),
    plus Seed-VC's `output_layer` and the feature extractor's `do_normalize`."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    mask_time_prob: float = 0.05
    mask_feature_prob: float = 0.0
    add_adapter: bool = False
    output_layer: int | None = None
    do_normalize: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Wav2Vec2Config:
        """Build from a hub `config.json` dict (unknown fields ignored). A nested `feature_extractor` dict
        (the `preprocessor_config.json` values) supplies `do_normalize`."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in config.items() if key in names}
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        if "feature_extractor" in config:
            values["do_normalize"] = bool(config["feature_extractor"].get("do_normalize", True))
        return cls(**values)

    def check_supported(self) -> None:
        """The port implements the variant XLS-R uses (spec 3.4); refuse the others loudly."""
        if self.feat_extract_norm != "layer" or not self.do_stable_layer_norm:
            raise ValueError("only feat_extract_norm='layer' with do_stable_layer_norm=True (XLS-R) is supported")
        if self.add_adapter:
            raise ValueError("wav2vec2 adapters are not supported")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")


def normalize_per_item(wav: torch.Tensor, eps: float = NORMALIZE_EPS) -> torch.Tensor:
    """(x − mean) / sqrt(population var + eps) over each item's N samples. (B, N) -> (B, N).

    The statistics are taken in float64, in two passes (`torch.var_mean` took 2.5x as long here), and applied in
    the input's precision (applying them in float64 too cost 3x as much for the same float32 result within 1 ulp).
    """
    wide = wav.double()
    mean = wide.mean(dim=-1, keepdim=True)
    variance = (wide - mean).square().mean(dim=-1, keepdim=True)
    return (wav - mean.to(wav.dtype)) / torch.sqrt(variance + eps).to(wav.dtype)


def conv_output_frames(num_samples: int, config: Wav2Vec2Config) -> int:
    """Frames out of the convolutional feature encoder for `num_samples` input samples (no padding)."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        num_samples = (num_samples - kernel) // stride + 1
    return num_samples


class ConvLayer(nn.Module):
    """Conv1d -> LayerNorm over channels -> activation. (B, C_in, L) -> (B, C_out, L')."""

    def __init__(self, config: Wav2Vec2Config, index: int) -> None:
        super().__init__()
        in_channels = config.conv_dim[index - 1] if index > 0 else 1
        out_channels = config.conv_dim[index]
        self.conv = nn.Conv1d(in_channels, out_channels, config.conv_kernel[index],
                              stride=config.conv_stride[index], bias=config.conv_bias)
        self.layer_norm = nn.LayerNorm(out_channels, eps=config.layer_norm_eps)
        self.act = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(channel_layer_norm(self.conv(x), self.layer_norm))


NARROW_CHANNELS = 32


def channel_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """`norm` over the channels of every frame: (B, C, L) -> (B, C, L).

    Fewer than NARROW_CHANNELS channels are normalised along dim 1 directly: `F.layer_norm` vectorises along the
    normalised axis, and over 8 channels of the transposed view it took 2.4 ms where this takes 0.5 (8 × 8831
    frames, 8 items, one CPU thread). Wider layers (the real model's 512) go through `norm` itself.
    """
    if x.shape[1] >= NARROW_CHANNELS:
        return norm(x.transpose(1, 2)).transpose(1, 2)
    centred = x - x.mean(dim=1, keepdim=True)
    normed = centred * torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + norm.eps)
    return normed * norm.weight[:, None] + norm.bias[:, None]


class FeatureEncoder(nn.Module):
    """`feature_extractor.conv_layers.*`: input_values (B, N) -> (B, conv_dim[-1], T)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(ConvLayer(config, i) for i in range(len(config.conv_dim)))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels, then Linear to hidden_size. (B, T, conv_dim[-1]) -> (B, T, hidden)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time, weight-normed per kernel tap (norm over axes 0 and 1, `dim=2`), then the
    activation. An even kernel's extra last frame is dropped. (B, T, D) -> (B, T, D)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel, padding=kernel // 2,
                         groups=config.num_conv_pos_embedding_groups)
        self.conv = parametrizations.weight_norm(conv, name="weight", dim=2)
        self.drop_last = kernel % 2 == 0
        self.act = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x.transpose(1, 2))
        if self.drop_last:
            out = out[..., :-1]
        return self.act(out).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with biases, scale 1/sqrt(head_dim), no mask. (B, T, D) -> (B, T, D)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(config.hidden_size, config.hidden_size) for _ in range(4))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, width = x.shape
        return x.reshape(batch, frames, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)                      # (B, H, T, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


class FeedForward(nn.Module):
    """`intermediate_dense` -> hidden_act -> `output_dense`. (B, T, D) -> (B, T, D)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: h += attn(LN(h)); h += ffn(LN(h)). (B, T, D) -> (B, T, D)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.layer_norm(h))
        return h + self.feed_forward(self.final_layer_norm(h))


class TransformerEncoder(nn.Module):
    """`encoder.*`: + positional conv, the first `num_layers` layers, final LayerNorm. (B, T, D) -> (B, T, D)."""

    def __init__(self, config: Wav2Vec2Config, num_layers: int) -> None:
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(num_layers))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.pos_conv_embed(h)
        for layer in self.layers:
            h = layer(h)
        return self.layer_norm(h)


class Wav2Vec2Encoder(nn.Module):
    """The content encoder: raw 16 kHz wav (B, N) -> features (B, T, hidden_size).

    `num_layers` (default: config.output_layer, else all) transformer layers are built; the output is the
    final encoder LayerNorm applied to the last of them (spec 3.4 step 6). Each item is normalised over its
    own N samples when `config.do_normalize`; all items share N.
    """

    def __init__(self, config: Wav2Vec2Config, num_layers: int | None = None) -> None:
        super().__init__()
        config.check_supported()
        self.config = config
        self.num_layers = num_layers if num_layers is not None else (config.output_layer or config.num_hidden_layers)
        if not 0 < self.num_layers <= config.num_hidden_layers:
            raise ValueError(f"num_layers {self.num_layers} outside 1..{config.num_hidden_layers}")
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:  # present in the checkpoint, unused
            self.masked_spec_embed = nn.Parameter(torch.zeros(config.hidden_size))
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = TransformerEncoder(config, self.num_layers)

    def normalize(self, wav: torch.Tensor) -> torch.Tensor:
        """The feature extractor's input normalisation: wav (B, N) -> input_values (B, N)."""
        return normalize_per_item(wav) if self.config.do_normalize else wav

    def encode(self, input_values: torch.Tensor) -> torch.Tensor:
        """Normalised audio (B, N) -> features (B, T, hidden_size)."""
        conv_features = self.feature_extractor(input_values).transpose(1, 2)     # (B, T, conv_dim[-1])
        return self.encoder(self.feature_projection(conv_features))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.encode(self.normalize(wav))


# --------------------------------------------------------------------------------------------------------
# Checkpoint keys: skipped layers and the hub file's names
# --------------------------------------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
HUB_PREFIX = "wav2vec2."
HUB_RENAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}


def split_checkpoint(state_dict: Mapping[str, torch.Tensor], num_layers: int
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Separate the transformer layers the encoder does not build.

    Returns (kept, skipped): `kept` holds every key except `encoder.layers.{i}.*` with i >= num_layers,
    ready for `Wav2Vec2Encoder(config, num_layers).load_state_dict(kept, strict=True)`; `skipped` lists the
    dropped keys (XLS-R-300m with num_layers 12: the 192 keys of layers 12-23).
    """
    kept: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match and int(match.group(1)) >= num_layers:
            skipped.append(key)
        else:
            kept[key] = value
    return kept, skipped


def convert_hub_state_dict(hub_state_dict: Mapping[str, torch.Tensor]
                           ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the hub `pytorch_model.bin` (a `Wav2Vec2ForPreTraining` state dict) to `Wav2Vec2Model` names.

    Strips the `wav2vec2.` prefix and renames the positional conv's `weight_g`/`weight_v` to
    `parametrizations.weight.original0`/`original1`. Returns (converted, ignored): `ignored` lists the keys
    outside the `wav2vec2.` model (pre-training heads: `quantizer.*`, `project_q.*`, `project_hid.*`, …).
    """
    converted: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in hub_state_dict.items():
        if not key.startswith(HUB_PREFIX):
            ignored.append(key)
            continue
        name = key[len(HUB_PREFIX):]
        converted[HUB_RENAMES.get(name, name)] = value
    return converted, ignored


def checkpoint_key_shapes(config: Wav2Vec2Config, num_layers: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the full `Wav2Vec2Model` checkpoint (all `num_hidden_layers` layers): the keys of
    `Wav2Vec2Encoder(config, num_layers)` plus those `split_checkpoint` skips. Built on the meta device."""
    with torch.device("meta"):
        encoder = Wav2Vec2Encoder(config, num_layers)
        layer = EncoderLayer(config)
    shapes = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    for index in range(num_layers, config.num_hidden_layers):
        shapes.update({f"encoder.layers.{index}.{key}": tuple(value.shape) for key, value in layer.state_dict().items()})
    return shapes
