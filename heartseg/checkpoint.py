"""Checkpoints that describe themselves and load without running pickled code.

A checkpoint holds the weights, the optimiser state and, as a JSON string, the
plan: architecture, preprocessing, patch size, labels and the training
config. ``predict.py`` needs nothing else. Loading uses ``weights_only=True``
so a tampered file cannot execute code.

Example:
    >>> state = load_checkpoint(Path('runs/example/best.pt'))  # doctest: +SKIP
    >>> state['plan']['patch_size']  # doctest: +SKIP
    [80, 80, 48]
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from heartseg.errors import UserError
from heartseg.files import atomic_torch_save

CHECKPOINT_FORMAT = 'heartseg-checkpoint-v1'


def save_checkpoint(path: Path, plan: dict[str, Any], **state: Any) -> None:
    """Atomically write ``state`` plus the plan (stored as JSON text)."""
    atomic_torch_save({'format': CHECKPOINT_FORMAT, 'plan': json.dumps(plan), **state}, path)


def load_checkpoint(path: Path, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Load and check a checkpoint, decoding its plan back into a dict.

    Raises:
        UserError: The file is missing, corrupt, not one of ours, or holds
            pickled code (which ``weights_only`` refuses to run).
    """
    if not path.is_file():
        raise UserError(path, 'checkpoint not found')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else 'unsafe content'
        raise UserError(path, f'refusing to load checkpoint: it holds objects other than tensors ({first_line})') from None
    except Exception as error:  # truncated zip archives raise several types
        raise UserError(path, f'cannot read checkpoint, file may be truncated or corrupt ({type(error).__name__})') from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise UserError(path, f'not a checkpoint of this project (expected format {CHECKPOINT_FORMAT!r})')
    state['plan'] = json.loads(state['plan'])
    return state
