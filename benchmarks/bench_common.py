"""What several benchmarks share: the planned training run and our pipeline's parts, the device's name, MONAI.

``train``, ``feed`` and ``loader`` plan their run as main.py would, from
``--data`` and main.py's flags after ``--`` (``planned_command``,
``training_setup``); ``train`` and ``feed`` time the parts of our training
pipeline (``our_pipeline``).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from heartseg.cli import DefaultsHelpFormatter, integer, user_path
from heartseg.commands.train import plan
from heartseg.commands.train_flags import build_parser as build_training_parser
from heartseg.commands.train_flags import given_flags
from heartseg.data.dataset import read_dataset
from heartseg.inference.export import optional_module
from heartseg.planning.config import RunConfig
from heartseg.preprocessing.cache import preprocess_cases
from heartseg.preprocessing.preprocessing import Preprocessing
from training import create_trainer

PLAN_KEYS = (  # the plan settings that ``train`` and ``feed`` report
    'target_spacing',
    'patch_size',
    'levels',
    'base_channels',
    'norm',
    'deep_supervision',
    'batch_size',
    'num_workers',
    'augment_on',
    'channels_last',
    'compile',
    'amp',
)


def training_setup(args: argparse.Namespace) -> tuple[RunConfig, list]:
    """The run main.py would plan for ``--data`` and the extra flags, and its preprocessed cases."""
    spec = read_dataset(args.data)
    flags = build_training_parser().parse_args(
        ['--data', str(args.data), '--run-dir', tempfile.mkdtemp(), *args.main_flags]
    )
    config, _ = plan(given_flags(flags))
    config.steps_per_epoch = args.steps
    subjects = preprocess_cases(
        spec.cases[: args.cases], spec, Preprocessing(config.target_spacing), Path(config.cache_dir) / spec.name
    )
    return config, subjects


def our_pipeline(config: RunConfig, subjects: list) -> dict[str, Callable[[], object]]:
    """Our trainer's parts to time: model-only steps, the loader alone, one epoch end to end, one step,
    and with augmentation on the device, that augmentation alone."""
    trainer = create_trainer(config, subjects, [])
    images, targets, augmentation = next(iter(trainer.loader))
    parts = {
        'model': lambda: [trainer.train_step(images, targets, 0, step) for step in range(config.steps_per_epoch)],
        'data': lambda: list(trainer.loader),
        'end_to_end': lambda: trainer.train_one_epoch(0),
        'one_step': lambda: trainer.train_step(images, targets, 0, 0),
    }
    if trainer.recipe.augmentation is not None and trainer.recipe.augmentation.on_device:
        parts['device_augmentation'] = lambda: [
            trainer.augment_on_device(images, targets, augmentation) for _ in range(config.steps_per_epoch)
        ]
    return parts


def require_monai() -> None:
    """A one-line error, not a traceback, where MONAI (a development-only dependency) is missing."""
    optional_module('monai', 'The comparison with MONAI', 'pip install -r requirements-bench.txt')


def device_name(device: torch.device) -> str:
    """The GPU's name, or the device type and torch's thread count, for a result's ``device``."""
    return (
        torch.cuda.get_device_name(device)
        if device.type == 'cuda'
        else f'{device.type}, {torch.get_num_threads()} threads'
    )


def planned_command(
    commands: argparse._SubParsersAction, name: str, summary: str, cases: int, example: str
) -> argparse.ArgumentParser:
    """A subcommand that plans its run as main.py would, from ``--data`` and main.py's flags after ``--``."""
    command = commands.add_parser(
        name,
        help=summary,
        formatter_class=DefaultsHelpFormatter,
        epilog=f"Flags after -- go to main.py's planner, e.g. -- {example}",
    )
    command.add_argument(
        '--data', type=user_path, required=True, help='MSD-layout dataset; its first cases feed the patches'
    )
    command.add_argument('--cases', type=integer(1), default=cases, help='how many of the first cases to use')
    command.add_argument('--repeats', type=integer(1), default=3, help='runs per measurement; the median is reported')
    command.add_argument('main_flags', nargs='*', help='main.py flags (after --)')
    return command
