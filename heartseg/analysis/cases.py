"""Per-case dataset analysis: every problem by :mod:`heartseg.data.validation`'s rules, and the statistics.

Each case's headers and voxels are read once, in worker processes, and bad
data never raises: every problem is recorded with its case, so the report can
list them all. Shapes, spacings and bounding boxes are in canonical (RAS)
axis order, as training sees the volumes.

Example::

    spec = read_dataset(Path('data/Task02_Heart'), allow_duplicates=True)
    results = analyze_cases(unique_tasks([('training', case) for case in spec.cases], spec), workers=2)
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from multiprocessing import Pool
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from heartseg.data.cases import Case, DatasetSpec
from heartseg.data.fingerprint import CaseHeader, canonical_header
from heartseg.data.validation import SPACING_OUTLIER_FACTOR, CaseCheck, Problem, channels_first
from heartseg.files import canonical_folder
from heartseg.outputs import foreground_values

PERCENTILES = (0.5, 99.5)
# Like nnU-Net: pool this many voxels per case, so large cases do not dominate.
SAMPLES_PER_CASE = 10_000
AXES = 'xyz'
# Montage slices are strided down to this size before leaving the worker.
MONTAGE_MAX_PIXELS = 256


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
        """Record a dataset-level problem, found once every case is measured."""
        self.problems.append(Problem(self.case_id, kind, str(path), message))


# ---------------------------------------------------------------------------
# Reading the case list


def duplicate_problems(entries: list[tuple[str, Case]], root: Path) -> list[Problem]:
    """Case ids listed twice in a split or in both splits, and label files shared by cases."""
    problems = []
    for (split, case_id), count in Counter((split, case.case_id) for split, case in entries).items():
        if count > 1:
            problems.append(
                Problem(case_id, 'duplicate_entry', 'dataset.json', f'case listed {count} times in "{split}"')
            )
    training_ids = {case.case_id for split, case in entries if split == 'training'}
    for case_id in sorted({case.case_id for split, case in entries if split == 'test'} & training_ids):
        problems.append(
            Problem(case_id, 'duplicate_entry', 'dataset.json', 'case listed in both "training" and "test"')
        )
    owners: dict[Path, set[str]] = {}
    for _, case in entries:
        if case.label is not None:
            owners.setdefault(case.label, set()).add(case.case_id)
    for label, case_ids in owners.items():
        if len(case_ids) > 1:
            first, *others = sorted(case_ids)
            problems.append(
                Problem(
                    first, 'duplicate_entry', _relative(label, root), f'label file also used by {", ".join(others)}'
                )
            )
    return problems


def unique_tasks(entries: list[tuple[str, Case]], spec: DatasetSpec) -> list[CaseTask]:
    """One task per (split, case id): a duplicate is reported, not analysed twice."""
    tasks: dict[tuple[str, str], CaseTask] = {}
    for split, case in entries:
        tasks.setdefault(
            (split, case.case_id), CaseTask(case, split, tuple(spec.labels), len(spec.modalities), spec.root)
        )
    return list(tasks.values())


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(canonical_folder(root)).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------
# One case (runs in a worker process)


def analyze_case(task: CaseTask) -> CaseResult:
    """Measure one case and record its problems; bad data never raises."""
    case = task.case
    label = _relative(case.label, task.root) if case.label else ''
    result = CaseResult(case.case_id, task.split, _relative(case.image, task.root), label)
    check = CaseCheck(case.case_id)
    try:
        _measure(task, result, check)
    except Exception as error:  # a new way for a file to be broken must not stop the other cases
        check.add('analysis_failed', case.image, f'{type(error).__name__}: {error}')
    # The rules name absolute paths; the report names them inside the dataset.
    result.problems = [replace(p, file=_relative(Path(p.file), task.root)) for p in check.problems]
    return result


def _measure(task: CaseTask, result: CaseResult, check: CaseCheck) -> None:
    image_nifti = check.open(task.case.image)
    label_nifti = check.open(task.case.label) if task.case.label else None
    if image_nifti is not None and not check.dimensions(task.case.image, image_nifti, task.channels):
        image_nifti = None
    # The label is checked even when the image is unusable, so both sets of problems are reported.
    label = None if label_nifti is None else _label_voxels(task, image_nifti, label_nifti, check)
    if image_nifti is None:
        return
    result.header = canonical_header(task.case.case_id, image_nifti)
    result.dtype = str(image_nifti.get_data_dtype())
    result.scaling = _scaling(image_nifti)
    image = check.voxels(task.case.image, image_nifti, np.float32)
    if image is None:
        return
    check.intensity_spread(task.case.image, channels_first(image))
    # Reorient both with the image's affine: voxel (i, j, k) of each must stay paired.
    orientation = nib.io_orientation(image_nifti.affine)
    image = nib.orientations.apply_orientation(image, orientation)
    label = None if label is None else nib.orientations.apply_orientation(label, orientation)
    _measure_voxels(task, result, image, label)


def _scaling(image: nib.Nifti1Image) -> tuple[float, float] | None:
    # nibabel moves scl_slope/scl_inter from the header into the array proxy.
    slope, inter = float(getattr(image.dataobj, 'slope', 1.0)), float(getattr(image.dataobj, 'inter', 0.0))
    return None if (slope, inter) == (1.0, 0.0) else (slope, inter)


def _label_voxels(
    task: CaseTask, image_nifti: nib.Nifti1Image | None, label_nifti: nib.Nifti1Image, check: CaseCheck
) -> np.ndarray | None:
    """Check the label map; return it as integers when it pairs voxel for voxel with the image."""
    path = task.case.label
    if not check.dimensions(path, label_nifti, 1):
        return None
    if image_nifti is not None:
        check.same_grid(task.case.image, image_nifti, path, label_nifti)
    values = check.voxels(path, label_nifti)
    if values is None:
        return None
    check.label_values(path, np.unique(values), task.labels)
    # With equal shapes an affine mismatch still pairs voxels one to one, so statistics stay meaningful.
    if image_nifti is None or image_nifti.shape[:3] != label_nifti.shape[:3]:
        return None
    if values.dtype.kind == 'f':
        return np.rint(np.where(np.isfinite(values), values, 0)).astype(np.int64)
    return values


def _measure_voxels(task: CaseTask, result: CaseResult, image: np.ndarray, label: np.ndarray | None) -> None:
    """Intensity statistics, volumes, bounding box, samples and the montage slice."""
    rng = np.random.default_rng(zlib.crc32(task.case.case_id.encode()))
    result.image_stats = statistics(_finite(image.ravel()))
    if label is None:
        return
    mask = label > 0
    # A 3D mask picks whole voxels (all channels) of a 4D multi-channel image.
    foreground, background = _finite(image[mask].ravel()), _finite(image[~mask].ravel())
    result.foreground_stats = statistics(foreground)
    result.foreground_sample, result.background_sample = _sample(foreground, rng), _sample(background, rng)
    voxel_ml = float(np.prod(result.header.spacing)) / 1000
    result.volumes_ml = {
        value: int(np.count_nonzero(label == value)) * voxel_ml for value in foreground_values(task.labels)
    }
    result.foreground_fraction = float(np.count_nonzero(mask)) / mask.size
    result.foreground_bbox = _bounding_box(mask)
    result.slice_image, result.slice_label = _montage_slice(image, label, mask)


def _finite(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def statistics(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    low, high = np.percentile(values, PERCENTILES)
    return {
        'min': float(values.min()),
        'max': float(values.max()),
        'mean': float(values.mean(dtype=np.float64)),
        'std': float(values.std(dtype=np.float64)),
        'p0.5': float(low),
        'p99.5': float(high),
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
                result.add_problem(
                    'spacing_outlier',
                    result.image,
                    (
                        f'spacing {spacing:g} mm on axis {AXES[axis]} is outside [{low[axis]:g}, {high[axis]:g}] mm '
                        f'(the training median {median[axis]:g} mm divided '
                        f'and multiplied by {SPACING_OUTLIER_FACTOR:g})'
                    ),
                )


def attach_problems(results: list[CaseResult], problems: list[Problem]) -> None:
    """Give dataset-level problems to their case, so all problems list per case."""
    by_id = {}
    for result in results:
        by_id.setdefault(result.case_id, result)
    for problem in problems:
        by_id[problem.case_id].problems.insert(0, problem)
