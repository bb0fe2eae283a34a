"""Segmentation losses on per-class sigmoid logits.

Example:
    >>> import torch
    >>> loss = build_loss('bce_dice')
    >>> float(loss(torch.full((1, 1, 4, 4, 4), 10.0), torch.ones(1, 1, 4, 4, 4))) < 0.01
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heartseg.distributed import all_reduce_sum

LOSSES = ('bce', 'bce_dice')


class SoftDiceLoss(nn.Module):
    """1 - soft Dice per channel, pooled over the batch (nnU-Net's batch Dice).

    Pooling over the batch keeps the loss defined on patches without foreground.
    With ``across_ranks``, the batch is the global one of all DDP ranks, as in
    nnU-Net, so N ranks train exactly like one process with the same batch.
    """

    def __init__(self, smooth: float = 1e-5, across_ranks: bool = False):
        super().__init__()
        self.smooth = smooth
        self.across_ranks = across_ranks

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = torch.sigmoid(logits.float())
        reduce_axes = [0, *range(2, logits.ndim)]
        intersection = (probabilities * target).sum(reduce_axes)
        total = probabilities.sum(reduce_axes) + target.sum(reduce_axes)
        if self.across_ranks:
            intersection, total = all_reduce_sum(intersection), all_reduce_sum(total)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        return 1 - dice.mean()


class BCEDiceLoss(nn.Module):
    """Binary cross-entropy plus soft Dice, equally weighted."""

    def __init__(self, across_ranks: bool = False):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = SoftDiceLoss(across_ranks=across_ranks)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits.float(), target) + self.dice(logits, target)


class DeepSupervisionLoss(nn.Module):
    """nnU-Net's deep supervision: a loss on each scale's logits, weights halving per scale.

    Scale ``k`` is compared with the target average-pooled by ``2**k``, a soft
    target that keeps partial-volume information at coarse scales. A single
    tensor of logits is scored by the wrapped loss alone.

    Example:
        >>> loss = DeepSupervisionLoss(BCEDiceLoss())
        >>> target = torch.ones(1, 1, 8, 8, 8)
        >>> logits = [torch.full((1, 1, 8, 8, 8), 10.0), torch.full((1, 1, 4, 4, 4), 10.0)]
        >>> float(loss(logits, target)) < 0.01
        True
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        scales = [logits] if isinstance(logits, torch.Tensor) else logits
        weights = [0.5**scale for scale in range(len(scales))]
        losses = [
            self.loss(scale_logits.float(), F.avg_pool3d(target, 2**scale) if scale else target)
            for scale, scale_logits in enumerate(scales)
        ]
        return sum(weight * loss for weight, loss in zip(weights, losses)) / sum(weights)


def build_loss(name: str, across_ranks: bool = False) -> nn.Module:
    """The named loss, accepting deep supervision's list of logits.

    ``across_ranks`` pools the Dice term over all DDP ranks' patches.
    """
    assert name in LOSSES, f'loss must be one of {LOSSES}, got {name!r}'
    # BCE is a mean over voxels: DDP's gradient averaging already makes it global.
    loss = nn.BCEWithLogitsLoss() if name == 'bce' else BCEDiceLoss(across_ranks)
    return DeepSupervisionLoss(loss)
