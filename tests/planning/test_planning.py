"""heartseg.planning: a run planned from the dataset, the device and the overrides, without the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heartseg.commands.train_flags import build_parser
from heartseg.data.dataset import read_dataset
from heartseg.data.fingerprint import CaseHeader
from heartseg.errors import UserError
from heartseg.planning.defaults import (
    DEFAULT_LENGTH_VALIDATIONS,
    DEFAULT_TRAINING_STEPS,
    DEVICE_DEFAULTS,
    SYNTHETIC_SCHEDULE,
    TIME_LIMITED_MAX_EPOCHS,
)
from heartseg.planning.describe import plan_text
from heartseg.planning.plan import plan_geometry, plan_run
from heartseg.planning.resume import resume_plan

CPU, GPU = torch.device('cpu'), torch.device('cuda')


def test_the_patch_covers_the_stack_and_is_a_multiple_of_each_axis_own_pooling():
    headers = [CaseHeader(f'c{i}', (48, 48, 10), (1.5, 1.5, 10.0), 'RAS') for i in range(3)]
    spacing, patch, network = plan_geometry(headers, CPU, levels=4)
    assert spacing == (1.5, 1.5, 10.0) and network.pool_sizes == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert patch == (48, 48, 10), (
        'all 10 slices: z is pooled once, so the patch needs a multiple of 2, not of 4 (8 slices)'
    )
    _, isotropic_patch, _ = plan_geometry(headers, CPU, levels=4, per_axis=False)
    assert isotropic_patch == (48, 48, 16)


def test_a_thin_stack_over_the_budget_shrinks_in_plane_and_keeps_its_slices():
    headers = [CaseHeader('c', (256, 216, 9), (1.5625, 1.5625, 10.0), 'RAS')]
    _, patch, network = plan_geometry(headers, CPU, levels=4)
    assert patch[2] == 10 and np.prod(patch) <= DEVICE_DEFAULTS['cpu'].patch_voxels and network.divisors[2] == 2


def test_each_device_plans_with_its_own_defaults(small_dataset):
    """A GPU plan is made without a GPU: planning only reads the device's row of DEVICE_DEFAULTS."""
    dataset = read_dataset(small_dataset)
    for device in (CPU, GPU):
        config = plan_run(dataset, device, {})
        defaults = DEVICE_DEFAULTS[device.type]
        assert (config.base_channels, config.channels_last) == (defaults.base_channels, defaults.channels_last)
        assert np.prod(config.patch_size) <= defaults.patch_voxels
        assert min(config.target_spacing) >= defaults.min_spacing_mm
    fine = [CaseHeader('c', (320, 320, 120), (0.625, 0.625, 0.625), 'RAS')]
    assert plan_geometry(fine, CPU, 4)[0] == (1.25,) * 3 and plan_geometry(fine, GPU, 4)[0] == (0.625,) * 3


def test_overrides_replace_the_plan_and_a_single_spacing_is_isotropic(small_dataset):
    dataset = read_dataset(small_dataset)
    config = plan_run(dataset, CPU, {'target_spacing': [2.0], 'base_channels': 5, 'output': 'softmax', 'lr': 0.01})
    assert config.target_spacing == (2.0, 2.0, 2.0) and config.base_channels == 5
    assert config.output == 'softmax' and config.outputs.channels == 2 and config.lr == 0.01
    assert plan_run(dataset, CPU, {}).output == 'sigmoid', 'one structure: one sigmoid channel'


@pytest.mark.parametrize('overrides', [{'spacing': (2.0,)}, {'labels': {'0': 'background'}}, {'pooling': 'peraxis'}])
def test_an_override_planning_cannot_take_is_a_programming_error_not_ignored(overrides, small_dataset):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        plan_run(read_dataset(small_dataset), CPU, overrides)


def test_a_config_json_from_before_a_setting_existed_loads_as_it_ran(small_dataset, tmp_path):
    from heartseg.planning.config import LEGACY_VALUES, load_config, save_config

    save_config(plan_run(read_dataset(small_dataset), CPU, {}), tmp_path / 'config.json')
    document = json.loads((tmp_path / 'config.json').read_text())
    for setting in LEGACY_VALUES:
        del document['config'][setting]
    (tmp_path / 'config.json').write_text(json.dumps(document))
    loaded = load_config(tmp_path / 'config.json')
    assert all(getattr(loaded, setting) == value for setting, value in LEGACY_VALUES.items())


@pytest.mark.parametrize(
    'overrides, refused',
    [
        ({'val_fraction': 0.3, 'folds': 3}, '--val-fraction'),
        ({'split_seed': 1, 'splits': 'splits.json'}, '--split-seed'),
        ({'group_by_patient': False, 'splits': 'splits.json'}, '--group-by-patient'),
        ({'val_fraction': 0, 'val_every': 2}, '--val-every'),
        ({'val_fraction': 0, 'split_seed': 3}, '--split-seed'),
        ({'augmentation': 'none', 'augment_on': 'device'}, '--augment-on'),
    ],
)
def test_a_setting_another_makes_moot_is_refused(overrides, refused, small_dataset):
    with pytest.raises(UserError, match=refused):
        plan_run(read_dataset(small_dataset), CPU, overrides)


# The small dataset has 6 cases: a 0.2 hold-out trains on 5, of the first 4 on 3, and 3 folds train on 4.
@pytest.mark.parametrize(
    'overrides, training_cases',
    [({}, 5), ({'max_cases': 4}, 3), ({'steps_per_epoch': 7}, 5), ({'folds': 3}, 4)],
    ids=['6 cases', '4 cases', '7 steps an epoch', '3 folds'],
)
def test_the_default_length_is_a_number_of_steps_whatever_the_dataset_size(overrides, training_cases, small_dataset):
    config = plan_run(read_dataset(small_dataset), CPU, overrides)
    per_epoch = config.steps_per_epoch or -(-training_cases // config.batch_size)
    steps = config.epochs * per_epoch
    assert abs(steps - DEFAULT_TRAINING_STEPS) <= per_epoch / 2, f'{config.epochs} epochs of {per_epoch} steps'
    assert abs(config.epochs / config.val_every - DEFAULT_LENGTH_VALIDATIONS) <= 1, f'every {config.val_every} epochs'
    assert f'= {steps:,} steps (the default length' in plan_text(config, training_cases, 1, 'split case by case')


@pytest.mark.parametrize(
    'overrides, synthetic, epochs, val_every',
    [
        ({'epochs': 7}, False, 7, 1),
        ({'epochs': 7, 'val_every': 3}, False, 7, 3),
        ({'time_limit': 5.0}, False, TIME_LIMITED_MAX_EPOCHS, 0),
        ({}, True, SYNTHETIC_SCHEDULE['epochs'], 1),
    ],
)
def test_a_given_length_overrides_the_default_one(overrides, synthetic, epochs, val_every, small_dataset):
    config = plan_run(read_dataset(small_dataset), CPU, overrides, synthetic=synthetic)
    assert (config.epochs, config.val_every) == (epochs, val_every)


def test_a_resume_takes_the_saved_plan_changes_only_resumable_settings_and_refuses_plan_choices(
    small_dataset, tmp_path
):
    from heartseg.planning.config import save_config

    config = plan_run(read_dataset(small_dataset), CPU, {'run_dir': tmp_path / 'run', 'epochs': 3})
    save_config(config, tmp_path / 'config.json')
    resumed = resume_plan(tmp_path, {'epochs': 9, 'lr': config.lr})
    assert resumed.epochs == 9 and resumed.patch_size == config.patch_size and resumed.run_dir == str(tmp_path)
    with pytest.raises(UserError, match='cannot resume with --lr 0.5'):
        resume_plan(tmp_path, {'lr': 0.5})
    with pytest.raises(UserError, match='--pooling: cannot change the plan'):
        resume_plan(tmp_path, {'pooling': 'isotropic'})
    assert json.loads((tmp_path / 'config.json').read_text())['config']['epochs'] == 3, 'planning writes nothing'


def test_every_flag_goes_to_a_named_setting_and_is_none_when_left_out():
    """So that 'not given' is never mistaken for a value, and no flag is dropped on its way to the config."""
    from heartseg.commands.train import SOURCE_FLAGS
    from heartseg.planning.plan import PLAN_CHOICES, SETTINGS, flag

    modes = {'resume', 'score_folds', 'plan_only'}
    for action in build_parser()._actions:
        if action.dest == 'help':
            continue
        assert action.default is None, f'{action.option_strings[0]} defaults to {action.default!r}'
        assert action.dest in SETTINGS | PLAN_CHOICES | set(SOURCE_FLAGS) | modes, action.dest
        assert flag(action.dest) in action.option_strings, f'{action.option_strings} go to {action.dest}'
