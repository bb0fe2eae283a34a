"""Planning a run: the dataset's headers, the device and the user's overrides, made into one RunConfig.

As nnU-Net's experiment planner turns a dataset fingerprint into a plans file,
:func:`plan_run` turns the case headers into a :class:`RunConfig`: the target
spacing (the median, floored per device), the patch and its per-axis pooling
(nnU-Net's ``get_pool_and_conv_props``, in ``heartseg.data.fingerprint``), the
output kind from the labels, and the length (epochs and validation interval).
A setting the user gave replaces the planned one. :func:`resume_plan` plans a
resumed run.

Defaults have one owner each: those that depend on the device, and the
length's, live in :mod:`heartseg.planning.defaults`; every other setting's
default is its :class:`RunConfig` field default.

Example:
    >>> import torch
    >>> from heartseg.data.fingerprint import CaseHeader, pooling_text
    >>> header = CaseHeader('case', shape=(256, 216, 10), spacing=(1.5625, 1.5625, 10.0), orientation='RAS')
    >>> spacing, patch, network = plan_geometry([header], torch.device('cpu'), levels=4)
    >>> spacing, patch, pooling_text(network.pool_sizes)
    ((1.5625, 1.5625, 10.0), (128, 144, 10), '2x2x1, 2x2x1, 2x2x2, 2x2x1')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartseg import distributed
from heartseg.data.cases import DatasetSpec
from heartseg.data.fingerprint import (
    ANISOTROPY_THRESHOLD,
    MIN_FEATURE_MAP_SIZE,
    POOLING_SPACING_RATIO,
    CaseHeader,
    NetworkPlan,
    median_resampled_shape,
    plan_network,
    plan_patch_and_network,
    resampled_shape,
    suggest_target_spacing,
)
from heartseg.data.reading import read_header
from heartseg.data.splits import Split, grouping_text, read_splits_file, split_cases
from heartseg.errors import UserError
from heartseg.files import canonical_folder
from heartseg.outputs import planned_kind
from heartseg.planning.config import RunConfig, canonical_loss
from heartseg.planning.defaults import (
    DEFAULT_CACHE,
    DEFAULT_LENGTH_VALIDATIONS,
    DEFAULT_TRAINING_STEPS,
    DEVICE_DEFAULTS,
    POOLINGS,
    SYNTHETIC_SCHEDULE,
    TIME_LIMITED_MAX_EPOCHS,
)
from mymodel import isotropic_pooling, total_pooling

MAX_RESAMPLED_VOXELS = 2**30  # 4 GiB as float32; the largest LA2018 case has 3.2 million voxels at 0.625 mm


# Overrides are RunConfig settings by field name, plus these choices that shape the plan but are stored nowhere.
PLAN_CHOICES = frozenset({'pooling'})


# Settings a resumed run may change; any other must match the original run.
RESUMABLE_SETTINGS = frozenset(
    {'epochs', 'device', 'num_workers', 'time_limit', 'image_every', 'channels_last', 'compile'}
)


# Settings that another makes moot: (setting, the setting that overrides it, why).
OVERRIDDEN = (
    ('split_seed', 'splits', 'the splits file gives the folds'),
    ('group_by_patient', 'splits', 'the splits file gives the folds'),
    ('val_fraction', 'splits', 'the splits file gives the folds'),
    ('val_fraction', 'folds', 'each fold validates on its own share of the cases'),
)


# Settings that only act on the validation split (how it is drawn, how often it runs).
WITH_VALIDATION_ONLY = ('split_seed', 'group_by_patient', 'val_every', 'image_every')


SETTINGS = frozenset(f.name for f in fields(RunConfig))


# Settings that say where a run's data and folders are: a resume may name them again, as paths to the same places.
RUN_PLACES = ('data', 'run_dir', 'cache_dir')


# Settings read from the dataset, never given: overriding them would contradict the files.
FROM_THE_DATASET = frozenset({'labels', 'modalities', 'regions'})


def dummy_2d_axis(target_spacing: Sequence[float], patch_size: Sequence[int]) -> int | None:
    """The thick-slice axis when a patch is so thin along it that nnU-Net augments in 2D, else None.

    nnU-Net's rule (``configure_rotation_dummyDA_mirroring_and_inital_patch_size``):
    the patch's longest axis over its coarsest-spacing axis exceeds ``ANISOTROPY_THRESHOLD``.

    Example:
        >>> dummy_2d_axis((1.5625, 1.5625, 10.0), (128, 144, 10)), dummy_2d_axis((1.25, 1.25, 1.25), (64, 64, 48))
        (2, None)
    """
    thick = int(np.argmax(target_spacing))
    return thick if max(patch_size) / patch_size[thick] > ANISOTROPY_THRESHOLD else None


def flag(name: str) -> str:
    """The command-line flag of a setting or plan choice: every flag is named after where its value goes."""
    return '--' + name.replace('_', '-')


def plan_run(
    dataset: DatasetSpec, device: torch.device, overrides: dict[str, Any], synthetic: bool = False
) -> RunConfig:
    """The run's config: planned from ``dataset``'s headers for ``device``, with ``overrides`` replacing the plan.

    Args:
        overrides: RunConfig settings by field name, and the plan choices in
            ``PLAN_CHOICES``; only what the user gave (a None value is not given).
        synthetic: Train on the built-in synthetic dataset with ``SYNTHETIC_SCHEDULE``.
    """
    given = settings_given(overrides)
    refuse_moot_settings(given)
    cases = cases_in_use(dataset, given.get('max_cases', 0))
    headers = [read_header(case, dataset) for case in cases]
    levels = given.get('levels', RunConfig.levels)
    pooling = overrides.get('pooling') or POOLINGS[0]
    if pooling not in POOLINGS:
        raise ValueError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    per_axis = pooling == POOLINGS[0]
    spacing, patch, network = plan_geometry(
        headers, device, levels, given.get('target_spacing'), per_axis, given.get('patch_size')
    )
    if 'levels' in given and network.levels < levels:
        raise UserError(
            '--levels',
            f'{levels} levels cannot be pooled in patch {list(patch)}: after {network.levels} '
            f'poolings no axis is {2 * MIN_FEATURE_MAP_SIZE} voxels long with a spacing under '
            f"{POOLING_SPACING_RATIO:g}x the finest (nnU-Net's rule)",
        )
    check_resampled_sizes(headers, spacing)
    config = RunConfig(**{**planned_settings(dataset, device, spacing, patch, network, synthetic), **given})
    config.levels = network.levels  # fewer than asked by default when the patch is too small to pool any more
    check_output(config, dataset)
    if config.splits:
        config.splits = str(Path(config.splits).resolve())  # absolute: --resume may run from another folder
        config.folds = folds_in_splits_file(config, cases, given.get('folds'))
    check_patch_size(config)
    check_split(config, len(cases))
    return replace(config, **plan_length(config, given, [case.case_id for case in cases], synthetic))


def settings_given(overrides: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig settings among ``overrides``, as RunConfig holds them (tuples, strings for paths)."""
    unknown = set(overrides) - (SETTINGS - FROM_THE_DATASET) - PLAN_CHOICES
    if unknown:
        raise ValueError(f'not settings a run may be given: {sorted(unknown)}')
    given = {name: _as_setting(value) for name, value in overrides.items() if name in SETTINGS and value is not None}
    if 'loss' in given:
        given['loss'] = canonical_loss(given['loss'])
    spacing = given.get('target_spacing')
    if spacing is not None and len(spacing) not in (1, 3):
        raise UserError(
            '--target-spacing', f'{list(spacing)} is not allowed: give one value (isotropic) or three, in mm'
        )
    if spacing is not None and len(spacing) == 1:
        given['target_spacing'] = spacing * 3
    return given


def _as_setting(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else str(value) if isinstance(value, Path) else value


def refuse_moot_settings(given: dict[str, Any]) -> None:
    """One line naming a setting that could not take effect beside another that was given."""
    for setting, other, why in OVERRIDDEN:
        if setting in given and other in given:
            raise UserError(flag(setting), f'has no effect with {flag(other)}: {why}')
    holds_nothing_out = given.get('val_fraction') == 0 and not ({'folds', 'splits'} & set(given))
    for setting in WITH_VALIDATION_ONLY:
        if holds_nothing_out and setting in given:
            raise UserError(flag(setting), 'has no effect with --val-fraction 0: no case is held out for validation')
    if given.get('augmentation') == 'none' and 'augment_on' in given:
        raise UserError('--augment-on', 'has no effect with --augmentation none: there is nothing to run')


def plan_geometry(
    headers: list[CaseHeader],
    device: torch.device,
    levels: int,
    target_spacing: tuple[float, float, float] | None = None,
    per_axis: bool = True,
    patch_size: tuple[int, int, int] | None = None,
) -> tuple[tuple[float, float, float], tuple[int, int, int], NetworkPlan]:
    """Target spacing, patch size and network plan that training uses on ``device``.

    The spacing is :func:`~heartseg.data.fingerprint.suggest_target_spacing`,
    floored at the device's ``min_spacing_mm``, unless ``target_spacing`` is
    given; the patch and the network are planned together from the median
    resampled case within the device's ``patch_voxels``, or the network alone
    for a given ``patch_size``.
    """
    defaults = DEVICE_DEFAULTS[device.type]
    if target_spacing is None:
        # The floor applies to the in-plane (finest) axes; a thick-slice axis already coarser keeps its spacing.
        target_spacing = tuple(max(s, defaults.min_spacing_mm) for s in suggest_target_spacing(headers))
    if patch_size is not None:
        return target_spacing, tuple(patch_size), plan_network(target_spacing, patch_size, levels, per_axis)
    patch, network = plan_patch_and_network(
        median_resampled_shape(headers, target_spacing), target_spacing, levels, defaults.patch_voxels, per_axis
    )
    return target_spacing, patch, network


def planned_settings(
    dataset: DatasetSpec,
    device: torch.device,
    spacing: tuple[float, float, float],
    patch: tuple[int, int, int],
    network: NetworkPlan,
    synthetic: bool,
) -> dict[str, Any]:
    """The settings planned from the dataset and the device, before the user's overrides."""
    defaults = DEVICE_DEFAULTS[device.type]
    structures = [region['values'] for region in dataset.regions] or [[v] for v in dataset.foreground_labels]
    settings = dict(
        data=str(canonical_folder(dataset.root)),  # absolute: --resume may run from another folder
        run_dir=str(Path('runs') / datetime.now().strftime('%Y%m%d-%H%M%S')),
        cache_dir=DEFAULT_CACHE,
        target_spacing=tuple(float(s) for s in spacing),
        patch_size=patch,
        base_channels=defaults.base_channels,
        channels_last=defaults.channels_last,
        num_workers=min(defaults.num_workers, max(0, (os.cpu_count() or 1) // distributed.world_size() - 1)),
        labels={str(k): v for k, v in dataset.labels.items()},
        modalities={str(k): v for k, v in dataset.modalities.items()},
        regions=[dict(region) for region in dataset.regions],
        output=planned_kind(structures),
        pool_sizes=network.pool_sizes,
        kernel_sizes=network.kernel_sizes,
        # Replaced by plan_length once the split is known: the default length is counted in steps of its training cases.
        epochs=0,
        val_every=0,
    )
    return {**settings, **({'steps_per_epoch': SYNTHETIC_SCHEDULE['steps_per_epoch']} if synthetic else {})}


def plan_length(config: RunConfig, given: dict[str, Any], case_ids: list[str], synthetic: bool) -> dict[str, int]:
    """Epochs and validation interval, unless given.

    With a time limit: at most ``TIME_LIMITED_MAX_EPOCHS``, fitted to the clock
    as training goes, validating about a tenth of the time (``val_every`` 0).
    Otherwise ``DEFAULT_TRAINING_STEPS`` optimiser steps, validating about
    ``DEFAULT_LENGTH_VALIDATIONS`` times, or ``SYNTHETIC_SCHEDULE`` on the
    synthetic dataset, validating every epoch.
    """
    if config.time_limit:
        return {'epochs': given.get('epochs', TIME_LIMITED_MAX_EPOCHS), 'val_every': given.get('val_every', 0)}
    if 'epochs' in given or synthetic:
        return {'epochs': given.get('epochs', SYNTHETIC_SCHEDULE['epochs']), 'val_every': given.get('val_every', 1)}
    epochs = default_epochs(config, training_cases(config, case_ids))
    return {'epochs': epochs, 'val_every': given.get('val_every', max(1, round(epochs / DEFAULT_LENGTH_VALIDATIONS)))}


def default_epochs(config: RunConfig, training_cases: int) -> int:
    """The epochs that make up the default number of optimiser steps."""
    return max(1, round(DEFAULT_TRAINING_STEPS / config.steps_in_epoch(training_cases)))


def training_cases(config: RunConfig, case_ids: list[str]) -> int:
    """How many of ``case_ids`` the split trains on (fold 0's, for a whole cross-validation)."""
    return len(run_split(config, case_ids, config.fold or 0)['training'])


def run_split(config: RunConfig, case_ids: list[str], fold: int | None) -> Split:
    """The run's split of ``case_ids``: fold ``fold`` of the splits file, or the seeded split."""
    if config.splits:
        return read_splits_file(Path(config.splits), case_ids)[fold or 0]
    return split_cases(
        case_ids, config.data_split_seed, config.val_fraction, config.folds, fold, config.group_by_patient
    )


def split_description(config: RunConfig, case_ids: list[str]) -> str:
    """Where the run's split comes from, and how it grouped the cases."""
    if config.splits:
        return f'split from {Path(config.splits).name}'
    if not (config.folds or config.val_fraction):
        return 'no split'
    return f'split {grouping_text(case_ids, config.group_by_patient)}'


def cases_in_use(dataset: DatasetSpec, max_cases: int) -> tuple:
    return dataset.cases[:max_cases] if max_cases else dataset.cases


def check_output(config: RunConfig, dataset: DatasetSpec) -> None:
    if dataset.regions and config.output == 'softmax':
        raise UserError(
            '--output',
            f'softmax needs mutually exclusive structures; {dataset.root / "dataset.json"} '
            'declares overlapping regions, which take sigmoid channels',
        )


def folds_in_splits_file(config: RunConfig, cases: tuple, given_folds: int | None) -> int:
    """The folds of ``--splits`` (0 for a file of one split: a holdout); a different ``--folds`` is refused."""
    in_file = len(read_splits_file(Path(config.splits), [case.case_id for case in cases]))
    folds = in_file if in_file > 1 else 0
    if given_folds is not None and given_folds != folds:
        raise UserError(
            '--folds',
            f'{given_folds} does not match {config.splits}, which holds {in_file} fold{"s" if in_file > 1 else ""}',
        )
    return folds


def check_split(config: RunConfig, cases: int) -> None:
    if config.fold is not None and not config.folds:
        raise UserError('--fold', f'{config.fold} needs --folds K (the number of folds)')
    if config.folds and not 2 <= config.folds <= cases:
        raise UserError(
            '--folds',
            f'{config.folds} is not allowed: K-fold cross-validation needs 2 <= K <= {cases}, the number of cases',
        )
    if config.fold is not None and not 0 <= config.fold < config.folds:
        raise UserError('--fold', f'{config.fold} is not a fold of --folds {config.folds}: use 0..{config.folds - 1}')


def check_resampled_sizes(headers: list[CaseHeader], spacing: tuple[float, float, float]) -> None:
    """Every case keeps at least one voxel per axis at ``spacing``, and the largest fits in memory."""
    shapes = np.array([resampled_shape(header, spacing) for header in headers])
    if shapes.min() < 1:
        smallest = shapes[shapes.min(axis=1).argmin()].tolist()
        raise UserError(
            '--target-spacing', f'{list(spacing)} mm is coarser than a whole case: one shrinks to {smallest} voxels'
        )
    largest = shapes.prod(axis=1).max()
    if largest > MAX_RESAMPLED_VOXELS:
        raise UserError(
            '--target-spacing',
            f'{list(spacing)} mm makes the largest case {largest:.3g} voxels, over the '
            f'{MAX_RESAMPLED_VOXELS:.3g} one case may have',
        )


def check_patch_size(config: RunConfig) -> None:
    divisors = total_pooling(config.pool_sizes or isotropic_pooling(config.levels))
    if any(p % d for p, d in zip(config.patch_size, divisors)):
        raise UserError(
            '--patch-size',
            f'{list(config.patch_size)} must be divisible per axis by {list(divisors)}, '
            f"each axis's total pooling over {config.levels} levels",
        )
