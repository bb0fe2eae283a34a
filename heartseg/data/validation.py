"""The one rule set a case must pass: used strictly by training, exhaustively by analysis.

Every rule records a :class:`Problem` in a :class:`CaseCheck`. A strict check
(training, prediction) raises the first error at once as a one-line
:class:`~heartseg.errors.UserError`; a collecting check (``analyze_data.py``)
keeps going and lists every problem. Warnings (an empty label map) never stop
either.

Example:
    >>> check = CaseCheck('case_1')
    >>> check.label_values(Path('la_1.nii.gz'), np.array([0.0, 2.0]), declared=(0, 1))
    >>> [(problem.kind, problem.message) for problem in check.problems]
    [('undeclared_label', 'label values [2] are not declared in dataset.json labels [0, 1]')]
    >>> CaseCheck('case_1', strict=True).label_values(Path('la_1.nii.gz'), np.array([0.5]), declared=(0, 1))
    Traceback (most recent call last):
    ...
    heartseg.errors.UserError: la_1.nii.gz: label values must be integers, found [0.5]
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from heartseg.errors import UserError

AFFINE_TOLERANCE_MM = 1e-3
# A spacing axis outside [median / factor, median * factor] is an outlier.
SPACING_OUTLIER_FACTOR = 2.0
PROBLEM_KINDS = {
    'missing_file': 'a file listed in dataset.json does not exist',
    'unreadable_file': 'a file is empty, truncated or not NIfTI',
    'duplicate_entry': 'a case or label file is listed more than once',
    'not_3d': 'an image is not 3D (or 4D with one channel per modality)',
    'invalid_affine': 'an affine with NaN or Inf values, or one that maps the voxel axes onto fewer than 3 directions',
    'grid_mismatch': 'image and label differ in shape or affine',
    'non_finite': 'NaN or Inf voxels',
    'constant_image': 'an image channel with one value in every voxel: nothing to normalise or segment',
    'non_integer_label': 'label values that are not integers',
    'undeclared_label': 'label values missing from dataset.json "labels"',
    'empty_label': 'a label map without foreground (a warning: training goes on)',
    'spacing_outlier': f'a spacing axis outside [median/{SPACING_OUTLIER_FACTOR:g}, median*{SPACING_OUTLIER_FACTOR:g}]',
    'analysis_failed': 'the analysis itself failed on this case',
}
# Some datasets hold cases without foreground on purpose; they train as background. A spacing
# outlier is judged against the whole dataset, which training does not do: it is resampled like any case.
WARNING_KINDS = frozenset({'empty_label', 'spacing_outlier'})


@dataclass(frozen=True)
class Problem:
    """One problem: which case, which file, what kind and what exactly."""

    case_id: str
    kind: str
    file: str
    message: str

    def __post_init__(self) -> None:
        assert self.kind in PROBLEM_KINDS, f'problem kind must be one of {sorted(PROBLEM_KINDS)}, got {self.kind!r}'

    @property
    def is_warning(self) -> bool:
        return self.kind in WARNING_KINDS


@dataclass
class CaseCheck:
    """The problems found so far in one case; ``strict`` raises the first error instead."""

    case_id: str = ''
    strict: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.is_warning]

    def add(self, kind: str, path: Path | str, message: str) -> None:
        problem = Problem(self.case_id, kind, str(path), message)
        if self.strict and not problem.is_warning:
            raise UserError(path, message)
        self.problems.append(problem)

    def open(self, path: Path) -> nib.Nifti1Image | None:
        """The NIfTI header of ``path``, or ``None`` when it is missing or unreadable."""
        if not path.is_file():
            return self.add('missing_file', path, 'file not found')
        if path.stat().st_size == 0:
            return self.add('unreadable_file', path, 'file is empty (0 bytes)')
        try:
            image = nib.load(path)
        except Exception as error:  # nibabel raises many unrelated types for bad files
            return self.add('unreadable_file', path, f'not a readable NIfTI file ({type(error).__name__}: {error})')
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            return self.add('unreadable_file', path, f'expected a NIfTI image, got {type(image).__name__}')
        if not np.isfinite(image.affine).all():
            return self.add(
                'invalid_affine', path, 'affine (sform/qform) holds NaN or Inf values: the scan has no usable geometry'
            )
        if np.linalg.matrix_rank(image.affine[:3, :3]) < 3:
            return self.add(
                'invalid_affine',
                path,
                'affine (sform/qform) is not invertible, '
                'a voxel axis has no size or direction: the scan has no usable geometry',
            )
        return image

    def dimensions(self, path: Path, image: nib.Nifti1Image, channels: int) -> bool:
        """Whether the image is 3D, or 4D with ``channels`` in the last axis."""
        shape = image.shape
        if (len(shape) == 3 and channels == 1) or (len(shape) == 4 and shape[3] == channels):
            return True
        wanted = '3D' if channels == 1 else f'4D with {channels} channels in the last axis'
        self.add('not_3d', path, f'expected a {wanted} image, got shape {shape}')
        return False

    def same_grid(self, image_path: Path, image: nib.Nifti1Image, label_path: Path, label: nib.Nifti1Image) -> bool:
        """Whether image and label share shape and affine."""
        if image.shape[:3] != label.shape[:3]:
            self.add(
                'grid_mismatch',
                label_path,
                f'shape {label.shape} does not match image {image_path.name} shape {image.shape}',
            )
            return False
        if not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE_MM):
            difference = np.abs(image.affine - label.affine).max()
            self.add(
                'grid_mismatch',
                label_path,
                f'affine does not match image {image_path.name} (max difference {difference:.4g})',
            )
            return False
        return True

    def voxels(self, path: Path, image: nib.Nifti1Image, dtype: type | None = None) -> np.ndarray | None:
        """The voxel array, or ``None`` when truncated; non-finite voxels are a problem but are kept."""
        try:
            data = np.asarray(image.dataobj, dtype=dtype)
        except Exception as error:  # truncated gzip streams fail only here
            return self.add(
                'unreadable_file',
                path,
                f'cannot read voxel data, file may be truncated or corrupt ({type(error).__name__}: {error})',
            )
        if data.dtype.kind == 'f':
            bad = data.size - int(np.count_nonzero(np.isfinite(data)))
            if bad:
                self.add('non_finite', path, f'contains {bad} NaN or Inf voxels')
        return data

    def intensity_spread(self, path: Path, channels: np.ndarray) -> None:
        """Every channel of a ``(C, X, Y, Z)`` image must vary: z-normalising a constant one divides by zero."""
        finite = np.where(np.isfinite(channels), channels, np.nan)
        spread = np.nanmax(finite, axis=(1, 2, 3)) - np.nanmin(finite, axis=(1, 2, 3))
        constant = np.flatnonzero(spread == 0).tolist()
        if constant:
            where = 'every voxel' if len(channels) == 1 else f'every voxel of channel(s) {constant}'
            self.add('constant_image', path, f'image has one value in {where}: nothing to normalise or segment')

    def label_values(self, path: Path, values: np.ndarray, declared: Collection[int]) -> None:
        """Label values must be integers declared in ``dataset.json``; no foreground is a warning."""
        values = values[np.isfinite(values)]
        fractional = values[values != np.rint(values)]
        if fractional.size:
            self.add('non_integer_label', path, f'label values must be integers, found {fractional[:5].tolist()}')
        undeclared = sorted(set(np.rint(values).astype(int).tolist()) - set(declared))
        if undeclared:
            self.add(
                'undeclared_label',
                path,
                f'label values {undeclared} are not declared in dataset.json labels {sorted(declared)}',
            )
        if not np.any(values != 0):
            self.add('empty_label', path, 'label map has no foreground voxels; it trains as background only')


def channels_first(voxels: np.ndarray) -> np.ndarray:
    """A 3D or 4D (channels last, as NIfTI stores modalities) array as ``(C, X, Y, Z)``."""
    return voxels[np.newaxis] if voxels.ndim == 3 else np.moveaxis(voxels, -1, 0)
