"""Prediction folders at scale: a killed run resumes where it stopped, and torchrun processes share the cases."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import prediction_command, scan_folder, torchrun_command

from heartseg.errors import run_cli
from predict import main as predict_main

REPO = Path(__file__).resolve().parents[2]
CASES = ['synthetic_000', 'synthetic_001', 'synthetic_002', 'synthetic_003', 'synthetic_004']
# predict.py, pausing after each case's record so that the test can kill it between cases.
PAUSING_PREDICT = """
import sys, time
import heartseg.inference.prediction_folder as folder
from heartseg.errors import run_cli
from predict import main
write = folder.PredictionFolder.write_record
def announced(self, record):
    write(self, record)
    print("RECORDED", record["case"], flush=True)
    time.sleep(30)
folder.PredictionFolder.write_record = announced
sys.exit(run_cli(main, sys.argv[1:]))
"""


def arguments(trained: Path, folder: Path, output: Path) -> list[str]:
    return prediction_command([trained], folder, output, '--device', 'cpu', '--no-tta')


def run_from_repo(command: list[str]) -> subprocess.CompletedProcess:
    """Runs ``command`` in the repository root with one OpenMP thread per process, and captures what it prints."""
    environment = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment, timeout=300)


def qc_cases(output: Path) -> list[str]:
    return [row['case'] for row in csv.DictReader((output / 'qc.csv').read_text().splitlines())]


def test_a_killed_run_started_again_skips_the_finished_cases(trained, small_dataset_template, tmp_path, capsys):
    folder, output = scan_folder(small_dataset_template, tmp_path / 'scans', CASES), tmp_path / 'out'
    command = [sys.executable, '-c', PAUSING_PREDICT, *arguments(trained, folder, output)]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        finished = [next(line for line in process.stdout if line.startswith('RECORDED')).split()[1]]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (output / 'qc.csv').exists(), 'the run was killed before it could summarise'
    stamps = {case: (output / f'{case}.nii.gz').stat().st_mtime_ns for case in finished}
    assert run_cli(predict_main, arguments(trained, folder, output)) == 0
    assert f'1 of {len(CASES)} cases already predicted' in capsys.readouterr().out
    assert {case: (output / f'{case}.nii.gz').stat().st_mtime_ns for case in finished} == stamps, (
        'finished cases are not redone'
    )
    assert qc_cases(output) == CASES, 'every case once, in input order'
    assert all((output / f'{case}.nii.gz').is_file() for case in CASES)
    assert run_cli(predict_main, [*arguments(trained, folder, output), '--overwrite']) == 0
    assert all((output / f'{case}.nii.gz').stat().st_mtime_ns > stamps[case] for case in finished), (
        '--overwrite redoes them'
    )


def test_a_case_that_failed_is_tried_again(trained, small_dataset_template, tmp_path):
    folder, output = scan_folder(small_dataset_template, tmp_path / 'scans', CASES), tmp_path / 'out'
    good = (folder / 'synthetic_000.nii.gz').read_bytes()
    (folder / 'synthetic_000.nii.gz').write_bytes(good[:200])
    assert run_cli(predict_main, arguments(trained, folder, output)) != 0
    (folder / 'synthetic_000.nii.gz').write_bytes(good)
    assert run_cli(predict_main, arguments(trained, folder, output)) == 0
    assert (output / 'synthetic_000.nii.gz').is_file() and qc_cases(output) == CASES


def test_two_torchrun_processes_write_what_one_process_writes(trained, small_dataset_template, tmp_path):
    folder = scan_folder(small_dataset_template, tmp_path / 'scans', CASES)
    single = run_from_repo([sys.executable, 'predict.py', *arguments(trained, folder, tmp_path / 'one')])
    assert single.returncode == 0, single.stderr[-2000:]
    shared = run_from_repo(torchrun_command('predict.py', *arguments(trained, folder, tmp_path / 'two')))
    assert shared.returncode == 0, shared.stderr[-2000:]
    assert 'Distributed: 2 processes share 5 cases' in shared.stdout
    for case in CASES:
        one, two = (np.asarray(nib.load(tmp_path / name / f'{case}.nii.gz').dataobj) for name in ('one', 'two'))
        assert np.array_equal(one, two), case
    one_rows, two_rows = (
        list(csv.DictReader((tmp_path / name / 'qc.csv').read_text().splitlines())) for name in ('one', 'two')
    )
    assert [row['case'] for row in two_rows] == CASES
    for first, second in zip(one_rows, two_rows):
        assert first.keys() == second.keys()
        for key in first:
            try:
                assert float(first[key] or 'nan') == pytest.approx(
                    float(second[key] or 'nan'), rel=1e-4, nan_ok=True
                ), key
            except ValueError:
                assert first[key] == second[key], key
    assert (tmp_path / 'two' / 'review.html').is_file()


def test_prefetching_the_next_case_changes_no_mask(trained, small_dataset_template, tmp_path):
    folder = scan_folder(small_dataset_template, tmp_path / 'scans', CASES)
    (folder / 'broken.nii.gz').write_bytes(b'not a nifti')  # a failed load still reaches the case it belongs to
    for name in ('plain', 'prefetched'):
        flags = ['--prefetch'] if name == 'prefetched' else ['--no-prefetch']
        assert run_cli(predict_main, [*arguments(trained, folder, tmp_path / name), *flags]) != 0
    for case in CASES:
        plain, prefetched = (
            np.asarray(nib.load(tmp_path / name / f'{case}.nii.gz').dataobj) for name in ('plain', 'prefetched')
        )
        assert np.array_equal(plain, prefetched), case
    assert qc_cases(tmp_path / 'prefetched') == ['broken', *CASES]
