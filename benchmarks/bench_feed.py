"""``feed``: whether the loader keeps the model busy.

For each augmentation place and worker count it measures model-only steps, the
loader alone, device augmentation (with ``--augment-on device``) and end-to-end
training, in patches/s, with the GPU's utilisation end to end.
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import replace
from functools import partial

from benchmarks.bench_common import PLAN_KEYS, device_name, our_pipeline, planned_command, training_setup
from benchmarks.timing import UtilisationSampler, median_seconds, synchronised
from heartseg.cli import integer
from heartseg.devices import select_device
from heartseg.training.augmentation import PLACES


def feed_benchmark(args: argparse.Namespace) -> dict:
    """Whether the loader keeps the model busy,
    for each augmentation place and worker count: the GPU check's question."""
    config, subjects = training_setup(args)
    device = select_device(config.device)
    patches = config.steps_per_epoch * config.batch_size
    rows = []
    for place in args.augment_on:
        for workers in args.workers:
            pipeline = our_pipeline(replace(config, augment_on=place, num_workers=workers), subjects)
            pipeline['one_step']()  # warm-up: allocations, cuDNN kernel choice
            seconds = {
                part: median_seconds(partial(synchronised, pipeline[part], device), args.repeats)
                for part in ('model', 'data', 'device_augmentation')
                if part in pipeline
            }
            with UtilisationSampler(device) as utilisation:
                seconds['end_to_end'] = median_seconds(
                    partial(synchronised, pipeline['end_to_end'], device), args.repeats
                )
            row = {'augment_on': place, 'workers': workers}
            row.update({f'{part}_patches_per_s': round(patches / value, 2) for part, value in seconds.items()})
            row['end_to_end_over_model'] = round(seconds['model'] / seconds['end_to_end'], 3)
            row['gpu_utilisation_percent'] = round(utilisation.mean, 1)
            rows.append(row)
            del pipeline
            gc.collect()  # stops this loader's workers before the next count starts its own
    return {
        'device': device_name(device),
        'plan': {k: getattr(config, k) for k in PLAN_KEYS if k not in ('num_workers', 'augment_on')},
        'patches_per_measurement': patches,
        'rows': rows,
    }


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``feed`` subcommand and its flags."""
    feed = planned_command(
        commands,
        'feed',
        'whether the loader keeps the model busy: model only, loader only, end to end and GPU '
        'utilisation, for each augmentation place and worker count',
        cases=16,
        example='--spacing 0.625',
    )
    feed.add_argument('--steps', type=integer(1), default=16, help='optimiser steps per measurement')
    feed.add_argument('--workers', type=integer(0), nargs='+', default=[4, 8], help='loader worker counts to measure')
    feed.add_argument(
        '--augment-on',
        choices=PLACES,
        nargs='+',
        default=list(PLACES),
        help='where augmentation runs (main.py --augment-on)',
    )
