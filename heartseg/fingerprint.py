"""Dataset fingerprint: the header facts that planning derives settings from.

This is the one place that decides the default target spacing and patch size,
for training (``main.py``) and for the dataset report (``analyze_data.py``),
so the two can never disagree.

Example:
    >>> suggest_target_spacing([(1.0, 1.0, 5.0), (1.0, 1.0, 4.0), (0.8, 0.8, 5.0)])
    (1.0, 1.0, 4.2)
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from mymodel import total_pooling

# nnU-Net treats a dataset as anisotropic past this ratio of spacings.
ANISOTROPY_THRESHOLD = 3.0
# Patch budgets in voxels: what one training step can afford on each kind of device.
PATCH_VOXELS = {'cpu': 64 * 64 * 48, 'cuda': 128 * 128 * 96, 'mps': 96 * 96 * 64}
# Finest target spacing each device can afford: 0.625 mm scans have 8x the voxels
# of 1.25 mm ones, which a CPU cannot train on in useful time.
MIN_SPACING_MM = {'cpu': 1.25, 'mps': 1.0, 'cuda': 0.0}
DEFAULT_LEVELS = 4


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


def suggest_target_spacing(spacings: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Median spacing, with nnU-Net's rule for strongly anisotropic data.

    When the coarsest median axis is more than ``ANISOTROPY_THRESHOLD`` times
    the finest, that axis uses the 10th percentile of its spacings instead,
    so thin-slice cases are not blurred to the thickest slices.
    """
    spacings_array = np.asarray(spacings, dtype=float)
    target = np.median(spacings_array, axis=0)
    coarsest = int(np.argmax(target))
    if target[coarsest] / target.min() > ANISOTROPY_THRESHOLD:
        target[coarsest] = np.percentile(spacings_array[:, coarsest], 10)
    return tuple(round(float(s), 4) for s in target)


def resampled_shape(header: CaseHeader, target_spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(e / s)) for e, s in zip(header.extent_mm, target_spacing))


def median_resampled_shape(headers: list[CaseHeader], target_spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """Median case shape after resampling to ``target_spacing``: what the patch is planned from."""
    shapes = [resampled_shape(header, target_spacing) for header in headers]
    return tuple(float(s) for s in np.median(shapes, axis=0))


@dataclass(frozen=True)
class NetworkPlan:
    """The U-Net's pooling and kernels per axis, planned from the target spacing (nnU-Net's rule).

    ``pool_sizes`` and ``kernel_sizes`` are None for the isotropic plan (2 and
    3 on every axis), the network every version before per-axis planning built.
    """

    pool_sizes: list[list[int]] | None
    kernel_sizes: list[list[int]] | None
    divisors: tuple[int, int, int]


# An axis is pooled, and convolved across, once its spacing is within this factor of the finest.
POOLING_SPACING_RATIO = 2.0


def plan_network(target_spacing: tuple[float, float, float], levels: int, per_axis: bool = True) -> NetworkPlan:
    """Pooling and kernel sizes per level: an axis is not pooled while its spacing is over twice the finest, and its kernel is 1 then.

    Each pooling doubles the spacing of the axes it pools, so a thick-slice
    axis joins in once the in-plane axes have caught up with it.

    Example:
        >>> plan_network((0.625, 0.625, 5.0), levels=4).pool_sizes
        [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
        >>> plan_network((1.25, 1.25, 1.25), levels=4)
        NetworkPlan(pool_sizes=None, kernel_sizes=None, divisors=(16, 16, 16))
    """
    spacing = np.asarray(target_spacing, dtype=float)
    pools, kernels = [], []
    for _ in range(levels + 1):
        joined = spacing <= POOLING_SPACING_RATIO * spacing.min() * (1 + 1e-6) if per_axis else np.ones(3, bool)
        kernels.append([3 if axis else 1 for axis in joined])
        pools.append([2 if axis else 1 for axis in joined])
        spacing = spacing * np.where(joined, 2, 1)
    pools = pools[:levels]  # the bridge is not pooled
    divisors = total_pooling(pools)
    if all(p == [2, 2, 2] for p in pools) and all(k == [3, 3, 3] for k in kernels):
        return NetworkPlan(None, None, divisors)
    return NetworkPlan(pools, kernels, divisors)


def pooling_text(pool_sizes: list[list[int]] | None) -> str:
    """A plan's pooling for people: ``'2x2x1, 2x2x2'``, or ``'2x2x2 at every level'`` for the isotropic plan."""
    return ', '.join('x'.join(map(str, pool)) for pool in pool_sizes) if pool_sizes else '2x2x2 at every level'


def fit_patch_size(median_shape: tuple[int, ...], divisors: tuple[int, ...], max_voxels: int) -> tuple[int, int, int]:
    """Largest patch within ``max_voxels`` that covers as much of the median case as it can.

    Like nnU-Net, start from the median shape (rounded down to a multiple of
    each axis's divisor, its total pooling, so patches are not mostly
    padding) and shrink the longest axis until the budget fits.
    """
    patch = [max(divisor, int(s) // divisor * divisor) for s, divisor in zip(median_shape, divisors)]
    while np.prod(patch) > max_voxels:
        longest = int(np.argmax(patch))
        if patch[longest] <= divisors[longest]:
            break
        patch[longest] -= divisors[longest]
    return tuple(patch)


def spacing_and_patch_for_device(
    headers: list[CaseHeader],
    device_type: str,
    levels: int = DEFAULT_LEVELS,
    target_spacing: tuple[float, float, float] | None = None,
    per_axis: bool = True,
) -> tuple[tuple[float, float, float], tuple[int, int, int], NetworkPlan]:
    """Target spacing, patch size and network plan that training uses on ``device_type``.

    The spacing is :func:`suggest_target_spacing`, floored at the device's
    ``MIN_SPACING_MM``, unless ``target_spacing`` is given; the network is
    planned per axis from it (:func:`plan_network`; ``per_axis`` False pools
    every axis), and the patch from the median resampled case within the
    device's budget.
    """
    if target_spacing is None:
        suggested = suggest_target_spacing([h.spacing for h in headers])
        # The floor applies to the in-plane (finest) axes; a thick-slice axis already coarser keeps its spacing.
        target_spacing = tuple(max(s, MIN_SPACING_MM[device_type]) for s in suggested)
    network = plan_network(target_spacing, levels, per_axis)
    patch = fit_patch_size(median_resampled_shape(headers, target_spacing), network.divisors, PATCH_VOXELS[device_type])
    return target_spacing, patch, network
