"""What feeds the model: loader-only throughput per worker, CPU and system time, page faults, each transform's share.

``benchmark.py loader`` runs these. The loader is timed without the model, so
the numbers say what the CPU side can deliver to a GPU; the workers' user and
system time come from ``getrusage`` after they exit.

Example::

    python -m benchmarks.benchmark loader --data ../shared/data/LA2018 --workers 1 2 -- --spacing 0.625 --patch-size 144 128 80
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import SimpleITK as sitk
import torch
import torchio as tio

from heartseg.config import RunConfig
from heartseg.recipe import build_patch_loader, limit_threads, split_augmentation


def loader_throughput(config: RunConfig, subjects: list[tio.Subject], workers: int, worker_threads: int | None) -> dict:
    """One pass over an epoch's patches by a fresh loader: patches/s, and the time its processes spent in user and system mode."""
    transform, device_augmentation = split_augmentation(config)
    loader = build_patch_loader(replace(config, num_workers=workers), subjects, transform, torch.device('cpu'), worker_threads,
                                device_augmentation).loader
    before = _cpu_seconds()
    started = time.perf_counter()
    patches = sum(len(images) for images, *_ in loader)
    del loader
    gc.collect()  # the loader and its iterator hold each other: collecting them stops the workers, whose CPU time then counts
    seconds = time.perf_counter() - started
    user, system, faults = (after - first for after, first in zip(_cpu_seconds(), before))
    return {'patches_per_s': patches / seconds, 'patches_per_s_per_worker': patches / seconds / max(workers, 1),
            'user_s': user, 'system_s': system, 'system_share': system / (user + system), 'page_faults_per_patch': faults / patches}


def median_throughput(config: RunConfig, subjects: list[tio.Subject], workers: int, worker_threads: int | None, repeats: int) -> dict:
    runs = [loader_throughput(config, subjects, workers, worker_threads) for _ in range(repeats)]
    return {'workers': workers, **{key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}}


def transform_shares(config: RunConfig, subjects: list[tio.Subject], patches: int) -> dict[str, float]:
    """Share of one process's loader time in each transform, and in the rest: sampling, cropping, the one-hot target."""
    totals: dict[str, float] = {}
    pipeline, device_augmentation = split_augmentation(config)
    transforms = [] if pipeline is None else list(getattr(pipeline, 'transforms', [pipeline]))
    dataset = build_patch_loader(replace(config, num_workers=0), subjects, _timed_chain(transforms, totals), torch.device('cpu'),
                                 device_augmentation=device_augmentation).loader.dataset
    with _threads_as_in_a_worker():
        started = time.perf_counter()
        for index in range(patches):
            dataset[index]
        total = time.perf_counter() - started
    shares = {'crop, sampling and target': (total - sum(totals.values())) / total}
    shares.update({name: seconds / total for name, seconds in totals.items()})
    return {name: round(share, 3) for name, share in shares.items()}


@contextmanager
def _threads_as_in_a_worker() -> Iterator[None]:
    torch_threads, itk_threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    limit_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)


def _timed_chain(transforms: list[tio.Transform], totals: dict[str, float]) -> Callable[[tio.Subject], tio.Subject]:
    def apply(subject: tio.Subject) -> tio.Subject:
        for transform in transforms:
            started = time.perf_counter()
            subject = transform(subject)
            name = type(transform).__name__
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started
        return subject
    return apply


def _cpu_seconds() -> tuple[float, float, int]:
    """User and system seconds, and minor page faults, of this process and its exited children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime, own.ru_minflt + children.ru_minflt
