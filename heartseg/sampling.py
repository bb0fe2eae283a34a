"""Training patches: label-balanced sampling with TorchIO, each patch seeded by its position.

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
from contextlib import contextmanager

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset, Sampler


def pad_to_patch(subject: tio.Subject, patch_size: tuple[int, int, int]) -> tio.Subject:
    """Pad a subject (at its end) so that every axis is at least the patch size."""
    shape = subject.spatial_shape
    if all(s >= p for s, p in zip(shape, patch_size)):
        return subject
    padding = []
    for s, p in zip(shape, patch_size):
        padding += [0, max(0, p - s)]
    return tio.Pad(padding, padding_mode='minimum')(subject)


def patch_seed(seed: int, epoch: int, index: int) -> int:
    """One patch's 63-bit seed, the same under every Python and NumPy version (``hash()`` of a tuple is not).

    Example:
        >>> patch_seed(0, 0, 0), patch_seed(0, 0, 1)
        (7896617691693857887, 4324601099084218337)
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with a private, seeded torch generator state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class PatchDataset(Dataset):
    """Foreground-oversampled random patches from preprocessed subjects, keyed by stream position.

    Args:
        subjects: Preprocessed subjects with ``image`` and ``label``.
        patch_size: Patch shape in voxels.
        samples_per_epoch: Patches per epoch; each epoch visits the cases in a
            new seeded order.
        seed: Base seed for the patch stream.
        foreground_probability: Chance that a patch is centred on foreground.
        transform: Optional augmentation applied to each patch.
        foreground_labels: Label values trained as output channels.
        batch_size: Global batch size; the cases within one batch are distinct
            whenever there are at least as many cases as patches per batch.
    """

    def __init__(
        self,
        subjects: list[tio.Subject],
        patch_size: tuple[int, int, int],
        samples_per_epoch: int,
        seed: int,
        foreground_probability: float = 0.5,
        transform: tio.Transform | None = None,
        foreground_labels: tuple[int, ...] = (1,),
        batch_size: int = 1,
    ):
        assert subjects, 'PatchDataset needs at least one subject'
        self.subjects = [pad_to_patch(subject, patch_size) for subject in subjects]
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.seed = seed
        self.transform = transform
        self.foreground_labels = foreground_labels
        share = foreground_probability / len(foreground_labels)
        probabilities = {0: 1 - foreground_probability, **{label: share for label in foreground_labels}}
        self.sampler = tio.LabelSampler(patch_size, 'label', probabilities)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def case_order(self, epoch: int) -> tuple[int, ...]:
        """Seeded shuffles of all cases, one after another, for one epoch."""
        return _case_order(self.seed, epoch, len(self.subjects), self.samples_per_epoch, self.batch_size)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(position, self.samples_per_epoch)
        subject = self.subjects[self.case_order(epoch)[index]]
        with seeded(patch_seed(self.seed, epoch, index)):
            patch = next(iter(self.sampler(subject, num_patches=1)))
            if self.transform is not None:
                patch = self.transform(patch)
        return patch['image'].data.float(), one_hot_foreground(patch['label'].data, self.foreground_labels)


@functools.lru_cache(maxsize=4)
def _case_order(seed: int, epoch: int, cases: int, samples: int, batch_size: int) -> tuple[int, ...]:
    # Cached: every patch of an epoch looks up the same order.
    generator = np.random.default_rng([seed, epoch])
    order: list[int] = []
    while len(order) < samples:
        shuffle = generator.permutation(cases).tolist()
        open_batch = set(order[len(order) - len(order) % batch_size:])
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


def one_hot_foreground(label: torch.Tensor, foreground_labels: tuple[int, ...]) -> torch.Tensor:
    """``(1, X, Y, Z)`` label map → ``(C, X, Y, Z)`` float target, one channel per foreground label."""
    return torch.cat([(label == value) for value in foreground_labels]).float()
