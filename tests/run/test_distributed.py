"""DDP under torchrun with 2 CPU processes (gloo) on tiny synthetic data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import TINY_NET, torchrun_command
from ddp_worker import blob_subjects

from heartseg.planning.config import RunConfig
from training import create_trainer

TESTS = Path(__file__).resolve().parents[1]  # where the helper scripts are
# Gradients of one step on the same global batch, relative to the largest gradient:
# only the order of floating-point sums differs.
GRADIENT_TOLERANCE = 1e-5


def tiny_config(run_dir: Path, **overrides) -> RunConfig:
    settings = dict(
        data='unused',
        run_dir=str(run_dir),
        cache_dir='unused',
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        levels=2,
        base_channels=4,
        batch_size=2,
        steps_per_epoch=2,
        epochs=2,
        lr=1e-3,
        device='cpu',
        labels={'0': 'background', '1': 'atrium'},
        modalities={'0': 'MRI'},
        val_every=1,
        output='sigmoid',
        channels_last=False,
        num_workers=0,
    )
    return RunConfig(**{**settings, **overrides})


def run_group(command: list[str], timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout, kill the launcher and all its workers."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
        **options,
    )
    try:
        output, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, output, errors)


def torchrun(config: RunConfig, output: Path, processes: int = 2) -> subprocess.CompletedProcess:
    config_path = output / 'config.json'
    config_path.write_text(json.dumps(asdict(config)))
    return run_group(torchrun_command(TESTS / 'ddp_worker.py', str(config_path), str(output), processes=processes))


def assert_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def test_ranks_end_with_identical_weights(tmp_path):
    result = torchrun(tiny_config(tmp_path / 'run', norm='batch'), tmp_path)
    assert_ran(result)
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt')['weights'] for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f'{name} differs between ranks'
    assert (tmp_path / 'run' / 'last.pt').is_file()
    assert not (tmp_path / 'run' / 'rank1').exists()


def test_two_ranks_step_like_one_process_with_the_global_batch(tmp_path):
    # In fp32: bf16 autocast rounds differently for a batch of 1 and of 2, which would hide a wrong average.
    one_step = dict(epochs=1, steps_per_epoch=1, batch_size=2, amp=False)
    assert_ran(torchrun(tiny_config(tmp_path / 'ddp', **one_step), tmp_path))
    ddp_gradients = torch.load(tmp_path / 'rank0.pt')['gradients']

    subjects = blob_subjects()
    single = create_trainer(tiny_config(tmp_path / 'single', **one_step), subjects, subjects[:3])
    single.fit()
    gradients = {name: parameter.grad for name, parameter in single.model.named_parameters()}
    largest = max(float(g.abs().max()) for g in gradients.values())
    assert largest > 0, 'the step computed no gradient'
    assert max_difference(ddp_gradients, gradients) < GRADIENT_TOLERANCE * largest


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """Rank → pid of the launcher's worker processes, read from /proc."""
    ranks = {}
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / 'status').read_text()
            environment = (entry / 'environ').read_bytes().split(b'\0')
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith('PPid:')))
        rank = next((item.split(b'=')[1] for item in environment if item.startswith(b'RANK=')), None)
        if parent == launcher.pid and rank is not None:
            ranks[int(rank)] = int(entry.name)
    return ranks


@pytest.mark.skipif(not Path('/proc/self/environ').exists(), reason='needs /proc to find the worker processes')
def test_a_crashed_rank_stops_the_job_with_a_clear_error(tmp_path):
    config = tiny_config(tmp_path / 'run', epochs=1000, steps_per_epoch=20)
    (tmp_path / 'config.json').write_text(json.dumps(asdict(config)))
    command = torchrun_command(TESTS / 'ddp_worker.py', str(tmp_path / 'config.json'), str(tmp_path))
    launcher = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / 'run' / 'last.pt').is_file():  # training is under way
            assert time.monotonic() < deadline and launcher.poll() is None, 'training did not start'
            time.sleep(0.5)
        os.kill(worker_pids(launcher)[1], signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing may be left to kill
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    assert 'rank      : 1' in output or 'local_rank: 1' in output, output[-3000:]
    assert 'SIGKILL' in output, output[-3000:]


def test_torchrun_main_trains_and_resumes(small_dataset, tmp_path):
    run_dir = tmp_path / 'run'
    tiny = [*TINY_NET, '--steps-per-epoch', '2']

    def launch(*arguments: str) -> subprocess.CompletedProcess:
        command = torchrun_command(TESTS.parent / 'main.py', *arguments)
        return run_group(command, cwd=tmp_path)

    assert_ran(launch('--data', str(small_dataset), '--run-dir', str(run_dir), '--epochs', '1', *tiny))
    resumed = launch('--resume', str(run_dir), '--epochs', '2')
    assert_ran(resumed)
    assert 'Resuming' in resumed.stdout and resumed.stdout.count('Resuming') == 1, 'only rank 0 prints'
    rows = (run_dir / 'metrics.csv').read_text().splitlines()
    assert [row.split(',')[0] for row in rows[1:]] == ['1', '2']
    assert len(list(run_dir.glob('events.out.tfevents.*'))) == 2  # one per launch, both from rank 0


def test_batch_that_ranks_cannot_share_is_refused(small_dataset, tmp_path):
    command = torchrun_command(
        TESTS.parent / 'main.py', '--data', str(small_dataset), '--batch-size', '3', '--run-dir', str(tmp_path / 'run')
    )
    result = run_group(command, cwd=tmp_path)
    assert result.returncode != 0
    assert 'error: --batch-size: 3 patches per step cannot be shared evenly by 2 processes' in result.stderr


def test_torchrun_cross_validation_trains_every_fold_and_scores_every_case_once(small_dataset, tmp_path):
    run_dir = tmp_path / 'cv'
    command = torchrun_command(
        TESTS.parent / 'main.py',
        '--data',
        str(small_dataset),
        '--run-dir',
        str(run_dir),
        '--folds',
        '2',
        '--epochs',
        '1',
        *TINY_NET,
        '--steps-per-epoch',
        '2',
    )
    result = run_group(command, cwd=tmp_path)
    assert_ran(result)
    assert result.stdout.count('Cross-validation over 6 cases in 2 folds') == 1, 'only rank 0 scores and reports'
    cases = [line.split(',')[1] for line in (run_dir / 'crossval.csv').read_text().splitlines()[1:]]
    assert sorted(cases) == sorted(f'synthetic_{i:03d}' for i in range(6))
