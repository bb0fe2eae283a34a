"""Training patches: label-balanced sampling, the spatial augmentation, each patch seeded by its position.

Every patch is a pure function of ``(seed, epoch, index)``: each item seeds its
own random generator, so the patch stream is the same with or without loader
workers, across an interrupted and resumed run, and across DDP ranks. An item's
key is its position in the whole stream, ``epoch * samples_per_epoch + index``,
so persistent loader workers need no message when a new epoch starts.

Example:
    >>> sampler = EpochSampler(samples_per_epoch=4, batch_size=2, rank=0, world_size=1)
    >>> sampler.set_epoch(3)
    >>> list(sampler)
    [12, 13, 14, 15]
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset, Sampler

from heartseg.outputs import Outputs
from heartseg.training.augmentation import UNCHANGED, Augmentation, padded_region, sample_patch


def pad_to_patch(volume: torch.Tensor, patch_size: tuple[int, int, int], value: torch.Tensor) -> torch.Tensor:
    """A ``(C, X, Y, Z)`` volume padded at its end, each channel with its ``value``,
    so that every axis is at least the patch size."""
    shape = np.maximum(volume.shape[1:], patch_size)
    return volume if np.array_equal(shape, volume.shape[1:]) else padded_region(volume, np.zeros(3, int), shape, value)


# A label covering less than this share of a case's valid patch centres has its voxels listed once;
# a commoner one is drawn by rejection, in at most 1 / share tries on average.
LISTED_LABEL_SHARE = 1 / 8


class PatchCorners:
    """Label-balanced patch corners of one case, its label voxels located once.

    The distribution is TorchIO's ``LabelSampler``'s: a label value drawn with
    the given probabilities, renormalised over the values found among the
    valid patch centres, then a uniform centre of that value. ``LabelSampler``
    builds a float64 probability map and its cumulative sum over the whole
    volume for every patch: a third of a loader worker's time at the GPU plan
    on LA2018 (BENCHMARKS.md, "Patch sampler and worker threads"), against 5 % here.

    Args:
        label: ``(1, X, Y, Z)`` integer label map, at least ``patch_size``.
        patch_size: Patch shape in voxels.
        probabilities: Label value → chance that a patch is centred on it.

    Example:
        >>> label = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
        >>> label[0, 4, 4, 4] = 1
        >>> PatchCorners(label, (4, 4, 4), {1: 1.0}).draw(np.random.default_rng(0))
        (2, 2, 2)
    """

    def __init__(self, label: torch.Tensor, patch_size: tuple[int, int, int], probabilities: dict[int, float]):
        shape = label.shape[1:]
        assert all(s >= p for s, p in zip(shape, patch_size)), (
            f'label map {tuple(shape)} is smaller than the patch {patch_size}'
        )
        self.corner_ranges = tuple(s - p + 1 for s, p in zip(shape, patch_size))
        # The label at every valid centre: corner + patch // 2, as TorchIO centres a patch.
        self.centre_labels = label[0][tuple(slice(p // 2, p // 2 + n) for p, n in zip(patch_size, self.corner_ranges))]
        centres = {value: self.centre_labels == value for value, chance in probabilities.items() if chance > 0}
        found = {value: int(mask.sum()) for value, mask in centres.items()}
        self.values = [value for value, count in found.items() if count]
        weights = np.array([probabilities[value] for value in self.values], dtype=np.float64)
        self.weights = weights / weights.sum() if self.values else weights
        self.listed = {
            value: np.flatnonzero(centres[value].numpy())
            for value in self.values
            if found[value] < LISTED_LABEL_SHARE * self.centre_labels.numel()
        }

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """One patch's corner (its first voxel) in the case's grid."""
        if not self.values:  # no voxel of a wanted value can be a centre: any patch will do
            return self._uniform_corner(rng)
        value = self.values[rng.choice(len(self.values), p=self.weights)]
        if value in self.listed:
            voxels = self.listed[value]
            return tuple(int(i) for i in np.unravel_index(voxels[rng.integers(len(voxels))], self.corner_ranges))
        while True:
            corner = self._uniform_corner(rng)
            if int(self.centre_labels[corner]) == value:
                return corner

    def _uniform_corner(self, rng: np.random.Generator) -> tuple[int, int, int]:
        return tuple(int(rng.integers(n)) for n in self.corner_ranges)


def patch_seed(seed: int, epoch: int, index: int) -> int:
    """One patch's 63-bit seed, the same under every Python and NumPy version (``hash()`` of a tuple is not).

    Example:
        >>> patch_seed(0, 0, 0), patch_seed(0, 0, 1)
        (7896617691693857887, 4324601099084218337)
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class PatchDataset(Dataset):
    """Foreground-oversampled random patches from preprocessed subjects, keyed by stream position.

    Args:
        subjects: Preprocessed subjects with ``image`` and ``label``.
        patch_size: Patch shape in voxels.
        samples_per_epoch: Patches per epoch; each epoch visits the cases in a
            new seeded order.
        seed: Base seed for the patch stream.
        foreground_probability: Chance that a patch is centred on foreground.
        augmentation: Optional augmentation: its spatial part is applied here,
            its intensity part here too, or later on the training device.
        outputs: The output channels, which make each patch's target; foreground patches are centred
            on each of their foreground labels as often.
        batch_size: Global batch size; the cases within one batch are distinct
            whenever there are at least as many cases as patches per batch.

    Each item is ``(image, target of the output channels, intensity parameters)``, the
    parameters an empty dict unless the intensity transforms run on the device.
    """

    def __init__(
        self,
        subjects: list[tio.Subject],
        patch_size: tuple[int, int, int],
        samples_per_epoch: int,
        seed: int,
        foreground_probability: float = 0.5,
        augmentation: Augmentation | None = None,
        outputs: Outputs | None = None,
        batch_size: int = 1,
    ):
        assert subjects, 'PatchDataset needs at least one subject'
        images = [subject['image'].data.float() for subject in subjects]
        # Padding is each case's minimum, labelled background, as beyond the volume in a rotated patch.
        self.images = [pad_to_patch(image, patch_size, image.amin(dim=(1, 2, 3))) for image in images]
        self.labels = [pad_to_patch(subject['label'].data, patch_size, torch.zeros(1)) for subject in subjects]
        self.voxel_to_world = [subject['image'].affine[:3, :3] for subject in subjects]
        self.patch_size = patch_size
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.seed = seed
        self.augmentation = augmentation
        self.outputs = outputs or Outputs.one_per_label('sigmoid', (1,))
        foreground_labels = self.outputs.foreground_labels
        share = foreground_probability / len(foreground_labels)
        probabilities = {0: 1 - foreground_probability, **{label: share for label in foreground_labels}}
        # Located here, before loader workers fork, so that they share them.
        self.corners = [PatchCorners(label, patch_size, probabilities) for label in self.labels]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def case_order(self, epoch: int) -> tuple[int, ...]:
        """Seeded shuffles of all cases, one after another, for one epoch."""
        return _case_order(self.seed, epoch, len(self.images), self.samples_per_epoch, self.batch_size)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        epoch, index = divmod(position, self.samples_per_epoch)
        case = self.case_order(epoch)[index]
        rng = np.random.default_rng(patch_seed(self.seed, epoch, index))
        corner = self.corners[case].draw(rng)
        augmentation = self.augmentation
        draw = UNCHANGED if augmentation is None else augmentation.draw_spatial(rng)
        image, label = sample_patch(
            self.images[case], self.labels[case], corner, self.patch_size, self.voxel_to_world[case], draw
        )
        parameters: dict[str, torch.Tensor] = {}
        if augmentation is not None and augmentation.full:
            parameters = augmentation.draw_intensity(rng, channels=image.shape[0])
            if not augmentation.on_device:
                image, parameters = augmentation.intensity(image, parameters), {}
        return image, self.outputs.target(label), parameters


@functools.lru_cache(maxsize=4)
def _case_order(seed: int, epoch: int, cases: int, samples: int, batch_size: int) -> tuple[int, ...]:
    # Cached: every patch of an epoch looks up the same order.
    generator = np.random.default_rng([seed, epoch])
    order: list[int] = []
    while len(order) < samples:
        shuffle = generator.permutation(cases).tolist()
        open_batch = set(order[len(order) - len(order) % batch_size :])
        # A stable sort moves cases already in the unfinished batch to the end of the shuffle.
        order += sorted(shuffle, key=lambda case: case in open_batch)
    return tuple(order)


def rank_indices(samples: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The patch indices of one DDP rank: its slice of every global batch.

    Example:
        >>> rank_indices(8, batch_size=4, rank=1, world_size=2)
        [2, 3, 6, 7]
    """
    assert batch_size % world_size == 0, f'batch size {batch_size} must be divisible by the {world_size} ranks'
    local = batch_size // world_size
    return [index for index in range(samples) if (index % batch_size) // local == rank]


class EpochSampler(Sampler[int]):
    """One rank's stream positions for the current epoch (see :func:`rank_indices`)."""

    def __init__(self, samples_per_epoch: int, batch_size: int, rank: int, world_size: int):
        self.samples_per_epoch = samples_per_epoch
        self.indices = rank_indices(samples_per_epoch, batch_size, rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter([self.epoch * self.samples_per_epoch + index for index in self.indices])

    def __len__(self) -> int:
        return len(self.indices)
