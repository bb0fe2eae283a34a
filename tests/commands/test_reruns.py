"""Runs repeated, resumed and shared: each does the right thing or is refused in one line (issue 35)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import fast_training, one_error, prediction_command, scan_folder, torchrun_command

import heartseg.files
from heartseg.checkpoint import load_checkpoint
from heartseg.commands import predict
from heartseg.errors import EXIT_USER_ERROR, run_cli
from heartseg.folder_lock import LOCK_NAME, folder_lock
from main import main as train_main
from predict import main as predict_main

REPO = Path(__file__).resolve().parents[2]
CASES = ['synthetic_000', 'synthetic_001', 'synthetic_002']
FAST = fast_training(steps_per_epoch=4, seed=3, epochs=4)


def command(checkpoint: Path, folder: Path, output: Path, *extra: str) -> list[str]:
    return prediction_command([checkpoint], folder, output, '--no-tta', '--no-qc', *extra)


def retrained(trained: Path, target: Path) -> Path:
    """Another checkpoint of the same plan: the trained one with a different head."""
    state = torch.load(trained, weights_only=True)
    state['model']['head.bias'] += 3.0
    torch.save(state, target)
    return target


# 7. Running a finished folder prediction again is the commonest rerun.
def test_running_a_finished_prediction_again_does_nothing_and_succeeds(
    trained, small_dataset_template, tmp_path, capsys
):
    folder, output = scan_folder(small_dataset_template, tmp_path / 'scans', CASES), tmp_path / 'out'
    assert run_cli(predict_main, command(trained, folder, output)) == 0
    stamps = {case: (output / f'{case}.nii.gz').stat().st_mtime_ns for case in CASES}
    capsys.readouterr()
    assert run_cli(predict_main, command(trained, folder, output)) == 0
    printed = capsys.readouterr()
    assert '3 of 3 cases already predicted in this folder by these models and settings; nothing to do' in printed.out
    assert (
        'Traceback' not in printed.err
        and {case: (output / f'{case}.nii.gz').stat().st_mtime_ns for case in CASES} == stamps
    )


# 1. A resumed folder prediction checks what made each case.
@pytest.mark.parametrize(
    'change,reason',
    [
        ('checkpoint', '3 cases predicted with another checkpoint: predicting them again'),
        ('settings', '3 cases predicted with other settings: predicting them again'),
        ('input', '1 case predicted from another input file: predicting it again'),
    ],
)
def test_cases_made_another_way_are_predicted_again_and_say_why(
    trained, small_dataset_template, tmp_path, capsys, change, reason
):
    folder, output = scan_folder(small_dataset_template, tmp_path / 'scans', CASES), tmp_path / 'out'
    assert run_cli(predict_main, command(trained, folder, output)) == 0
    before = {case: np.asarray(nib.load(output / f'{case}.nii.gz').dataobj).copy() for case in CASES}
    checkpoint, extra = trained, []
    if change == 'checkpoint':
        checkpoint = retrained(trained, tmp_path / 'other.pt')
    elif change == 'settings':
        extra = ['--no-keep-largest']
    else:
        image = nib.load(folder / 'synthetic_001.nii.gz')
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine), folder / 'synthetic_001.nii.gz')
    capsys.readouterr()
    assert run_cli(predict_main, command(checkpoint, folder, output, *extra)) == 0
    assert reason in capsys.readouterr().out
    if change == 'checkpoint':
        assert any(
            not np.array_equal(before[case], np.asarray(nib.load(output / f'{case}.nii.gz').dataobj)) for case in CASES
        )
    if change == 'input':
        assert not np.array_equal(
            before['synthetic_001'], np.asarray(nib.load(output / 'synthetic_001.nii.gz').dataobj)
        )


def test_an_interrupted_overwrite_leaves_no_record_vouching_for_a_new_mask(
    trained, small_dataset_template, tmp_path, monkeypatch
):
    folder, output = scan_folder(small_dataset_template, tmp_path / 'scans', CASES), tmp_path / 'out'
    assert run_cli(predict_main, command(trained, folder, output)) == 0
    other = retrained(trained, tmp_path / 'other.pt')
    written = predict.save_nifti

    def killed_after_the_mask(data, affine, path, like=None):
        written(data, affine, path, like)
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, 'save_nifti', killed_after_the_mask)
    assert run_cli(predict_main, command(other, folder, output, '--overwrite')) != 0
    monkeypatch.setattr(predict, 'save_nifti', written)
    record = (
        json.loads((output / 'case_records' / 'synthetic_000.json').read_text())
        if (output / 'case_records' / 'synthetic_000.json').exists()
        else None
    )
    assert record is None, 'the old record would vouch for the new mask'


# 2. torchrun processes predict the list process 0 made.
def test_only_process_zero_lists_the_cases_left(trained, small_dataset_template, tmp_path):
    folder = scan_folder(small_dataset_template, tmp_path / 'scans', CASES)
    driver = (
        'import sys\nfrom heartseg import distributed\nfrom heartseg.commands import predict\n'
        'from heartseg.errors import run_cli\n'
        'listing = predict.cases_to_predict\n'
        'def counted(*args):\n    print("LISTED BY RANK", distributed.rank(), flush=True)\n    return listing(*args)\n'
        'predict.cases_to_predict = counted\nsys.exit(run_cli(predict.main, sys.argv[1:]))\n'
    )
    (tmp_path / 'driver.py').write_text(driver)
    result = subprocess.run(
        torchrun_command(tmp_path / 'driver.py', *command(trained, folder, tmp_path / 'two'), '--device', 'cpu'),
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('LISTED BY RANK') == 1 and 'LISTED BY RANK 0' in result.stdout
    assert all((tmp_path / 'two' / f'{case}.nii.gz').is_file() for case in CASES)


# 3. Every flag takes effect or is refused.
@pytest.mark.parametrize(
    'flags,named',
    [
        (['--pooling', 'isotropic'], '--pooling'),
        (['--cache-dir', 'elsewhere'], '--cache-dir'),
        (['--download-url', 'file:///x.tar'], '--download-url'),
    ],
)
def test_a_resume_refuses_flags_it_would_ignore(small_dataset, tmp_path, capsys, flags, named):
    run_dir = tmp_path / 'run'
    assert (
        run_cli(
            train_main,
            ['--data', str(small_dataset), '--run-dir', str(run_dir), '--cache-dir', str(tmp_path / 'cache'), *FAST],
        )
        == 0
    )
    assert run_cli(train_main, ['--resume', str(run_dir), *flags]) == EXIT_USER_ERROR
    assert one_error(capsys).startswith(f'error: {named}:')


@pytest.mark.parametrize(
    'flags,named',
    [
        (['--folds', '3', '--val-fraction', '0.3'], '--val-fraction'),
        (['--download-url', 'file:///x.tar'], '--download-url'),
    ],
)
def test_a_flag_another_flag_makes_moot_is_refused(small_dataset, tmp_path, capsys, flags, named):
    run_dir = tmp_path / 'run'
    assert (
        run_cli(train_main, ['--data', str(small_dataset), '--run-dir', str(run_dir), *FAST, *flags]) == EXIT_USER_ERROR
    )
    assert one_error(capsys).startswith(f'error: {named}:') and not run_dir.exists()


def test_score_folds_refuses_every_flag_it_would_ignore(tmp_path, capsys):
    assert run_cli(train_main, ['--score-folds', str(tmp_path), '--epochs', '3']) == EXIT_USER_ERROR
    assert one_error(capsys) == 'error: --epochs: has no effect with --score-folds; leave it out'


# 5. Two processes, one folder.
def test_a_folder_held_by_a_live_run_is_refused_and_a_killed_run_s_lock_is_taken_over(
    small_dataset, trained, small_dataset_template, tmp_path, capsys
):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    with folder_lock(run_dir):  # a live process (this one) holds the folder
        assert run_cli(train_main, ['--data', str(small_dataset), '--run-dir', str(run_dir), *FAST]) == EXIT_USER_ERROR
        assert f'error: {run_dir}: is in use by another run (process {os.getpid()} on this machine' in one_error(capsys)
        output = tmp_path / 'predicted'
        output.mkdir()
        with folder_lock(output):
            assert (
                run_cli(
                    predict_main, command(trained, small_dataset_template / 'imagesTr' / 'synthetic_000.nii.gz', output)
                )
                == EXIT_USER_ERROR
            )
            assert 'is in use by another run' in one_error(capsys)
    finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    stale = {
        'pid': int(finished.stdout),
        'host': os.uname().nodename,
        'started': 'earlier',
        'command': 'main.py (killed)',
    }
    (run_dir / LOCK_NAME).write_text(json.dumps(stale))
    assert run_cli(train_main, ['--data', str(small_dataset), '--run-dir', str(run_dir), *FAST]) == 0
    assert not (run_dir / LOCK_NAME).exists(), 'a finished run leaves no lock behind'


# 6. A full disk.
def failing_on(call: int):
    """A ``write_bytes`` that finds the disk full from its ``call``-th use on."""
    calls = {'count': 0}
    written = heartseg.files.write_bytes

    def write(path, data):
        calls['count'] += 1
        if calls['count'] >= call:
            with open(path, 'wb') as handle:
                handle.write(bytes(data)[:100])  # part of it reached the disk
            raise OSError(errno.ENOSPC, 'No space left on device')
        written(path, data)

    return write


def test_training_that_fills_the_disk_stops_in_one_line_keeps_its_checkpoints_and_resumes(
    small_dataset, tmp_path, capsys, monkeypatch
):
    run_dir, cache = tmp_path / 'run', tmp_path / 'cache'
    assert (
        run_cli(
            train_main,
            ['--data', str(small_dataset), '--run-dir', str(tmp_path / 'warm'), '--cache-dir', str(cache), *FAST],
        )
        == 0
    )
    capsys.readouterr()
    monkeypatch.setattr(heartseg.files, 'write_bytes', failing_on(call=4))  # the second epoch's checkpoints
    assert (
        run_cli(train_main, ['--data', str(small_dataset), '--run-dir', str(run_dir), '--cache-dir', str(cache), *FAST])
        == EXIT_USER_ERROR
    )
    error = one_error(capsys)
    assert 'the disk is full (no space left on device)' in error and f'python main.py --resume {run_dir}' in error
    assert not [path.name for path in run_dir.iterdir() if '.tmp' in path.name], 'a half-written file was left'
    assert load_checkpoint(run_dir / 'last.pt')['epoch'] >= 1, 'the checkpoint written before stays readable'
    monkeypatch.undo()
    assert run_cli(train_main, ['--resume', str(run_dir)]) == 0
    assert load_checkpoint(run_dir / 'last.pt')['epoch'] == 4


def test_prediction_that_fills_the_disk_stops_in_one_line_and_the_same_command_goes_on(
    trained, small_dataset_template, tmp_path, capsys, monkeypatch
):
    folder, output = scan_folder(small_dataset_template, tmp_path / 'scans', CASES), tmp_path / 'out'
    saved = heartseg.files.nib.save
    calls = {'count': 0}

    def full_from_the_second_mask(image, path):
        calls['count'] += 1
        if calls['count'] >= 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        saved(image, path)

    monkeypatch.setattr(heartseg.files.nib, 'save', full_from_the_second_mask)
    assert run_cli(predict_main, command(trained, folder, output)) == EXIT_USER_ERROR
    assert 'the disk is full (no space left on device)' in one_error(capsys)
    assert nib.load(output / 'synthetic_000.nii.gz').shape == nib.load(folder / 'synthetic_000.nii.gz').shape
    assert not [path.name for path in output.iterdir() if '.tmp' in path.name]
    monkeypatch.undo()
    assert run_cli(predict_main, command(trained, folder, output)) == 0
    assert '1 of 3 cases already predicted' in capsys.readouterr().out
    assert all((output / f'{case}.nii.gz').is_file() for case in CASES)
