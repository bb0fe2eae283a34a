"""The training recipe, built from the config in one place: network, loss, optimiser, LR schedule, augmentation.

To change what a run trains, start here. The network's layers are in
``mymodel.py``, the losses in ``heartseg/losses.py`` and the transforms in
``heartseg/augmentation.py``; this module chooses among them and wires them
up, as nnU-Net's ``build_network_architecture`` and ``_build_loss`` hooks and
pytorch-3dunet's ``create_trainer`` do. ``training.Trainer`` receives the
result and only runs it.

Example:
    >>> from heartseg.config import RunConfig
    >>> config = RunConfig(data='d', run_dir='r', cache_dir='c', target_spacing=(1.25,) * 3, patch_size=(32, 32, 32),
    ...                    levels=2, base_channels=4, labels={'0': 'background', '1': 'atrium'}, modalities={'0': 'MRI'})
    >>> recipe = build_recipe(config, torch.device('cpu'))
    >>> type(recipe.optimizer).__name__, recipe.learning_rate(0, 10)
    ('Adam', 0.001)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import SimpleITK as sitk
import torch
import torchio as tio
from torch import nn
from torch.utils.data import DataLoader

from heartseg import distributed
from heartseg.augmentation import augmentation
from heartseg.config import RunConfig
from heartseg.device_augmentation import DeviceAugmentation
from heartseg.losses import build_loss
from heartseg.sampling import EpochSampler, PatchDataset
from heartseg.schedule import poly_lr
from mymodel import UNet3D

GRADIENT_CLIP_NORM = 12.0  # nnU-Net's value


@dataclass
class Recipe:
    """What one run trains, and how."""

    network: UNet3D
    loss: nn.Module  # validation, and training in one process
    training_loss: nn.Module  # the same loss, its Dice term summed over torchrun processes
    optimizer: torch.optim.Optimizer
    learning_rate: Callable[[int, int], float]  # (epoch, total epochs) → learning rate
    augmentation: tio.Transform | None  # in the loader workers, per patch
    device_augmentation: DeviceAugmentation | None  # on the training device, per batch
    gradient_clip_norm: float


def build_recipe(config: RunConfig, device: torch.device) -> Recipe:
    network = build_network(config, device)
    loader_augmentation, device_augmentation = split_augmentation(config)
    return Recipe(
        network=network,
        loss=build_loss(config.loss),
        training_loss=build_loss(config.loss, across_ranks=distributed.world_size() > 1),
        optimizer=torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay),
        learning_rate=functools.partial(poly_lr, config.lr),
        augmentation=loader_augmentation,
        device_augmentation=device_augmentation,
        gradient_clip_norm=GRADIENT_CLIP_NORM,
    )


def build_network(config: RunConfig, device: torch.device) -> UNet3D:
    """The U-Net of the config, its initial weights drawn from the run's seed."""
    torch.manual_seed(config.seed)
    return UNet3D(**config.network_kwargs()).to(device, memory_format=memory_format(config))


def split_augmentation(config: RunConfig) -> tuple[tio.Transform | None, DeviceAugmentation | None]:
    """The run's augmentation, for the loader workers or for the training device (``--augment-on``)."""
    if config.augment_on == 'device' and config.augmentation != 'none':
        return None, DeviceAugmentation(config.augmentation)
    return augmentation(config.augmentation), None


def memory_format(config: RunConfig) -> torch.memory_format:
    return torch.channels_last_3d if config.channels_last else torch.contiguous_format


@dataclass
class PatchLoader:
    """The training patches of one process, and the sampler that moves them to the next epoch."""

    loader: DataLoader
    sampler: EpochSampler


def build_patch_loader(config: RunConfig, subjects: list[tio.Subject], transform: tio.Transform | None,
                       device: torch.device, worker_threads: int | None = 1,
                       device_augmentation: DeviceAugmentation | None = None) -> PatchLoader:
    """The run's patch stream; each loader worker runs ``worker_threads`` threads per library (None: their defaults).

    ``transform`` runs in the loader; ``device_augmentation``'s parameters are drawn there and travel with each batch.
    """
    steps = config.steps_per_epoch or math.ceil(len(subjects) / config.batch_size)
    patches = PatchDataset(
        subjects,
        config.patch_size,
        samples_per_epoch=steps * config.batch_size,
        seed=config.seed,
        foreground_probability=config.foreground_probability,
        transform=transform,
        foreground_labels=config.foreground_labels,
        batch_size=config.batch_size,
        device_augmentation=device_augmentation,
    )
    ranks = distributed.world_size()
    sampler = EpochSampler(len(patches), config.batch_size, distributed.rank(), ranks)
    # Persistent workers start once per run, not once per epoch.
    loader = DataLoader(
        patches,
        batch_size=config.batch_size // ranks,
        sampler=sampler,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=device.type == 'cuda',
        worker_init_fn=None if worker_threads is None else functools.partial(limit_threads, worker_threads),
    )
    return PatchLoader(loader, sampler)


def limit_threads(threads: int, worker_id: int | None = None) -> None:
    """Cap torch's and ITK's thread pools; ITK's default is every core, whatever the number of workers."""
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
