"""Continuous length regulator: content features (50 frames/s) -> one vector per mel frame (oracle spec 3.5).

    h = content_in_proj(x)                       (B, T_in, C)
    h = nearest-neighbour stretch to T_out       (B, T_out, C), float32 index rule below
    n x [Conv1d(k=3) -> GroupNorm(1 group) -> Mish], Conv1d(k=1)
    out = h * (t < ylens)                        (B, T_out, C)

Two batching modes:
* `forward(x, ylens)` is upstream's behaviour: every item is stretched from the shared T_in to
  T_out = max(ylens) and the GroupNorm statistics span all T_out frames. With unequal `ylens` an item's result
  then depends on its batch-mates (spec 3.5), so batch only equal lengths this way.
* `forward(x, ylens, x_lens)` regulates every item on its own: item b is its frames [0, x_lens[b]) stretched to
  ylens[b], its padding is held at zero before every conv and left out of the GroupNorm statistics. Item b in
  any batch then equals the item run alone (B=1, unpadded), whatever the other items' lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPS = 1e-5


def nearest_source_index(in_lens: torch.Tensor, out_lens: torch.Tensor, n_out: int) -> torch.Tensor:
    """Which input frame each output frame copies, per item, as torch's float32 nearest interpolation picks it.

    in_lens, out_lens: (B,) int64 -> (B, n_out) int64. Output frame i of item b copies i if out == in, i // 2 if
    out == 2·in, else min(floor(float32(i) · s), in − 1) with s = float32(in) / float32(out) and the product
    rounded to float32 before the floor (not always floor(i·in/out): 39 -> 66 differs at i = 22 and 44).
    Frames past out_lens[b] (padding) get in-range but meaningless indices.
    """
    frame = torch.arange(n_out, device=in_lens.device)
    in_col, out_col = in_lens[:, None], out_lens[:, None]
    scale = in_col.to(torch.float32) / out_col.to(torch.float32)
    index = torch.floor(frame.to(torch.float32) * scale).to(torch.int64)
    index = torch.where(out_col == 2 * in_col, frame // 2, index)
    index = torch.where(out_col == in_col, frame, index)
    return torch.minimum(index, in_col - 1)  # also keeps frames past out_lens[b] (padding) in range


def frame_mask(lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    """lengths (B,) int64 -> (B, n_frames) bool, True where frame t < lengths[b]."""
    return torch.arange(n_frames, device=lengths.device) < lengths[:, None]


def masked_group_norm(h: torch.Tensor, valid: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """One-group GroupNorm whose statistics cover only the valid frames of each item.

    h: (B, C, T) with zeros outside `valid`; valid: (B, 1, T) float 0/1 -> (B, C, T).
    """
    count = valid.sum(dim=(1, 2), keepdim=True) * h.shape[1]
    mean = h.sum(dim=(1, 2), keepdim=True) / count
    centred = (h - mean) * valid
    var = centred.square().sum(dim=(1, 2), keepdim=True) / count
    normed = centred * torch.rsqrt(var + norm.eps)
    return normed * norm.weight[:, None] + norm.bias[:, None]


class LengthRegulator(nn.Module):
    """Built from the config's `length_regulator` section; keys as under the checkpoint's
    `net['length_regulator']`. `embedding` and `mask_token` exist only so the checkpoint loads strictly.
    `n_codebooks` is ignored: upstream never passes it to the regulator (spec 5), so a yaml's 2 means 1."""

    def __init__(self, channels: int, in_channels: int, sampling_ratios: list[int], content_codebook_size: int,
                 is_discrete: bool = False, vector_quantize: bool = False, f0_condition: bool = False,
                 **_unused: object) -> None:
        super().__init__()
        if is_discrete or vector_quantize or f0_condition:
            raise ValueError("only the continuous regulator (is_discrete, vector_quantize, f0_condition false) is "
                             f"implemented, got {is_discrete=} {vector_quantize=} {f0_condition=}")
        self.n_blocks = len(sampling_ratios)
        layers: list[nn.Module] = []
        for _ in range(self.n_blocks):
            layers += [nn.Conv1d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels, GROUP_NORM_EPS),
                       nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1))
        self.model = nn.Sequential(*layers)
        self.content_in_proj = nn.Linear(in_channels, channels)
        self.embedding = nn.Embedding(content_codebook_size, channels)  # unused: discrete content only
        self.mask_token = nn.Parameter(torch.zeros(1, channels))  # unused by inference

    def forward(self, x: torch.Tensor, ylens: torch.Tensor, x_lens: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T_in, in_channels), ylens: (B,) int64, x_lens: (B,) int64 or None -> (B, max(ylens), C).

        Without `x_lens`: upstream's batch semantics (see the module docstring). With `x_lens`: every item on
        its own, equal to running it alone.
        """
        n_out = int(ylens.max())
        out_valid = frame_mask(ylens, n_out)[:, None, :].to(x.dtype)  # (B, 1, T_out)
        if x_lens is None:
            in_lens = torch.full_like(ylens, x.shape[1])
            out_lens = torch.full_like(ylens, n_out)
            h = self._blocks(self._stretch(x, in_lens, out_lens, n_out), valid=None)
        else:
            h = self._blocks(self._stretch(x, x_lens, ylens, n_out) * out_valid, valid=out_valid)
        return (h * out_valid).transpose(1, 2)

    def _stretch(self, x: torch.Tensor, in_lens: torch.Tensor, out_lens: torch.Tensor, n_out: int) -> torch.Tensor:
        """(B, T_in, in_channels) -> projected and stretched (B, C, n_out)."""
        h = self.content_in_proj(x)
        index = nearest_source_index(in_lens, out_lens, n_out)
        h = torch.gather(h, 1, index[:, :, None].expand(-1, -1, h.shape[2]))
        return h.transpose(1, 2)

    def _blocks(self, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """(B, C, T) -> (B, C, T). With `valid` (B, 1, T) the padding is zeroed before every conv and kept out
        of the GroupNorm statistics; without it every frame counts (upstream)."""
        for block in range(self.n_blocks):
            conv, norm, act = self.model[3 * block: 3 * block + 3]
            h = conv(h)
            if valid is None:
                h = act(norm(h))
            else:
                h = act(masked_group_norm(h * valid, valid, norm)) * valid
        return self.model[3 * self.n_blocks](h)
