"""What turns a raw scan into network input: canonical (RAS) orientation, the target spacing (labels
resampled as one mask per value), a z-score per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchio as tio

from heartseg.checkpoint import ModelPlan
from heartseg.errors import UserError

# Bump when preprocessing changes, so that stale cache entries are never reused; checkpoints record it.
# 3: a z-score per channel (before, the channels were pooled); 4: labels resampled as one-hot masks.
PREPROCESSING_VERSION = 4


PER_CHANNEL_SINCE = 3


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a raw scan into network input; a checkpoint's plan records it (:meth:`for_plan`).

    Canonical (RAS) orientation, then resampling to the target spacing: images
    linearly; label maps as one mask per value, each resampled linearly, then
    the arg max (nnU-Net's ``resize_segmentation``). Nearest-neighbour
    resampling would shift a label against its image by half a source voxel
    wherever the spacing halves, since each new voxel centre then falls midway
    between two old ones. Last, a z-score per image channel.

    Example:
        >>> label = torch.zeros(1, 8, 8, 8)
        >>> label[0, 3:7] = 1  # source voxels 3 to 6: centred on 4.5, where coarse voxel 2 is
        >>> subject = tio.Subject(image=tio.ScalarImage(tensor=label + 1), label=tio.LabelMap(tensor=label))
        >>> halved = Preprocessing((2.0, 2.0, 2.0))(subject)['label'].data[0]
        >>> halved[:, 0, 0].tolist(), halved[:, 0, 1].tolist()  # the edges, half inside, alternate
        ([0, 1, 1, 1], [0, 0, 1, 0])
    """

    target_spacing: tuple[float, float, float]
    normalization: str = 'zscore'

    def __call__(self, subject: tio.Subject) -> tio.Subject:
        """The preprocessed copy of a subject with an ``image`` and, for training cases, a ``label``."""
        assert self.normalization == 'zscore', f"the only normalisation is 'zscore', got {self.normalization!r}"
        canonical = tio.ToCanonical()(subject)
        resample = tio.Resample(self.target_spacing)
        image = resample(canonical['image'])
        image.set_data(z_score_per_channel(image.data.float()))
        preprocessed = tio.Subject(
            image=image, **{key: value for key, value in subject.items() if not isinstance(value, tio.Image)}
        )
        if 'label' in subject:
            preprocessed.add_image(resample_label(canonical['label'], resample), 'label')
        return preprocessed

    @classmethod
    def for_plan(cls, plan: ModelPlan, path: Path) -> Preprocessing:
        """The preprocessing a checkpoint's model was trained with,
        or a one-line error where this code cannot reproduce it."""
        if plan.normalization != 'zscore':
            raise UserError(
                path,
                f'its model was trained on {plan.normalization!r}-normalised images; this version knows only z-scores',
            )
        if plan.preprocessing_version > PREPROCESSING_VERSION:
            raise UserError(
                path,
                f'its preprocessing (version {plan.preprocessing_version}) is '
                f"newer than this code's ({PREPROCESSING_VERSION}); update heartseg",
            )
        if plan.preprocessing_version < PER_CHANNEL_SINCE and plan.channels > 1:
            raise UserError(
                path,
                f'its {plan.channels} channels were z-scored together (preprocessing version '
                f'{plan.preprocessing_version}), which this version no longer reproduces; retrain it',
            )
        return cls(plan.target_spacing, plan.normalization)


# Masks resampled to within this of each other are a tie (float rounding of the grid would otherwise break it one way).
TIE_TOLERANCE = 1e-3


def resample_label(label: tio.LabelMap, resample: tio.Resample) -> tio.LabelMap:
    """A label map on ``resample``'s grid: each value's mask resampled linearly, the most likely value kept.

    Ties (a new voxel exactly half inside, as along every edge of a 2x
    downsampling) go to the higher value on alternate voxels, like a
    checkerboard: always to the lower one would shrink structures by about a
    quarter of a voxel on every side, always to the higher would grow them.
    """
    masks = (
        (value, resample(tio.ScalarImage(tensor=(label.data == value).float(), affine=label.affine)))
        for value in torch.unique(label.data).tolist()
    )
    first_value, first = next(masks)
    best, chosen = first.data, torch.full(first.data.shape, first_value, dtype=torch.uint8)
    odd = _checkerboard(first.data.shape[1:])
    for value, mask in masks:
        wins = (mask.data > best + TIE_TOLERANCE) | (odd & ((mask.data - best).abs() <= TIE_TOLERANCE))
        best = torch.where(wins, mask.data, best)
        chosen[wins] = value
    return tio.LabelMap(tensor=chosen, affine=first.affine)


def _checkerboard(shape: tuple[int, ...]) -> torch.Tensor:
    """``(1, X, Y, Z)``: True where the sum of a voxel's indices is odd."""
    indices = torch.meshgrid(*(torch.arange(n) for n in shape), indexing='ij')
    return (sum(indices) % 2 == 1)[None]


def z_score_per_channel(image: torch.Tensor) -> torch.Tensor:
    """Each channel to zero mean and unit standard deviation on its own, as nnU-Net normalises modalities.

    TorchIO's ``ZNormalization`` pools all channels, which would let one
    modality's intensities set another's scale.

    Example:
        >>> z_score_per_channel(torch.tensor([[[[1.0, 3.0]]], [[[100.0, 300.0]]]])).flatten().tolist()
        [-0.7071067690849304, 0.7071067690849304, -0.7071067690849304, 0.7071067690849304]
    """
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    return (image - mean) / image.std(dim=(1, 2, 3), keepdim=True)
