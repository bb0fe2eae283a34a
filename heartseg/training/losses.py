"""Segmentation losses: cross-entropy and soft Dice on the output channels that :mod:`heartseg.outputs` defines.

``ce`` is the cross-entropy alone and ``ce_dice`` adds soft Dice, as
nnU-Net's ``DC_and_BCE_loss`` (sigmoid channels) and ``DC_and_CE_loss``
(softmax, its Dice over the structures, not background) do. The
cross-entropy is binary per channel for sigmoid outputs and categorical over
the channels for softmax outputs. ``bce`` and ``bce_dice``, the names before
softmax outputs existed, are accepted as aliases (:data:`LOSS_ALIASES`), so
that older run configs and checkpoints still load.

Example:
    >>> import torch
    >>> from heartseg.outputs import Outputs
    >>> loss = build_loss('ce_dice', Outputs('sigmoid', ((1,),)))
    >>> float(loss(torch.full((1, 1, 4, 4, 4), 10.0), torch.ones(1, 1, 4, 4, 4))) < 0.01
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heartseg.distributed import all_reduce_sum
from heartseg.outputs import Outputs
from heartseg.planning.config import canonical_loss


class SoftDiceLoss(nn.Module):
    """1 - soft Dice per channel, pooled over the batch (nnU-Net's batch Dice).

    Pooling over the batch keeps the loss defined on patches without foreground.
    With ``across_ranks``, the batch is the global one of all DDP ranks, as in
    nnU-Net, so N ranks train exactly like one process with the same batch.
    """

    def __init__(self, outputs: Outputs, smooth: float = 1e-5, across_ranks: bool = False):
        super().__init__()
        self.outputs = outputs
        self.smooth = smooth
        self.across_ranks = across_ranks

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        first = self.outputs.first_structure_channel
        probabilities = self.outputs.probabilities(logits, dim=1)[:, first:]
        target = target[:, first:]
        reduce_axes = [0, *range(2, logits.ndim)]
        intersection = (probabilities * target).sum(reduce_axes)
        total = probabilities.sum(reduce_axes) + target.sum(reduce_axes)
        if self.across_ranks:
            intersection, total = all_reduce_sum(intersection), all_reduce_sum(total)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        return 1 - dice.mean()


class CrossEntropyLoss(nn.Module):
    """Binary cross-entropy per sigmoid channel, or categorical cross-entropy over softmax channels.

    The target may be soft (deep supervision's pooled targets): both forms take probabilities.
    """

    def __init__(self, outputs: Outputs):
        super().__init__()
        self.softmax = outputs.kind == 'softmax'

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.softmax:
            return F.cross_entropy(logits.float(), target)
        return F.binary_cross_entropy_with_logits(logits.float(), target)


class CrossEntropyDiceLoss(nn.Module):
    """Cross-entropy (binary per sigmoid channel,
    categorical over softmax channels) plus soft Dice, equally weighted."""

    def __init__(self, outputs: Outputs, across_ranks: bool = False):
        super().__init__()
        self.cross_entropy = CrossEntropyLoss(outputs)
        self.dice = SoftDiceLoss(outputs, across_ranks=across_ranks)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(logits, target) + self.dice(logits, target)


class DeepSupervisionLoss(nn.Module):
    """nnU-Net's deep supervision: a loss on each scale's logits, weights halving per scale.

    Each coarser scale is compared with the target average-pooled to its
    shape (per axis, so an unpooled thick-slice axis keeps its slices), a soft
    target that keeps partial-volume information at coarse scales. A single
    tensor of logits is scored by the wrapped loss alone.

    Example:
        >>> loss = DeepSupervisionLoss(CrossEntropyDiceLoss(Outputs('sigmoid', ((1,),))))
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
            self.loss(scale_logits.float(), F.adaptive_avg_pool3d(target, scale_logits.shape[2:]) if scale else target)
            for scale, scale_logits in enumerate(scales)
        ]
        return sum(weight * loss for weight, loss in zip(weights, losses)) / sum(weights)


def build_loss(name: str, outputs: Outputs, across_ranks: bool = False) -> nn.Module:
    """The loss named (or aliased) ``name`` on ``outputs``' channels, accepting deep supervision's list of logits.

    ``across_ranks`` pools the Dice term over all DDP ranks' patches.
    """
    # Cross-entropy is a mean over voxels: DDP's gradient averaging already makes it global.
    loss = CrossEntropyLoss(outputs) if canonical_loss(name) == 'ce' else CrossEntropyDiceLoss(outputs, across_ranks)
    return DeepSupervisionLoss(loss)
