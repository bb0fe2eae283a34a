"""Timing helpers for the benchmarks: medians of repeats, FLOPs, the conv3d peak and GPU utilisation.

Example::

    ours, monai = interleaved_medians(lambda: our_step(), lambda: monai_step(), repeats=5)
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def median_seconds(function, repeats: int) -> float:
    return statistics.median(timed(function) for _ in range(repeats))


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so drift on a shared machine hits both alike."""
    pairs = [(timed(first), timed(second)) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def conv3d_peak_gflops(device: torch.device, repeats: int) -> float:
    """GFLOP/s of a large conv3d forward and backward in channels_last_3d: the machine's practical peak."""
    layout = torch.channels_last_3d
    convolution = torch.nn.Conv3d(32, 32, 3, padding=1).to(device, memory_format=layout)
    volume = torch.randn(2, 32, 64, 64, 64, device=device).to(memory_format=layout).requires_grad_()
    flops = count_flops(lambda: convolution(volume).sum().backward())
    return (
        flops
        / median_seconds(lambda: synchronised(lambda: convolution(volume).sum().backward(), device), repeats)
        / 1e9
    )


def count_flops(function: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def synchronised(function: Callable[[], object], device: torch.device) -> None:
    function()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class UtilisationSampler:
    """Mean GPU utilisation (from NVML) while the block runs; NaN on other devices."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.stop = device, [], threading.Event()

    def __enter__(self) -> UtilisationSampler:
        if self.device.type == 'cuda':
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *_) -> None:
        self.stop.set()

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else float('nan')
