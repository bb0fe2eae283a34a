"""Short end-to-end training runs on small synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ONE_STEP, SMALL_NET, TINY_NET

import training
from heartseg.checkpoint import load_checkpoint
from heartseg.data.splits import split_cases
from heartseg.errors import EXIT_USER_ERROR, run_cli
from heartseg.training.augmentation import Augmentation
from heartseg.training.recipe import weight_average
from main import main
from predict import main as predict_main

TINY = [
    *SMALL_NET,
    '--steps-per-epoch',
    '20',
    '--batch-size',
    '2',
    '--seed',
    '3',
    '--lr',
    '0.01',
]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / 'metrics.csv', newline='') as handle:
        return list(csv.DictReader(handle))


def test_short_run_writes_outputs_and_learns(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '3', *TINY]) == 0
    for name in ('config.json', 'splits.json', 'metrics.csv', 'last.pt', 'best.pt'):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob('events.out.tfevents.*'))
    rows = read_metrics(run_dir)
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]
    dices = [float(r['val_dice']) for r in rows]
    assert dices[-1] > dices[0], f'validation Dice did not rise: {dices}'
    state = load_checkpoint(run_dir / 'best.pt')
    assert state['best_dice'] == pytest.approx(max(dices))
    assert state['plan'].patch_size == (32, 32, 16)


@pytest.mark.parametrize('averaging', [[], ['--ema-decay', '0.9']], ids=['trained-weights', 'weight-average'])
def test_interrupted_run_resumes_to_identical_result(small_dataset, tmp_path, monkeypatch, averaging):
    monkeypatch.chdir(tmp_path)
    common = ['--data', str(small_dataset), '--epochs', '3', *TINY, *averaging]
    assert run_cli(main, [*common, '--run-dir', str(tmp_path / 'straight')]) == 0

    original_run_epoch = training.Trainer.run_epoch

    def interrupt_third_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original_run_epoch(self, epoch)

    monkeypatch.setattr(training.Trainer, 'run_epoch', interrupt_third_epoch)
    interrupted = tmp_path / 'interrupted'
    assert run_cli(main, [*common, '--run-dir', str(interrupted)]) == 130
    assert load_checkpoint(interrupted / 'last.pt')['epoch'] == 2
    monkeypatch.setattr(training.Trainer, 'run_epoch', original_run_epoch)
    assert run_cli(main, ['--resume', str(interrupted)]) == 0

    straight_state = load_checkpoint(tmp_path / 'straight' / 'last.pt')
    resumed_state = load_checkpoint(interrupted / 'last.pt')
    assert resumed_state['epoch'] == 3
    weights = ['model', 'trained_model'] if averaging else ['model']
    assert ('trained_model' in straight_state) == bool(averaging)
    for weight in weights:
        for name, tensor in straight_state[weight].items():
            assert torch.equal(tensor, resumed_state[weight][name]), (weight, name)
    if averaging:  # validated and saved: the average, not the last step's weights
        assert not torch.equal(straight_state['model']['head.weight'], straight_state['trained_model']['head.weight'])
    columns = ('epoch', 'train_loss', 'val_loss', 'val_dice', 'lr')
    straight_rows = [[r[c] for c in columns] for r in read_metrics(tmp_path / 'straight')]
    resumed_rows = [[r[c] for c in columns] for r in read_metrics(interrupted)]
    assert resumed_rows == straight_rows


def test_the_weight_average_starts_from_the_first_weights_and_follows_its_decay():
    network = torch.nn.Linear(1, 1, bias=False)
    averaged = weight_average(network, 0.9)
    for value in (1.0, 2.0, 4.0):
        network.weight.data.fill_(value)
        averaged.update_parameters(network)
    assert averaged.module.weight.item() == pytest.approx(0.9 * (0.9 * 1 + 0.1 * 2) + 0.1 * 4)
    assert weight_average(network, 0.0) is None


def test_augmentation_on_the_device_trains_through_loader_workers(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    flags = ['--epochs', '3', '--augment-on', 'device', '--num-workers', '1', *TINY]
    batches = []
    augment = Augmentation.apply_intensity
    monkeypatch.setattr(
        Augmentation,
        'apply_intensity',
        lambda self, batch, params: batches.append(len(batch)) or augment(self, batch, params),
    )
    intensity = Augmentation.intensity

    def only_on_the_device(self, image, params):
        assert torch.utils.data.get_worker_info() is None, 'the loader workers must only sample and draw'
        return intensity(self, image, params)

    monkeypatch.setattr(Augmentation, 'intensity', only_on_the_device)
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), *flags]) == 0
    assert batches == [2] * 3 * 20, 'every training batch of the 3 epochs of 20 steps is augmented on the device'
    dices = [float(r['val_dice']) for r in read_metrics(run_dir)]
    assert dices[-1] > dices[0], f'validation Dice did not rise: {dices}'
    assert json.loads((run_dir / 'config.json').read_text())['config']['augment_on'] == 'device'


def test_a_run_killed_before_its_first_checkpoint_resumes_from_epoch_zero(small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'

    def killed(self, epoch):
        raise KeyboardInterrupt

    original = training.Trainer.run_epoch
    monkeypatch.setattr(training.Trainer, 'run_epoch', killed)
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '2', *TINY]) == 130
    assert (run_dir / 'config.json').is_file() and not (run_dir / 'last.pt').exists()
    monkeypatch.setattr(training.Trainer, 'run_epoch', original)
    capsys.readouterr()
    assert run_cli(main, ['--resume', str(run_dir)]) == 0
    assert (
        f'{run_dir}: no checkpoint yet (stopped before its first epoch ended); '
        'starting from epoch 0 with its config.json' in capsys.readouterr().out
    )
    assert load_checkpoint(run_dir / 'last.pt')['epoch'] == 2 and [int(r['epoch']) for r in read_metrics(run_dir)] == [
        1,
        2,
    ]


def test_extending_a_finished_run(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '1', *TINY]) == 0
    started = json.loads((run_dir / 'config.json').read_text())['provenance']
    assert run_cli(main, ['--resume', str(run_dir), '--epochs', '2']) == 0
    assert [int(r['epoch']) for r in read_metrics(run_dir)] == [1, 2]
    document = json.loads((run_dir / 'config.json').read_text())
    assert document['config']['epochs'] == 2
    assert len(started) == 1 and document['provenance'][0] == started[0] and len(document['provenance']) == 2, (
        'the start is kept, the resume added'
    )
    assert {'torch', 'torchio', 'SimpleITK', 'scipy', 'git_commit', 'git_uncommitted_changes'} <= set(started[0])


def test_a_run_from_before_the_loss_and_output_renames_resumes_and_predicts(small_dataset, tmp_path, monkeypatch):
    """Its config.json says 'bce_dice', its checkpoints' plans keep the output kind only in their config."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '1', *TINY]) == 0
    document = json.loads((run_dir / 'config.json').read_text())
    document['config']['loss'] = 'bce_dice'
    (run_dir / 'config.json').write_text(json.dumps(document))
    for name in ('last.pt', 'best.pt'):
        state = torch.load(run_dir / name, weights_only=True)
        plan = json.loads(state['plan'])
        state['plan'] = json.dumps(
            {
                **{key: value for key, value in plan.items() if key not in ('output', 'regions')},
                'config': {**plan['config'], 'loss': 'bce_dice'},
            }
        )
        torch.save(state, run_dir / name)
    image = small_dataset / 'imagesTr' / 'synthetic_001.nii.gz'
    assert (
        run_cli(
            predict_main,
            [
                '--checkpoint',
                str(run_dir / 'best.pt'),
                '--input',
                str(image),
                '--output',
                str(tmp_path / 'masks'),
                '--no-tta',
                '--no-qc',
            ],
        )
        == 0
    )
    assert (tmp_path / 'masks' / image.name).is_file()
    assert run_cli(main, ['--resume', str(run_dir), '--epochs', '2']) == 0
    assert [int(r['epoch']) for r in read_metrics(run_dir)] == [1, 2]
    assert json.loads((run_dir / 'config.json').read_text())['config']['loss'] == 'ce_dice'


def test_a_time_limited_run_can_be_extended_past_its_limit(small_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--time-limit', '0.01', *TINY]) == 0
    first_epochs = len(read_metrics(run_dir))
    assert run_cli(main, ['--resume', str(run_dir), '--time-limit', '0']) == EXIT_USER_ERROR
    assert 'give --epochs too' in capsys.readouterr().err
    assert run_cli(main, ['--resume', str(run_dir), '--time-limit', '0.25']) == 0  # 15 s in all: room for more epochs
    epochs = [int(r['epoch']) for r in read_metrics(run_dir)]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > first_epochs


@pytest.mark.parametrize('poisoned_epoch', [0, 1])
def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(
    small_dataset, tmp_path, monkeypatch, capsys, poisoned_epoch
):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    original_step = training.Trainer.train_step

    def poisoned_step(self, images, targets, epoch, step):
        if epoch == poisoned_epoch and step == 2:
            images = images * float('nan')
        return original_step(self, images, targets, epoch, step)

    monkeypatch.setattr(training.Trainer, 'train_step', poisoned_step)
    code = run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '2', *TINY])
    assert code == 2
    error = capsys.readouterr().err
    assert f'non-finite loss at epoch {poisoned_epoch + 1}, step 3' in error
    if poisoned_epoch:
        assert f'{run_dir / "last.pt"}: ' in error and 'the last good checkpoint is kept' in error
        assert load_checkpoint(run_dir / 'last.pt')['epoch'] == 1
    else:
        assert 'no epoch completed, so there is no checkpoint' in error and not (run_dir / 'last.pt').exists()


def test_without_data_main_writes_and_uses_the_synthetic_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ['--run-dir', 'runs/default', *ONE_STEP, '--max-cases', '4', *TINY_NET]
    assert run_cli(main, argv) == 0
    out = capsys.readouterr().out
    assert 'SYNTHETIC' in out and 'python main.py --download' in out
    assert 'TensorBoard logs: runs/default' in out
    assert (tmp_path / 'data' / 'SyntheticHeart' / 'dataset.json').is_file()
    assert len(list((tmp_path / 'data' / 'SyntheticHeart' / 'imagesTr').glob('*.nii.gz'))) == 24


def test_deep_supervision_is_the_default_and_its_checkpoint_predicts(small_dataset, tmp_path, monkeypatch):
    from heartseg.inference.prediction import Predictor

    monkeypatch.chdir(tmp_path)
    three_levels = [
        '--levels',
        '3',
        '--base-channels',
        '4',
        '--patch-size',
        '32',
        '32',
        '16',
        '--epochs',
        '1',
        '--steps-per-epoch',
        '4',
    ]
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', 'deep', *three_levels]) == 0
    state = load_checkpoint(tmp_path / 'deep' / 'best.pt')
    assert state['plan'].model['deep_supervision'] is True
    assert any(key.startswith('deep_heads.0.') for key in state['model']), 'a 3-level net supervises its 1/2 stage'
    scan = next((small_dataset / 'imagesTr').glob('*.nii.gz'))
    mask = Predictor(tmp_path / 'deep' / 'best.pt', tta=False).predict(scan)[0]
    assert mask.shape == nib.load(scan).shape
    assert (
        run_cli(main, ['--data', str(small_dataset), '--run-dir', 'plain', *three_levels, '--no-deep-supervision']) == 0
    )
    assert not any(key.startswith('deep_heads') for key in load_checkpoint(tmp_path / 'plain' / 'best.pt')['model'])


def test_a_split_seed_keeps_the_validation_cases_while_the_training_seed_changes(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case_ids = [path.name.removesuffix('.nii.gz') for path in (small_dataset / 'imagesTr').glob('*.nii.gz')]
    other_seed = next(s for s in range(1, 50) if split_cases(case_ids, s) != split_cases(case_ids, 0))
    quick = ['--data', str(small_dataset), *ONE_STEP, *TINY_NET]
    runs = {
        'seed 0': ['--seed', '0'],
        'other seed': ['--seed', str(other_seed)],
        'other seed, split seed 0': ['--seed', str(other_seed), '--split-seed', '0'],
    }
    splits = {}
    for name, seeds in runs.items():
        assert run_cli(main, [*quick, *seeds, '--run-dir', name]) == 0
        splits[name] = json.loads((tmp_path / name / 'splits.json').read_text())
    assert splits['other seed'] != splits['seed 0'], 'without --split-seed the training seed also picks the split'
    assert splits['other seed, split seed 0'] == splits['seed 0']


def test_several_labels_train_a_softmax_and_predict_every_label(small_dataset, tmp_path, monkeypatch):
    """Label 1 is split into 1 and 2 along x:
    the net gets a softmax over background and both, and masks keep both label values."""
    monkeypatch.chdir(tmp_path)
    content = json.loads((small_dataset / 'dataset.json').read_text())
    content['labels'] = {'0': 'background', '1': 'left part', '2': 'right part'}
    (small_dataset / 'dataset.json').write_text(json.dumps(content))
    for path in (small_dataset / 'labelsTr').glob('*.nii.gz'):
        label = nib.load(path)
        values = np.asarray(label.dataobj).astype(np.uint8)
        x = np.nonzero(values)[0]
        values[int(np.median(x)) :][values[int(np.median(x)) :] == 1] = 2
        nib.save(nib.Nifti1Image(values, label.affine), path)
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', 'multi', '--epochs', '5', *TINY]) == 0
    state = load_checkpoint(tmp_path / 'multi' / 'best.pt')
    assert state['plan'].model['out_channels'] == 3 and state['plan'].output == 'softmax'
    output = tmp_path / 'masks'
    argv = [
        '--checkpoint',
        str(tmp_path / 'multi' / 'best.pt'),
        '--input',
        str(small_dataset / 'dataset.json'),
        '--subset',
        'validation',
        '--output',
        str(output),
        '--labels',
        str(small_dataset / 'labelsTr'),
        '--no-tta',
    ]
    assert run_cli(predict_main, argv) == 0
    rows = read_metrics(output)
    validation = json.loads((tmp_path / 'multi' / 'splits.json').read_text())['validation']
    assert sorted((row['case'], row['label']) for row in rows) == sorted(
        (case, label) for case in validation for label in ('1', '2')
    )
    masks = [np.asarray(nib.load(output / f'{case}.nii.gz').dataobj) for case in validation]
    assert set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist()) == {0, 1, 2}
    assert all(float(row['dice']) > 0 for row in rows), 'each label must be found in each validation case'


def test_the_overlay_image_follows_the_validations_it_can_use(small_dataset, tmp_path, monkeypatch):
    """Validations at epochs 3, 6 and 9 with --image-every 5: the first, then the first at least 5 epochs later."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    flags = [*TINY, '--steps-per-epoch', '2', '--epochs', '9', '--val-every', '3', '--image-every', '5']
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), *flags]) == 0
    events = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0}).Reload()
    assert [image.step for image in events.Images('val/overlay')] == [3, 9]


def test_plan_only_preprocesses_every_case_and_writes_no_run_folder(small_dataset_template, tmp_path, capsys):
    run_dir, cache = tmp_path / 'run', tmp_path / 'cache'
    argv = ['--data', str(small_dataset_template), '--run-dir', str(run_dir), '--cache-dir', str(cache), '--plan-only']
    assert run_cli(main, argv) == 0
    printed = capsys.readouterr().out
    assert 'Plan: 5 training / 1 validation cases' in printed and 'Plan only: 6 cases' in printed
    assert not run_dir.exists(), 'a plan writes no run folder'
    assert len(list((cache / 'SyntheticHeart').glob('*.pt'))) == 6, 'every case is preprocessed into the cache'
    assert run_cli(main, [*argv[:-1], *ONE_STEP]) == 0, 'then trains on it'
    assert len(list((cache / 'SyntheticHeart').glob('*.pt'))) == 6, 'from the same cache entries'


def test_plan_only_is_refused_where_it_cannot_take_effect(trained, capsys):
    assert run_cli(main, ['--resume', str(trained.parent), '--plan-only']) == EXIT_USER_ERROR
    assert 'has no effect with --resume' in capsys.readouterr().err
    data = json.loads((trained.parent / 'config.json').read_text())['config']['data']
    assert run_cli(main, ['--data', data, '--run-dir', str(trained.parent), '--plan-only']) == EXIT_USER_ERROR
    assert 'already holds a run' in capsys.readouterr().err
