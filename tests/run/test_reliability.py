"""Runs killed at any moment, and loader workers that die, never cost the user their work."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_training
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from heartseg.checkpoint import load_checkpoint
from heartseg.errors import UserError, run_cli
from heartseg.training.loader_failures import reporting_worker_failures
from main import main

TESTS = Path(__file__).resolve().parents[1]  # where the helper scripts are
EPOCHS = 8
FAST = fast_training(steps_per_epoch=10, seed=5, epochs=EPOCHS)
# Kills at the renames that put checkpoints, metrics and config in place (the file is
# fully written but not yet, or just, renamed), then at random moments.
MARKER_KILLS = [
    f'KILLPOINT {when} {name}'
    for name in ('last.pt', 'best.pt', 'config.json', 'metrics.csv')
    for when in ('before', 'after')
]
RANDOM_KILLS = 8


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / 'metrics.csv', newline='') as handle:
        return list(csv.DictReader(handle))


def launch(run_dir: Path, data: Path) -> subprocess.Popen:
    arguments = (
        ['--resume', str(run_dir)]
        if (run_dir / 'last.pt').exists()
        else ['--data', str(data), '--run-dir', str(run_dir), *FAST]
    )
    return subprocess.Popen(
        [sys.executable, str(TESTS / 'kill_driver.py'), *arguments],
        cwd=run_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def kill_at_marker(process: subprocess.Popen, marker: str) -> bool:
    for line in process.stdout:
        if line.strip() == marker:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
    process.wait()
    return False


def kill_after(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def check_run_folder(run_dir: Path, last_epoch: int) -> int:
    """The run folder is consistent after a kill; returns the checkpointed epoch."""
    epoch = 0
    if (run_dir / 'last.pt').exists():
        epoch = load_checkpoint(run_dir / 'last.pt')['epoch']  # loads: never half-written
    assert epoch >= last_epoch, 'a kill lost a completed epoch'
    if (run_dir / 'metrics.csv').exists():
        logged = [int(row['epoch']) for row in read_rows(run_dir) if row['epoch'].isdigit()]
        # Logs are written before the checkpoint, so they may run one epoch ahead until the resume.
        assert logged == list(range(1, len(logged) + 1)) and len(logged) <= epoch + 1, logged
    return epoch


def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_result(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ['--data', str(small_dataset), '--run-dir', str(tmp_path / 'straight'), *FAST]) == 0
    run_dir = tmp_path / 'killed'
    delays = np.random.default_rng(0).uniform(0.5, 5.0, RANDOM_KILLS)
    kills, epoch = 0, 0
    for plan in [*MARKER_KILLS, *delays]:
        process = launch(run_dir, small_dataset)
        kills += kill_at_marker(process, plan) if isinstance(plan, str) else kill_after(process, float(plan))
        epoch = check_run_folder(run_dir, epoch)
    print(f'{kills} of {len(MARKER_KILLS) + RANDOM_KILLS} planned kills landed before the run ended')
    assert kills >= len(MARKER_KILLS), f'only {kills} kills landed'
    for _ in range(5):  # then let it finish
        if (run_dir / 'last.pt').exists() and load_checkpoint(run_dir / 'last.pt')['epoch'] == EPOCHS:
            break
        assert launch(run_dir, small_dataset).wait(timeout=300) == 0

    straight, killed = (load_checkpoint(d / 'last.pt') for d in (tmp_path / 'straight', run_dir))
    assert killed['epoch'] == EPOCHS
    for name, tensor in straight['model'].items():
        assert torch.equal(tensor, killed['model'][name]), f'{name} differs from the uninterrupted run'
    columns = ('epoch', 'train_loss', 'val_loss', 'val_dice', 'lr')
    assert [[r[c] for c in columns] for r in read_rows(run_dir)] == [
        [r[c] for c in columns] for r in read_rows(tmp_path / 'straight')
    ]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [event.step for event in events.Scalars('loss/train')] == list(range(1, EPOCHS + 1))


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path('/proc').iterdir():
        try:
            status = (entry / 'status').read_text() if entry.name.isdigit() else ''
        except OSError:
            continue
        if any(line.split() == ['PPid:', str(pid)] for line in status.splitlines()):
            children.append(int(entry.name))
    return children


@pytest.fixture
def start_training(tmp_path):
    """Starts ``main.py`` with the given arguments; a run the test leaves behind is killed, not left on the cores."""
    processes = []

    def start(arguments: list[str]) -> subprocess.Popen:
        command = [sys.executable, str(TESTS.parent / 'main.py'), *arguments]
        # A shell without job control starts background jobs (a CI runner's, nohup's) with SIGINT ignored; a child
        # inheriting that never gets Python's KeyboardInterrupt handler, so Ctrl-C is restored to what a terminal gives.
        processes.append(
            subprocess.Popen(
                command,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        )
        return processes[-1]

    yield start
    for process in processes:
        process.kill()
        process.communicate()


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='needs /proc to find the loader worker')
@pytest.mark.parametrize('death', [signal.SIGKILL, signal.SIGBUS], ids=['killed', 'out-of-shared-memory'])
def test_a_dead_loader_worker_stops_training_with_a_clear_error(small_dataset, tmp_path, death, start_training):
    run_dir = tmp_path / 'run'
    process = start_training(
        ['--data', str(small_dataset), '--run-dir', str(run_dir), '--num-workers', '1', *FAST[:-1], '1000']
    )
    deadline = time.monotonic() + 120
    while not (run_dir / 'last.pt').exists():  # training, with its worker, is under way
        assert time.monotonic() < deadline and process.poll() is None, 'training did not start'
        time.sleep(0.2)
    workers = child_pids(process.pid)
    assert workers, 'no loader worker found'
    for worker in workers:
        os.kill(worker, death)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 2, errors[-2000:]
    last_line = errors.strip().splitlines()[-1]
    assert last_line.startswith('error: data loader: DataLoader worker'), last_line
    assert 'resume with --resume' in last_line and 'Traceback' not in errors
    assert load_checkpoint(run_dir / 'last.pt')['epoch'] >= 1


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(small_dataset, tmp_path, start_training):
    run_dir = tmp_path / 'run'
    process = start_training(['--data', str(small_dataset), '--run-dir', str(run_dir), *FAST[:-1], '1000'])
    deadline = time.monotonic() + 120
    while not (run_dir / 'last.pt').exists():
        assert time.monotonic() < deadline and process.poll() is None, 'training did not start'
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 130, errors[-2000:]
    assert f'resume with: python main.py --resume {run_dir}' in errors and 'Traceback' not in errors
    saved = load_checkpoint(run_dir / 'last.pt')['epoch']
    assert [int(row['epoch']) for row in read_rows(run_dir)][-1] in (saved, saved + 1)


@pytest.fixture
def restores_sigchld():
    handler = signal.getsignal(signal.SIGCHLD)
    yield
    signal.signal(signal.SIGCHLD, handler)


class BrokenConnectionDataset(torch.utils.data.Dataset):
    """Fails its fetch as a dead worker's connection does."""

    def __init__(self, error: BaseException):
        self.error = error

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise self.error


BROKEN_WORKER_CONNECTIONS = [
    ConnectionResetError(104, 'Connection reset by peer'),
    ConnectionRefusedError(111, 'Connection refused'),
    EOFError(),
    OSError('got end of file during message'),
]


@pytest.mark.parametrize('broken', BROKEN_WORKER_CONNECTIONS, ids=lambda error: type(error).__name__)
def test_a_broken_worker_connection_is_reported_as_a_dead_worker_once(broken, restores_sigchld):
    # When a worker dies mid-batch, reading from it can fail before PyTorch's own report,
    # which must then not interrupt this one.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    with pytest.raises(UserError, match='DataLoader worker connection broke .*the worker died.*resume with --resume'):
        with reporting_worker_failures():
            next(iter(torch.utils.data.DataLoader(BrokenConnectionDataset(broken))))
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


@pytest.mark.parametrize(
    'other',
    [OSError(28, 'No space left on device'), BrokenPipeError(32, 'Broken pipe')],
    ids=['disk full', 'stdout closed'],
)
def test_other_os_errors_pass_through_the_worker_report(other, restores_sigchld):
    handler = signal.getsignal(signal.SIGCHLD)
    with pytest.raises(type(other)):
        with reporting_worker_failures():
            raise other
    assert signal.getsignal(signal.SIGCHLD) == handler


@pytest.mark.parametrize(
    'failure', [UserError('data loader', 'worker died'), KeyboardInterrupt()], ids=['error', 'ctrl-c']
)
def test_a_bar_interrupted_mid_clean_up_does_not_push_the_message_off_the_line_start(failure, capsys):
    # A signal can land after a closing bar blanked its line but before it returned to column 0.
    def interrupted_mid_clean_up(argv):
        sys.stderr.write('\r' + ' ' * 60)
        raise failure

    run_cli(interrupted_mid_clean_up, [])
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line in ('error: data loader: worker died', 'interrupted'), repr(last_line)
