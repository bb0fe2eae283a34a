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

import torch
from torch import nn

from heartseg.normalization import InstanceNorm3d

NORMS = ('batch', 'instance')
FOREGROUND_PRIOR = 0.01


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == 'batch':
        return nn.BatchNorm3d(channels)
    # Affine InstanceNorm is nnU-Net's choice: it does not depend on batch size.
    return InstanceNorm3d(channels)


def _activation(norm: str) -> nn.Module:
    # The seed pairs BatchNorm with ReLU; nnU-Net pairs InstanceNorm with LeakyReLU.
    return nn.ReLU(inplace=True) if norm == 'batch' else nn.LeakyReLU(0.01, inplace=True)


def deep_supervision_heads(levels: int) -> int:
    """Extra logit heads under deep supervision: decoder stages 1/2 to 1/2**(levels - 2)."""
    # As in nnU-Net, the coarsest decoder stage stays unsupervised: too coarse to help.
    return max(0, levels - 2)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by normalisation and activation."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            _activation(norm),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            _activation(norm),
        )


class UNet3D(nn.Module):
    """U-Net with ``levels`` encoder stages, a bridge and a mirrored decoder.

    Args:
        in_channels: Number of image channels.
        out_channels: Number of output logits, one per foreground class.
        levels: Number of encoder stages above the bridge. Input sizes must be
            divisible by ``2 ** levels``.
        base_channels: Channels of the first stage; each stage below doubles it.
        norm: ``'batch'`` (the seed) or ``'instance'`` (nnU-Net).
        deep_supervision: Add logit heads to the decoder stages at 1/2 to
            1/2**(levels - 2) resolution, as nnU-Net does. In training mode the
            forward pass then returns a list of logits, finest first; in eval
            mode it returns the full-resolution logits alone.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        levels: int = 2,
        base_channels: int = 8,
        norm: str = 'batch',
        deep_supervision: bool = False,
    ):
        super().__init__()
        assert levels >= 1, f'levels must be at least 1, got {levels}'
        assert base_channels >= 1, f'base_channels must be positive, got {base_channels}'
        assert norm in NORMS, f'norm must be one of {NORMS}, got {norm!r}'
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock(previous, width, norm))
            previous = width
        self.pool = nn.MaxPool3d(2)
        self.bridge = ConvBlock(widths[-2], widths[-1], norm)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.upsamplers.append(nn.ConvTranspose3d(deep, shallow, 2, stride=2))
            self.decoders.append(ConvBlock(2 * shallow, shallow, norm))
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        supervised = widths[1:1 + deep_supervision_heads(levels)] if deep_supervision else []
        self.deep_heads = nn.ModuleList(nn.Conv3d(width, out_channels, 1) for width in supervised)
        # Start from a small foreground prior (RetinaNet's trick): a random
        # half-foreground guess on a 2%-foreground volume swamps the Dice term
        # with false positives and stalls early training.
        for head in [self.head, *self.deep_heads]:
            nn.init.constant_(head.bias, math.log(FOREGROUND_PRIOR / (1 - FOREGROUND_PRIOR)))

    @property
    def size_divisor(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2**self.levels

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
        coarser = stages[-2:-2 - len(self.deep_heads):-1]
        return [logits, *(head(stage) for head, stage in zip(self.deep_heads, coarser))]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return every stage's output: encoders, bridge, then decoders."""
        divisor = self.size_divisor
        assert all(s % divisor == 0 for s in x.shape[2:]), (
            f'spatial size {tuple(x.shape[2:])} must be divisible by {divisor}'
        )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        stages = [*skips, x]
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
            stages.append(x)
        return stages
