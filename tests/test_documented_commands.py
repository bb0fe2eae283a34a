"""Every command that README.md and docs/ give runs as written (tests/documented_commands.py lists how).

Each runs in a shell from its own project folder, laid out as CI lays out the clone: the scripts a user
runs, with ``../shared`` beside them (a link to the real ``shared/`` beside this repository). The folder
first gets what the command names: a tiny model trained here for a few steps, a folder of scans, a small
synthetic dataset. A command that reads ``../shared/data`` is skipped, with the reason, where that is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from documented_commands import COMMANDS, REPO, SHARED, Runs

from export import main as export_main
from heartseg.data.synthetic import write_synthetic_dataset
from heartseg.errors import run_cli
from main import main as train_main

SHARED_DATA = REPO.parent / 'shared' / 'data'
# What a project folder links to rather than copies: the scripts a user runs and the benchmarks package.
PROJECT_FILES = ('main.py', 'predict.py', 'analyze_data.py', 'export.py', 'mymodel.py', 'training.py', 'benchmarks')
COMMAND_TIMEOUT_S = 300
TINY_MODEL = ['--epochs', '1', '--steps-per-epoch', '2', '--levels', '2', '--base-channels', '4']
SYNTHETIC_CASES = 6


class Store:
    """What the documented commands name, each made once per test session and copied into a project folder."""

    def __init__(self, root: Path):
        self.root = root
        self.made: dict[str, Path] = {}
        self.makers: dict[str, Callable[[Path], None]] = {
            'D': self.synthetic,
            'data/Task02_Heart': self.synthetic,
            'data/SyntheticHeart': lambda target: write_synthetic_dataset(target),
            'nnUNet_raw/Dataset002_Heart': lambda target: write_synthetic_dataset(
                target, num_cases=SYNTHETIC_CASES, shape=(32, 32, 16), layout='nnunet_v2', test_cases=2
            ),
            'nnUNet_preprocessed/Dataset002_Heart': self.nnunet_splits,
            'scans': self.scans,
            'SCANS': self.acdc_scans,
            'runs/la': lambda target: self.train(
                target, SHARED_DATA / 'LA2018', '--max-cases', '5', '--target-spacing', '4'
            ),
            'runs/acdc': lambda target: self.train(
                target, SHARED_DATA / 'ACDC', '--max-cases', '6', '--target-spacing', '3', '3', '10'
            ),
            'runs/cv': lambda target: self.train(
                target, self.get('D'), '--folds', '2', '--patch-size', '16', '16', '16'
            ),
            'runs/20260101-000000': lambda target: self.train(target, self.get('data/SyntheticHeart')),
            'la.onnx': self.onnx,
        }

    def get(self, name: str) -> Path:
        if name not in self.made:
            target = self.root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.makers[name](target)
            self.made[name] = target
        return self.made[name]

    def synthetic(self, target: Path) -> None:
        write_synthetic_dataset(target, num_cases=SYNTHETIC_CASES, shape=(32, 32, 16))

    def scans(self, target: Path) -> None:
        target.mkdir()
        for image in sorted((self.get('D') / 'imagesTr').glob('*.nii.gz'))[:2]:
            shutil.copy(image, target / image.name)

    def acdc_scans(self, target: Path) -> None:
        """Two real ACDC scans, linked (never copied) from ../shared."""
        target.mkdir()
        for image in sorted((SHARED_DATA / 'ACDC' / 'imagesTr').glob('*.nii.gz'))[:2]:
            (target / image.name).symlink_to(image)

    def nnunet_splits(self, target: Path) -> None:
        """nnU-Net's splits_final.json for the synthetic nnUNet_raw dataset: five folds."""
        cases = [f'synthetic_{i:03d}' for i in range(SYNTHETIC_CASES)]
        folds = [cases[i::5] for i in range(5)]
        splits = [{'train': [c for c in cases if c not in val], 'val': val} for val in folds]
        target.mkdir()
        (target / 'splits_final.json').write_text(json.dumps(splits))

    def train(self, run_dir: Path, data: Path, *flags: str) -> None:
        argv = ['--data', str(data), '--run-dir', str(run_dir), '--cache-dir', str(self.root / 'cache'), *TINY_MODEL]
        assert run_cli(train_main, [*argv, *flags]) == 0

    def onnx(self, target: Path) -> None:
        pytest.importorskip('onnx', reason='ONNX export needs requirements-export.txt')
        assert (
            run_cli(export_main, ['--checkpoint', str(self.get('runs/la') / 'best.pt'), '--output', str(target)]) == 0
        )


@pytest.fixture(scope='session')
def store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp('documented'))


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder with ``../shared`` beside it, as CI lays out the clone."""
    folder = tmp_path / 'project'
    folder.mkdir()
    for name in PROJECT_FILES:
        (folder / name).symlink_to(REPO / name)
    if SHARED_DATA.parent.is_dir():
        (tmp_path / 'shared').symlink_to(SHARED_DATA.parent, target_is_directory=True)
    return folder


def fill(project: Path, spec: Runs, store: Store) -> None:
    for name in spec.needs:
        if name == SHARED:
            if not (SHARED_DATA / 'LA2018' / 'dataset.json').is_file():
                pytest.skip(f'it reads ../shared/data, which is not at {SHARED_DATA}')
            continue
        made, target = store.get(name), project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if made.is_dir():
            shutil.copytree(made, target, symlinks=True)
        else:
            shutil.copy(made, target)


def shell(command: str, cwd: Path, serves: bool, expect: str) -> tuple[int, str]:
    """Run ``command`` in bash from ``cwd`` with this Python's scripts first on PATH; its exit code and output."""
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    env['PYTHONUNBUFFERED'] = '1'
    process = subprocess.Popen(
        ['bash', '-ec', command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not serves:
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
        return process.returncode, output
    lines, deadline = [], time.monotonic() + COMMAND_TIMEOUT_S
    for line in process.stdout:  # a server: read until it says where it serves, then stop it
        lines.append(line)
        if expect in line or time.monotonic() > deadline:
            break
    process.terminate()
    process.wait(timeout=30)
    return 0, ''.join(lines)


RUNS = {command: spec for command, spec in COMMANDS.items() if isinstance(spec, Runs)}


@pytest.mark.parametrize('documented', list(RUNS), ids=lambda command: command[:60])
def test_documented_command_runs_as_written(documented, store, project):
    spec = RUNS[documented]
    fill(project, spec, store)
    command = spec.shell_text(documented)
    code, output = shell(command, project, spec.serves, spec.expect)
    tail = output[-3000:]
    assert code == 0, f'{command!r} exited with {code}:\n{tail}'
    assert output.count(spec.expect) >= spec.expect_times, f'{command!r} did not print {spec.expect!r}:\n{tail}'
    assert 'Traceback' not in output, f'{command!r}:\n{tail}'
