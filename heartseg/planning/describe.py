"""The plan in words: the ``Plan:`` line a run prints at its start, which ``config.json`` keeps as settings."""

from __future__ import annotations

from heartseg.data.fingerprint import (
    pooling_text,
)
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.planning.config import RunConfig
from heartseg.planning.plan import default_epochs, dummy_2d_axis


def plan_text(config: RunConfig, num_train: int, num_val: int, split_text: str) -> str:
    """The plan line printed at the start of a run."""
    pooling = '' if config.pool_sizes is None else f' pooling {pooling_text(config.pool_sizes)}'
    supervision = ' deep-supervision' if config.deep_supervision else ''
    length = (
        f'epochs fitted to the time limit of {config.time_limit:g} min'
        if config.time_limit
        else _length_text(config, num_train)
    )
    return (
        f'Plan: {num_train} training / {num_val} validation cases ({split_text}), spacing {config.target_spacing} mm, '
        f'patch {list(config.patch_size)}, U-Net levels={config.levels} base={config.base_channels} '
        f'norm={config.norm}{supervision}{pooling}, {config.outputs.channels} {config.output} outputs, '
        f'loss {config.loss}, augmentation {_augmentation_text(config)}, batch {config.batch_size}, {length}, '
        f'{_precision_text(config)}'
    )


def _augmentation_text(config: RunConfig) -> str:
    thick = dummy_2d_axis(config.target_spacing, config.patch_size)
    in_2d = config.augmentation == 'default' and thick is not None
    return config.augmentation + (f' in 2D across {"xyz"[thick]} (the patch is thin along it)' if in_2d else '')


def _length_text(config: RunConfig, num_train: int) -> str:
    steps = config.steps_in_epoch(num_train)
    default = config.epochs == default_epochs(config, num_train)
    source = ' (the default length, BENCHMARKS.md "Training length")' if default else ''
    return f'epochs {config.epochs} x {steps} steps = {config.epochs * steps:,} steps{source}'


def _precision_text(config: RunConfig) -> str:
    dtype = mixed_precision_dtype(select_device(config.device)) if config.amp else None
    return f'{str(dtype).removeprefix("torch.")} mixed precision' if dtype else 'fp32'
