"""Shared set-up: small synthetic datasets the tests generate themselves, the flags of tiny training runs,
and helpers that build predict.py inputs and read error lines."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from heartseg.data.synthetic import write_synthetic_dataset
from heartseg.errors import run_cli
from main import main as train_main

REPO = Path(__file__).resolve().parents[1]


SMALL_SHAPE = (40, 40, 20)
SMALL_SPACING = (1.5, 1.5, 3.0)
LA2018_DEFAULT = REPO.parent / 'shared' / 'data' / 'LA2018'

# main.py flags of the smallest network the tests train: two levels of four channels, on 16³ patches.
TINY_NET = ['--levels', '2', '--base-channels', '4', '--patch-size', '16', '16', '16']
# main.py flags of a small network that learns the synthetic atrium in seconds: two levels of eight channels.
SMALL_NET = ['--levels', '2', '--base-channels', '8', '--patch-size', '32', '32', '16']
# main.py flags of a run that trains one step: enough to write a run folder and its checkpoints.
ONE_STEP = ['--epochs', '1', '--steps-per-epoch', '1']


def fast_training(steps_per_epoch: int, seed: int, epochs: int) -> list[str]:
    """main.py flags of a seeded TINY_NET run, in batches of two at a learning rate that learns in a few steps."""
    return [
        *TINY_NET,
        '--steps-per-epoch',
        str(steps_per_epoch),
        '--batch-size',
        '2',
        '--seed',
        str(seed),
        '--lr',
        '0.01',
        '--epochs',
        str(epochs),
    ]


def error_lines(capsys) -> list[str]:
    """The ``error:`` lines written to stderr since capsys was last read."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]


def one_error(capsys) -> str:
    """The one ``error:`` line written to stderr since capsys was last read; fails if there is not exactly one."""
    errors = error_lines(capsys)
    assert len(errors) == 1, errors
    return errors[0]


def scan_folder(dataset: Path, target: Path, cases: list[str]) -> Path:
    """A folder of bare scans, as a user gives predict.py: copies of ``cases``' training images of ``dataset``."""
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (target / f'{case}.nii.gz').write_bytes((dataset / 'imagesTr' / f'{case}.nii.gz').read_bytes())
    return target


def torchrun_command(script: Path | str, *arguments: str, processes: int = 2) -> list[str]:
    """The command that runs ``script`` with ``arguments`` in ``processes`` torchrun processes on this machine."""
    return [
        sys.executable,
        '-m',
        'torch.distributed.run',
        f'--nproc_per_node={processes}',
        '--standalone',
        str(script),
        *arguments,
    ]


def prediction_command(checkpoints: list[Path], inputs: Path, output: Path, *extra: str) -> list[str]:
    """predict.py arguments that predict ``inputs`` (a scan, a folder, a dataset.json) with ``checkpoints``."""
    return ['--checkpoint', *map(str, checkpoints), '--input', str(inputs), '--output', str(output), *extra]


def scoring_command(checkpoint: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    """predict.py arguments that predict ``dataset``'s cases and score them against its labels."""
    return prediction_command(
        [checkpoint], dataset / 'dataset.json', output, '--labels', str(dataset / 'labelsTr'), *extra
    )


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Every test draws the same numbers in every run, alone or in the suite, so none can flake."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope='session')
def small_dataset_template(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp('template') / 'Small', num_cases=6, shape=SMALL_SHAPE, spacing=SMALL_SPACING
    )


@pytest.fixture
def small_dataset(small_dataset_template: Path, tmp_path: Path) -> Path:
    """A writable copy that a test may break."""
    return Path(shutil.copytree(small_dataset_template, tmp_path / 'Small'))


@pytest.fixture(scope='session')
def la2018() -> Path:
    """The real LA2018 cases, read by path (never copied into the repo)."""
    root = Path(os.environ.get('LA2018_DIR', LA2018_DEFAULT))
    if not (root / 'dataset.json').is_file():
        pytest.skip(f'real LA2018 data not found at {root}; set LA2018_DIR to run real-data tests')
    return root


@pytest.fixture(scope='session')
def trained(small_dataset_template, tmp_path_factory) -> Path:
    """A tiny model trained for a few seconds on the small dataset; returns its best.pt."""
    run_dir = tmp_path_factory.mktemp('trained') / 'run'
    argv = [
        '--data',
        str(small_dataset_template),
        '--run-dir',
        str(run_dir),
        '--cache-dir',
        str(run_dir.parent / 'cache'),
        '--epochs',
        '5',
        '--steps-per-epoch',
        '30',
        *SMALL_NET,
        '--lr',
        '0.01',
    ]
    assert run_cli(train_main, argv) == 0
    return run_dir / 'best.pt'


def flatten_sform(path: Path) -> None:
    """An sform whose third voxel axis has no size, beside a valid qform: readers take the sform."""
    image = nib.load(path)
    flattened = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
    flattened.set_sform(image.affine * np.array([1.0, 1.0, 0.0, 1.0]), code=2)
    nib.save(flattened, path)
