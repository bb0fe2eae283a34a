"""Shared fixtures: small synthetic datasets the tests generate themselves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
        '--levels',
        '2',
        '--base-channels',
        '8',
        '--patch-size',
        '32',
        '32',
        '16',
        '--lr',
        '0.01',
    ]
    assert run_cli(train_main, argv) == 0
    return run_dir / 'best.pt'
