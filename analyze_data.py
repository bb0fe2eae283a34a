"""Analyse an MSD-layout dataset: per-case statistics, a training plan and integrity problems.

Checks each case's header first and reads its voxels once, only for the
statistics, in parallel worker processes. Then it prints a report and writes
``fingerprint.json`` (summary, problems and per-case statistics),
``cases.csv`` (one row per case), ``report.txt`` and PNG figures into the
output folder. Every integrity problem is listed with its case; the exit
status is 2 when there is any, so a script can stop before training on bad
data.

Shapes, spacings and bounding boxes are in canonical (RAS) axis order, as
training sees the volumes; ``orientation`` is the order stored in the file.

Example:
    python analyze_data.py ../shared/data/LA2018 --output /tmp/la_analysis
    python analyze_data.py data/Task02_Heart --workers 4
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from heartseg.cli import Parser, integer
from heartseg.data import (
    Case,
    DatasetSpec,
    _resolve_inside,
    case_id_from_path,
    check_dimensions,
    check_same_grid,
    load_nifti,
    read_dataset,
)
from heartseg.errors import EXIT_USER_ERROR, UserError, run_cli
from heartseg.files import atomic_write, atomic_write_text, ensure_writable_dir
from heartseg.fingerprint import (
    ANISOTROPY_THRESHOLD,
    DEFAULT_LEVELS,
    MIN_SPACING_MM,
    PATCH_VOXELS,
    CaseHeader,
    canonical_header,
    median_resampled_shape,
    plan_for_device,
    plan_patch_size,
    suggest_target_spacing,
)

DEFAULT_OUTPUT_NAME = 'analysis'
# main.py's default U-Net has 4 levels, so every patch axis must divide by 2**4.
PATCH_DIVISOR = 2**DEFAULT_LEVELS
PERCENTILES = (0.5, 99.5)
STAT_KEYS = ('min', 'max', 'mean', 'std', 'p0.5', 'p99.5')
# Like nnU-Net: pool this many voxels per case, so large cases do not dominate.
SAMPLES_PER_CASE = 10_000
# A spacing axis outside [median / factor, median * factor] is an outlier.
SPACING_OUTLIER_FACTOR = 2.0
AXES = 'xyz'
MONTAGE_COLUMNS = 10
MONTAGE_MAX_CASES = 120
# Montage slices are strided down to this size before leaving the worker.
MONTAGE_MAX_PIXELS = 256
FIGURE_DPI = 100
PROBLEM_KINDS = {
    'missing_file': 'a file listed in dataset.json does not exist',
    'unreadable_file': 'a file is empty, truncated or not NIfTI',
    'duplicate_entry': 'a case or label file is listed more than once',
    'not_3d': 'an image is not 3D (or 4D with one channel per modality)',
    'grid_mismatch': 'image and label differ in shape or affine',
    'non_finite': 'NaN or Inf voxels',
    'non_integer_label': 'label values that are not integers',
    'undeclared_label': 'label values missing from dataset.json "labels"',
    'empty_label': 'a label map without foreground',
    'spacing_outlier': f'a spacing axis outside [median/{SPACING_OUTLIER_FACTOR:g}, median*{SPACING_OUTLIER_FACTOR:g}]',
    'analysis_failed': 'the analysis itself failed on this case',
}


@dataclass(frozen=True)
class Problem:
    """One integrity problem: which case, which file, what kind and what exactly."""

    case_id: str
    kind: str
    file: str
    message: str


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs to analyse one case."""

    case: Case
    split: str
    labels: tuple[int, ...]
    channels: int
    root: Path


@dataclass
class CaseResult:
    """Everything measured for one case; ``None`` where it could not be measured."""

    case_id: str
    split: str
    image: str
    label: str
    problems: list[Problem] = field(default_factory=list)
    header: CaseHeader | None = None
    dtype: str | None = None
    scaling: tuple[float, float] | None = None
    image_stats: dict[str, float] | None = None
    foreground_stats: dict[str, float] | None = None
    volumes_ml: dict[int, float] | None = None
    foreground_fraction: float | None = None
    foreground_bbox: list[list[int]] | None = None
    foreground_sample: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    background_sample: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    slice_image: np.ndarray | None = None
    slice_label: np.ndarray | None = None

    def add_problem(self, kind: str, path: Path | str, message: str) -> None:
        self.problems.append(Problem(self.case_id, kind, str(path), message))


# ---------------------------------------------------------------------------
# Reading the case list


def read_test_cases(root: Path) -> list[Case]:
    """Test images from dataset.json ``"test"``, or else every file in ``imagesTs/``."""
    json_path = root / 'dataset.json'
    listed = json.loads(json_path.read_text()).get('test') or []
    if not isinstance(listed, list):
        raise UserError(json_path, f'"test" must be a list, got {type(listed).__name__}')
    if not listed and (root / 'imagesTs').is_dir():
        listed = sorted(p.relative_to(root).as_posix() for p in (root / 'imagesTs').glob('*.nii*'))
    paths = [entry.get('image') if isinstance(entry, dict) else entry for entry in listed]
    images = [_resolve_inside(root, path, json_path, 'test') for path in paths]
    return [Case(case_id_from_path(image), image) for image in images]


def duplicate_problems(entries: list[tuple[str, Case]], root: Path) -> list[Problem]:
    """Case ids listed twice in a split or in both splits, and label files shared by cases."""
    problems = []
    for (split, case_id), count in Counter((split, case.case_id) for split, case in entries).items():
        if count > 1:
            problems.append(Problem(case_id, 'duplicate_entry', 'dataset.json', f'case listed {count} times in "{split}"'))
    training_ids = {case.case_id for split, case in entries if split == 'training'}
    for case_id in sorted({case.case_id for split, case in entries if split == 'test'} & training_ids):
        problems.append(Problem(case_id, 'duplicate_entry', 'dataset.json', 'case listed in both "training" and "test"'))
    owners: dict[Path, set[str]] = {}
    for _, case in entries:
        if case.label is not None:
            owners.setdefault(case.label, set()).add(case.case_id)
    for label, case_ids in owners.items():
        if len(case_ids) > 1:
            first, *others = sorted(case_ids)
            problems.append(Problem(first, 'duplicate_entry', _relative(label, root), f'label file also used by {", ".join(others)}'))
    return problems


def unique_tasks(entries: list[tuple[str, Case]], spec: DatasetSpec) -> list[CaseTask]:
    """One task per (split, case id): a duplicate is reported, not analysed twice."""
    tasks: dict[tuple[str, str], CaseTask] = {}
    for split, case in entries:
        tasks.setdefault((split, case.case_id), CaseTask(case, split, tuple(spec.labels), len(spec.modalities), spec.root))
    return list(tasks.values())


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------
# One case (runs in a worker process)


def analyze_case(task: CaseTask) -> CaseResult:
    """Measure one case and record its problems; bad data never raises."""
    case = task.case
    label = _relative(case.label, task.root) if case.label else ''
    result = CaseResult(case.case_id, task.split, _relative(case.image, task.root), label)
    try:
        _measure(task, result)
    except Exception as error:  # a new way for a file to be broken must not stop the other cases
        result.add_problem('analysis_failed', result.image, f'{type(error).__name__}: {error}')
    # data.py's errors name absolute paths; the report names them inside the dataset.
    result.problems = [replace(p, file=_relative(Path(p.file), task.root)) for p in result.problems]
    return result


def _measure(task: CaseTask, result: CaseResult) -> None:
    image_nifti = _open(task.case.image, result)
    label_nifti = _open(task.case.label, result) if task.case.label else None
    if image_nifti is not None and not _passes(result, 'not_3d', check_dimensions, task.case.image, image_nifti, task.channels):
        image_nifti = None
    # The label is checked even when the image is unusable, so both sets of problems are reported.
    label = None if label_nifti is None else _label_voxels(task, image_nifti, label_nifti, result)
    if image_nifti is None:
        return
    result.header = canonical_header(task.case.case_id, image_nifti)
    result.dtype = str(image_nifti.get_data_dtype())
    result.scaling = _scaling(image_nifti)
    image = _voxels(task.case.image, image_nifti, result, np.float32)
    if image is None:
        return
    # Reorient both with the image's affine: voxel (i, j, k) of each must stay paired.
    orientation = nib.io_orientation(image_nifti.affine)
    image = nib.orientations.apply_orientation(image, orientation)
    label = None if label is None else nib.orientations.apply_orientation(label, orientation)
    _measure_voxels(task, result, image, label)


def _open(path: Path, result: CaseResult) -> nib.Nifti1Image | None:
    try:
        return load_nifti(path)
    except UserError as error:
        result.add_problem('unreadable_file' if path.is_file() else 'missing_file', path, error.problem)
        return None


def _passes(result: CaseResult, kind: str, check: Callable[..., None], *args: Any) -> bool:
    """Run one of data.py's checks, recording its error as a problem of ``kind``."""
    try:
        check(*args)
        return True
    except UserError as error:
        result.add_problem(kind, error.where, error.problem)
        return False


def _scaling(image: nib.Nifti1Image) -> tuple[float, float] | None:
    # nibabel moves scl_slope/scl_inter from the header into the array proxy.
    slope, inter = float(getattr(image.dataobj, 'slope', 1.0)), float(getattr(image.dataobj, 'inter', 0.0))
    return None if (slope, inter) == (1.0, 0.0) else (slope, inter)


def _voxels(path: Path, image: nib.Nifti1Image, result: CaseResult, dtype: type | None = None) -> np.ndarray | None:
    """The voxel array, recording truncation and NaN/Inf as problems.

    Unlike ``data.read_voxels`` it keeps non-finite voxels, so the other
    checks and the statistics still run on such a case.
    """
    try:
        data = np.asarray(image.dataobj, dtype=dtype)
    except Exception as error:  # truncated gzip streams fail only here
        result.add_problem('unreadable_file', path, f'cannot read voxel data, file may be truncated or corrupt ({type(error).__name__}: {error})')
        return None
    if data.dtype.kind == 'f':
        bad = data.size - int(np.count_nonzero(np.isfinite(data)))
        if bad:
            result.add_problem('non_finite', path, f'contains {bad} NaN or Inf voxels')
    return data


def _label_voxels(task: CaseTask, image_nifti: nib.Nifti1Image | None, label_nifti: nib.Nifti1Image, result: CaseResult) -> np.ndarray | None:
    """Check the label map; return it as integers when it pairs voxel for voxel with the image."""
    path = task.case.label
    if not _passes(result, 'not_3d', check_dimensions, path, label_nifti, 1):
        return None
    if image_nifti is not None:
        _passes(result, 'grid_mismatch', check_same_grid, task.case.image, image_nifti, path, label_nifti)
    values = _voxels(path, label_nifti, result)
    if values is None:
        return None
    if values.dtype.kind == 'f':
        values = np.where(np.isfinite(values), values, 0)
    _check_label_values(path, np.unique(values), task.labels, result)
    # With equal shapes an affine mismatch still pairs voxels one to one, so statistics stay meaningful.
    if image_nifti is None or image_nifti.shape[:3] != label_nifti.shape[:3]:
        return None
    return np.rint(values).astype(np.int64) if values.dtype.kind == 'f' else values


def _check_label_values(path: Path, values: np.ndarray, declared: tuple[int, ...], result: CaseResult) -> None:
    fractional = values[values != np.rint(values)]
    if fractional.size:
        result.add_problem('non_integer_label', path, f'label values must be integers, found {fractional[:5].tolist()}')
    undeclared = sorted(set(np.rint(values).astype(int).tolist()) - set(declared))
    if undeclared:
        result.add_problem('undeclared_label', path, f'label values {undeclared} are not declared in dataset.json labels {sorted(declared)}')
    if not np.any(values != 0):
        result.add_problem('empty_label', path, 'label map has no foreground voxels')


def _measure_voxels(task: CaseTask, result: CaseResult, image: np.ndarray, label: np.ndarray | None) -> None:
    """Intensity statistics, volumes, bounding box, samples and the montage slice."""
    rng = np.random.default_rng(zlib.crc32(task.case.case_id.encode()))
    result.image_stats = _statistics(_finite(image.ravel()))
    if label is None:
        return
    mask = label > 0
    # A 3D mask picks whole voxels (all channels) of a 4D multi-channel image.
    foreground, background = _finite(image[mask].ravel()), _finite(image[~mask].ravel())
    result.foreground_stats = _statistics(foreground)
    result.foreground_sample, result.background_sample = _sample(foreground, rng), _sample(background, rng)
    voxel_ml = float(np.prod(result.header.spacing)) / 1000
    result.volumes_ml = {value: int(np.count_nonzero(label == value)) * voxel_ml for value in task.labels if value != 0}
    result.foreground_fraction = float(np.count_nonzero(mask)) / mask.size
    result.foreground_bbox = _bounding_box(mask)
    result.slice_image, result.slice_label = _montage_slice(image, label, mask)


def _finite(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def _statistics(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    low, high = np.percentile(values, PERCENTILES)
    return {
        'min': float(values.min()), 'max': float(values.max()),
        'mean': float(values.mean(dtype=np.float64)), 'std': float(values.std(dtype=np.float64)),
        'p0.5': float(low), 'p99.5': float(high),
    }


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size <= SAMPLES_PER_CASE:
        return values.astype(np.float32)
    return rng.choice(values, SAMPLES_PER_CASE).astype(np.float32)


def _bounding_box(mask: np.ndarray) -> list[list[int]] | None:
    """Per axis ``[start, stop)`` voxel indices of the foreground."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def _montage_slice(image: np.ndarray, label: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The axial slice through the foreground centroid (the middle slice if there is none)."""
    per_slice = mask.sum(axis=(0, 1))
    depth = mask.shape[2]
    index = int(round(np.average(np.arange(depth), weights=per_slice))) if per_slice.any() else depth // 2
    stride = max(1, math.ceil(max(mask.shape[:2]) / MONTAGE_MAX_PIXELS))
    plane = image[::stride, ::stride, index]
    plane = plane[..., 0] if plane.ndim == 3 else plane  # first channel of a multi-channel image
    return plane.astype(np.float32), label[::stride, ::stride, index].astype(np.uint8)


def analyze_cases(tasks: list[CaseTask], workers: int) -> list[CaseResult]:
    """Analyse every case in ``workers`` processes, in order, with a progress bar."""
    with ExitStack() as stack:
        mapper = map
        if workers > 1 and len(tasks) > 1:
            mapper = stack.enter_context(Pool(min(workers, len(tasks)))).imap
        progress = tqdm(mapper(analyze_case, tasks), total=len(tasks), desc='Analysing', unit='case', leave=False)
        return list(progress)


# ---------------------------------------------------------------------------
# Dataset level


def spacing_outliers(results: list[CaseResult]) -> None:
    """Flag spacing axes outside [median/2, median*2] of the training median for that axis."""
    spacings = [r.header.spacing for r in results if r.header and r.split == 'training']
    if not spacings:
        return
    median = np.median(spacings, axis=0)
    low, high = median / SPACING_OUTLIER_FACTOR, median * SPACING_OUTLIER_FACTOR
    for result in (r for r in results if r.header):
        for axis, spacing in enumerate(result.header.spacing):
            if not low[axis] <= spacing <= high[axis]:
                result.add_problem('spacing_outlier', result.image, (
                    f'spacing {spacing:g} mm on axis {AXES[axis]} is outside [{low[axis]:g}, {high[axis]:g}] mm '
                    f'(the training median {median[axis]:g} mm divided and multiplied by {SPACING_OUTLIER_FACTOR:g})'))


def attach_problems(results: list[CaseResult], problems: list[Problem]) -> None:
    """Give dataset-level problems to their case, so all problems list per case."""
    by_id = {}
    for result in results:
        by_id.setdefault(result.case_id, result)
    for problem in problems:
        by_id[problem.case_id].problems.insert(0, problem)


def geometry_summary(results: list[CaseResult]) -> dict[str, Any] | None:
    headers = [r.header for r in results if r.header]
    if not headers:
        return None
    shapes, spacings = np.array([h.shape for h in headers]), np.array([h.spacing for h in headers])
    return {
        'cases': len(headers),
        'shape': {name: getattr(np, name)(shapes, axis=0).tolist() for name in ('median', 'min', 'max')},
        'spacing': {name: getattr(np, name)(spacings, axis=0).tolist() for name in ('median', 'min', 'max')},
        'orientations': dict(Counter(h.orientation for h in headers).most_common()),
        'dtypes': dict(Counter(r.dtype for r in results if r.dtype).most_common()),
        'scaled_cases': sum(r.scaling is not None for r in results),
    }


def plan_summary(results: list[CaseResult]) -> dict[str, Any] | None:
    """Target spacing and patch size by main.py's planning rules (CPU budget, 4 levels)."""
    headers = [r.header for r in results if r.header and r.split == 'training']
    if not headers:
        return None
    target = suggest_target_spacing([h.spacing for h in headers])
    median_spacing = np.median([h.spacing for h in headers], axis=0)
    cpu_spacing, cpu_patch = plan_for_device(headers, 'cpu')
    median_shape = median_resampled_shape(headers, target)
    patch = plan_patch_size(median_shape, PATCH_DIVISOR, PATCH_VOXELS['cpu'])
    # The same test suggest_target_spacing makes, repeated here only to explain it in the report.
    anisotropic = median_spacing.max() / median_spacing.min() > ANISOTROPY_THRESHOLD
    return {
        'target_spacing': list(target),
        'median_spacing': median_spacing.tolist(),
        'anisotropic_axis': AXES[int(np.argmax(median_spacing))] if anisotropic else None,
        'median_resampled_shape': list(median_shape),
        'patch_size': list(patch),
        'patch_extent_mm': [p * s for p, s in zip(patch, target)],
        'patch_divisor': PATCH_DIVISOR,
        'patch_voxel_budget': PATCH_VOXELS['cpu'],
        'cpu_training_spacing': list(cpu_spacing),
        'cpu_training_patch_size': list(cpu_patch),
    }


def intensity_summary(results: list[CaseResult]) -> dict[str, Any]:
    """Pooled statistics of the per-case samples (nnU-Net's normalisation fingerprint)."""
    training = [r for r in results if r.split == 'training']
    summary: dict[str, Any] = {'samples_per_case': SAMPLES_PER_CASE}
    for region, attribute in (('foreground', 'foreground_sample'), ('background', 'background_sample')):
        pooled = np.concatenate([getattr(r, attribute) for r in training] or [np.empty(0, np.float32)])
        stats = _statistics(pooled)
        summary[region] = stats and {**stats, 'median': float(np.median(pooled))}
    return summary


def label_summary(results: list[CaseResult], spec: DatasetSpec) -> dict[str, Any]:
    """Per foreground label: class balance and the spread of structure volumes."""
    measured = [r for r in results if r.split == 'training' and r.volumes_ml is not None]
    total_ml = [float(np.prod(r.header.shape) * np.prod(r.header.spacing)) / 1000 for r in measured]
    summary = {}
    for value in spec.foreground_labels:
        volumes = np.array([r.volumes_ml[value] for r in measured])
        if not volumes.size:
            continue
        fractions = volumes / np.array(total_ml)
        summary[str(value)] = {
            'name': spec.labels[value],
            'voxel_fraction': float(volumes.sum() / sum(total_ml)),
            'case_fraction': {'median': float(np.median(fractions)), 'min': float(fractions.min()), 'max': float(fractions.max())},
            'cases_present': int(np.count_nonzero(volumes)),
            'cases_measured': len(measured),
            'volume_ml': {
                'median': float(np.median(volumes)), 'p25': float(np.percentile(volumes, 25)), 'p75': float(np.percentile(volumes, 75)),
                'min': float(volumes.min()), 'min_case': measured[int(volumes.argmin())].case_id,
                'max': float(volumes.max()), 'max_case': measured[int(volumes.argmax())].case_id,
            },
        }
    return summary


def bbox_summary(results: list[CaseResult]) -> dict[str, list[float]] | None:
    """Median and largest foreground extent in mm: what a patch has to see."""
    extents = [np.diff(r.foreground_bbox, axis=1)[:, 0] * np.array(r.header.spacing) for r in results if r.foreground_bbox]
    if not extents:
        return None
    return {'median': np.median(extents, axis=0).tolist(), 'max': np.max(extents, axis=0).tolist()}


def summarise(spec: DatasetSpec, results: list[CaseResult]) -> dict[str, Any]:
    splits = Counter(r.split for r in results)
    return {
        'dataset': {
            'name': spec.name, 'root': str(spec.root),
            'labels': {str(k): v for k, v in spec.labels.items()}, 'modalities': {str(k): v for k, v in spec.modalities.items()},
            'training_cases': splits['training'], 'test_cases': splits['test'],
        },
        'geometry': {split: geometry_summary([r for r in results if r.split == split]) for split in splits},
        'plan': plan_summary(results),
        'intensity': intensity_summary(results),
        'labels': label_summary(results, spec),
        'foreground_extent_mm': bbox_summary(results),
    }


# ---------------------------------------------------------------------------
# Report


def _vector(values: Any, digits: int = 4) -> str:
    return '(' + ', '.join(f'{float(v):.{digits}g}' for v in values) + ')'


def _counts(counter: dict[str, int]) -> str:
    return ', '.join(f'{name} x{count}' for name, count in counter.items())


def format_report(summary: dict[str, Any], problems: list[Problem]) -> str:
    dataset = summary['dataset']
    lines = [
        f'Dataset {dataset["name"]} ({dataset["root"]}): {dataset["training_cases"]} training cases, {dataset["test_cases"]} test cases',
        'Labels: ' + ', '.join(f'{k} {v}' for k, v in dataset['labels'].items()),
        '',
    ]
    lines += _geometry_lines(summary['geometry'])
    lines += _plan_lines(summary['plan'], summary['foreground_extent_mm'])
    lines += _intensity_lines(summary['intensity'])
    lines += _label_lines(summary['labels'])
    lines += _problem_lines(problems)
    return '\n'.join(lines)


def _geometry_lines(geometry: dict[str, Any]) -> list[str]:
    lines = ['Geometry (canonical RAS axis order)']
    for split, stats in geometry.items():
        if stats is None:
            lines.append(f'  {split}: no readable case')
            continue
        lines += [
            f'  {split} ({stats["cases"]} readable cases)       median                   min                      max',
            '    shape (voxels)   ' + ''.join(f'{_vector(stats["shape"][k]):25}' for k in ('median', 'min', 'max')),
            '    spacing (mm)     ' + ''.join(f'{_vector(stats["spacing"][k]):25}' for k in ('median', 'min', 'max')),
            f'    orientation: {_counts(stats["orientations"])};  data type on disk: {_counts(stats["dtypes"])}'
            + (f';  {stats["scaled_cases"]} cases scaled by scl_slope/scl_inter (read as float)' if stats['scaled_cases'] else ''),
        ]
    return lines + ['']


def _plan_lines(plan: dict[str, Any] | None, extent: dict[str, list[float]] | None) -> list[str]:
    if plan is None:
        return ['Plan: no readable training case to plan from', '']
    rule = (f'axis {plan["anisotropic_axis"]} is over {ANISOTROPY_THRESHOLD:g}x the finest, so it uses its 10th percentile'
            if plan['anisotropic_axis'] else f'no axis is over {ANISOTROPY_THRESHOLD:g}x the finest, so no 10th-percentile override')
    budget = plan['patch_voxel_budget']
    lines = [
        'Plan (nnU-Net rules, computed by the fingerprint.py functions main.py plans with)',
        f'  target spacing {_vector(plan["target_spacing"])} mm: the median spacing per axis over training cases; '
        f'an axis more than {ANISOTROPY_THRESHOLD:g}x the finest would use its 10th percentile instead ({rule}).',
        f'  patch size {plan["patch_size"]} voxels = {_vector(plan["patch_extent_mm"])} mm: the median case shape after resampling, '
        f'{_vector(plan["median_resampled_shape"])}, rounded down to multiples of {plan["patch_divisor"]} (a 4-level U-Net), '
        f'then the longest axis shrunk by {plan["patch_divisor"]} until it fits main.py\'s CPU budget of {budget:,} voxels '
        '(main.py may adjust for its device, e.g. a larger patch budget on a GPU).',
        f'  main.py on a CPU trains at {_vector(plan["cpu_training_spacing"])} mm (no finer than {MIN_SPACING_MM["cpu"]:g} mm there) '
        f'with patch {plan["cpu_training_patch_size"]}.',
    ]
    if extent:
        lines.append(f'  foreground bounding box extent: median {_vector(extent["median"])} mm, largest {_vector(extent["max"])} mm')
    return lines + ['']


def _intensity_lines(intensity: dict[str, Any]) -> list[str]:
    lines = [f'Intensity, pooled from up to {intensity["samples_per_case"]:,} voxels per training case (foreground = label > 0)']
    for region in ('foreground', 'background'):
        stats = intensity[region]
        if stats:
            lines.append(f'  {region:10}  mean {stats["mean"]:.4g}  std {stats["std"]:.4g}  median {stats["median"]:.4g}  '
                         f'0.5-99.5 percentile [{stats["p0.5"]:.4g}, {stats["p99.5"]:.4g}]  range [{stats["min"]:.4g}, {stats["max"]:.4g}]')
    lines.append('  main.py z-scores each image on its own; the foreground percentiles are the clipping range nnU-Net would use for CT-like data.')
    return lines + ['']


def _label_lines(labels: dict[str, Any]) -> list[str]:
    lines = ['Class balance and structure volumes (training cases)']
    for value, stats in labels.items():
        volume, fraction = stats['volume_ml'], stats['case_fraction']
        lines += [
            f'  {value} {stats["name"]}: {stats["voxel_fraction"]:.2%} of all voxels (per case median {fraction["median"]:.2%}, '
            f'range {fraction["min"]:.2%}-{fraction["max"]:.2%}); present in {stats["cases_present"]}/{stats["cases_measured"]} cases',
            f'      volume mL: median {volume["median"]:.4g}, IQR {volume["p25"]:.4g}-{volume["p75"]:.4g}, '
            f'min {volume["min"]:.4g} ({volume["min_case"]}), max {volume["max"]:.4g} ({volume["max_case"]})',
        ]
    if not labels:
        lines.append('  no label could be measured')
    return lines + ['']


def _problem_lines(problems: list[Problem]) -> list[str]:
    if not problems:
        return ['Integrity: no problems found']
    cases = len({p.case_id for p in problems})
    lines = [f'Integrity: {len(problems)} problems in {cases} cases']
    lines += [f'  {p.case_id}  {p.kind}  {p.file}: {p.message}' for p in problems]
    return lines


# ---------------------------------------------------------------------------
# Files


def case_record(result: CaseResult) -> dict[str, Any]:
    header = result.header
    return {
        'case_id': result.case_id, 'split': result.split, 'image': result.image, 'label': result.label,
        'shape': list(header.shape) if header else None,
        'spacing': list(header.spacing) if header else None,
        'orientation': header.orientation if header else None,
        'dtype': result.dtype, 'scaling': list(result.scaling) if result.scaling else None,
        'intensity': {'image': result.image_stats, 'foreground': result.foreground_stats},
        'volume_ml': None if result.volumes_ml is None else {str(k): v for k, v in result.volumes_ml.items()},
        'foreground_fraction': result.foreground_fraction,
        'foreground_bbox': result.foreground_bbox,
        'problems': [p.kind for p in result.problems],
    }


def csv_row(record: dict[str, Any], foreground_labels: list[int]) -> dict[str, Any]:
    row = {key: record[key] for key in ('split', 'case_id', 'image', 'label', 'orientation', 'dtype')}
    row['scl_slope'], row['scl_inter'] = record['scaling'] or (None, None)
    for key in ('shape', 'spacing'):
        row.update({f'{key}_{name}': record[key][axis] if record[key] else None for axis, name in enumerate(AXES)})
    for region, stats in record['intensity'].items():
        row.update({f'{region}_{key}': (stats or {}).get(key) for key in STAT_KEYS})
    row['foreground_fraction'] = record['foreground_fraction']
    for axis, name in enumerate(AXES):
        box = record['foreground_bbox']
        row[f'bbox_{name}_start'], row[f'bbox_{name}_stop'] = box[axis] if box else (None, None)
    for value in foreground_labels:
        row[f'volume_ml_{value}'] = (record['volume_ml'] or {}).get(str(value))
    row['problems'] = ' '.join(record['problems'])
    return {key: '' if value is None else f'{value:.6g}' if isinstance(value, float) else value for key, value in row.items()}


def to_json(value: Any) -> Any:
    """Plain JSON types; NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_tables(output: Path, summary: dict[str, Any], results: list[CaseResult], problems: list[Problem], spec: DatasetSpec) -> list[Path]:
    records = [case_record(r) for r in results]
    fingerprint = {
        **summary,
        'problem_kinds': PROBLEM_KINDS,
        'problems': [vars(p) for p in problems],
        'cases': records,
    }
    atomic_write_text(output / 'fingerprint.json', json.dumps(to_json(fingerprint), indent=1))
    rows = [csv_row(record, spec.foreground_labels) for record in records]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / 'cases.csv', buffer.getvalue())
    return [output / 'fingerprint.json', output / 'cases.csv']


def atomic_savefig(figure: Figure, path: Path) -> None:
    """Render ``figure`` with Agg and move the PNG into place atomically."""
    FigureCanvasAgg(figure)
    atomic_write(path, lambda temporary: figure.savefig(temporary, format='png', dpi=FIGURE_DPI))


# ---------------------------------------------------------------------------
# Figures


def intensity_figure(results: list[CaseResult], intensity: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(8, 4.5), layout='constrained')
    axes = figure.add_subplot()
    training = [r for r in results if r.split == 'training']
    foreground = np.concatenate([r.foreground_sample for r in training] or [np.empty(0)])
    background = np.concatenate([r.background_sample for r in training] or [np.empty(0)])
    if foreground.size and background.size:
        low, high = np.percentile(np.concatenate([foreground, background]), (0.1, 99.9))
        bins = np.linspace(low, high, 100) if high > low else 50
        axes.hist(background, bins=bins, density=True, histtype='stepfilled', alpha=0.5, color='tab:gray', label='background')
        axes.hist(foreground, bins=bins, density=True, histtype='stepfilled', alpha=0.5, color='tab:red', label='foreground')
        for bound in (intensity['foreground']['p0.5'], intensity['foreground']['p99.5']):
            axes.axvline(bound, color='tab:red', linestyle='--', linewidth=1)
        axes.legend(title='dashed: foreground 0.5-99.5 %')
    else:
        axes.text(0.5, 0.5, 'no labelled voxels to compare', ha='center', transform=axes.transAxes)
    axes.set(xlabel='intensity', ylabel='density', title=f'Intensity, pooled samples from {len(training)} training cases')
    return figure


def geometry_figure(results: list[CaseResult]) -> Figure:
    """Spacing (top) and shape (bottom) scatter plots for each pair of axes."""
    figure = Figure(figsize=(12, 7.5), layout='constrained')
    measured = [r for r in results if r.header]
    outlier = np.array([any(p.kind == 'spacing_outlier' for p in r.problems) for r in measured], dtype=bool)
    for row, (name, unit) in enumerate((('spacing', 'mm'), ('shape', 'voxels'))):
        values = np.array([getattr(r.header, name) for r in measured], dtype=float).reshape(-1, 3)
        for column, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            axes = figure.add_subplot(2, 3, row * 3 + column + 1)
            axes.scatter(values[~outlier, a], values[~outlier, b], s=14, alpha=0.6, label='cases')
            if outlier.any():
                axes.scatter(values[outlier, a], values[outlier, b], s=30, color='tab:red', marker='x', label='spacing outlier')
                axes.legend(fontsize=7)
            axes.set(xlabel=f'{name} {AXES[a]} ({unit})', ylabel=f'{name} {AXES[b]} ({unit})')
            axes.grid(alpha=0.3)
    figure.suptitle(f'Spacing and shape of {len(measured)} cases (canonical RAS axes; identical cases overlap)')
    return figure


def volume_figure(results: list[CaseResult], spec: DatasetSpec) -> Figure:
    figure = Figure(figsize=(8, 4.5), layout='constrained')
    axes = figure.add_subplot()
    measured = [r for r in results if r.volumes_ml is not None]
    for value in spec.foreground_labels:
        volumes = [r.volumes_ml[value] for r in measured]
        if volumes:
            axes.hist(volumes, bins=min(30, max(5, len(volumes) // 2)), alpha=0.6, label=f'{value} {spec.labels[value]} (median {np.median(volumes):.4g} mL)')
    if measured:
        axes.legend()
    axes.set(xlabel='structure volume (mL)', ylabel='cases', title=f'Structure volumes of {len(measured)} labelled cases')
    return figure


def montage_figure(results: list[CaseResult], spec: DatasetSpec) -> Figure:
    """One axial slice per case through the label centroid, label contours on top."""
    shown = [r for r in results if r.slice_image is not None][:MONTAGE_MAX_CASES]
    columns = max(1, min(MONTAGE_COLUMNS, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure = Figure(figsize=(max(8.0, 1.6 * columns), 1.75 * rows + 0.7), layout='constrained')
    colours = ('red', 'yellow', 'cyan', 'lime', 'magenta', 'orange')
    for index, result in enumerate(shown):
        axes = figure.add_subplot(rows, columns, index + 1)
        _draw_tile(axes, result, spec.foreground_labels, colours)
    labelled = sum(r.slice_image is not None for r in results)
    legend = ', '.join(f'{colours[i % len(colours)]}: {spec.labels[v]}' for i, v in enumerate(spec.foreground_labels))
    figure.suptitle(f'Axial slice through the label centroid, {len(shown)} of {labelled} labelled cases\n'
                    f'radiological view (patient right on the left, anterior up); {legend}; red title: case has problems', fontsize=9)
    return figure


def _draw_tile(axes: Any, result: CaseResult, foreground_labels: list[int], colours: tuple[str, ...]) -> None:
    # Rows = anterior-posterior, columns = right-left flipped: the radiological convention.
    image = result.slice_image.T[::-1, ::-1]
    label = result.slice_label.T[::-1, ::-1]
    low, high = np.percentile(image[np.isfinite(image)], PERCENTILES) if np.isfinite(image).any() else (0, 1)
    spacing = result.header.spacing
    axes.imshow(image, cmap='gray', vmin=low, vmax=high, aspect=spacing[1] / spacing[0], interpolation='nearest')
    for index, value in enumerate(foreground_labels):
        if (label == value).any():
            axes.contour(label == value, levels=[0.5], colors=colours[index % len(colours)], linewidths=0.8)
    volume = sum(result.volumes_ml.values()) if result.volumes_ml else 0.0
    axes.set_title(f'{_short(result.case_id)}\n{volume:.3g} mL', fontsize=5.5, color='red' if result.problems else 'black', pad=2)
    axes.set_axis_off()


def _short(case_id: str, length: int = 22) -> str:
    half = (length - 1) // 2
    return case_id if len(case_id) <= length else f'{case_id[:half]}…{case_id[-half:]}'


def write_figures(output: Path, results: list[CaseResult], summary: dict[str, Any], spec: DatasetSpec) -> list[Path]:
    figures = {
        'intensity_histograms.png': intensity_figure(results, summary['intensity']),
        'spacing_shape.png': geometry_figure(results),
        'structure_volumes.png': volume_figure(results, spec),
        'montage.png': montage_figure(results, spec),
    }
    for name, figure in figures.items():
        atomic_savefig(figure, output / name)
    return [output / name for name in figures]


# ---------------------------------------------------------------------------
# Command line


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the docstring's example lines as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A None default means "derived"; the help text says from what.
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest.replace('``', ''), formatter_class=_HelpFormatter)
    parser.add_argument('data_dir', type=Path, metavar='DATA_DIR', help='MSD-layout dataset folder: dataset.json, imagesTr/, labelsTr/ and optional imagesTs/')
    parser.add_argument('--output', type=Path, help=f'folder for the report, fingerprint.json, cases.csv and figures (default: DATA_DIR/{DEFAULT_OUTPUT_NAME})')
    parser.add_argument('--workers', type=integer(1), default=2, help='worker processes that read cases in parallel')
    return parser


def prepare_output(output: Path | None, data_dir: Path) -> Path:
    """The output folder, checked writable before any case is read."""
    if output is not None:
        ensure_writable_dir(output)
        return output
    default = data_dir / DEFAULT_OUTPUT_NAME
    try:
        ensure_writable_dir(default)
    except UserError as error:
        raise UserError(data_dir, f'cannot write the report into {default} ({error.problem}); pass --output DIR to write it elsewhere') from None
    return default


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = read_dataset(args.data_dir, allow_duplicates=True)
    entries = [('training', case) for case in spec.cases] + [('test', case) for case in read_test_cases(args.data_dir)]
    output = prepare_output(args.output, args.data_dir)
    results = analyze_cases(unique_tasks(entries, spec), args.workers)
    attach_problems(results, duplicate_problems(entries, args.data_dir))
    spacing_outliers(results)
    problems = [problem for result in results for problem in result.problems]
    summary = summarise(spec, results)
    report = format_report(summary, problems)
    written = write_tables(output, summary, results, problems, spec) + write_figures(output, results, summary, spec)
    atomic_write_text(output / 'report.txt', report + '\n')
    print(report)
    print(f'\nWrote {output / "report.txt"}, ' + ', '.join(path.name for path in written))
    if problems:
        print(f'{len(problems)} integrity problems found (listed above); exit status {EXIT_USER_ERROR}', file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
