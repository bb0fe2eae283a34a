"""``train``: training throughput of our pipeline against MONAI's, alternating in one process.

It measures (a) model-only training steps, (b) the data pipeline alone and
(c) end-to-end training, in patches/s and voxels/s, plus the step's FLOPs
(``torch.utils.flop_counter``), this machine's conv3d peak, and peak memory.
MONAI's equivalent is a DynUNet of the same depth, widths and deep supervision,
MONAI transforms and loader, and DiceCE.
"""

from __future__ import annotations

import argparse
import resource
import statistics
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.bench_common import PLAN_KEYS, device_name, our_pipeline, planned_command, require_monai, training_setup
from benchmarks.timing import UtilisationSampler, conv3d_peak_gflops, count_flops, synchronised, timed
from heartseg.cli import integer
from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.planning.config import RunConfig
from mymodel import deep_supervision_heads

MEASURED = ('model', 'data', 'end_to_end', 'device_augmentation')  # the last with --augment-on device only


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
        'device': device_name(device),
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


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``train`` subcommand and its flags."""
    train = planned_command(
        commands,
        'train',
        'training throughput: model only, data only, end to end; FLOPs; against MONAI',
        cases=16,
        example='--batch-size 4 --no-channels-last',
    )
    train.add_argument('--steps', type=integer(1), default=16, help='optimiser steps per measurement')
    train.add_argument('--no-monai', action='store_true', help='skip the MONAI comparison')
