"""``main.py``'s flags: each with its default None and a ``dest`` named after the setting it overrides
(a :class:`~heartseg.planning.config.RunConfig` field or a plan choice), so that a flag left out is never a value.

``docs/generate_flags.py`` reads :func:`build_parser` for the flag reference.
"""

from __future__ import annotations

import argparse
from typing import Any

from heartseg.cli import Parser, integer, number, user_path
from heartseg.data.download import TASK02_FOLDER, TASK02_URL
from heartseg.outputs import KINDS
from heartseg.planning.config import LOSS_ALIASES, LOSSES, RunConfig
from heartseg.planning.defaults import (
    DEFAULT_CACHE,
    DEFAULT_LENGTH_VALIDATIONS,
    DEFAULT_TRAINING_STEPS,
    DEVICE_DEFAULTS,
    POOLINGS,
    SYNTHETIC_SCHEDULE,
)
from heartseg.training.augmentation import PLACES, STRENGTHS
from heartseg.training.schedule import VALIDATION_SHARE
from mymodel import NORMS

MAX_SEED = 2**32 - 1  # what every library's generator takes


MAX_TIME_LIMIT_MINUTES = 366 * 24 * 60  # a year; larger budgets overflow the schedule's arithmetic


def build_parser() -> argparse.ArgumentParser:
    """The flags, each with its default None and its ``dest`` named after where its value goes.

    That is a RunConfig setting or a plan choice (``heartseg.planning``), or for ``--data``,
    ``--download``, ``--download-url``, ``--resume`` and ``--score-folds`` the dataset or the mode.
    """
    parser = Parser(
        description='Train a 3D U-Net on Task02_Heart or any MSD or nnU-Net v2 dataset.',
        epilog='Flags left out take defaults planned from the dataset and device; the plan is printed at start.',
    )
    data = parser.add_argument_group('data')
    data.add_argument(
        '--data',
        dest='data',
        type=user_path,
        help='dataset folder: MSD (dataset.json, imagesTr/, labelsTr/) or nnU-Net v2 raw '
        f'(Dataset002_Heart/). Default: ./data/{TASK02_FOLDER} if present, else the built-in '
        'synthetic dataset',
    )
    data.add_argument(
        '--download',
        dest='download',
        action='store_true',
        default=None,
        help='download Task02_Heart into ./data/ first, then train on it',
    )
    data.add_argument(
        '--download-url',
        dest='download_url',
        help='with --download: the mirror to download Task02_Heart from, http(s):// or file:// '
        f'(default: {TASK02_URL})',
    )
    data.add_argument(
        '--cache-dir',
        dest='cache_dir',
        type=user_path,
        help=f'where preprocessed volumes are cached (default: {DEFAULT_CACHE})',
    )
    data.add_argument(
        '--target-spacing',
        '--spacing',
        dest='target_spacing',
        type=number(0, inclusive=False),
        nargs='+',
        help='target spacing in mm (one value or three). Default: the dataset median (nnU-Net rule), but no '
        f'finer than {_spacing_floors()}',
    )
    data.add_argument(
        '--val-fraction',
        dest='val_fraction',
        type=number(0, below=1),
        help=f'fraction of cases held out for validation (default {RunConfig.val_fraction}); 0 trains '
        'on every case with no validation, and best.pt is the final model',
    )
    data.add_argument(
        '--folds',
        dest='folds',
        type=integer(2),
        help='K-fold cross-validation (K >= 2): without --fold, trains every fold in turn into '
        'RUN_DIR/fold_0..K-1, then scores all cases out of fold into RUN_DIR/crossval.csv and '
        'crossval.json',
    )
    data.add_argument('--fold', dest='fold', type=integer(0), help='train only fold I (0..K-1) of --folds K')
    data.add_argument(
        '--splits',
        dest='splits',
        type=user_path,
        help="folds from a file: nnU-Net's splits_final.json (a list of {train, val}) or a splits.json "
        '(one {training, validation} or a list); --folds defaults to its number of folds',
    )
    data.add_argument(
        '--group-by-patient',
        '--group-by-prefix',
        dest='group_by_patient',
        action=argparse.BooleanOptionalAction,
        help='seeded splits keep the scans of one patient on one side: ids that differ only in a frame '
        "or time-point suffix (ACDC's patient001_frame01 and patient001_frame12, M&Ms' _ED and "
        '_ES); a dataset without such ids is split case by case '
        f'(default {_on(RunConfig.group_by_patient)})',
    )
    data.add_argument(
        '--split-seed',
        dest='split_seed',
        type=integer(0, MAX_SEED),
        help='seed of the training/validation split (default: --seed); fix it to compare training seeds on one split',
    )
    data.add_argument('--max-cases', dest='max_cases', type=integer(1), help='use only the first N cases (quick runs)')

    model = parser.add_argument_group('model')
    model.add_argument(
        '--levels',
        dest='levels',
        type=integer(1),
        help='encoder levels above the bridge, at most: fewer are planned when the patch cannot be '
        f'pooled further (default {RunConfig.levels})',
    )
    model.add_argument(
        '--base-channels',
        dest='base_channels',
        type=integer(1),
        help=f'channels of the first level (default {_by_device("base_channels")})',
    )
    model.add_argument('--norm', dest='norm', choices=NORMS, help=f'normalisation layer (default {RunConfig.norm})')
    model.add_argument(
        '--output',
        dest='output',
        choices=KINDS,
        help='output channels: softmax over background and mutually exclusive structures '
        '(cross-entropy + Dice, arg max), or one sigmoid per structure (default: softmax for '
        'several structures, sigmoid for one or for nnU-Net v2 regions)',
    )
    model.add_argument(
        '--pooling',
        dest='pooling',
        choices=POOLINGS,
        help="per-axis: nnU-Net's plan, an axis pooled only while its spacing is under twice the "
        'finest (kernel 1 along it before) and its feature map at least 8 voxels long; '
        f'isotropic: 2x2x2 at every level (default: {POOLINGS[0]})',
    )
    model.add_argument(
        '--deep-supervision',
        dest='deep_supervision',
        action=argparse.BooleanOptionalAction,
        help='nnU-Net deep supervision: extra loss terms on the decoder at 1/2 to 1/2**(levels-2) '
        f'resolution; a 2-level net has none (default {_on(RunConfig.deep_supervision)})',
    )

    train = parser.add_argument_group('training')
    train.add_argument(
        '--epochs',
        dest='epochs',
        type=integer(1),
        help=f'epochs in all (default: as many as make {DEFAULT_TRAINING_STEPS:,} optimiser steps; '
        f'{SYNTHETIC_SCHEDULE["epochs"]} on the synthetic dataset; fitted to --time-limit). With '
        '--resume the poly LR follows the new total, jumping back up to lr*(1-done/N)^0.9: a '
        'warm restart',
    )
    train.add_argument(
        '--steps-per-epoch',
        dest='steps_per_epoch',
        type=integer(1),
        help='optimiser steps per epoch (default: one patch per training case)',
    )
    train.add_argument(
        '--batch-size',
        dest='batch_size',
        type=integer(1),
        help=f'patches per optimiser step, over all torchrun processes together (default {RunConfig.batch_size})',
    )
    train.add_argument(
        '--patch-size',
        dest='patch_size',
        type=integer(1),
        nargs=3,
        help='patch size in voxels (default: planned from the median case and the device)',
    )
    train.add_argument(
        '--lr',
        dest='lr',
        type=number(0, inclusive=False),
        help=f'initial Adam learning rate, decayed polynomially (default {RunConfig.lr:g})',
    )
    train.add_argument(
        '--ema-decay',
        dest='ema_decay',
        type=number(0, below=1),
        help='validate and save an exponential moving average of the weights, updated after every optimiser step '
        f'as w_avg = d*w_avg + (1-d)*w; 0: the trained weights themselves (default {RunConfig.ema_decay:g})',
    )
    train.add_argument(
        '--loss',
        dest='loss',
        choices=[*LOSSES, *LOSS_ALIASES],
        help='ce: cross-entropy, binary per sigmoid channel or categorical over the softmax; ce_dice: '
        f'plus soft Dice; {" and ".join(LOSS_ALIASES)} are their old names '
        f'(default {RunConfig.loss})',
    )
    train.add_argument(
        '--augmentation',
        dest='augmentation',
        choices=STRENGTHS,
        help="nnU-Net's transforms: none, light (mirroring) or default (rotation, scaling, mirroring, "
        'noise, blur, brightness, contrast, low resolution, gamma) '
        f'(default {RunConfig.augmentation})',
    )
    train.add_argument(
        '--augment-on',
        dest='augment_on',
        choices=PLACES,
        help='where the intensity transforms run: in the loader workers, patch by patch, or on the '
        'training device, batch by batch; rotation, scaling and mirroring always run in the '
        f'loader, which holds the volume around each patch (default {RunConfig.augment_on})',
    )
    train.add_argument(
        '--time-limit',
        dest='time_limit',
        type=number(0, below=MAX_TIME_LIMIT_MINUTES),
        help='wall-clock budget in minutes; the schedule is fitted so the learning rate anneals '
        'within it (0: no limit)',
    )
    train.add_argument(
        '--val-every',
        dest='val_every',
        type=integer(0),
        help='validate every N epochs, and after the last; 0: as often as keeps validation to about '
        f'{VALIDATION_SHARE:.0%}% of the time (default: 0 with --time-limit, 1 on the synthetic '
        f'dataset or with --epochs, else about {DEFAULT_LENGTH_VALIDATIONS} validations in all)',
    )
    train.add_argument(
        '--image-every',
        dest='image_every',
        type=integer(1),
        help='log the validation overlay image at the first validation, then at the first validation '
        f'at least N epochs after the last image (default {RunConfig.image_every})',
    )

    run_group = parser.add_argument_group('run')
    run_group.add_argument(
        '--run-dir',
        dest='run_dir',
        type=user_path,
        help='run folder for config, checkpoints and logs (default runs/<timestamp>)',
    )
    run_group.add_argument(
        '--resume',
        dest='resume',
        type=user_path,
        metavar='RUN_DIR',
        help='continue a run from RUN_DIR/last.pt (from epoch 0 with its config.json if it stopped '
        'before its first checkpoint)',
    )
    run_group.add_argument(
        '--score-folds',
        dest='score_folds',
        type=user_path,
        metavar='RUN_DIR',
        help='score and pool folds trained apart (each with --folds K --fold I --run-dir '
        'RUN_DIR/fold_I): predicts the validation cases of every fold not yet scored, then '
        'writes RUN_DIR/crossval.csv and crossval.json; trains nothing',
    )
    run_group.add_argument(
        '--plan-only',
        dest='plan_only',
        action='store_true',
        default=None,
        help='plan the run, check every case and preprocess it into the cache, print the plan and stop: nothing '
        "is trained and no run folder is written (nnU-Net's plan_and_preprocess); the same command without it "
        'then trains on the cache',
    )
    run_group.add_argument(
        '--device', dest='device', help='auto, cpu, cuda, cuda:N or mps (default auto: cuda > mps > cpu)'
    )
    run_group.add_argument(
        '--amp',
        dest='amp',
        action=argparse.BooleanOptionalAction,
        help='mixed precision: bf16 (fp16 on older GPUs) on CUDA and on CPUs with native bf16 '
        f'instructions (default {_on(RunConfig.amp)})',
    )
    run_group.add_argument(
        '--channels-last',
        dest='channels_last',
        action=argparse.BooleanOptionalAction,
        help=f'channels_last_3d memory format for the network (default {_by_device("channels_last")})',
    )
    run_group.add_argument(
        '--compile',
        dest='compile',
        action=argparse.BooleanOptionalAction,
        help=f'torch.compile the training step (default {_on(RunConfig.compile)})',
    )
    run_group.add_argument(
        '--num-workers',
        dest='num_workers',
        type=integer(0),
        help=f'data-loader worker processes (default {_by_device("num_workers")}, at most the cores less one)',
    )
    run_group.add_argument(
        '--seed', dest='seed', type=integer(0, MAX_SEED), help=f'random seed (default {RunConfig.seed})'
    )
    return parser


def _on(value: bool) -> str:
    return 'on' if value else 'off'


DEVICE_NAMES = {'cpu': 'a CPU', 'mps': 'Apple MPS', 'cuda': 'a CUDA GPU'}


def _spacing_floors() -> str:
    floors = {device: defaults.min_spacing_mm for device, defaults in DEVICE_DEFAULTS.items()}
    return ', '.join(f'{floor:g} mm on {DEVICE_NAMES[device]}' for device, floor in floors.items() if floor)


def _by_device(setting: str) -> str:
    shown = {device: getattr(defaults, setting) for device, defaults in DEVICE_DEFAULTS.items()}
    shown = {device: _on(value) if isinstance(value, bool) else value for device, value in shown.items()}
    return ', '.join(f'{value} on {DEVICE_NAMES[device]}' for device, value in shown.items())


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags on the command line, by destination: every default is None, so 'not given' is never a value."""
    return {name: value for name, value in vars(args).items() if value is not None}
