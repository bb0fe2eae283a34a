"""``loader``: the data loader alone, without the model.

Patches/s, user and system time at each worker count, then each transform's
share of one worker's time (``benchmarks.loader_profile``).
"""

from __future__ import annotations

import argparse

from benchmarks.bench_common import planned_command, training_setup
from benchmarks.loader_profile import median_throughput, transform_shares
from heartseg.cli import integer


def loader_benchmark(args: argparse.Namespace) -> dict:
    """The loader without the model at each worker count, then where one worker's time goes."""
    config, subjects = training_setup(args)
    threads = args.worker_threads or None
    return {
        'plan': {
            k: getattr(config, k) for k in ('target_spacing', 'patch_size', 'batch_size', 'augmentation', 'augment_on')
        },
        'patches_per_measurement': config.steps_per_epoch * config.batch_size,
        'threads_per_library_in_each_worker': threads or 'library defaults',
        'loader': [median_throughput(config, subjects, workers, threads, args.repeats) for workers in args.workers],
        'share_of_time': transform_shares(config, subjects, config.steps_per_epoch * config.batch_size),
    }


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``loader`` subcommand and its flags."""
    loader = planned_command(
        commands,
        'loader',
        'the loader alone: patches/s per worker, user and system time, time per transform',
        cases=6,
        example='--spacing 0.625 --patch-size 144 128 80 (the GPU plan on LA2018)',
    )
    loader.add_argument('--steps', type=integer(1), default=16, help='batches per measurement')
    loader.add_argument(
        '--workers',
        type=integer(0),
        nargs='+',
        default=[1, 2],
        help='worker counts to measure (0: the main process loads)',
    )
    loader.add_argument(
        '--worker-threads',
        type=integer(0),
        default=1,
        help="threads per library (torch, ITK) in each worker; 0: the libraries' defaults",
    )
