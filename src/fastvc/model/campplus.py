"""CAMPPlus speaker encoder (3D-Speaker / FunASR `campplus_cn_common`), written from oracle spec 3.3.

    fbank (B, T, feat_dim) --head (2-D res-net, frequency /8)--> (B, 32·feat_dim/8, T)
      --xvector (TDNN stride 2, 3 dense CAM blocks with transits, BN-ReLU)--> (B, C, T')
      --statistics pooling (mean ; unbiased std)--> (B, 2C) --dense (1x1 conv + BN without affine)--> (B, 192)

Module attribute names mirror the official state-dict keys (`head.layer1.0.conv1.weight`,
`xvector.block1.tdnnd1.cam_layer.linear_local.weight`, `xvector.dense.nonlinear.batchnorm.running_mean`, …)
so the real file loads with `load_state_dict(strict=True)`. Every batch norm always uses its running
statistics (inference only), whatever the module's train/eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_NORM_EPS = 1e-5


class InferenceBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that always normalises with its running statistics (keys as nn.BatchNorm1d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class InferenceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics (keys as nn.BatchNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def conv3x3(in_channels: int, out_channels: int, freq_stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=(freq_stride, 1), padding=1, bias=False)


def halve(size: int) -> int:
    """Length after a kernel-3/pad-1 (or kernel-1/pad-0) convolution with stride 2."""
    return (size - 1) // 2 + 1


class BasicResBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); stride on the frequency axis only.

    x: (B, C_in, F, T) -> (B, C_out, F', T)."""

    def __init__(self, in_channels: int, out_channels: int, freq_stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, freq_stride)
        self.bn1 = InferenceBatchNorm2d(out_channels, eps=BATCH_NORM_EPS)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = InferenceBatchNorm2d(out_channels, eps=BATCH_NORM_EPS)
        self.shortcut = nn.Sequential()
        if freq_stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=(freq_stride, 1), bias=False),
                InferenceBatchNorm2d(out_channels, eps=BATCH_NORM_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class FrontEnd(nn.Module):
    """The 2-D convolutional head (`head.*`): (B, T, feat_dim) -> (B, channels·F/8, T), channel-major."""

    def __init__(self, feat_dim: int, channels: int = 32, blocks_per_layer: int = 2) -> None:
        super().__init__()
        self.conv1 = conv3x3(1, channels)
        self.bn1 = InferenceBatchNorm2d(channels, eps=BATCH_NORM_EPS)
        self.layer1 = self._layer(channels, blocks_per_layer)
        self.layer2 = self._layer(channels, blocks_per_layer)
        self.conv2 = conv3x3(channels, channels, freq_stride=2)
        self.bn2 = InferenceBatchNorm2d(channels, eps=BATCH_NORM_EPS)
        self.out_channels = channels * halve(halve(halve(feat_dim)))

    @staticmethod
    def _layer(channels: int, num_blocks: int) -> nn.Sequential:
        return nn.Sequential(*[BasicResBlock(channels, channels, 2 if i == 0 else 1) for i in range(num_blocks)])

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = fbank.transpose(1, 2).unsqueeze(1)                     # (B, 1, feat_dim, T)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = F.relu(self.bn2(self.conv2(x)))                        # (B, C, F/8, T)
        return x.reshape(x.shape[0], -1, x.shape[-1])              # channel c, freq f -> c·F' + f


class Nonlinear(nn.Module):
    """`nonlinear.batchnorm`: batch norm, then ReLU unless `relu=False`. (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, affine: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.batchnorm = InferenceBatchNorm1d(channels, eps=BATCH_NORM_EPS, affine=affine)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.relu else x


class TDNNLayer(nn.Module):
    """`linear` Conv1d (no bias) -> `nonlinear` BN-ReLU. (B, C_in, T) -> (B, C_out, T')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=kernel_size // 2, bias=False)
        self.nonlinear = Nonlinear(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_mean(h: torch.Tensor, segment_frames: int) -> torch.Tensor:
    """Each frame gets the mean of its consecutive `segment_frames`-frame segment (the last segment may be
    shorter and is averaged over the frames it has). h: (B, C, T) -> (B, C, T)."""
    num_frames = h.shape[-1]
    num_segments = -(-num_frames // segment_frames)
    padded = F.pad(h, (0, num_segments * segment_frames - num_frames))
    sums = padded.reshape(*h.shape[:2], num_segments, segment_frames).sum(-1)          # (B, C, S)
    counts = torch.full((num_segments,), segment_frames, dtype=h.dtype, device=h.device)
    counts[-1] = num_frames - (num_segments - 1) * segment_frames
    means = sums / counts
    return means.repeat_interleave(segment_frames, dim=-1)[..., :num_frames]


class CAMLayer(nn.Module):
    """Context-aware masking: a dilated local conv gated by a sigmoid of global + segment context.

    h: (B, bottleneck, T) -> (B, growth, T)."""

    def __init__(self, bottleneck: int, growth: int, dilation: int, reduction: int = 2,
                 segment_frames: int = 100) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(bottleneck, growth, 3, padding=dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bottleneck, bottleneck // reduction, 1)
        self.linear2 = nn.Conv1d(bottleneck // reduction, growth, 1)
        self.segment_frames = segment_frames

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        context = h.mean(-1, keepdim=True) + segment_mean(h, self.segment_frames)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(h) * mask


class CAMDenseTDNNLayer(nn.Module):
    """BN-ReLU -> 1x1 conv to the bottleneck -> BN-ReLU -> CAM layer. (B, C, T) -> (B, growth, T)."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = Nonlinear(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bottleneck, 1, bias=False)
        self.nonlinear2 = Nonlinear(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleDict):
    """Densely connected layers `tdnnd1…tdnndN`: each appends its `growth` channels to its input.

    (B, C, T) -> (B, C + N·growth, T)."""

    def __init__(self, num_layers: int, in_channels: int, growth: int, bottleneck: int, dilation: int) -> None:
        super().__init__({f"tdnnd{i + 1}": CAMDenseTDNNLayer(in_channels + i * growth, growth, bottleneck, dilation)
                          for i in range(num_layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    """`nonlinear` BN-ReLU -> `linear` 1x1 conv without bias. (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = Nonlinear(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    """`linear` (as a matrix) -> `nonlinear` batch norm without affine parameters. (B, C_in) -> (B, C_out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = Nonlinear(out_channels, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)


def statistics_pooling(x: torch.Tensor) -> torch.Tensor:
    """Mean and unbiased standard deviation over time: (B, C, T) -> (B, 2C)."""
    return torch.cat([x.mean(-1), x.std(-1, unbiased=True)], dim=-1)


class XVector(nn.Module):
    """The TDNN trunk (`xvector.*`): (B, C_head, T) -> (B, embedding_size)."""

    def __init__(self, in_channels: int, embedding_size: int, growth: int = 32, bn_size: int = 4,
                 init_channels: int = 128, block_layers: tuple[int, ...] = (12, 24, 16),
                 dilations: tuple[int, ...] = (1, 2, 2)) -> None:
        super().__init__()
        self.tdnn = TDNNLayer(in_channels, init_channels, kernel_size=5, stride=2)
        channels = init_channels
        for i, (num_layers, dilation) in enumerate(zip(block_layers, dilations), start=1):
            self.add_module(f"block{i}", CAMDenseTDNNBlock(num_layers, channels, growth, bn_size * growth, dilation))
            channels += num_layers * growth
            self.add_module(f"transit{i}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.num_blocks = len(block_layers)
        self.out_nonlinear = Nonlinear(channels)
        self.dense = DenseLayer(2 * channels, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tdnn(x)
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"transit{i}")(getattr(self, f"block{i}")(x))
        return self.dense(statistics_pooling(self.out_nonlinear(x)))


class CAMPPlus(nn.Module):
    """CAMPPlus speaker embedding: fbank (B, T, feat_dim), mean-subtracted Kaldi fbank -> (B, embedding_size).

    Items are independent; all items share T (the style reference is embedded once per voice)."""

    def __init__(self, feat_dim: int = 80, embedding_size: int = 192) -> None:
        super().__init__()
        self.head = FrontEnd(feat_dim)
        self.xvector = XVector(self.head.out_channels, embedding_size)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(fbank))
