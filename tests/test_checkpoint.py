"""heartseg.checkpoint: plans that carry what prediction needs, including those written by older versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from heartseg.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from heartseg.outputs import Outputs

LABELS = {'0': 'background', '1': 'edema', '2': 'core', '3': 'enhancing'}
REGIONS = [{'name': 'whole', 'values': [1, 2, 3], 'paint': 1}, {'name': 'core', 'values': [2, 3], 'paint': 2}]


def plan_before_outputs_were_fields(config: dict) -> dict:
    """A plan as versions before the typed ``output`` and ``regions`` fields wrote it."""
    return {
        'model': {'levels': 2, 'out_channels': 3},
        'target_spacing': [1.0, 1.0, 1.0],
        'patch_size': [16, 16, 16],
        'labels': LABELS,
        'modalities': {'0': 'MRI'},
        'normalization': 'zscore',
        'preprocessing_version': 4,
        'config': config,
        'training_cases': {},
    }


def saved(path: Path, plan: dict) -> Path:
    torch.save({'format': CHECKPOINT_FORMAT, 'plan': json.dumps(plan), 'model': {}}, path)
    return path


@pytest.mark.parametrize(
    'config, output, regions, structures',
    [
        ({'output': 'softmax', 'regions': [], 'loss': 'bce_dice'}, 'softmax', [], ((1,), (2,), (3,))),
        ({'output': 'sigmoid', 'regions': REGIONS}, 'sigmoid', REGIONS, ((1, 2, 3), (2, 3))),
        ({'loss': 'bce_dice'}, 'sigmoid', [], ((1,), (2,), (3,))),  # before the kind was recorded: sigmoid channels
    ],
    ids=['softmax', 'regions', 'before-the-kind'],
)
def test_a_plan_written_before_the_outputs_were_fields_loads_with_its_kind_and_regions(
    tmp_path, config, output, regions, structures
):
    plan = load_checkpoint(saved(tmp_path / 'old.pt', plan_before_outputs_were_fields(config)))['plan']
    assert (plan.output, plan.regions) == (output, regions)
    assert plan.outputs.kind == output and plan.outputs.structures == structures
    assert plan.config == config, 'the training config is kept as it was written, for provenance'


def test_a_plan_s_own_fields_win_over_its_config(tmp_path):
    written = {**plan_before_outputs_were_fields({'output': 'sigmoid'}), 'output': 'softmax', 'regions': []}
    outputs = load_checkpoint(saved(tmp_path / 'new.pt', written))['plan'].outputs
    assert outputs == Outputs.one_per_label('softmax', (1, 2, 3), ('edema', 'core', 'enhancing'))
