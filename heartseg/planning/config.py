"""The run configuration: one object, planned once (``heartseg.planning``) and then only read.

Every setting of a run lives in :class:`RunConfig`. ``heartseg.planning``
plans it from the dataset, the device and the flags; ``training.py`` only reads it; ``config.json`` in
the run folder is its serialised form, with library versions and git commit.

Example:
    >>> config = RunConfig(data='data/Task02_Heart', run_dir='runs/x', cache_dir='cache',
    ...                    target_spacing=(1.25, 1.25, 1.25), patch_size=(64, 64, 48), epochs=100, val_every=5,
    ...                    output='sigmoid', base_channels=8, channels_last=True, num_workers=0,
    ...                    labels={'0': 'background', '1': 'left atrium'}, modalities={'0': 'MRI'})
    >>> config.network_kwargs()['levels'], config.outputs.kind
    (4, 'sigmoid')
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from heartseg.checkpoint import ModelPlan
from heartseg.errors import UserError
from heartseg.files import atomic_write_text
from heartseg.outputs import LEGACY_KIND, Outputs, planned_outputs
from heartseg.preprocessing.preprocessing import PREPROCESSING_VERSION

# Settings added after the first runs, with the value those runs used: a config.json without them loads as it ran.
LEGACY_VALUES = {'deep_supervision': False, 'group_by_patient': False, 'output': LEGACY_KIND, 'channels_last': False}

# The sliding window's overlap: validation's and predict.py's default.
DEFAULT_OVERLAP = 0.5
LOSSES = ('ce', 'ce_dice')
# The names of the losses when every output was a sigmoid channel; run configs and checkpoints still hold them.
LOSS_ALIASES = {'bce': 'ce', 'bce_dice': 'ce_dice'}


def canonical_loss(name: str) -> str:
    """The name in :data:`LOSSES` of a loss given by that name or an alias.

    Example:
        >>> canonical_loss('bce_dice'), canonical_loss('ce')
        ('ce_dice', 'ce')
    """
    canonical = LOSS_ALIASES.get(name, name)
    assert canonical in LOSSES, f'loss must be one of {LOSSES} or an alias {tuple(LOSS_ALIASES)}, got {name!r}'
    return canonical


@dataclass
class RunConfig:
    """All settings of one training run."""

    data: str
    run_dir: str
    cache_dir: str
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    # Planned (heartseg.planning) with no default here: the length, the output kind and the device's settings.
    epochs: int
    val_every: int  # 0: automatic, about a tenth of the time
    output: str  # 'sigmoid' or 'softmax' (heartseg.outputs)
    base_channels: int
    channels_last: bool
    num_workers: int
    labels: dict[str, str]
    modalities: dict[str, str]
    seed: int = 0
    split_seed: int | None = None  # None: the training seed
    steps_per_epoch: int = 0
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 3e-5
    ema_decay: float = 0.0  # 0: off; else validated and saved weights are an average (heartseg.training.recipe)
    loss: str = 'ce_dice'
    regions: list[dict[str, Any]] = field(default_factory=list)  # nnU-Net v2 regions: {'name', 'values', 'paint'} each
    levels: int = 4
    norm: str = 'instance'
    deep_supervision: bool = True
    # Per level, the pooling along each axis; None: 2 on every axis (the isotropic plan).
    pool_sizes: list[list[int]] | None = None
    kernel_sizes: list[list[int]] | None = None  # per stage (levels, then the bridge); None: 3 on every axis
    augmentation: str = 'default'
    augment_on: str = 'loader'  # or 'device': the loader workers only crop
    foreground_probability: float = 0.5
    val_fraction: float = 0.2
    folds: int = 0
    splits: str | None = None  # a splits file (nnU-Net's splits_final.json or a splits.json) that gives the folds
    group_by_patient: bool = (
        True  # seeded splits keep one patient's scans (heartseg.data.splits.patient_of) on one side
    )
    fold: int | None = None  # with folds: None trains every fold in turn (a cross-validation)
    max_cases: int = 0
    val_overlap: float = DEFAULT_OVERLAP
    image_every: int = 5
    device: str = 'auto'
    amp: bool = True
    compile: bool = False
    time_limit: float = 0.0

    @property
    def data_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def steps_in_epoch(self, training_cases: int) -> int:
        """Optimiser steps per epoch: ``steps_per_epoch``, or one patch per training case."""
        return self.steps_per_epoch or math.ceil(training_cases / self.batch_size)

    @property
    def cross_validation(self) -> bool:
        """Whether this config is a whole K-fold cross-validation, not one run."""
        return bool(self.folds) and self.fold is None

    @property
    def outputs(self) -> Outputs:
        """What the network's output channels mean (sigmoid or softmax, which structures)."""
        return planned_outputs(self.output, self.labels, self.regions)

    def network_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`mymodel.UNet3D`:
        the outputs' channels, and the per-axis plan if there is one."""
        kwargs = {
            'in_channels': max(1, len(self.modalities)),
            'out_channels': self.outputs.channels,
            'levels': self.levels,
            'base_channels': self.base_channels,
            'norm': self.norm,
            'deep_supervision': self.deep_supervision,
        }
        # Left out when unplanned, so that an isotropic plan's checkpoint stays loadable by older versions.
        if self.pool_sizes is not None:
            kwargs.update(pool_sizes=self.pool_sizes, kernel_sizes=self.kernel_sizes)
        return kwargs

    def model_plan(self, training_cases: dict[str, Any] | None = None) -> ModelPlan:
        """What a checkpoint must carry to predict:
        model, preprocessing, labels, and what QC compares new cases with."""
        return ModelPlan(
            model=self.network_kwargs(),
            target_spacing=self.target_spacing,
            patch_size=self.patch_size,
            labels=self.labels,
            modalities=self.modalities,
            output=self.output,
            regions=self.regions,
            preprocessing_version=PREPROCESSING_VERSION,
            config=asdict(self),
            training_cases=training_cases or {},
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        if 'group_by_prefix' in values:  # its name until patients were told by their ids' time-point suffixes
            values = {'group_by_patient': values['group_by_prefix'], **values}
        if 'loss' in values:  # configs written before the losses were renamed say 'bce' or 'bce_dice'
            values = {**values, 'loss': canonical_loss(values['loss'])}
        config = cls(**{**LEGACY_VALUES, **{k: v for k, v in values.items() if k in known}})
        config.target_spacing = tuple(config.target_spacing)
        config.patch_size = tuple(config.patch_size)
        return config


def provenance() -> dict[str, str | bool]:
    """Library versions and the git commit (and whether the tree had uncommitted changes), for reproducing a run."""
    import nibabel
    import numpy
    import scipy
    import SimpleITK
    import torch
    import torchio

    return {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'torchio': torchio.__version__,
        'numpy': numpy.__version__,
        'nibabel': nibabel.__version__,
        'SimpleITK': SimpleITK.Version.VersionString(),
        'scipy': scipy.__version__,
        'platform': platform.platform(),
        'git_commit': _git('rev-parse', 'HEAD'),
        'git_uncommitted_changes': _git('status', '--porcelain', '--untracked-files=no') not in ('', 'unknown'),
    }


def _git(*command: str) -> str:
    try:
        result = subprocess.run(
            ['git', *command], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return 'unknown'
    return result.stdout.strip() if result.returncode == 0 else 'unknown'


def save_config(config: RunConfig, path: Path, resuming: bool = False) -> None:
    """Write ``config.json``; a resumed run keeps its start's provenance and adds one entry per resume."""
    earlier = _read_document(path).get('provenance', []) if resuming and path.is_file() else []
    starts = [
        *([earlier] if isinstance(earlier, dict) else earlier),
        provenance(),
    ]  # a dict: one start, as versions before 2026-12 wrote
    atomic_write_text(path, json.dumps({'config': asdict(config), 'provenance': starts}, indent=2))


def _read_document(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(path, f'invalid run config ({type(error).__name__}: {error})') from None
    if not isinstance(document, dict) or not isinstance(document.get('config'), dict):
        raise UserError(path, 'invalid run config: expected a JSON object with a "config" object')
    return document


def load_config(path: Path) -> RunConfig:
    if not path.is_file():
        raise UserError(path, 'config.json not found; is this a run folder?')
    try:
        return RunConfig.from_dict(_read_document(path)['config'])
    except (TypeError, ValueError) as error:
        raise UserError(path, f'invalid run config ({type(error).__name__}: {error})') from None
