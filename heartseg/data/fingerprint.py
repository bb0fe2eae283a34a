"""Dataset fingerprint: the header facts, and nnU-Net's rules that derive spacing, patch and pooling from them.

``heartseg.planning`` applies these rules with each device's budgets, for
training (``main.py``) and for the dataset report (``analyze_data.py``), so
the two can never disagree.

Example:
    >>> header = CaseHeader('case', shape=(256, 216, 10), spacing=(1.5625, 1.5625, 10.0), orientation='RAS')
    >>> suggest_target_spacing([header])
    (1.5625, 1.5625, 10.0)
    >>> patch, network = plan_patch_and_network((256.0, 216.0, 10.0), (1.5625, 1.5625, 10.0), 4, 64 * 64 * 48)
    >>> patch, pooling_text(network.pool_sizes)
    ((128, 144, 10), '2x2x1, 2x2x1, 2x2x2, 2x2x1')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from mymodel import total_pooling

# nnU-Net treats a dataset as anisotropic past this ratio of spacings.
ANISOTROPY_THRESHOLD = 3.0


@dataclass(frozen=True)
class CaseHeader:
    """Geometry read from a NIfTI header, in canonical (RAS) axis order."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str

    @property
    def extent_mm(self) -> np.ndarray:
        return np.array(self.shape) * np.array(self.spacing)


def canonical_header(case_id: str, image: nib.Nifti1Image) -> CaseHeader:
    """Express shape and spacing in the axis order of the canonical image."""
    ornt = nib.io_orientation(image.affine)
    # From the affine, as the pipeline places voxels; the header's pixdim can disagree with an sform.
    zooms = nib.affines.voxel_sizes(image.affine)
    shape = np.asarray(image.shape[:3])
    spacing = np.empty(3)
    canonical_shape = np.empty(3, dtype=int)
    for axis, (target_axis, _) in enumerate(ornt.astype(int)):
        spacing[target_axis] = zooms[axis]
        canonical_shape[target_axis] = shape[axis]
    return CaseHeader(
        case_id=case_id,
        shape=tuple(int(s) for s in canonical_shape),
        spacing=tuple(round(float(s), 6) for s in spacing),
        orientation=''.join(nib.aff2axcodes(image.affine)),
    )


def anisotropic_axis(headers: list[CaseHeader]) -> int | None:
    """The thick-slice axis by nnU-Net's rule (``determine_fullres_target_spacing``), or None.

    The coarsest median axis counts when its spacing is more than
    ``ANISOTROPY_THRESHOLD`` times the coarsest of the others', *and* its
    median voxel count times the threshold is still under the smallest of the
    others' (a thin stack, not a long one).
    """
    spacing = np.median([h.spacing for h in headers], axis=0)
    size = np.median([h.shape for h in headers], axis=0)
    coarsest = int(np.argmax(spacing))
    others = [axis for axis in range(3) if axis != coarsest]
    thick = spacing[coarsest] > ANISOTROPY_THRESHOLD * spacing[others].max()
    thin_stack = size[coarsest] * ANISOTROPY_THRESHOLD < size[others].min()
    return coarsest if thick and thin_stack else None


def suggest_target_spacing(headers: list[CaseHeader]) -> tuple[float, float, float]:
    """Median spacing; a thick-slice axis (:func:`anisotropic_axis`) takes its
    10th percentile, no finer than the other axes.

    So thin-slice cases are not blurred to the thickest slices, as in nnU-Net.

    Example:
        >>> headers = [CaseHeader('a', (256, 256, 10), (1.5, 1.5, 10.0), 'RAS'),
        ...            CaseHeader('b', (256, 256, 20), (1.5, 1.5, 5.0), 'RAS'),
        ...            CaseHeader('c', (256, 256, 10), (1.5, 1.5, 10.0), 'RAS')]
        >>> suggest_target_spacing(headers)
        (1.5, 1.5, 6.0)
    """
    spacings = np.asarray([h.spacing for h in headers], dtype=float)
    target = np.median(spacings, axis=0)
    thick = anisotropic_axis(headers)
    if thick is not None:
        others = [axis for axis in range(3) if axis != thick]
        target[thick] = max(np.percentile(spacings[:, thick], 10), target[others].max())
    return tuple(round(float(s), 4) for s in target)


def resampled_shape(header: CaseHeader, target_spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(e / s)) for e, s in zip(header.extent_mm, target_spacing))


def median_resampled_shape(
    headers: list[CaseHeader], target_spacing: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Median case shape after resampling to ``target_spacing``: what the patch is planned from."""
    shapes = [resampled_shape(header, target_spacing) for header in headers]
    return tuple(float(s) for s in np.median(shapes, axis=0))


@dataclass(frozen=True)
class NetworkPlan:
    """The U-Net's pooling and kernels per axis (nnU-Net's rule), planned from the target spacing and the patch.

    ``pool_sizes`` and ``kernel_sizes`` are None for the isotropic plan (2 and
    3 on every axis at every one of the asked levels), the network every
    version before per-axis planning built.
    """

    pool_sizes: list[list[int]] | None
    kernel_sizes: list[list[int]] | None
    divisors: tuple[int, int, int]
    levels: int


# nnU-Net's smallest feature map: an axis is pooled only while it is at least twice this long.
MIN_FEATURE_MAP_SIZE = 4
# An axis is pooled, and convolved across with 3 voxels, while its spacing is under this factor of the finest.
POOLING_SPACING_RATIO = 2.0


def plan_network(
    target_spacing: tuple[float, float, float], patch_size: tuple[int, int, int], levels: int, per_axis: bool = True
) -> NetworkPlan:
    """Pooling and kernel sizes per level: nnU-Net's ``get_pool_and_conv_props``, at most ``levels`` poolings.

    At each level an axis is pooled when its feature map is at least
    ``2 * MIN_FEATURE_MAP_SIZE`` voxels long and its spacing is under
    ``POOLING_SPACING_RATIO`` times the finest of those axes; a lone axis needs
    ``3 * MIN_FEATURE_MAP_SIZE``. Pooling halves its size (rounding up) and
    doubles its spacing, so a thick-slice axis joins once the in-plane axes
    have caught up with it. A level's kernel is 3 along an axis once its
    spacing is under twice the finest, 1 before; the bridge's is 3 everywhere.
    Fewer levels are planned when no axis can be pooled any more.

    Example:
        >>> plan_network((1.5625, 1.5625, 10.0), (144, 128, 10), levels=4).pool_sizes
        [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 1]]
        >>> plan_network((1.25, 1.25, 1.25), (128, 128, 128), levels=4)
        NetworkPlan(pool_sizes=None, kernel_sizes=None, divisors=(16, 16, 16), levels=4)
    """
    if not per_axis:
        return NetworkPlan(None, None, total_pooling([[2, 2, 2]] * levels), levels)
    spacing, size = np.asarray(target_spacing, dtype=float), np.asarray(patch_size, dtype=float)
    kernel = np.ones(3, dtype=int)
    pools, kernels = [], []
    for _ in range(levels):
        pooled = size >= 2 * MIN_FEATURE_MAP_SIZE
        if not pooled.any():
            break
        pooled &= spacing / spacing[pooled].min() < POOLING_SPACING_RATIO
        if not pooled.any() or (pooled.sum() == 1 and size[pooled][0] < 3 * MIN_FEATURE_MAP_SIZE):
            break
        kernel = np.where(spacing / spacing.min() < POOLING_SPACING_RATIO, 3, kernel)
        kernels.append(kernel.tolist())
        pools.append([2 if axis else 1 for axis in pooled])
        spacing, size = spacing * np.where(pooled, 2, 1), np.ceil(size / np.where(pooled, 2, 1))
    kernels.append([3, 3, 3])  # the bridge
    divisors = total_pooling(pools)
    if len(pools) == levels and all(p == [2, 2, 2] for p in pools) and all(k == [3, 3, 3] for k in kernels):
        return NetworkPlan(None, None, divisors, levels)
    return NetworkPlan(pools, kernels, divisors, len(pools))


def pooling_text(pool_sizes: list[list[int]] | None) -> str:
    """A plan's pooling for people: ``'2x2x1, 2x2x2'``, or ``'2x2x2 at every level'`` for the isotropic plan."""
    return ', '.join('x'.join(map(str, pool)) for pool in pool_sizes) if pool_sizes else '2x2x2 at every level'


def padded_to(shape: Sequence[float], divisors: Sequence[int]) -> tuple[int, ...]:
    """Each axis rounded up to a multiple of its divisor (nnU-Net's ``pad_shape``):
    the patch covers the whole median case."""
    return tuple(int(math.ceil(round(s, 6) / d) * d) for s, d in zip(shape, divisors))


def plan_patch_and_network(
    median_shape: tuple[float, ...],
    target_spacing: tuple[float, float, float],
    levels: int,
    max_voxels: int,
    per_axis: bool = True,
) -> tuple[tuple[int, int, int], NetworkPlan]:
    """The largest patch within ``max_voxels`` that covers as much of the median case as it can, and its network.

    As nnU-Net plans it: start from the median case, padded up to a multiple
    of each axis's total pooling (so a 9- or 10-slice stack gets a 10-slice
    patch, not 8), and while over the budget shrink the axis that is longest
    in millimetres by its pooling multiple, planning the network again for
    the smaller patch. An isotropic patch shrinks its longest axis; a
    thick-slice stack keeps its slices while the in-plane field of view shrinks.
    """
    spacing = np.asarray(target_spacing, dtype=float)
    shape = np.maximum(np.asarray(median_shape, dtype=float), 1)
    while True:
        network = plan_network(target_spacing, tuple(shape), levels, per_axis)
        patch = np.array(padded_to(shape, network.divisors))
        longest = int(np.argmax(patch * spacing))
        if np.prod(patch) <= max_voxels or patch[longest] <= network.divisors[longest]:
            return tuple(int(p) for p in patch), network
        shape = patch.astype(float)
        shape[longest] -= network.divisors[longest]


def rotation_matrix(degrees: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z, by the given angles in degrees (world axes)."""
    x, y, z = np.radians(degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    about_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    about_z = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x
