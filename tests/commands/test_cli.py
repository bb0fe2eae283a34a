"""Every bad command-line value gets one line naming the flag,
the value and what is allowed; exit code 2; nothing written."""

from __future__ import annotations

import pytest

import analyze_data
import export
import main
import predict
from benchmarks import benchmark, dataset_subset, export_check
from heartseg.errors import EXIT_USER_ERROR, run_cli

BAD_VALUES = [
    (main, ['--epochs', '0'], '--epochs', '0 is not allowed: an integer of at least 1'),
    (main, ['--batch-size', '0'], '--batch-size', 'at least 1'),
    (main, ['--batch-size', 'two'], '--batch-size', "'two' is not an integer"),
    (main, ['--lr', 'nan'], '--lr', 'nan is not allowed: a finite number above 0'),
    (main, ['--lr=-1e-3'], '--lr', 'above 0'),
    (main, ['--time-limit', '-5'], '--time-limit', 'at least 0'),
    (main, ['--time-limit', 'inf'], '--time-limit', 'finite'),
    (main, ['--val-fraction', '1.5'], '--val-fraction', 'below 1'),
    (main, ['--folds', '1'], '--folds', 'at least 2'),
    (main, ['--fold', '-2'], '--fold', 'at least 0'),
    (main, ['--time-limit', '1e308'], '--time-limit', 'below 527040'),
    (main, ['--seed', '-1'], '--seed', 'from 0 to 4294967295'),
    (main, ['--seed', '99999999999999999999'], '--seed', 'from 0 to 4294967295'),
    (main, ['--split-seed', '-1'], '--split-seed', 'from 0 to 4294967295'),
    (main, ['--patch-size', '64', '0', '32'], '--patch-size', 'at least 1'),
    (main, ['--spacing', '0'], '--target-spacing', 'above 0'),
    (main, ['--levels', '0'], '--levels', 'at least 1'),
    (main, ['--base-channels', '0'], '--base-channels', 'at least 1'),
    (main, ['--num-workers', '-1'], '--num-workers', 'at least 0'),
    (main, ['--val-every', '-1'], '--val-every', 'at least 0'),
    (main, ['--image-every', '0'], '--image-every', 'at least 1'),
    (main, ['--max-cases', '0'], '--max-cases', 'at least 1'),
    (main, ['--steps-per-epoch', '0'], '--steps-per-epoch', 'at least 1'),
    (main, ['--loss', 'dice'], '--loss', 'invalid choice'),
    (main, ['--norm', 'layer'], '--norm', 'invalid choice'),
    (predict, ['--checkpoint', 'x.pt', '--input', 'x', '--output', 'OUT', '--overlap', '1'], '--overlap', 'below 1'),
    (
        predict,
        ['--checkpoint', 'x.pt', '--input', 'x', '--output', 'OUT', '--batch-size', '0'],
        '--batch-size',
        'at least 1',
    ),
    (predict, ['--input', 'x', '--output', 'OUT'], '--checkpoint', 'arguments are required'),
    (analyze_data, ['DATA', '--workers', '0'], '--workers', 'at least 1'),
    (export, ['--checkpoint', 'x.pt'], '--output', 'arguments are required'),
    (export_check, ['--checkpoint', 'x.pt', '--images', 'x', '--cases', '0'], '--cases', 'at least 1'),
    (benchmark, ['train', '--data', 'DATA', '--steps', '0'], '--steps', 'at least 1'),
    (benchmark, ['loader', '--data', 'DATA', '--workers', '2', '-1'], '--workers', 'at least 0'),
    (benchmark, ['loader', '--data', 'DATA', '--worker-threads', '-1'], '--worker-threads', 'at least 0'),
    (dataset_subset, ['--data', 'DATA', '--output', 'OUT', '--max-mib', '0'], '--max-mib', 'above 0'),
    (
        benchmark,
        ['ensemble', '--checkpoint', 'x', '--images', 'x', '--labels', 'x', '--repeats', '0'],
        '--repeats',
        'at least 1',
    ),
    (
        benchmark,
        ['ensemble', '--checkpoint', 'x', '--images', 'x', '--labels', 'x', '--timing-cases', '-1'],
        '--timing-cases',
        'at least 0',
    ),
]


@pytest.mark.parametrize('script,argv,flag,problem', BAD_VALUES, ids=[' '.join(case[1][-2:]) for case in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_flag_and_nothing_is_written(
    script, argv, flag, problem, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / 'run'
    if script is main:
        argv = [*argv, '--run-dir', str(run_dir)]
    assert run_cli(script.main, argv) == EXIT_USER_ERROR
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith('error: '), errors
    assert flag in errors[0] and problem in errors[0], errors[0]
    assert list(tmp_path.iterdir()) == [], 'nothing may be written'
