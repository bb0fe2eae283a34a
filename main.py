"""Train a 3D U-Net on Task02_Heart or any MSD or nnU-Net v2 dataset.

With no ``--data`` and no ``./data/Task02_Heart`` it writes a built-in
synthetic dataset under ``./data/`` and trains on it with a short CPU
schedule, so ``python main.py`` works out of the box.

Example:
    python main.py --data ../shared/data/LA2018 --run-dir runs/la --time-limit 30
    python main.py --resume runs/la --epochs 200
    python main.py --data ../shared/data/LA2018 --folds 5 --run-dir runs/cv --time-limit 60
    python main.py --data Dataset002_Heart --splits splits_final.json --folds 5 --fold 0 --run-dir runs/cv/fold_0
    python main.py --score-folds runs/cv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torchio as tio

from heartseg import crossval, distributed
from heartseg.augmentation import PLACES, STRENGTHS, dummy_2d_axis
from heartseg.cli import Parser, integer, number
from heartseg.config import (
    DEFAULT_LENGTH_VALIDATIONS,
    DEFAULT_TRAINING_STEPS,
    DEVICE_DEFAULTS,
    RESUMABLE_SETTINGS,
    SYNTHETIC_SCHEDULE,
    TIME_LIMITED_MAX_EPOCHS,
    RunConfig,
    load_config,
    save_config,
)
from heartseg.data import (
    DatasetSpec,
    Preprocessing,
    preprocess_cases,
    read_dataset,
    read_header,
)
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.download import TASK02_FOLDER, TASK02_URL, download_task02
from heartseg.errors import EXIT_INTERRUPTED, DiskFull, UserError, run_cli
from heartseg.files import atomic_write_text, ensure_writable_dir
from heartseg.folder_lock import folder_lock, refuse_if_in_use
from heartseg.fingerprint import (
    MIN_FEATURE_MAP_SIZE,
    POOLING_SPACING_RATIO,
    CaseHeader,
    pooling_text,
    resampled_shape,
    spacing_and_patch_for_device,
)
from heartseg.losses import LOSSES
from heartseg.outputs import KINDS, planned_kind
from heartseg.schedule import VALIDATION_SHARE
from heartseg.splits import Split, grouping_text, read_splits_file, split_cases
from heartseg.synthetic import write_synthetic_dataset
from mymodel import NORMS, isotropic_pooling, total_pooling
from training import create_trainer

DATA_ROOT = Path('data')
SYNTHETIC_FOLDER = 'SyntheticHeart'
MAX_SEED = 2**32 - 1  # what every library's generator takes
MAX_TIME_LIMIT_MINUTES = 366 * 24 * 60  # a year; larger budgets overflow the schedule's arithmetic
MAX_RESAMPLED_VOXELS = 2**30  # 4 GiB as float32; the largest LA2018 case has 3.2 million voxels at 0.625 mm
POOLINGS = ('per-axis', 'isotropic')
DEFAULT_CACHE = Path('cache')


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        description=__doc__.split('\n\n')[0],
        epilog='Flags left out take defaults planned from the dataset and device; the plan is printed at start.',
    )
    data = parser.add_argument_group('data')
    data.add_argument('--data', type=Path, help=f'dataset folder: MSD (dataset.json, imagesTr/, labelsTr/) or nnU-Net v2 raw (Dataset002_Heart/). Default: ./data/{TASK02_FOLDER} if present, else the built-in synthetic dataset')
    data.add_argument('--download', action='store_true', help='download Task02_Heart into ./data/ first, then train on it')
    data.add_argument('--download-url', default=None, help=f'with --download: the mirror to download Task02_Heart from, http(s):// or file:// (default: {TASK02_URL})')
    data.add_argument('--cache-dir', type=Path, default=None, help=f'where preprocessed volumes are cached (default: {DEFAULT_CACHE})')
    data.add_argument('--spacing', type=number(0, inclusive=False), nargs='+', help='target spacing in mm (one value or three). Default: the dataset median (nnU-Net rule), but no finer than 1.25 mm on a CPU')
    data.add_argument('--val-fraction', type=number(0, below=1), default=None, help=f'fraction of cases held out for validation (default {RunConfig.val_fraction}); 0 trains on every case with no validation, and best.pt is the final model')
    data.add_argument('--folds', type=integer(2), default=None, help='K-fold cross-validation (K >= 2, overrides --val-fraction): without --fold, trains every fold in turn into RUN_DIR/fold_0..K-1, then scores all cases out of fold into RUN_DIR/crossval.csv and crossval.json')
    data.add_argument('--fold', type=integer(0), default=None, help='train only fold I (0..K-1) of --folds K')
    data.add_argument('--splits', type=Path, default=None, help="folds from a file: nnU-Net's splits_final.json (a list of {train, val}) or a splits.json (one {training, validation} or a list); --folds defaults to its number of folds")
    data.add_argument('--group-by-patient', '--group-by-prefix', action=argparse.BooleanOptionalAction, default=None, help=f'seeded splits keep the scans of one patient on one side: ids that differ only in a frame or time-point suffix (ACDC\'s patient001_frame01 and patient001_frame12, M&Ms\' _ED and _ES); a dataset without such ids is split case by case (default {_on(RunConfig.group_by_patient)})')
    data.add_argument('--split-seed', type=integer(0, MAX_SEED), default=None, help='seed of the training/validation split (default: --seed); fix it to compare training seeds on one split')
    data.add_argument('--max-cases', type=integer(1), default=None, help='use only the first N cases (quick runs)')

    model = parser.add_argument_group('model')
    model.add_argument('--levels', type=integer(1), default=None, help=f'encoder levels above the bridge, at most: fewer are planned by default when the patch cannot be pooled further (default {RunConfig.levels}; the seed used 2)')
    model.add_argument('--base-channels', type=integer(1), default=None, help=f'channels of the first level (default {_by_device("base_channels")}; the seed used 8)')
    model.add_argument('--norm', choices=NORMS, default=None, help=f'normalisation layer (default {RunConfig.norm}; the seed used batch)')
    model.add_argument('--output', choices=KINDS, default=None, help='output channels: softmax over background and mutually exclusive structures (cross-entropy + Dice, arg max), or one sigmoid per structure (default: softmax for several structures, sigmoid for one or for nnU-Net v2 regions)')
    model.add_argument('--pooling', choices=POOLINGS, default=None, help=f"per-axis: nnU-Net's plan, an axis pooled only while its spacing is under twice the finest (kernel 1 along it before) and its feature map at least 8 voxels long; isotropic: 2x2x2 at every level (default: {POOLINGS[0]})")
    model.add_argument('--deep-supervision', action=argparse.BooleanOptionalAction, default=None, help=f'nnU-Net deep supervision: extra loss terms on the decoder at 1/2 to 1/2**(levels-2) resolution; a 2-level net has none (default {_on(RunConfig.deep_supervision)})')

    train = parser.add_argument_group('training')
    train.add_argument('--epochs', type=integer(1), default=None, help=f'epochs in all (default: as many as make {DEFAULT_TRAINING_STEPS:,} optimiser steps, validating about {DEFAULT_LENGTH_VALIDATIONS} times; {SYNTHETIC_SCHEDULE["epochs"]} epochs on the synthetic dataset). With --resume the poly LR follows the new total, jumping back up to lr*(1-done/N)^0.9: a warm restart')
    train.add_argument('--steps-per-epoch', type=integer(1), default=None, help='optimiser steps per epoch (default: one patch per training case)')
    train.add_argument('--batch-size', type=integer(1), default=None, help=f'patches per optimiser step, over all torchrun processes together (default {RunConfig.batch_size})')
    train.add_argument('--patch-size', type=integer(1), nargs=3, default=None, help='patch size in voxels (default: planned from the median case and the device)')
    train.add_argument('--lr', type=number(0, inclusive=False), default=None, help=f'initial Adam learning rate, decayed polynomially (default {RunConfig.lr:g})')
    train.add_argument('--loss', choices=LOSSES, default=None, help=f'loss function (default {RunConfig.loss})')
    train.add_argument('--augmentation', choices=STRENGTHS, default=None, help=f"nnU-Net's transforms: none, light (mirroring) or default (rotation, scaling, mirroring, noise, blur, brightness, contrast, low resolution, gamma) (default {RunConfig.augmentation})")
    train.add_argument('--augment-on', choices=PLACES, default=None, help=f'where the intensity transforms run: in the loader workers, patch by patch, or on the training device, batch by batch; rotation, scaling and mirroring always run in the loader, which holds the volume around each patch (default {RunConfig.augment_on})')
    train.add_argument('--time-limit', type=number(0, below=MAX_TIME_LIMIT_MINUTES), default=None, help='wall-clock budget in minutes; the schedule is fitted so the learning rate anneals within it (0: no limit)')
    train.add_argument('--val-every', type=integer(0), default=None, help=f'validate every N epochs; 0 = automatic, about {VALIDATION_SHARE:.0%}% of the time (default {RunConfig.val_every}; 0 with --time-limit; about {DEFAULT_LENGTH_VALIDATIONS} validations at the default length)')
    train.add_argument('--image-every', type=integer(1), default=None, help=f'log the validation overlay image at the first validation, then at the first validation at least N epochs after the last image (default {RunConfig.image_every})')

    run = parser.add_argument_group('run')
    run.add_argument('--run-dir', type=Path, help='run folder for config, checkpoints and logs (default runs/<timestamp>)')
    run.add_argument('--resume', type=Path, metavar='RUN_DIR', help='continue a run from RUN_DIR/last.pt (from epoch 0 with its config.json if it stopped before its first checkpoint)')
    run.add_argument('--score-folds', type=Path, metavar='RUN_DIR', help='score and pool folds trained apart (each with --folds K --fold I --run-dir RUN_DIR/fold_I): predicts the validation cases of every fold not yet scored, then writes RUN_DIR/crossval.csv and crossval.json; trains nothing')
    run.add_argument('--device', default=None, help='auto, cpu, cuda, cuda:N or mps (default auto: cuda > mps > cpu)')
    run.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None, help=f'mixed precision: bf16 (fp16 on older GPUs) on CUDA and on CPUs with native bf16 instructions (default {_on(RunConfig.amp)})')
    run.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None, help=f'channels_last_3d memory format for the network (default {_by_device("channels_last")})')
    run.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None, help=f'torch.compile the training step (default {_on(RunConfig.compile)})')
    run.add_argument('--num-workers', type=integer(0), default=None, help=f'data-loader worker processes (default {_by_device("num_workers")}, at most the cores less one)')
    run.add_argument('--seed', type=integer(0, MAX_SEED), default=None, help=f'random seed (default {RunConfig.seed})')
    return parser


def _on(value: bool) -> str:
    return 'on' if value else 'off'


def _by_device(setting: str) -> str:
    values = {device: getattr(defaults, setting) for device, defaults in DEVICE_DEFAULTS.items()}
    shown = {device: _on(value) if isinstance(value, bool) else value for device, value in values.items()}
    return f'{shown["cpu"]} on a CPU, {shown["cuda"]} on a GPU'


# Flags whose names differ from RunConfig fields.
FLAG_TO_SETTING = {'spacing': 'target_spacing'}


def explicit_settings(args: argparse.Namespace) -> dict:
    """The RunConfig settings the user gave on the command line."""
    names = {f.name for f in fields(RunConfig)}
    given = {}
    for flag, value in vars(args).items():
        setting = FLAG_TO_SETTING.get(flag, flag)
        if value is not None and setting in names and setting not in ('data', 'run_dir', 'cache_dir'):
            given[setting] = tuple(value) if isinstance(value, list) else str(value) if isinstance(value, Path) else value
    spacing = given.get('target_spacing')
    if spacing is not None and len(spacing) not in (1, 3):
        raise UserError('--spacing', f'{list(spacing)} is not allowed: give one value (isotropic) or three, in mm')
    if spacing is not None and len(spacing) == 1:
        given['target_spacing'] = spacing * 3
    return given


def resolve_data_root(args: argparse.Namespace) -> tuple[Path, bool]:
    """The dataset folder to use, and whether it is the synthetic fallback."""
    if args.data is not None:
        return args.data, False
    if args.download:
        return download_task02(DATA_ROOT, url=args.download_url or TASK02_URL), False
    if (DATA_ROOT / TASK02_FOLDER / 'dataset.json').is_file():
        return DATA_ROOT / TASK02_FOLDER, False
    synthetic = DATA_ROOT / SYNTHETIC_FOLDER
    print(
        f'NOTICE: no --data given and no ./data/{TASK02_FOLDER}; training on the built-in SYNTHETIC dataset '
        f'in {synthetic}/.\n        For real data, run `python main.py --download` (Task02_Heart) or '
        '`python main.py --data PATH` with any MSD or nnU-Net v2 folder.'
    )
    if not (synthetic / 'dataset.json').is_file():
        write_synthetic_dataset(synthetic)
    return synthetic, True


# Flags that another flag makes moot: (flag, the flag that overrides it, why).
OVERRIDDEN = (
    ('split_seed', 'splits', 'the splits file gives the folds'),
    ('group_by_patient', 'splits', 'the splits file gives the folds'),
    ('val_fraction', 'splits', 'the splits file gives the folds'),
    ('val_fraction', 'folds', 'each fold validates on its own share of the cases'),
)


def refuse_moot_flags(args: argparse.Namespace) -> None:
    """One line naming a flag that could not take effect beside the others."""
    given = given_flags(args)
    for flag, other, why in OVERRIDDEN:
        if flag in given and other in given:
            raise UserError(f'--{flag.replace("_", "-")}', f'has no effect with --{other}: {why}')
    if 'download_url' in given and 'download' not in given:
        raise UserError('--download-url', 'has no effect without --download')


def configure_run(args: argparse.Namespace, spec: DatasetSpec, synthetic: bool) -> RunConfig:
    """Turn flags and the dataset fingerprint into one RunConfig."""
    refuse_moot_flags(args)
    given = explicit_settings(args)
    device = select_device(given.get('device', 'auto'))
    defaults = DEVICE_DEFAULTS[device.type]
    cases = cases_in_use(spec, given)
    headers = [read_header(case, spec) for case in cases]
    levels = given.get('levels', RunConfig.levels)
    spacing, patch, network = spacing_and_patch_for_device(headers, device.type, levels, given.get('target_spacing'),
                                                           per_axis=(args.pooling or POOLINGS[0]) == 'per-axis', patch_size=given.get('patch_size'))
    if 'levels' in given and network.levels < levels:
        raise UserError('--levels', f'{levels} levels cannot be pooled in patch {list(patch)}: after {network.levels} poolings no axis is '
                                    f'{2 * MIN_FEATURE_MAP_SIZE} voxels long with a spacing under {POOLING_SPACING_RATIO:g}x the finest (nnU-Net\'s rule)')
    check_resampled_sizes(headers, spacing)
    config = RunConfig(
        data=str(spec.root.resolve()),  # absolute: --resume may run from another folder
        run_dir=str(args.run_dir or Path('runs') / datetime.now().strftime('%Y%m%d-%H%M%S')),
        cache_dir=str(args.cache_dir or DEFAULT_CACHE),
        target_spacing=tuple(float(s) for s in spacing),
        patch_size=patch,
        base_channels=defaults.base_channels,
        channels_last=defaults.channels_last,
        num_workers=min(defaults.num_workers, max(0, (os.cpu_count() or 1) // distributed.world_size() - 1)),
        labels={str(k): v for k, v in spec.labels.items()},
        modalities={str(k): v for k, v in spec.modalities.items()},
        regions=[dict(region) for region in spec.regions],
        output=planned_kind([r['values'] for r in spec.regions] or [[v] for v in spec.foreground_labels]),
        pool_sizes=network.pool_sizes,
        kernel_sizes=network.kernel_sizes,
        **(SYNTHETIC_SCHEDULE if synthetic else {}),
    )
    for setting, value in given.items():
        setattr(config, setting, value)
    config.levels = network.levels  # fewer than asked by default when the patch is too small to pool any more
    if spec.regions and config.output == 'softmax':
        raise UserError('--output', f'softmax needs mutually exclusive structures; {spec.root / "dataset.json"} declares overlapping regions, which take sigmoid channels')
    if config.splits:
        config.splits = str(Path(config.splits).resolve())  # absolute: --resume may run from another folder
        config.folds = folds_in_splits_file(config, cases, given.get('folds'))
    if config.time_limit:
        config.val_every = given.get('val_every', 0)  # 0: automatic, about a tenth of the time
        config.epochs = given.get('epochs', TIME_LIMITED_MAX_EPOCHS)
    check_patch_size(config)
    check_split(config, len(cases))
    if not (synthetic or config.time_limit or 'epochs' in given):
        config.epochs = default_epochs(config, training_cases(config, [case.case_id for case in cases]))
        config.val_every = given.get('val_every', max(1, round(config.epochs / DEFAULT_LENGTH_VALIDATIONS)))
    return config


def default_epochs(config: RunConfig, training_cases: int) -> int:
    """The epochs that make up the default number of optimiser steps."""
    return max(1, round(DEFAULT_TRAINING_STEPS / config.steps_in_epoch(training_cases)))


def training_cases(config: RunConfig, case_ids: list[str]) -> int:
    """How many of ``case_ids`` the split trains on (fold 0's, for a whole cross-validation)."""
    return len(run_split(config, case_ids, config.fold or 0)['training'])


def run_split(config: RunConfig, case_ids: list[str], fold: int | None) -> Split:
    """The run's split of ``case_ids``: fold ``fold`` of the splits file, or the seeded split."""
    if config.splits:
        splits = read_splits_file(Path(config.splits), case_ids)
        return splits[fold or 0]
    return split_cases(case_ids, config.data_split_seed, config.val_fraction, config.folds, fold, config.group_by_patient)


def folds_in_splits_file(config: RunConfig, cases: tuple, given_folds: int | None) -> int:
    """The folds of ``--splits`` (0 for a file of one split: a holdout); a different ``--folds`` is refused."""
    in_file = len(read_splits_file(Path(config.splits), [case.case_id for case in cases]))
    folds = in_file if in_file > 1 else 0
    if given_folds is not None and given_folds != folds:
        raise UserError('--folds', f'{given_folds} does not match {config.splits}, which holds {in_file} fold{"s" if in_file > 1 else ""}')
    return folds


def check_split(config: RunConfig, cases: int) -> None:
    if config.fold is not None and not config.folds:
        raise UserError('--fold', f'{config.fold} needs --folds K (the number of folds)')
    if config.folds and not 2 <= config.folds <= cases:
        raise UserError('--folds', f'{config.folds} is not allowed: K-fold cross-validation needs 2 <= K <= {cases}, the number of cases')
    if config.fold is not None and not 0 <= config.fold < config.folds:
        raise UserError('--fold', f'{config.fold} is not a fold of --folds {config.folds}: use 0..{config.folds - 1}')


def check_resampled_sizes(headers: list[CaseHeader], spacing: tuple[float, float, float]) -> None:
    """Every case keeps at least one voxel per axis at ``spacing``, and the largest fits in memory."""
    shapes = np.array([resampled_shape(header, spacing) for header in headers])
    if shapes.min() < 1:
        raise UserError('--spacing', f'{list(spacing)} mm is coarser than a whole case: one shrinks to {shapes[shapes.min(axis=1).argmin()].tolist()} voxels')
    largest = shapes.prod(axis=1).max()
    if largest > MAX_RESAMPLED_VOXELS:
        raise UserError('--spacing', f'{list(spacing)} mm makes the largest case {largest:.3g} voxels, over the {MAX_RESAMPLED_VOXELS:.3g} one case may have')


def check_patch_size(config: RunConfig) -> None:
    divisors = total_pooling(config.pool_sizes or isotropic_pooling(config.levels))
    if any(p % d for p, d in zip(config.patch_size, divisors)):
        raise UserError('--patch-size', f'{list(config.patch_size)} must be divisible per axis by {list(divisors)}, each axis\'s total pooling over {config.levels} levels')


def cases_in_use(spec: DatasetSpec, given: dict) -> tuple:
    max_cases = given.get('max_cases', 0)
    return spec.cases[:max_cases] if max_cases else spec.cases


def given_flags(args: argparse.Namespace) -> list[str]:
    """The flags on the command line: every flag's default is None (or False for a switch), so 'not given' is never a value."""
    return [name for name, value in vars(args).items() if value is not None and value is not False]


def refuse_flags_beside(args: argparse.Namespace, mode: str, allowed: tuple[str, ...]) -> None:
    """One line naming the first given flag that ``mode`` would ignore."""
    for name in given_flags(args):
        if name not in allowed:
            raise UserError(f'--{name.replace("_", "-")}', f'has no effect with {mode}; leave it out')


# Flags that shape a run's plan or set-up but no setting a resumed run could change.
PLANNING_FLAGS = ('pooling', 'download', 'download_url')


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The saved config of ``--resume``, with only the settings a resume may change; any other flag is refused."""
    for name in given_flags(args):
        if name in PLANNING_FLAGS:
            raise UserError(f'--{name.replace("_", "-")}', f'cannot change the plan of {args.resume}: a resumed run keeps its own (only --{", --".join(sorted(f.replace("_", "-") for f in RESUMABLE_SETTINGS))} may change)')
    config = load_config(args.resume / 'config.json')
    for flag, saved_path in (('run_dir', config.run_dir), ('cache_dir', config.cache_dir)):
        given = getattr(args, flag)
        if given is not None and Path(given).resolve() != Path(saved_path).resolve():
            raise UserError(f'--{flag.replace("_", "-")}', f'{given} is not {saved_path}, which {args.resume} uses; a resumed run keeps its folders')
    saved = asdict(config)
    for setting, value in explicit_settings(args).items():
        if setting in RESUMABLE_SETTINGS:
            setattr(config, setting, value)
        elif _normalise(value) != _normalise(saved[setting]):
            raise UserError(args.resume, f'cannot resume with --{setting.replace("_", "-")} {value}: the run used {saved[setting]} (only {", ".join(sorted(RESUMABLE_SETTINGS))} may change)')
    if args.data is not None and args.data.resolve() != Path(config.data).resolve():
        raise UserError('--data', f'{args.data} is not the dataset {args.resume} trains on ({config.data}); a resumed run keeps its data')
    if saved['time_limit'] and config.time_limit == 0 and 'epochs' not in explicit_settings(args):
        raise UserError('--time-limit', f'0 ends the time limit of {args.resume}: give --epochs too, the number of epochs to train in all')
    config.run_dir = str(args.resume)
    return config


def _normalise(value):
    return json.loads(json.dumps(value))


def split_description(config: RunConfig, case_ids: list[str]) -> str:
    """Where the run's split comes from, and how it grouped the cases."""
    if config.splits:
        return f'split from {Path(config.splits).name}'
    return 'no split' if not (config.folds or config.val_fraction) else f'split {grouping_text(case_ids, config.group_by_patient)}'


def print_run_line(config: RunConfig, num_train: int, num_val: int, split_text: str) -> None:
    pooling = '' if config.pool_sizes is None else f' pooling {pooling_text(config.pool_sizes)}'
    print(
        f'Plan: {num_train} training / {num_val} validation cases ({split_text}), spacing {config.target_spacing} mm, '
        f'patch {list(config.patch_size)}, U-Net levels={config.levels} base={config.base_channels} '
        f'norm={config.norm}{" deep-supervision" if config.deep_supervision else ""}{pooling}, '
        f'{config.outputs.channels} {config.output} outputs, loss {config.loss}, augmentation {_augmentation(config)}, batch {config.batch_size}, '
        + (f'epochs fitted to the time limit of {config.time_limit:g} min' if config.time_limit else _length(config, num_train))
        + f', {_precision(config)}'
    )


def _augmentation(config: RunConfig) -> str:
    thick = dummy_2d_axis(config.target_spacing, config.patch_size)
    in_2d = config.augmentation == 'default' and thick is not None
    return config.augmentation + (f' in 2D across {"xyz"[thick]} (the patch is thin along it)' if in_2d else '')


def _length(config: RunConfig, num_train: int) -> str:
    steps = config.steps_in_epoch(num_train)
    source = ' (the default length, BENCHMARKS.md "Training length")' if config.epochs == default_epochs(config, num_train) else ''
    return f'epochs {config.epochs} x {steps} steps = {config.epochs * steps:,} steps{source}'


def _precision(config: RunConfig) -> str:
    dtype = mixed_precision_dtype(select_device(config.device)) if config.amp else None
    return f'{str(dtype).removeprefix("torch.")} mixed precision' if dtype else 'fp32'


def prepare_subjects(config: RunConfig, spec: DatasetSpec, resuming: bool) -> dict[str, list[tio.Subject]]:
    """Split, preprocess (validating every case) and write the run's config."""
    run_dir = Path(config.run_dir)
    cases = cases_in_use(spec, {'max_cases': config.max_cases})
    by_id = {case.case_id: case for case in cases}
    split = run_split(config, list(by_id), config.fold)
    main_rank = distributed.is_main()
    if main_rank:
        print_run_line(config, len(split['training']), len(split['validation']), split_description(config, list(by_id)))
    preprocessing = Preprocessing(config.target_spacing)
    cache_dir = Path(config.cache_dir) / spec.name
    subjects = {
        name: preprocess_cases([by_id[i] for i in ids], spec, preprocessing, cache_dir, show_progress=main_rank)
        for name, ids in split.items()
    }
    if main_rank:
        save_config(config, run_dir / 'config.json', resuming)
        atomic_write_text(run_dir / 'splits.json', json.dumps({**split, 'grouping': split_description(config, list(by_id))}, indent=1))
    return subjects


def configure(args: argparse.Namespace) -> tuple[RunConfig, DatasetSpec, bool]:
    """The run's config and dataset, and whether this call created the run folder."""
    if args.resume is not None:
        config = resume_config(args)
        spec = read_dataset(Path(config.data))
    else:
        data_root, synthetic = resolve_data_root(args)
        spec = read_dataset(data_root)
        config = configure_run(args, spec, synthetic)
    run_dir = Path(config.run_dir)
    refuse_if_in_use(run_dir)
    if args.resume is None and ((run_dir / 'last.pt').exists() or crossval.fold_folder(run_dir, 0).exists()):
        raise UserError(run_dir, 'run folder already holds a run; use --resume to continue it or choose another --run-dir')
    ranks = distributed.world_size()
    if config.batch_size % ranks:
        raise UserError('--batch-size', f'{config.batch_size} patches per step cannot be shared evenly by {ranks} processes; the batch size is global, so use a multiple of {ranks}')
    created = not run_dir.exists()
    ensure_writable_dir(run_dir)
    return config, spec, created


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with distributed.session(args.device):
        return train(args)


def train(args: argparse.Namespace) -> int:
    if args.score_folds is not None:
        refuse_flags_beside(args, '--score-folds', allowed=('score_folds', 'device'))
        if distributed.is_main():
            with folder_lock(args.score_folds):
                print(crossval.score_trained_folds(args.score_folds, args.device or 'auto'))
            print(f'Done. Scores: {args.score_folds / "crossval.csv"}, {args.score_folds / "crossval.json"}.')
        return 0
    started = time.perf_counter()
    # Rank 0 plans (and may download or write data); the other ranks take its plan.
    config, spec, created = distributed.broadcast(configure(args) if distributed.is_main() else None)
    run_dir = Path(config.run_dir)
    with folder_lock(run_dir) if distributed.is_main() else nullcontext():  # one run per folder
        if config.cross_validation:
            return cross_validate(config, spec, started, resuming=args.resume is not None, cleanup_dir=run_dir if created else None)
        resuming = args.resume is not None and (run_dir / 'last.pt').is_file()
        if args.resume is not None and not resuming and distributed.is_main():
            # A job requeued after preemption resumes with the same command, even if the kill came before any checkpoint.
            print(f'{run_dir}: no checkpoint yet (stopped before its first epoch ended); starting from epoch 0 with its config.json')
        return train_run(config, spec, started, resuming, cleanup_dir=run_dir if created else None, resume_dir=run_dir)


def train_run(config: RunConfig, spec: DatasetSpec, started: float, resuming: bool,
              cleanup_dir: Path | None, resume_dir: Path) -> int:
    """Train one run (a whole run, or one fold) into ``config.run_dir``.

    Args:
        started: When set-up began; the time limit counts set-up too.
        cleanup_dir: Removed if preparing the data fails, so a failed start leaves nothing behind.
        resume_dir: What ``--resume`` takes to continue after an interruption.
    """
    run_dir = Path(config.run_dir)
    try:
        with distributed.main_process_first():  # rank 0 fills the preprocessing cache
            subjects = prepare_subjects(config, spec, resuming)
    except UserError:
        if cleanup_dir is not None and distributed.is_main():
            shutil.rmtree(cleanup_dir, ignore_errors=True)
        raise
    trainer = create_trainer(config, subjects['training'], subjects['validation'])
    if resuming:
        trainer.resume()
    else:
        trainer.elapsed = time.perf_counter() - started
    if not distributed.is_main():
        trainer.fit()
        return 0
    if resuming:
        print(f'Resuming {run_dir} after epoch {trainer.start_epoch}')
    if distributed.world_size() > 1:
        print(f'Distributed: {distributed.world_size()} processes, {config.batch_size // distributed.world_size()} patches each per step')
    print(f'TensorBoard logs: {run_dir}  (watch with: tensorboard --logdir {resume_dir.parent})')
    try:
        final = trainer.fit()
    except KeyboardInterrupt:
        print(f'\nInterrupted. The last completed epoch is saved; resume with: python main.py --resume {resume_dir}', file=sys.stderr)
        return EXIT_INTERRUPTED
    except DiskFull as error:
        raise DiskFull(error.where, f'the last completed epoch is saved; free some space and resume with: python main.py --resume {resume_dir}') from None
    if not trainer.has_validation:
        outcome = 'No validation split: best.pt holds the final weights.'
    elif trainer.selects_best:
        outcome = f'Best validation Dice {final:.4f}.'
    else:
        outcome = f'Final validation Dice {final:.4f} (best.pt holds the final weights).'
    print(f'Done. {outcome} Checkpoints: {run_dir / "best.pt"}, {run_dir / "last.pt"}. '
          f'Curves: tensorboard --logdir {resume_dir.parent}')
    return 0


def cross_validate(config: RunConfig, spec: DatasetSpec, started: float, resuming: bool, cleanup_dir: Path | None) -> int:
    """Train folds 0..K-1 in turn, scoring each fold's validation cases as it ends; then pool the scores.

    A resumed cross-validation skips the scored folds and resumes the fold it was in.
    """
    root = Path(config.run_dir)
    if distributed.is_main():
        save_config(config, root / 'config.json', resuming)
        print(crossval.schedule_line(config.folds, config.time_limit, root))
    for fold in range(config.folds):
        fold_dir = crossval.fold_folder(root, fold)
        if distributed.broadcast(crossval.is_scored(fold_dir) if distributed.is_main() else None):
            continue
        fold_config, fold_resumes = distributed.broadcast(prepare_fold(config, spec, fold) if distributed.is_main() else None)
        code = train_run(fold_config, spec, started, fold_resumes, cleanup_dir if fold == 0 else None, resume_dir=root)
        if code:
            return code
        if distributed.is_main():
            crossval.score_trained_fold(fold_dir, fold, list(spec.cases), config.device)
        distributed.barrier()
        started = time.perf_counter()
    if distributed.is_main():
        print(crossval.write_cross_validation(root, config.folds, config.outputs, list(spec.cases)))
        print(f'Done. Scores: {root / "crossval.csv"}, {root / "crossval.json"}. '
              f'The fold ensemble predicts with: python predict.py --checkpoint {root} --input ... --output ...')
    return 0


def prepare_fold(config: RunConfig, spec: DatasetSpec, fold: int) -> tuple[RunConfig, bool]:
    """The config of one fold of a cross-validation, and whether the fold resumes.

    A fold that has started keeps its own saved config (its time share
    included); only the settings a resume may change follow the cross-validation's.
    """
    fold_dir = crossval.fold_folder(Path(config.run_dir), fold)
    if (fold_dir / 'config.json').is_file():
        saved = load_config(fold_dir / 'config.json')
        for setting in RESUMABLE_SETTINGS - {'time_limit', 'epochs'}:
            setattr(saved, setting, getattr(config, setting))
        return saved, (fold_dir / 'last.pt').is_file()
    time_limit = 0.0
    if config.time_limit:
        spent, seconds_per_case = crossval.scored_seconds(Path(config.run_dir), config.folds)
        case_ids = [c.case_id for c in cases_in_use(spec, {'max_cases': config.max_cases})]
        validation_cases = len(run_split(config, case_ids, fold)['validation'])
        time_limit = crossval.fold_training_minutes(config.time_limit, fold, config.folds, spent, seconds_per_case, validation_cases)
    return replace(config, fold=fold, run_dir=str(fold_dir), time_limit=time_limit), False


if __name__ == '__main__':
    sys.exit(run_cli(main))
