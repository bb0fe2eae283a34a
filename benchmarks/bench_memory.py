"""``memory``: the peak RSS of predicting one large synthetic volume, in a fresh child process."""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from heartseg.cli import DefaultsHelpFormatter, integer, number, user_path
from heartseg.files import save_nifti


def memory_benchmark(args: argparse.Namespace) -> dict:
    """Peak RSS of predicting one large volume, measured in a fresh child process."""
    folder = Path(tempfile.mkdtemp())
    scan = folder / 'large.nii.gz'
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=args.shape).astype(np.float32)
    save_nifti(volume, np.diag([*args.spacing, 1.0]), scan)
    command = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / 'predict.py'),
        '--checkpoint',
        str(args.checkpoint),
        '--input',
        str(scan),
        '--output',
        str(folder / 'out'),
        '--device',
        args.device,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        'shape': list(args.shape),
        'spacing_mm': list(args.spacing),
        'peak_rss_gib': round(peak_kib / 2**20, 2),
        'seconds_including_start_up': round(seconds, 1),
    }


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``memory`` subcommand and its flags."""
    memory = commands.add_parser(
        'memory', help='peak RSS of predicting one large synthetic volume', formatter_class=DefaultsHelpFormatter
    )
    memory.add_argument('--checkpoint', type=user_path, required=True)
    memory.add_argument('--shape', type=integer(1), nargs=3, default=(512, 512, 300))
    memory.add_argument('--spacing', type=number(0, inclusive=False), nargs=3, default=(0.625, 0.625, 0.625))
    memory.add_argument('--device', default='cpu')
