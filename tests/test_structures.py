"""Every heart dataset a researcher brings: an nnU-Net v2 raw folder, three exclusive structures, thick slices.

Each trains with main.py and predicts with predict.py as a user runs them;
every structure must be found, and its Dice reported, in each scan's own grid.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import scoring_command

from export import main as export_main
from heartseg.data.synthetic import write_synthetic_dataset
from heartseg.errors import EXIT_USER_ERROR, run_cli
from main import main as train_main
from predict import main as predict_main

QUICK = [
    '--epochs',
    '10',
    '--steps-per-epoch',
    '30',
    '--levels',
    '2',
    '--base-channels',
    '8',
    '--lr',
    '0.01',
    '--val-fraction',
    '0.2',
]
DATASETS = {
    # name: (layout, structures, shape, spacing, extra flags)
    'nnunet_v2': ('nnunet_v2', 1, (40, 40, 20), (1.5, 1.5, 3.0), ['--patch-size', '32', '32', '16']),
    'three_structures': ('msd', 3, (40, 40, 20), (1.5, 1.5, 3.0), ['--patch-size', '32', '32', '16']),
    'thick_slices': ('msd', 1, (40, 40, 6), (1.5, 1.5, 10.0), []),
}
# Dice each structure must reach on the training scans after these few seconds of training: "found", not "good".
FOUND_DICE = 0.5


@pytest.fixture(scope='module', params=sorted(DATASETS))
def trained_on(request, tmp_path_factory) -> tuple[str, Path, Path]:
    layout, structures, shape, spacing, flags = DATASETS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    data = write_synthetic_dataset(
        root / 'Dataset002_Heart',
        num_cases=6,
        shape=shape,
        spacing=spacing,
        structures=structures,
        layout=layout,
        test_cases=1,
    )
    run_dir = root / 'run'
    assert (
        run_cli(
            train_main,
            ['--data', str(data), '--run-dir', str(run_dir), '--cache-dir', str(root / 'cache'), *QUICK, *flags],
        )
        == 0
    )
    return request.param, data, run_dir


def test_every_structure_is_found_and_its_dice_reported(trained_on, tmp_path):
    name, data, run_dir = trained_on
    structures = DATASETS[name][1]
    output = tmp_path / 'scored'
    assert run_cli(predict_main, scoring_command(run_dir, data, output, '--no-tta')) == 0
    with open(output / 'metrics.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(row['label']) for row in rows}) == list(range(1, structures + 1))
    summary = json.loads((output / 'summary.json').read_text())
    for label in range(1, structures + 1):
        assert summary[str(label)]['dice']['count'] == 6
        assert summary[str(label)]['dice']['mean'] > FOUND_DICE, (
            f'{name}: structure {label} not found: {summary[str(label)]["dice"]}'
        )
    # Quality control judges every structure on its own, with its own predicted and true Dice.
    with open(output / 'qc.csv', newline='') as handle:
        qc = list(csv.DictReader(handle))
    names = sorted({row['name'] for row in rows})
    assert len(qc) == 6 and len(names) == structures
    for row in qc:
        if structures > 1:
            dices = [float(row[f'{structure} predicted_dice']) for structure in names]
            assert float(row['predicted_dice']) == pytest.approx(np.mean(dices), abs=1e-3)
            assert all(f'{structure} true_dice' in row for structure in names)
            assert all(reason.split(': ')[0] in names for reason in row['reasons'].split('; ') if row['reasons'])
        else:
            assert 'tta_agreement' in row and 'true_dice' in row


def test_the_plan_follows_the_data(trained_on):
    name, _, run_dir = trained_on
    config = json.loads((run_dir / 'config.json').read_text())['config']
    assert config['output'] == ('softmax' if name == 'three_structures' else 'sigmoid')
    if name == 'thick_slices':
        assert config['pool_sizes'] == [[2, 2, 1], [2, 2, 1]], (
            'the 10 mm axis is over twice the 1.5 mm in-plane at both levels'
        )
        assert config['kernel_sizes'] == [[3, 3, 1], [3, 3, 1], [3, 3, 3]]
        assert config['patch_size'][2] == 6
    else:  # z at 3 mm is twice the in-plane 1.5 mm, not under it: nnU-Net pools it from the second level on
        assert config['pool_sizes'] == [[2, 2, 1], [2, 2, 2]] and config['kernel_sizes'] == [
            [3, 3, 1],
            [3, 3, 3],
            [3, 3, 3],
        ]


def test_test_scans_are_predicted_in_their_own_grid_under_their_case_names(trained_on, tmp_path):
    _, data, run_dir = trained_on
    output = tmp_path / 'test'
    assert (
        run_cli(predict_main, ['--checkpoint', str(run_dir), '--input', str(data), '--output', str(output), '--no-tta'])
        == 0
    )
    scan = next((data / 'imagesTs').iterdir())
    mask = nib.load(output / 'synthetic_006.nii.gz')
    image = nib.load(scan)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert np.asanyarray(mask.dataobj).any()


def test_nnunet_v2_regions_train_sigmoid_channels_and_paint_their_label_values(tmp_path):
    data = write_synthetic_dataset(
        tmp_path / 'Dataset003_Regions',
        num_cases=4,
        shape=(40, 40, 20),
        spacing=(1.5, 1.5, 3.0),
        structures=3,
        layout='nnunet_v2',
    )
    description = json.loads((data / 'dataset.json').read_text())
    description['labels'] = {'background': 0, 'atrium with wall': [1, 2], 'atrium': 1, 'chamber': 3}
    description['regions_class_order'] = [2, 1, 3]
    (data / 'dataset.json').write_text(json.dumps(description))
    run_dir = tmp_path / 'run'
    flags = [
        '--epochs',
        '1',
        '--steps-per-epoch',
        '4',
        '--levels',
        '2',
        '--base-channels',
        '4',
        '--patch-size',
        '32',
        '32',
        '16',
    ]
    assert (
        run_cli(
            train_main, ['--data', str(data), '--run-dir', str(run_dir), '--cache-dir', str(tmp_path / 'cache'), *flags]
        )
        == 0
    )
    config = json.loads((run_dir / 'config.json').read_text())['config']
    assert config['output'] == 'sigmoid' and [r['values'] for r in config['regions']] == [[1, 2], [1], [3]]
    output = tmp_path / 'masks'
    assert (
        run_cli(
            predict_main,
            ['--checkpoint', str(run_dir), '--input', str(data / 'dataset.json'), '--output', str(output), '--no-tta'],
        )
        == 0
    )
    values = {int(v) for case in (output).glob('*.nii.gz') for v in np.unique(np.asanyarray(nib.load(case).dataobj))}
    assert values <= {0, 1, 2, 3}, 'every painted value is a declared label value'
    scored = tmp_path / 'scored'
    assert run_cli(predict_main, scoring_command(run_dir, data, scored, '--no-tta', '--no-qc')) == 0
    with open(scored / 'metrics.csv', newline='') as handle:
        names = {(int(row['label']), row['name']) for row in csv.DictReader(handle)}
    assert names == {(2, 'atrium with wall'), (1, 'atrium'), (3, 'chamber')}, (
        'regions are scored as regions, named as regions'
    )
    assert (
        run_cli(
            train_main, ['--data', str(data), '--run-dir', str(tmp_path / 'softmax'), '--output', 'softmax', *flags]
        )
        == EXIT_USER_ERROR
    )


@pytest.mark.parametrize('filename', ['model.onnx', 'model.pt'])
def test_an_exported_model_predicts_the_checkpoints_masks(trained_on, tmp_path, filename):
    """ONNX and TorchScript carry the output kind and the per-axis network with the plan."""
    _, data, run_dir = trained_on
    exported = tmp_path / filename
    assert run_cli(export_main, ['--checkpoint', str(run_dir / 'best.pt'), '--output', str(exported)]) == 0
    scan = data / 'dataset.json'
    masks = {}
    for name, model in (('checkpoint', run_dir / 'best.pt'), ('exported', exported)):
        assert (
            run_cli(
                predict_main,
                [
                    '--checkpoint',
                    str(model),
                    '--input',
                    str(scan),
                    '--output',
                    str(tmp_path / name),
                    '--no-tta',
                    '--no-qc',
                ],
            )
            == 0
        )
        masks[name] = {p.name: np.asanyarray(nib.load(p).dataobj) for p in (tmp_path / name).glob('*.nii.gz')}
    assert masks['exported'].keys() == masks['checkpoint'].keys() and len(masks['exported']) == 6
    for case, mask in masks['checkpoint'].items():
        assert np.array_equal(masks['exported'][case], mask), case
