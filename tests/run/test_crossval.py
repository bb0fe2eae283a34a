"""Cross-validation, training on every case, and fold ensembles, on small synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import error_lines, fast_training, one_error, prediction_command, scoring_command

from heartseg.checkpoint import load_checkpoint
from heartseg.data.dataset import read_dataset
from heartseg.data.splits import split_cases
from heartseg.errors import EXIT_USER_ERROR, run_cli
from heartseg.inference.postprocessing import Postprocessing
from heartseg.inference.prediction import Predictor
from heartseg.run.crossval import fold_training_minutes, resolve_checkpoints
from main import main
from predict import main as predict_main

TESTS = Path(__file__).resolve().parents[1]  # where the helper scripts are
FOLDS = 3
EPOCHS = 2
FAST = fast_training(steps_per_epoch=6, seed=7, epochs=EPOCHS)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def cross_validation_command(data: Path, run_dir: Path) -> list[str]:
    return [
        '--data',
        str(data),
        '--run-dir',
        str(run_dir),
        '--cache-dir',
        str(run_dir.parent / 'cache'),
        '--folds',
        str(FOLDS),
        *FAST,
    ]


@pytest.fixture(scope='module')
def cross_validation(small_dataset_template, tmp_path_factory) -> Path:
    """An uninterrupted 3-fold cross-validation of the small dataset."""
    run_dir = tmp_path_factory.mktemp('crossval') / 'cv'
    assert run_cli(main, cross_validation_command(small_dataset_template, run_dir)) == 0
    return run_dir


@pytest.mark.parametrize('cases,folds', [(6, 2), (6, 3), (13, 5), (5, 5)])
def test_every_case_lands_in_exactly_one_folds_validation(cases, folds):
    case_ids = [f'case_{i:02d}' for i in range(cases)]
    splits = [split_cases(case_ids, seed=4, folds=folds, fold=fold) for fold in range(folds)]
    validations = [case for split in splits for case in split['validation']]
    assert sorted(validations) == case_ids
    for split in splits:
        assert sorted(split['training'] + split['validation']) == case_ids
        assert len(split['validation']) in (cases // folds, -(-cases // folds))


def test_folds_share_the_time_left_and_reserve_their_measured_scoring():
    first = fold_training_minutes(60, fold=0, folds=5, spent_seconds=0, seconds_per_case=None, cases=13)
    assert first == pytest.approx(12 * 0.9)
    # Fold 3 of 5 after 40 minutes: 20 minutes left for 2 folds; 13 cases at 6 s each are its scoring.
    assert fold_training_minutes(
        60, fold=3, folds=5, spent_seconds=2400, seconds_per_case=6.0, cases=13
    ) == pytest.approx(10 - 1.3)
    # Overspent earlier folds shrink the later ones, down to the floor of 1 s, which still trains one epoch.
    assert fold_training_minutes(
        60, fold=4, folds=5, spent_seconds=3700, seconds_per_case=6.0, cases=13
    ) * 60 == pytest.approx(1.0)


def test_cross_validation_trains_every_fold_and_scores_every_case_once(cross_validation, small_dataset_template):
    case_ids = [case.case_id for case in read_dataset(small_dataset_template).cases]
    rows = read_csv(cross_validation / 'crossval.csv')
    assert sorted(row['case'] for row in rows) == sorted(case_ids)
    for fold in range(FOLDS):
        fold_dir = cross_validation / f'fold_{fold}'
        state = load_checkpoint(fold_dir / 'last.pt')
        assert state['epoch'] == EPOCHS
        validation = json.loads((fold_dir / 'splits.json').read_text())['validation']
        assert sorted(row['case'] for row in rows if int(row['fold']) == fold) == validation
        assert sorted(p.name for p in (fold_dir / 'validation').glob('*.nii.gz')) == sorted(
            f'{c}.nii.gz' for c in validation
        )
        # A fold's best.pt is its final model: picking an epoch by the fold's own cases would flatter the score.
        best = load_checkpoint(fold_dir / 'best.pt')
        assert all(torch.equal(best['model'][name], tensor) for name, tensor in state['model'].items())
    summary = json.loads((cross_validation / 'crossval.json').read_text())
    dices = [float(row['dice']) for row in rows]
    assert summary['cases'] == len(case_ids) and summary['folds'] == FOLDS
    assert summary['pooled']['1']['dice']['mean'] == pytest.approx(np.mean(dices))
    assert summary['pooled']['1']['dice']['std'] == pytest.approx(np.std(dices))
    fold_means = {fold: stats['1']['dice']['mean'] for fold, stats in summary['per_fold'].items()}
    assert fold_means == {
        str(f): pytest.approx(np.mean([float(r['dice']) for r in rows if int(r['fold']) == f])) for f in range(FOLDS)
    }
    # The out-of-fold masks are saved before post-processing, which they then choose, as nnU-Net does.
    postprocessing = summary['postprocessing']
    assert postprocessing['mean_dice_before']['left atrium'] == pytest.approx(np.mean(dices))
    assert postprocessing['mean_dice_after']['left atrium'] >= postprocessing['mean_dice_before']['left atrium']
    assert set(postprocessing) >= {'all_foreground', 'structures', 'description'}


@pytest.mark.parametrize(
    'flag,expected',
    [
        ([], None),
        (['--keep-largest'], 'keeps the largest component of left atrium'),
        (['--no-keep-largest'], 'keeps every component'),
    ],
)
def test_the_fold_ensemble_predicts_with_the_post_processing_its_folds_chose(
    cross_validation, small_dataset_template, tmp_path, capsys, flag, expected
):
    chosen = Postprocessing.from_dict(json.loads((cross_validation / 'crossval.json').read_text())['postprocessing'])
    scan = small_dataset_template / 'imagesTr' / 'synthetic_000.nii.gz'
    assert run_cli(predict_main, prediction_command([cross_validation], scan, tmp_path, '--no-qc', *flag)) == 0
    outputs = Predictor(resolve_checkpoints([cross_validation])).outputs
    assert f'Post-processing: {expected or chosen.describe(outputs)}' in capsys.readouterr().out


def launch_killable(arguments: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TESTS / 'kill_driver.py'), *arguments],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def kill_at(process: subprocess.Popen, marker: str, occurrence: int) -> None:
    seen = 0
    for line in process.stdout:
        seen += line.strip() == marker
        if seen == occurrence:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
    process.wait()
    pytest.fail(f'the run ended before {marker!r} occurred {occurrence} times')


# In fold 1's first epoch (after fold 0's two epochs), and after fold 0 is scored but before it is marked done.
@pytest.mark.parametrize(
    'marker,occurrence,resumed_at',
    [
        ('KILLPOINT after last.pt', EPOCHS + 1, ('fold_1', 1)),
        ('KILLPOINT before scored.json', 1, ('fold_0', EPOCHS)),
    ],
    ids=['mid-fold', 'mid-scoring'],
)
def test_a_killed_cross_validation_resumes_to_the_uninterrupted_result(
    cross_validation, small_dataset_template, tmp_path, capsys, marker, occurrence, resumed_at
):
    run_dir = tmp_path / 'cv'
    process = launch_killable(cross_validation_command(small_dataset_template, run_dir), tmp_path)
    kill_at(process, marker, occurrence)
    assert not (run_dir / 'crossval.csv').exists()
    scored_before = {
        fold: (run_dir / f'fold_{fold}' / 'scored.json').read_bytes()
        for fold in range(FOLDS)
        if (run_dir / f'fold_{fold}' / 'scored.json').exists()
    }
    assert run_cli(main, ['--resume', str(run_dir)]) == 0
    fold_name, epoch = resumed_at
    assert f'Resuming {run_dir / fold_name} after epoch {epoch}' in capsys.readouterr().out, (
        'the fold was not resumed where it stopped'
    )
    for fold, record in scored_before.items():  # finished folds are not touched
        assert (run_dir / f'fold_{fold}' / 'scored.json').read_bytes() == record
    for fold in range(FOLDS):
        straight, resumed = (load_checkpoint(d / f'fold_{fold}' / 'last.pt') for d in (cross_validation, run_dir))
        for name, tensor in straight['model'].items():
            assert torch.equal(tensor, resumed['model'][name]), (
                f'fold {fold}: {name} differs from the uninterrupted run'
            )
    columns = ('fold', 'case', 'dice', 'hd95_mm', 'asd_mm')
    assert [[r[c] for c in columns] for r in read_csv(run_dir / 'crossval.csv')] == [
        [r[c] for c in columns] for r in read_csv(cross_validation / 'crossval.csv')
    ]


def test_an_ensemble_of_two_copies_of_one_checkpoint_equals_the_single_model(trained, small_dataset_template, tmp_path):
    copy = tmp_path / 'copy.pt'
    shutil.copy(trained, copy)
    scan = small_dataset_template / 'imagesTr' / 'synthetic_002.nii.gz'
    single_mask, single_probabilities, _ = Predictor(trained, tta=False).predict(scan)
    pair_mask, pair_probabilities, _ = Predictor([trained, copy], tta=False).predict(scan)
    assert single_mask.any()
    np.testing.assert_array_equal(pair_mask, single_mask)
    np.testing.assert_allclose(pair_probabilities, single_probabilities, rtol=0, atol=1e-6)


def edited_checkpoint(source: Path, target: Path, change) -> Path:
    state = torch.load(source, weights_only=True)
    plan = json.loads(state['plan'])
    change(plan)
    state['plan'] = json.dumps(plan)
    torch.save(state, target)
    return target


@pytest.mark.parametrize(
    'change,problem',
    [
        (lambda plan: plan['labels'].update({'2': 'scar'}), 'labels'),
        (lambda plan: plan['modalities'].update({'1': 'T2'}), 'input channels'),
    ],
    ids=['labels', 'channels'],
)
def test_checkpoints_that_disagree_are_refused_in_one_line(
    trained, small_dataset_template, tmp_path, capsys, change, problem
):
    other = edited_checkpoint(trained, tmp_path / 'other.pt', change)
    argv = prediction_command([trained, other], small_dataset_template / 'imagesTr', tmp_path / 'out')
    assert run_cli(predict_main, argv) == EXIT_USER_ERROR
    errors = error_lines(capsys)
    assert len(errors) == 1 and 'other.pt' in errors[0] and problem in errors[0]
    assert not (tmp_path / 'out').exists()


def test_a_cross_validation_folder_predicts_as_the_fold_ensemble(cross_validation, small_dataset_template, tmp_path):
    scan = small_dataset_template / 'imagesTr' / 'synthetic_001.nii.gz'
    argv = prediction_command([cross_validation], scan, tmp_path / 'out', '--no-tta', '--save-probabilities')
    assert run_cli(predict_main, argv) == 0
    folds = [cross_validation / f'fold_{fold}' / 'best.pt' for fold in range(FOLDS)]
    expected = Predictor(folds, tta=False).predict(scan)[1]
    singles = [Predictor(fold, tta=False).predict(scan)[1] for fold in folds]
    written = np.moveaxis(np.asarray(nib.load(tmp_path / 'out' / 'synthetic_001_probabilities.nii.gz').dataobj), -1, 0)
    np.testing.assert_allclose(written, expected, atol=1e-6)
    np.testing.assert_allclose(expected, np.mean(singles, axis=0), atol=1e-6)
    assert not np.allclose(singles[0], singles[1], atol=1e-3), 'the folds should be different models'


def test_validation_subset_of_a_cross_validation_uses_each_folds_own_model(
    cross_validation, small_dataset_template, tmp_path
):
    output = tmp_path / 'out'
    argv = scoring_command(cross_validation, small_dataset_template, output, '--subset', 'validation')
    assert run_cli(predict_main, argv) == 0
    ours = {row['case']: row['dice'] for row in read_csv(output / 'metrics.csv')}
    # The same predictions as the cross-validation's own out-of-fold scoring.
    assert ours == {row['case']: row['dice'] for row in read_csv(cross_validation / 'crossval.csv')}


def test_training_on_every_case_saves_the_final_weights_as_best(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'all'
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--val-fraction', '0', *FAST]) == 0
    split = json.loads((run_dir / 'splits.json').read_text())
    assert split['validation'] == [] and len(split['training']) == 6
    last, best = load_checkpoint(run_dir / 'last.pt'), load_checkpoint(run_dir / 'best.pt')
    assert last['epoch'] == EPOCHS
    assert all(torch.equal(best['model'][name], tensor) for name, tensor in last['model'].items())
    assert all(row['val_dice'] == 'nan' for row in read_csv(run_dir / 'metrics.csv'))


@pytest.mark.parametrize(
    'flags,flag,problem',
    [
        (['--fold', '1'], '--fold', 'needs --folds'),
        (['--folds', '3', '--fold', '7'], '--fold', '0..2'),
        (['--folds', '3', '--fold', '-1'], '--fold', 'at least 0'),
        (['--folds', '1'], '--folds', 'at least 2'),
        (['--folds', '7'], '--folds', '2 <= K <= 6'),
        (['--val-fraction', '1'], '--val-fraction', 'below 1'),
        (['--val-fraction', '-0.1'], '--val-fraction', 'at least 0'),
    ],
)
def test_bad_split_flags_are_refused_before_any_run_folder_exists(
    small_dataset, tmp_path, capsys, flags, flag, problem
):
    run_dir = tmp_path / 'run'
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(run_dir), *FAST, *flags]) == EXIT_USER_ERROR
    errors = error_lines(capsys)
    assert len(errors) == 1 and flag in errors[0] and problem in errors[0], errors
    assert not run_dir.exists()


def test_resuming_a_cross_validation_with_another_k_is_refused(cross_validation, capsys):
    before = sorted(p.name for p in cross_validation.iterdir())
    assert run_cli(main, ['--resume', str(cross_validation), '--folds', '5']) == EXIT_USER_ERROR
    errors = error_lines(capsys)
    assert len(errors) == 1 and '--folds 5' in errors[0] and 'used 3' in errors[0]
    assert sorted(p.name for p in cross_validation.iterdir()) == before


def test_an_unfinished_cross_validation_is_refused_as_an_ensemble(
    cross_validation, small_dataset_template, tmp_path, capsys
):
    unfinished = Path(shutil.copytree(cross_validation, tmp_path / 'cv'))
    (unfinished / 'fold_2' / 'best.pt').unlink()
    argv = prediction_command([unfinished], small_dataset_template / 'imagesTr', tmp_path / 'out')
    assert run_cli(predict_main, argv) == EXIT_USER_ERROR
    errors = error_lines(capsys)
    assert len(errors) == 1 and 'folds [2] of 3 have no best.pt' in errors[0] and '--resume' in errors[0]


def test_folds_trained_apart_pool_into_the_crossval_of_one_sequential_run(
    cross_validation, small_dataset_template, tmp_path
):
    root = tmp_path / 'apart'
    for fold in (2, 0, 1):  # separate jobs, finishing in any order
        argv = [
            '--data',
            str(small_dataset_template),
            '--run-dir',
            str(root / f'fold_{fold}'),
            '--cache-dir',
            str(tmp_path / 'cache'),
            '--folds',
            str(FOLDS),
            '--fold',
            str(fold),
            *FAST,
        ]
        assert run_cli(main, argv) == 0
    assert not (root / 'crossval.csv').exists()
    assert run_cli(main, ['--score-folds', str(root)]) == 0
    columns = ('fold', 'case', 'label', 'dice', 'hd95_mm', 'asd_mm')
    assert [[r[c] for c in columns] for r in read_csv(root / 'crossval.csv')] == [
        [r[c] for c in columns] for r in read_csv(cross_validation / 'crossval.csv')
    ]
    apart, together = (json.loads((d / 'crossval.json').read_text()) for d in (root, cross_validation))
    assert apart['pooled'] == together['pooled'] and apart['cases'] == together['cases'] == 6
    assert len(resolve_checkpoints([root])) == FOLDS, 'the pooled folder is a fold ensemble for predict.py'


def test_pooling_refuses_a_missing_fold_in_one_line(cross_validation, tmp_path, capsys):
    partial = Path(shutil.copytree(cross_validation, tmp_path / 'cv'))
    shutil.rmtree(partial / 'fold_1')
    assert run_cli(main, ['--score-folds', str(partial)]) == EXIT_USER_ERROR
    assert 'folds [1] of 3 are missing' in one_error(capsys)


def nnunet_splits(case_ids: list[str], folds: int) -> list[dict]:
    """A fold assignment no seed of ours makes: every K-th case from the end."""
    ordered = sorted(case_ids, reverse=True)
    return [
        {'train': [c for c in ordered if c not in ordered[k::folds]], 'val': ordered[k::folds]} for k in range(folds)
    ]


def test_nnunet_splits_final_gives_nnunets_folds(small_dataset_template, tmp_path):
    case_ids = [case.case_id for case in read_dataset(small_dataset_template).cases]
    splits_file = tmp_path / 'splits_final.json'
    splits_file.write_text(json.dumps(nnunet_splits(case_ids, 3)))
    run_dir = tmp_path / 'fold_1'
    argv = [
        '--data',
        str(small_dataset_template),
        '--splits',
        str(splits_file),
        '--fold',
        '1',
        '--run-dir',
        str(run_dir),
        *FAST,
    ]
    assert run_cli(main, argv) == 0  # --folds comes from the file
    expected = nnunet_splits(case_ids, 3)[1]
    assert json.loads((run_dir / 'splits.json').read_text()) == {
        'training': sorted(expected['train']),
        'validation': sorted(expected['val']),
        'grouping': 'split from splits_final.json',
    }
    assert json.loads((run_dir / 'config.json').read_text())['config']['folds'] == 3


@pytest.mark.parametrize(
    'edit,flags,message',
    [
        (lambda f: f[0]['train'].append(f[0]['val'].pop()), [], "is in no fold's validation set"),
        (
            lambda f: f[1]['val'].append(f[0]['val'][0]) or f[1]['train'].remove(f[0]['val'][0]),
            [],
            'is in the validation sets of folds 0 and 1',
        ),
        (lambda f: None, ['--folds', '2'], 'holds 3 folds'),
    ],
)
def test_a_splits_file_that_does_not_fit_is_refused_in_one_line(small_dataset, tmp_path, capsys, edit, flags, message):
    case_ids = [case.case_id for case in read_dataset(small_dataset).cases]
    folds = nnunet_splits(case_ids, 3)
    edit(folds)
    splits_file = tmp_path / 'splits_final.json'
    splits_file.write_text(json.dumps(folds))
    run_dir = tmp_path / 'run'
    assert (
        run_cli(
            main, ['--data', str(small_dataset), '--splits', str(splits_file), '--run-dir', str(run_dir), *FAST, *flags]
        )
        == EXIT_USER_ERROR
    )
    assert message in one_error(capsys)
    assert not run_dir.exists()


def as_patients(dataset: Path, ids: list[str]) -> Path:
    """The MSD dataset's cases renamed, in order, to ``ids``."""
    listing = json.loads((dataset / 'dataset.json').read_text())
    for entry, case_id in zip(listing['training'], ids):
        for key, folder in (('image', 'imagesTr'), ('label', 'labelsTr')):
            (dataset / entry[key]).rename(dataset / folder / f'{case_id}.nii.gz')
            entry[key] = f'./{folder}/{case_id}.nii.gz'
    (dataset / 'dataset.json').write_text(json.dumps(listing))
    return dataset


def test_grouping_cases_that_are_all_one_patient_is_refused(small_dataset, tmp_path, capsys):
    data = as_patients(small_dataset, [f'p1_frame{i:02d}' for i in range(6)])
    assert run_cli(main, ['--data', str(data), '--run-dir', str(tmp_path / 'run'), *FAST]) == EXIT_USER_ERROR
    assert 'as 1 patients' in one_error(capsys)


def test_a_patient_s_frames_stay_on_one_side_by_default_and_the_run_says_so(small_dataset, tmp_path, capsys):
    ids = [f'patient{p}_frame{f:02d}' for p in range(3) for f in (1, 12)]
    data = as_patients(small_dataset, ids)
    for flags, name in (([], 'grouped'), (['--no-group-by-patient'], 'apart')):
        run_dir = tmp_path / name
        argv = [
            '--data',
            str(data),
            '--run-dir',
            str(run_dir),
            '--cache-dir',
            str(tmp_path / 'cache'),
            '--val-fraction',
            '0.34',
            '--split-seed',
            '2',
            *FAST,
            '--epochs',
            '1',
        ]
        assert run_cli(main, argv + flags) == 0
        split = json.loads((run_dir / 'splits.json').read_text())
        sides = {
            patient: {side for side in ('training', 'validation') for c in split[side] if c.startswith(patient)}
            for patient in ('patient0', 'patient1', 'patient2')
        }
        plan = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('Plan:'))
        if name == 'grouped':
            assert all(len(s) == 1 for s in sides.values()), split
            assert (
                split['grouping'].startswith('split by patient: 6 scans of 3 patients') and 'split by patient' in plan
            )
        else:
            assert any(len(s) == 2 for s in sides.values()), 'this split seed separates frames when asked to'
            assert 'case by case, although 3 patients' in split['grouping'] and 'case by case' in plan
