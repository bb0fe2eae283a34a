"""Checkpoints that describe themselves and load without running pickled code.

A checkpoint holds the weights, the optimiser state and, as a JSON string, the
:class:`ModelPlan`: architecture, preprocessing, patch size, labels, the
training config and a summary of the training cases for quality control. ``predict.py`` needs nothing else. Loading uses
``weights_only=True`` so a tampered file cannot execute code.

Example:
    >>> state = load_checkpoint(Path('runs/example/best.pt'))  # doctest: +SKIP
    >>> state['plan'].patch_size  # doctest: +SKIP
    (80, 80, 48)
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from heartseg.errors import UserError
from heartseg.files import atomic_torch_save
from heartseg.outputs import LEGACY_KIND, Outputs, planned_outputs

CHECKPOINT_FORMAT = 'heartseg-checkpoint-v1'


@dataclass(frozen=True)
class ModelPlan:
    """Everything needed to rebuild a trained network and apply it to a new scan.

    Example:
        >>> labels = {'0': 'background', '1': 'left atrium'}
        >>> plan = ModelPlan({'in_channels': 1}, (1.25, 1.25, 1.25), (80, 64, 32), labels, {'0': 'MRI'},
        ...                  output='sigmoid', regions=[])
        >>> ModelPlan.from_json(plan.to_json(), 'best.pt') == plan
        True
        >>> plan.outputs.channels
        1
    """

    model: dict[str, Any]  # keyword arguments of mymodel.UNet3D
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    labels: dict[str, str]
    modalities: dict[str, str]
    # What the output channels mean (heartseg.outputs). No defaults: only from_json supplies older plans' values.
    output: str = field(kw_only=True)  # 'sigmoid' or 'softmax'
    regions: list[dict[str, Any]] = field(kw_only=True)  # nnU-Net v2 regions, {'name', 'values', 'paint'} each; or none
    normalization: str = 'zscore'
    # heartseg.data.PREPROCESSING_VERSION at training; plans written before it was recorded were version 3
    preprocessing_version: int = 3
    config: dict[str, Any] = field(default_factory=dict)  # the full training RunConfig, for provenance
    # heartseg.quality.qc.summarise_training_cases of the training cases;
    # empty in checkpoints written before it was recorded
    training_cases: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return max(1, len(self.modalities))

    @property
    def outputs(self) -> Outputs:
        return planned_outputs(self.output, self.labels, self.regions)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, path: Path | str) -> ModelPlan:
        try:
            values = json.loads(text)
            values.update(target_spacing=tuple(values['target_spacing']), patch_size=tuple(values['patch_size']))
            return cls(**_with_older_plans_outputs(values))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UserError(path, f'invalid model plan ({type(error).__name__}: {error})') from None


def _with_older_plans_outputs(values: dict[str, Any]) -> dict[str, Any]:
    """A plan's fields, with the output kind and regions of a plan written before they were fields.

    Such plans kept them only in the training config, and the oldest not at all: they trained sigmoid channels.
    """
    config = values.get('config', {})
    return {'output': config.get('output') or LEGACY_KIND, 'regions': config.get('regions') or [], **values}


def save_checkpoint(path: Path, plan: ModelPlan, **state: Any) -> None:
    """Atomically write ``state`` plus the plan (stored as JSON text)."""
    atomic_torch_save({'format': CHECKPOINT_FORMAT, 'plan': plan.to_json(), **state}, path)


def load_checkpoint(path: Path, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Load and check a checkpoint, decoding its plan back into a :class:`ModelPlan`.

    Raises:
        UserError: The file is missing, corrupt, not one of ours, or holds
            pickled code (which ``weights_only`` refuses to run).
    """
    if not path.is_file():
        raise UserError(path, 'checkpoint not found')
    _check_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else 'unsafe content'
        raise UserError(
            path, f'refusing to load checkpoint: it holds objects other than tensors ({first_line})'
        ) from None
    except Exception as error:  # truncated zip archives raise several types
        raise UserError(
            path, f'cannot read checkpoint, file may be truncated or corrupt ({type(error).__name__})'
        ) from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise UserError(path, f'not a checkpoint of this project (expected format {CHECKPOINT_FORMAT!r})')
    state['plan'] = ModelPlan.from_json(state['plan'], path)
    return state


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip, as checkpoints are, but with the model's code in it."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split('/')[1:2] == ['code'] for name in archive.namelist())


def _check_archive(path: Path) -> None:
    """Tell other files from checkpoints before unpickling: torch's messages for them are misleading."""
    if not zipfile.is_zipfile(path):
        raise UserError(
            path,
            'cannot read checkpoint: not a PyTorch archive; the file may be truncated or corrupt, or of another kind',
        )
    if is_torchscript(path):
        raise UserError(
            path, 'is an exported TorchScript model, not a training checkpoint (predict.py --checkpoint takes it)'
        )
