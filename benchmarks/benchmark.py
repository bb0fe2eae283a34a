"""Benchmarks: training throughput, prediction speed and memory, each against MONAI.

``train`` measures (a) model-only training steps, (b) the data pipeline alone
and (c) end-to-end training, in patches/s and voxels/s, plus the step's FLOPs
(``torch.utils.flop_counter``), this machine's conv3d peak, and peak memory.
``feed`` measures (a) to (c) with GPU utilisation for each worker count and
augmentation place, to say whether the loader keeps the model busy;
``predict`` measures (d) sliding-window inference per case; ``memory`` (e) the
peak RSS of predicting a large scan; ``loader`` (f) the loader alone: patches/s per worker, user and system time,
and each transform's share of its time; ``norm`` our InstanceNorm3d against
``nn.GroupNorm`` on channels_last_3d CPU tensors; ``ensemble`` the test Dice of
each model and of their ensemble, averaging probabilities or logits, and an
ensemble's seconds per case against one model's; ``qc`` predict.py's seconds per
case with and without quality control and the background prefetch. Each measurement is repeated and its
median reported, with MONAI's equivalent measured in the same process, run
alternately with ours, for a ratio. MONAI is a development-only dependency
(``requirements-bench.txt``).

Example:
    python -m benchmarks.benchmark train --data ../shared/data/LA2018
    python -m benchmarks.benchmark train --data ../shared/data/LA2018 -- --no-channels-last
    python -m benchmarks.benchmark feed --data ../shared/data/LA2018 --workers 4 8 15 -- --spacing 0.625
    python -m benchmarks.benchmark predict --checkpoint runs/la/best.pt --data ../shared/data/LA2018 --cases 5
    python -m benchmarks.benchmark memory --checkpoint runs/la/best.pt
    python -m benchmarks.benchmark loader --data ../shared/data/LA2018 --workers 1 2 -- --spacing 0.625 \
--patch-size 144 128 80
    python -m benchmarks.benchmark norm
    python -m benchmarks.benchmark ensemble --checkpoint runs/cv --images test/images --labels test/labels
    python -m benchmarks.benchmark qc --checkpoint runs/la/best.pt --images test/images --cases 4
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

import main as training_cli
from benchmarks.loader_profile import median_throughput, transform_shares
from benchmarks.timing import (
    UtilisationSampler,
    conv3d_peak_gflops,
    count_flops,
    interleaved_medians,
    median_seconds,
    synchronised,
    timed,
)
from heartseg.cli import DefaultsHelpFormatter, Parser, integer, number, user_path
from heartseg.data.cases import case_id_from_path
from heartseg.data.dataset import read_dataset
from heartseg.data.reading import image_subject, load_nifti
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.errors import UserError, run_cli
from heartseg.files import save_nifti
from heartseg.inference.export import optional_module
from heartseg.inference.prediction import MIRRORING_TTA, Predictor, ensemble_probabilities, evaluate_case
from heartseg.inference.sliding_window import sliding_window_logits
from heartseg.normalization import InstanceNorm3d
from heartseg.planning.config import RunConfig
from heartseg.preprocessing.cache import preprocess_cases
from heartseg.preprocessing.preprocessing import Preprocessing
from heartseg.run.crossval import resolve_checkpoints
from heartseg.training.augmentation import PLACES
from mymodel import deep_supervision_heads
from predict import NIFTI_SUFFIXES
from training import create_trainer


def training_setup(args: argparse.Namespace) -> tuple[RunConfig, list]:
    """The run main.py would plan for ``--data`` and the extra flags, and its preprocessed cases."""
    spec = read_dataset(args.data)
    flags = training_cli.build_parser().parse_args(
        ['--data', str(args.data), '--run-dir', tempfile.mkdtemp(), *args.main_flags]
    )
    config, _ = training_cli.plan(training_cli.given_flags(flags))
    config.steps_per_epoch = args.steps
    subjects = preprocess_cases(
        spec.cases[: args.cases], spec, Preprocessing(config.target_spacing), Path(config.cache_dir) / spec.name
    )
    return config, subjects


def our_pipeline(config: RunConfig, subjects: list) -> dict[str, Callable[[], object]]:
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
    optional_module('monai', 'The comparison with MONAI', 'pip install -r requirements-bench.txt')


def monai_pipeline(config: RunConfig, subjects: list, device: torch.device) -> dict[str, Callable[[], object]]:
    """MONAI's equivalent: DynUNet of the same depth,
    widths and deep supervision, MONAI transforms and loader, DiceCE."""
    require_monai()
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset
    from monai.losses import DeepSupervisionLoss, DiceCELoss
    from monai.networks.nets import DynUNet

    levels, base = config.levels, config.base_channels
    supervised_heads = deep_supervision_heads(levels) if config.deep_supervision else 0
    network = DynUNet(
        3,
        1,
        1,
        kernel_size=[3] * (levels + 1),
        strides=[1] + [2] * levels,
        upsample_kernel_size=[2] * levels,
        filters=[base * 2**i for i in range(levels + 1)],
        norm_name=('INSTANCE', {'affine': True}),
        deep_supervision=supervised_heads > 0,
        deep_supr_num=max(1, supervised_heads),
    ).to(device)
    keys = ['image', 'label']
    augment = mt.Compose(
        [
            mt.SpatialPadd(keys, config.patch_size),
            mt.RandCropByPosNegLabeld(keys, 'label', config.patch_size, pos=1, neg=1, num_samples=1),
            *[mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
            mt.RandAffined(
                keys, prob=0.3, rotate_range=[np.radians(15)] * 3, scale_range=[0.15] * 3, mode=('bilinear', 'nearest')
            ),
            mt.RandAdjustContrastd('image', prob=0.3, gamma=(0.74, 1.35)),
            mt.RandBiasFieldd('image', prob=0.2, coeff_range=(0.0, 0.3)),
            mt.RandGaussianNoised('image', prob=0.2, std=0.1),
        ]
    )
    items = [{'image': s['image'].data.float(), 'label': s['label'].data.float()} for s in subjects]
    samples = config.steps_per_epoch * config.batch_size
    dataset = Dataset((items * -(-samples // len(items)))[:samples], augment)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=device.type == 'cuda',
    )
    loss, optimizer = (
        DeepSupervisionLoss(DiceCELoss(sigmoid=True, batch=True)),
        torch.optim.Adam(network.parameters(), config.lr),
    )
    precision = mixed_precision_dtype(device) if config.amp else None

    def step(batch: dict) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):  # as our trainer
            logits = network(batch['image'].to(device, non_blocking=True))
            # In training, a deeply supervised DynUNet stacks its heads' upsampled logits on dim 1.
            value = loss(
                list(logits.unbind(1)) if supervised_heads else logits, batch['label'].to(device, non_blocking=True)
            )
        value.backward()
        optimizer.step()
        return float(value)

    fixed = next(iter(loader))
    network.train()
    return {
        'model': lambda: [step(fixed) for _ in range(config.steps_per_epoch)],
        'data': lambda: list(loader),
        'end_to_end': lambda: [step(batch) for batch in loader],
        'one_step': lambda: step(fixed),
    }


def train_benchmark(args: argparse.Namespace) -> dict:
    """Training throughput of our pipeline and MONAI's, alternating, with FLOP efficiency."""
    config, subjects = training_setup(args)
    device = select_device(config.device)
    pipelines = {'ours': our_pipeline(config, subjects)}
    if not args.no_monai:
        pipelines['monai'] = monai_pipeline(config, subjects, device)
    patches = config.steps_per_epoch * config.batch_size
    voxels = patches * int(np.prod(config.patch_size))
    peak = conv3d_peak_gflops(device, args.repeats)
    result = {
        'device': _device_name(device),
        'plan': {k: getattr(config, k) for k in PLAN_KEYS},
        'conv3d_peak_gflops': round(peak, 1),
        'steps_per_measurement': config.steps_per_epoch,
    }
    for name, pipeline in pipelines.items():
        pipeline['one_step']()  # warm-up: allocations, oneDNN/cuDNN kernel choice
        result[name] = {'step_gflop': round(count_flops(pipeline['one_step']) / 1e9, 2)}
    measured = {name: [part for part in MEASURED if part in pipeline] for name, pipeline in pipelines.items()}
    timings = {(name, part): [] for name in pipelines for part in measured[name]}
    with UtilisationSampler(device) as utilisation:
        for _ in range(args.repeats):
            for name, pipeline in pipelines.items():
                for part in measured[name]:
                    timings[name, part].append(timed(lambda: synchronised(pipeline[part], device)))
    for name in pipelines:
        seconds = {part: statistics.median(timings[name, part]) for part in measured[name]}
        summary = result[name]
        for part in measured[name]:
            summary[f'{part}_patches_per_s'] = round(patches / seconds[part], 2)
        summary['model_mvoxels_per_s'] = round(voxels / seconds['model'] / 1e6, 2)
        summary['model_gflops'] = round(summary['step_gflop'] * config.steps_per_epoch / seconds['model'], 1)
        summary['model_share_of_conv3d_peak'] = round(summary['model_gflops'] / peak, 3)
        summary['data_over_model'] = round(seconds['model'] / seconds['data'], 2)
        summary['end_to_end_over_model'] = round(seconds['model'] / seconds['end_to_end'], 3)
    if 'monai' in result:
        result['end_to_end_ours_over_monai'] = round(
            result['ours']['end_to_end_patches_per_s'] / result['monai']['end_to_end_patches_per_s'], 2
        )
        result['model_ours_over_monai'] = round(
            result['ours']['model_patches_per_s'] / result['monai']['model_patches_per_s'], 2
        )
    result['peak_rss_gib'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if device.type == 'cuda':
        result['peak_gpu_memory_gib'] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result['gpu_utilisation_percent'] = round(utilisation.mean, 1)
    return result


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
        'device': _device_name(device),
        'plan': {k: getattr(config, k) for k in PLAN_KEYS if k not in ('num_workers', 'augment_on')},
        'patches_per_measurement': patches,
        'rows': rows,
    }


MEASURED = ('model', 'data', 'end_to_end', 'device_augmentation')  # the last with --augment-on device only
PLAN_KEYS = (
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


def _device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == 'cuda'
        else f'{device.type}, {torch.get_num_threads()} threads'
    )


@torch.no_grad()  # without leaving grad mode off for whatever runs next in this process
def predict_benchmark(args: argparse.Namespace) -> dict:
    """Seconds per case end to end (read → preprocess → infer → resample back → write),
    and the window loop against MONAI's."""
    require_monai()
    from monai.inferers import sliding_window_inference

    predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, tta=args.tta)
    cases = read_dataset(args.data).cases[: args.cases]
    output = Path(tempfile.mkdtemp())

    def predict_all() -> None:
        for case in cases:
            mask, _, nifti = predictor.predict(case.image)
            save_nifti(mask, nifti.affine, output / f'{case.case_id}.nii.gz', like=nifti)

    predict_all()  # warm-up: first-call allocations and thread pools
    end_to_end = median_seconds(predict_all, args.repeats) / len(cases)

    model = predictor.models[0]
    subject = model.preprocessing(image_subject(cases[0].image, load_nifti(cases[0].image), predictor.channels))
    image = subject['image'].data
    options = predictor.window_options
    ours = lambda: sliding_window_logits(model.network, image, model.patch_size, **options)  # noqa: E731

    def theirs() -> torch.Tensor:
        with torch.autocast(
            predictor.device.type,
            dtype=options['amp_dtype'],
            enabled=options['amp_dtype'] is not None and predictor.device.type == 'cuda',
        ):
            return sliding_window_inference(
                image[None],
                model.patch_size,
                options['batch_size'],
                model.network,
                overlap=options['overlap'],
                mode='gaussian',
                sigma_scale=0.125,
                padding_mode='constant',
                cval=float(image.min()),
                sw_device=predictor.device,
                device='cpu',
            )[0].float()

    ours(), theirs()
    ours_seconds, theirs_seconds = interleaved_medians(ours, theirs, args.repeats)
    difference = float((ours() - theirs()).abs().max())
    return {
        'cases': len(cases),
        'seconds_per_case_end_to_end': round(end_to_end, 3),
        'preprocessed_shape': list(image.shape[1:]),
        'sliding_window_seconds_ours': round(ours_seconds, 3),
        'sliding_window_seconds_monai': round(theirs_seconds, 3),
        'speed_ratio_monai_over_ours': round(theirs_seconds / ours_seconds, 3),
        'max_abs_logit_difference': difference,
    }


@torch.no_grad()  # without leaving grad mode off for whatever runs next in this process
def ensemble_benchmark(args: argparse.Namespace) -> dict:
    """Test Dice of each model alone and of their ensemble, averaging probabilities (ours) or logits; seconds per case.

    Every model's input-grid logits are computed once per case, and each way of
    combining them is thresholded and post-processed as ``predict.py`` does.
    """
    checkpoints = resolve_checkpoints(args.checkpoint)
    ensemble = Predictor(checkpoints, device=args.device, tta=args.tta)
    if not args.images.is_dir():
        raise UserError(args.images, 'not a folder of NIfTI scans')
    images = sorted(p for p in args.images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    scores: dict[str, list[dict]] = {}
    for image in images:
        loaded = ensemble.load(image)
        nifti = loaded.nifti
        logits = [ensemble.input_grid_logits(model, loaded)[0] for model in ensemble.models]
        outputs = ensemble.outputs
        candidates = {f'model_{i}': outputs.probabilities(logit) for i, logit in enumerate(logits)}
        candidates['mean_of_probabilities'] = ensemble_probabilities(logits, outputs)
        candidates['mean_of_logits'] = outputs.probabilities(torch.stack(logits).mean(0))
        case_id = case_id_from_path(image)
        label = next(args.labels / f'{case_id}{s}' for s in NIFTI_SUFFIXES if (args.labels / f'{case_id}{s}').is_file())
        for name, probabilities in candidates.items():
            scores.setdefault(name, []).extend(
                evaluate_case(case_id, ensemble.mask(probabilities), nifti, label, ensemble.outputs, image)
            )
    result = {'cases': len(images), 'models': [str(c) for c in checkpoints], 'tta': args.tta}
    for metric in ('dice', 'hd95_mm', 'asd_mm'):
        result[metric] = {
            name: round(float(np.nanmean([row[metric] for row in rows])), 4) for name, rows in scores.items()
        }
    result['mean_of_single_models_dice'] = round(
        float(np.mean([result['dice'][f'model_{i}'] for i in range(len(checkpoints))])), 4
    )
    if args.timing_cases:
        single = Predictor(checkpoints[0], device=args.device, tta=args.tta)
        timed = images[: args.timing_cases]
        ensemble_seconds, single_seconds = interleaved_medians(
            lambda: [ensemble.predict(image) for image in timed],
            lambda: [single.predict(image) for image in timed],
            args.repeats,
        )
        result.update(
            {
                'device': _device_name(ensemble.device),
                'ensemble_seconds_per_case': round(ensemble_seconds / len(timed), 2),
                'single_model_seconds_per_case': round(single_seconds / len(timed), 2),
                'time_ratio_ensemble_over_single': round(ensemble_seconds / single_seconds, 2),
            }
        )
    return result


QC_VARIANTS = {
    'no_qc_no_prefetch': ['--no-qc', '--no-prefetch'],
    'qc_no_prefetch': ['--no-prefetch'],
    'no_qc_prefetch': ['--no-qc', '--prefetch'],
    'qc_prefetch': ['--prefetch'],
}


def qc_benchmark(args: argparse.Namespace) -> dict:
    """Seconds per case of ``predict.py`` with and without QC, and with and without the background prefetch.

    Every variant predicts the same cases into a fresh folder, in turn within each
    repeat, so drift on a shared machine hits all alike.
    """
    from contextlib import redirect_stdout
    from io import StringIO

    import predict

    images = (
        sorted(p for p in args.images.iterdir() if p.name.endswith(NIFTI_SUFFIXES))[: args.cases]
        if args.images.is_dir()
        else []
    )
    if not images:
        raise UserError(args.images, 'not a folder of NIfTI scans')
    folder = Path(tempfile.mkdtemp())
    (folder / 'in').mkdir()
    for image in images:
        (folder / 'in' / image.name).symlink_to(image.resolve())
    result: dict = {'cases': len(images), 'device': _device_name(select_device(args.device))}
    for tta in ('--tta', '--no-tta'):
        times: dict[str, list[float]] = {name: [] for name in QC_VARIANTS}
        for repeat in range(args.repeats + 1):  # the first round warms caches and is not counted
            for name, flags in QC_VARIANTS.items():
                argv = [
                    '--checkpoint',
                    str(args.checkpoint),
                    '--input',
                    str(folder / 'in'),
                    '--output',
                    str(folder / f'out_{name}'),
                    '--device',
                    args.device,
                    '--overwrite',
                    tta,
                    *flags,
                ]
                with redirect_stdout(StringIO()):
                    seconds = timed(lambda: predict.main(argv))
                if repeat:
                    times[name].append(seconds / len(images))
        medians = {name: statistics.median(values) for name, values in times.items()}
        result[tta.removeprefix('--').replace('-', '_')] = {
            'seconds_per_case': {name: round(value, 3) for name, value in medians.items()},
            'qc_added_seconds_per_case': round(medians['qc_no_prefetch'] - medians['no_qc_no_prefetch'], 3),
            'qc_time_ratio': round(medians['qc_no_prefetch'] / medians['no_qc_no_prefetch'], 3),
            'qc_time_ratio_with_prefetch': round(medians['qc_prefetch'] / medians['no_qc_prefetch'], 3),
            'prefetch_speed_ratio': round(medians['qc_no_prefetch'] / medians['qc_prefetch'], 3),
        }
    return result


def norm_benchmark(args: argparse.Namespace) -> dict:
    """Forward and backward of our InstanceNorm3d against nn.GroupNorm,
    per U-Net stage, on channels_last_3d CPU tensors."""
    result = {'device': _device_name(torch.device('cpu'))}
    for dtype in (torch.float32, torch.bfloat16):
        stages = []
        for level in range(args.levels + 1):
            channels = args.base_channels * 2**level
            shape = (args.batch_size, channels, *(size // 2**level for size in args.patch_size))
            volume = torch.randn(shape).to(dtype=dtype, memory_format=torch.channels_last_3d).requires_grad_()
            grad = torch.randn_like(volume)
            ours, theirs = (
                _forward_backward(norm, volume, grad)
                for norm in (InstanceNorm3d(channels), nn.GroupNorm(channels, channels))
            )
            ours(), theirs()  # warm-up
            ours_seconds, theirs_seconds = interleaved_medians(ours, theirs, args.repeats)
            stages.append(
                {
                    'shape': list(shape),
                    'ours_ms': round(1000 * ours_seconds, 2),
                    'group_norm_ms': round(1000 * theirs_seconds, 2),
                    'speed_ratio': round(theirs_seconds / ours_seconds, 2),
                }
            )
        result[str(dtype).removeprefix('torch.')] = stages
    return result


def _forward_backward(norm: nn.Module, volume: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    return lambda: norm(volume).backward(grad)


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], formatter_class=DefaultsHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    train = _planned_command(
        commands,
        'train',
        'training throughput: model only, data only, end to end; FLOPs; against MONAI',
        cases=16,
        example='--batch-size 4 --no-channels-last',
    )
    train.add_argument('--steps', type=integer(1), default=16, help='optimiser steps per measurement')
    train.add_argument('--no-monai', action='store_true', help='skip the MONAI comparison')
    predict = commands.add_parser(
        'predict', help='seconds per case, and our sliding window against MONAI', formatter_class=DefaultsHelpFormatter
    )
    predict.add_argument('--checkpoint', type=user_path, required=True)
    predict.add_argument(
        '--data', type=user_path, required=True, help='MSD-layout dataset whose first cases are predicted'
    )
    predict.add_argument('--cases', type=integer(1), default=5)
    predict.add_argument('--repeats', type=integer(1), default=3, help='runs per measurement; the median is reported')
    predict.add_argument('--batch-size', type=integer(1), default=2)
    predict.add_argument('--device', default='cpu')
    predict.add_argument(
        '--tta',
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mirroring TTA in the end-to-end timing (predict.py's default; the 1 s per case target is without)",
    )
    feed = _planned_command(
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
    loader = _planned_command(
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
    norm = commands.add_parser(
        'norm',
        help="our InstanceNorm3d's forward and backward against nn.GroupNorm's, per U-Net stage (CPU)",
        formatter_class=DefaultsHelpFormatter,
    )
    norm.add_argument('--patch-size', type=integer(1), nargs=3, default=(96, 64, 32))
    norm.add_argument('--batch-size', type=integer(1), default=2)
    norm.add_argument('--base-channels', type=integer(1), default=8)
    norm.add_argument('--levels', type=integer(1), default=4)
    norm.add_argument('--repeats', type=integer(1), default=5, help='runs per measurement; the median is reported')
    ensemble = commands.add_parser(
        'ensemble',
        help='test Dice of each model and of the ensemble (probabilities vs logits averaged); seconds per case',
        formatter_class=DefaultsHelpFormatter,
    )
    ensemble.add_argument(
        '--checkpoint',
        type=user_path,
        nargs='+',
        required=True,
        help="checkpoints, or a cross-validation folder (every fold's best.pt)",
    )
    ensemble.add_argument('--images', type=user_path, required=True, help='folder of test scans')
    ensemble.add_argument(
        '--labels', type=user_path, required=True, help='folder of their reference label maps, same file names'
    )
    ensemble.add_argument(
        '--tta',
        action=argparse.BooleanOptionalAction,
        default=MIRRORING_TTA,
        help="mirroring TTA, as predict.py's default",
    )
    ensemble.add_argument(
        '--timing-cases',
        type=integer(0),
        default=2,
        help='cases timed end to end, the ensemble against its first model alone (0: no timing)',
    )
    ensemble.add_argument('--repeats', type=integer(1), default=3, help='timing runs; the median is reported')
    ensemble.add_argument('--device', default='cpu')
    qc = commands.add_parser(
        'qc',
        help="predict.py's seconds per case with and without quality control and the background prefetch",
        formatter_class=DefaultsHelpFormatter,
    )
    qc.add_argument('--checkpoint', type=user_path, required=True)
    qc.add_argument('--images', type=user_path, required=True, help='folder of scans; its first --cases are predicted')
    qc.add_argument('--cases', type=integer(1), default=4)
    qc.add_argument(
        '--repeats', type=integer(1), default=3, help='runs per variant after one warm-up; the median is reported'
    )
    qc.add_argument('--device', default='cpu')
    memory = commands.add_parser(
        'memory', help='peak RSS of predicting one large synthetic volume', formatter_class=DefaultsHelpFormatter
    )
    memory.add_argument('--checkpoint', type=user_path, required=True)
    memory.add_argument('--shape', type=integer(1), nargs=3, default=(512, 512, 300))
    memory.add_argument('--spacing', type=number(0, inclusive=False), nargs=3, default=(0.625, 0.625, 0.625))
    memory.add_argument('--device', default='cpu')
    return parser


def _planned_command(commands, name: str, summary: str, cases: int, example: str) -> argparse.ArgumentParser:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        'train': train_benchmark,
        'feed': feed_benchmark,
        'loader': loader_benchmark,
        'predict': predict_benchmark,
        'norm': norm_benchmark,
        'memory': memory_benchmark,
        'ensemble': ensemble_benchmark,
        'qc': qc_benchmark,
    }
    result = commands[args.command](args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
