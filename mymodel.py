"""3D U-Net for volumetric segmentation.

The seed network is a two-level U-Net: an 8-channel encoder at full
resolution, 16 channels at 1/2, a 32-channel bridge at 1/4, and a decoder
that climbs back with transposed convolutions and skip connections. The
same class builds deeper and wider variants through ``levels`` and
``base_channels``.

Example:
    >>> import torch
    >>> from mymodel import UNet3D
    >>> net = UNet3D(levels=2, base_channels=8, norm='batch')
    >>> net(torch.zeros(1, 1, 128, 128, 32)).shape
    torch.Size([1, 1, 128, 128, 32])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from heartseg.normalization import InstanceNorm3d

NORMS = ('batch', 'instance')


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == 'batch':
        return nn.BatchNorm3d(channels)
    # Affine InstanceNorm is nnU-Net's choice: it does not depend on batch size.
    return InstanceNorm3d(channels)


def _activation(norm: str) -> nn.Module:
    # The seed pairs BatchNorm with ReLU; nnU-Net pairs InstanceNorm with LeakyReLU.
    return nn.ReLU(inplace=True) if norm == 'batch' else nn.LeakyReLU(0.01, inplace=True)


def isotropic_pooling(levels: int) -> list[tuple[int, int, int]]:
    """The default: 2 along every axis at every level."""
    return [(2, 2, 2)] * levels


def total_pooling(pool_sizes: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The product of every level's pooling, per axis: what each patch axis must be a multiple of."""
    return tuple(math.prod(pool[axis] for pool in pool_sizes) for axis in range(3))


def deep_supervision_heads(levels: int) -> int:
    """Extra logit heads under deep supervision: decoder stages 1/2 to 1/2**(levels - 2)."""
    # As in nnU-Net, the coarsest decoder stage stays unsupervised: too coarse to help.
    return max(0, levels - 2)


class ConvBlock(nn.Sequential):
    """Two convolutions (3x3x3 unless ``kernel_size`` says otherwise per axis),
    each followed by normalisation and activation."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, kernel_size: Sequence[int] = (3, 3, 3)):
        kernel, padding = tuple(kernel_size), tuple(k // 2 for k in kernel_size)
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel, padding=padding, bias=False),
            _norm(norm, out_channels),
            _activation(norm),
            nn.Conv3d(out_channels, out_channels, kernel, padding=padding, bias=False),
            _norm(norm, out_channels),
            _activation(norm),
        )


class UNet3D(nn.Module):
    """U-Net with ``levels`` encoder stages, a bridge and a mirrored decoder.

    Args:
        in_channels: Number of image channels.
        out_channels: Number of output logits, one per foreground class.
        levels: Number of encoder stages above the bridge. Each input axis must
            be divisible by its total pooling (:attr:`size_divisors`).
        base_channels: Channels of the first stage; each stage below doubles it.
        norm: ``'batch'`` (the seed) or ``'instance'`` (nnU-Net).
        deep_supervision: Add logit heads to the decoder stages at 1/2 to
            1/2**(levels - 2) resolution, as nnU-Net does. In training mode the
            forward pass then returns a list of logits, finest first; in eval
            mode it returns the full-resolution logits alone.
        pool_sizes: Per level, the pooling (and transposed-convolution
            stride) along each axis, as nnU-Net plans thick-slice data:
            ``[(2, 2, 1), (2, 2, 2)]`` keeps the slices at the first level.
            Default: 2 on every axis at every level.
        kernel_sizes: Per stage (each level, then the bridge), the convolution
            kernel along each axis; 1 along an axis too coarse to convolve
            across. Default: 3 everywhere.

    Example:
        >>> thick = UNet3D(levels=2, pool_sizes=[(2, 2, 1), (2, 2, 2)], kernel_sizes=[(3, 3, 1), (3, 3, 3), (3, 3, 3)])
        >>> thick.size_divisors, thick(torch.zeros(1, 1, 16, 16, 6)).shape
        ((4, 4, 2), torch.Size([1, 1, 16, 16, 6]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        levels: int = 2,
        base_channels: int = 8,
        norm: str = 'batch',
        deep_supervision: bool = False,
        pool_sizes: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        assert levels >= 1, f'levels must be at least 1, got {levels}'
        assert base_channels >= 1, f'base_channels must be positive, got {base_channels}'
        assert norm in NORMS, f'norm must be one of {NORMS}, got {norm!r}'
        pools = [tuple(p) for p in pool_sizes] if pool_sizes is not None else isotropic_pooling(levels)
        kernels = [tuple(k) for k in kernel_sizes] if kernel_sizes is not None else [(3, 3, 3)] * (levels + 1)
        assert len(pools) == levels and all(len(p) == 3 and set(p) <= {1, 2} for p in pools), (
            f'pool_sizes must give 1 or 2 per axis for each of the {levels} levels, got {pools}'
        )
        assert len(kernels) == levels + 1 and all(len(k) == 3 and set(k) <= {1, 3} for k in kernels), (
            f'kernel_sizes must give 1 or 3 per axis for each of the {levels + 1} stages, got {kernels}'
        )
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.pool_sizes = pools
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width, kernel in zip(widths[:-1], kernels):
            self.encoders.append(ConvBlock(previous, width, norm, kernel))
            previous = width
        # Pooling holds no weights, so the state dict is the same with or without per-axis pooling.
        self.pools = nn.ModuleList(nn.MaxPool3d(pool) for pool in pools)
        self.bridge = ConvBlock(widths[-2], widths[-1], norm, kernels[-1])
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow, pool, kernel in zip(widths[:0:-1], widths[-2::-1], pools[::-1], kernels[-2::-1]):
            self.upsamplers.append(nn.ConvTranspose3d(deep, shallow, pool, stride=pool))
            self.decoders.append(ConvBlock(2 * shallow, shallow, norm, kernel))
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        supervised = widths[1 : 1 + deep_supervision_heads(levels)] if deep_supervision else []
        self.deep_heads = nn.ModuleList(nn.Conv3d(width, out_channels, 1) for width in supervised)

    @torch.no_grad()
    def set_head_bias(self, bias: torch.Tensor) -> None:
        """Start every logit head at ``bias`` per channel;
        ``heartseg.training.recipe.build_network`` sets the outputs' prior."""
        for head in [self.head, *self.deep_heads]:
            head.bias.copy_(bias)

    @property
    def size_divisors(self) -> tuple[int, int, int]:
        """Each spatial input axis must be a multiple of its entry: the product of its pooling."""
        return total_pooling(self.pool_sizes)

    def without_deep_supervision(self) -> UNet3D:
        """A copy without the deep-supervision heads: the network to deploy, with the same eval-mode output."""
        deployed = copy.deepcopy(self)
        deployed.deep_heads = nn.ModuleList()
        return deployed

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        stages = self.features(x)
        logits = self.head(stages[-1])
        if not (self.training and self.deep_heads):
            return logits
        coarser = stages[-2 : -2 - len(self.deep_heads) : -1]
        return [logits, *(head(stage) for head, stage in zip(self.deep_heads, coarser))]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return every stage's output: encoders, bridge, then decoders."""
        divisors = self.size_divisors
        assert all(s % d == 0 for s, d in zip(x.shape[2:], divisors)), (
            f'spatial size {tuple(x.shape[2:])} must be divisible by {divisors} per axis'
        )
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bridge(x)
        stages = [*skips, x]
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
            stages.append(x)
        return stages
