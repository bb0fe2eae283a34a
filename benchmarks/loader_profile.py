"""What feeds the model: loader-only throughput per worker, CPU and system time, page faults, the augmentation's share.

``benchmark.py loader`` runs these. The loader is timed without the model, so
the numbers say what the CPU side can deliver to a GPU; the workers' user and
system time come from ``getrusage`` after they exit.

Example::

    python -m benchmarks.benchmark loader --data ../shared/data/LA2018 --workers 1 2 -- --spacing 0.625 \
--patch-size 144 128 80
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace
from unittest import mock

import SimpleITK as sitk
import torch
import torchio as tio

from heartseg.planning.config import RunConfig
from heartseg.training import sampling
from heartseg.training.recipe import build_augmentation, build_patch_loader, limit_threads


def loader_throughput(config: RunConfig, subjects: list[tio.Subject], workers: int, worker_threads: int | None) -> dict:
    """One pass over an epoch's patches by a fresh loader:
    patches/s, and the time its processes spent in user and system mode."""
    loader = build_patch_loader(
        replace(config, num_workers=workers), subjects, build_augmentation(config), torch.device('cpu'), worker_threads
    ).loader
    before = _cpu_seconds()
    started = time.perf_counter()
    patches = sum(len(images) for images, *_ in loader)
    del loader
    # the loader and its iterator hold each other: collecting them stops the workers, whose CPU time then counts
    gc.collect()
    seconds = time.perf_counter() - started
    user, system, faults = (after - first for after, first in zip(_cpu_seconds(), before))
    return {
        'patches_per_s': patches / seconds,
        'patches_per_s_per_worker': patches / seconds / max(workers, 1),
        'user_s': user,
        'system_s': system,
        'system_share': system / (user + system),
        'page_faults_per_patch': faults / patches,
    }


def median_throughput(
    config: RunConfig, subjects: list[tio.Subject], workers: int, worker_threads: int | None, repeats: int
) -> dict:
    runs = [loader_throughput(config, subjects, workers, worker_threads) for _ in range(repeats)]
    return {'workers': workers, **{key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}}


SPATIAL = 'patch sampling: crop, rotation, scaling, mirroring'
INTENSITY = 'intensity augmentation'


def transform_shares(config: RunConfig, subjects: list[tio.Subject], patches: int) -> dict[str, float]:
    """Share of one process's loader time in the patch sampling,
    the intensity augmentation (in the loader only), and the rest."""
    totals: dict[str, float] = {}
    augmentation = build_augmentation(config)
    dataset = build_patch_loader(
        replace(config, num_workers=0), subjects, augmentation, torch.device('cpu')
    ).loader.dataset
    with _threads_as_in_a_worker(), ExitStack() as timers:
        timers.enter_context(_timed(sampling, 'sample_patch', SPATIAL, totals))
        if augmentation is not None:
            timers.enter_context(_timed(augmentation, 'intensity', INTENSITY, totals))
        started = time.perf_counter()
        for index in range(patches):
            dataset[index]
        total = time.perf_counter() - started
    shares = {'label-balanced corners and the one-hot target': (total - sum(totals.values())) / total}
    shares.update({name: seconds / total for name, seconds in totals.items()})
    return {name: round(share, 3) for name, share in shares.items()}


def _timed(owner: object, attribute: str, name: str, totals: dict[str, float]) -> AbstractContextManager:
    """While active, the seconds spent in ``owner.attribute`` add up in ``totals[name]``."""
    original = getattr(owner, attribute)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

    return mock.patch.object(owner, attribute, timed)


@contextmanager
def _threads_as_in_a_worker() -> Iterator[None]:
    torch_threads, itk_threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    limit_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)


def _cpu_seconds() -> tuple[float, float, int]:
    """User and system seconds, and minor page faults, of this process and its exited children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime, own.ru_minflt + children.ru_minflt
