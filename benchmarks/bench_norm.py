"""``norm``: our InstanceNorm3d's forward and backward against ``nn.GroupNorm``'s.

Per U-Net stage, on channels_last_3d CPU tensors, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.bench_common import device_name
from benchmarks.timing import interleaved_medians
from heartseg.cli import DefaultsHelpFormatter, integer
from heartseg.normalization import InstanceNorm3d


def norm_benchmark(args: argparse.Namespace) -> dict:
    """Forward and backward of our InstanceNorm3d against nn.GroupNorm,
    per U-Net stage, on channels_last_3d CPU tensors."""
    result = {'device': device_name(torch.device('cpu'))}
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


def add_command(commands: argparse._SubParsersAction) -> None:
    """The ``norm`` subcommand and its flags."""
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
