"""The training recipe, built from the config in one place: network, loss, optimiser, LR schedule, augmentation.

To change what a run trains, start here. The network's layers are in
``mymodel.py``, the losses in ``heartseg/losses.py`` and the transforms in
``heartseg/augmentation.py``; this module chooses among them and wires them
up, as nnU-Net's ``build_network_architecture`` and ``_build_loss`` hooks and
pytorch-3dunet's ``create_trainer`` do. ``training.Trainer`` receives the
result and only runs it.

Example:
    >>> from heartseg.planning.config import RunConfig
    >>> config = RunConfig(data='d', run_dir='r', cache_dir='c', target_spacing=(1.25,) * 3, patch_size=(32, 32, 32),
    ...                    epochs=10, val_every=1, output='sigmoid', base_channels=4, channels_last=False,
    ...                    num_workers=0, levels=2, labels={'0': 'background', '1': 'atrium'}, modalities={'0': 'MRI'})
    >>> recipe = build_recipe(config, torch.device('cpu'))
    >>> type(recipe.optimizer).__name__, recipe.learning_rate(0, 10)
    ('Adam', 0.001)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import SimpleITK as sitk
import torch
import torchio as tio
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from heartseg import distributed
from heartseg.planning.config import RunConfig
from heartseg.planning.plan import dummy_2d_axis
from heartseg.training.augmentation import Augmentation
from heartseg.training.losses import build_loss
from heartseg.training.sampling import EpochSampler, PatchDataset
from heartseg.training.schedule import poly_lr
from mymodel import UNet3D

GRADIENT_CLIP_NORM = 12.0  # nnU-Net's value
# Every structure starts at this probability (RetinaNet's trick): a random half-foreground guess on a
# 2%-foreground volume swamps the Dice term with false positives and stalls early training.
FOREGROUND_PRIOR = 0.01


@dataclass
class Recipe:
    """What one run trains, and how."""

    network: UNet3D
    loss: nn.Module  # validation, and training in one process
    training_loss: nn.Module  # the same loss, its Dice term summed over torchrun processes
    optimizer: torch.optim.Optimizer
    learning_rate: Callable[[int, int], float]  # (epoch, total epochs) → learning rate
    augmentation: Augmentation | None  # spatial in the loader; intensity there or on the training device
    gradient_clip_norm: float
    averaged: AveragedModel | None  # with --ema-decay: the weights validated and saved


def weight_average(network: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``network``'s weights (and norm buffers), or None for a ``decay`` of 0.

    After each optimiser step, ``w_avg = decay * w_avg + (1 - decay) * w``: it
    remembers about the last ``1 / (1 - decay)`` steps.
    """
    if not decay:
        return None
    return AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def build_recipe(config: RunConfig, device: torch.device) -> Recipe:
    network = build_network(config, device)
    return Recipe(
        network=network,
        loss=build_loss(config.loss, config.outputs),
        training_loss=build_loss(config.loss, config.outputs, across_ranks=distributed.world_size() > 1),
        optimizer=torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay),
        learning_rate=functools.partial(poly_lr, config.lr),
        augmentation=build_augmentation(config),
        gradient_clip_norm=GRADIENT_CLIP_NORM,
        averaged=weight_average(network, config.ema_decay),
    )


def build_network(config: RunConfig, device: torch.device) -> UNet3D:
    """The U-Net of the config, its weights drawn from the run's seed, its heads biased to the foreground prior."""
    torch.manual_seed(config.seed)
    network = UNet3D(**config.network_kwargs())
    network.set_head_bias(config.outputs.initial_bias(FOREGROUND_PRIOR))
    return network.to(device, memory_format=memory_format(config))


def build_augmentation(config: RunConfig) -> Augmentation | None:
    """The run's augmentation, its intensity transforms where ``--augment-on`` says."""
    if config.augmentation == 'none':
        return None
    return Augmentation(config.augmentation, config.augment_on, dummy_2d_axis(config.target_spacing, config.patch_size))


def memory_format(config: RunConfig) -> torch.memory_format:
    return torch.channels_last_3d if config.channels_last else torch.contiguous_format


@dataclass
class PatchLoader:
    """The training patches of one process, and the sampler that moves them to the next epoch."""

    loader: DataLoader
    sampler: EpochSampler


def build_patch_loader(
    config: RunConfig,
    subjects: list[tio.Subject],
    augmentation: Augmentation | None,
    device: torch.device,
    worker_threads: int | None = 1,
) -> PatchLoader:
    """The run's patch stream; each loader worker runs ``worker_threads`` threads per library (None: their defaults).

    ``augmentation`` is drawn and its spatial part applied in the loader; with
    ``--augment-on device`` its intensity parameters travel with each batch.
    """
    steps = config.steps_in_epoch(len(subjects))
    patches = PatchDataset(
        subjects,
        config.patch_size,
        samples_per_epoch=steps * config.batch_size,
        seed=config.seed,
        foreground_probability=config.foreground_probability,
        augmentation=augmentation,
        outputs=config.outputs,
        batch_size=config.batch_size,
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
