"""Metrics on cases whose answers can be computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from heartseg.metrics import case_metrics, dice, hd95, iou, volume_ml


def cube(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def sphere(shape, centre, radius_mm, spacing):
    grid = np.stack(np.meshgrid(*[np.arange(s) * d for s, d in zip(shape, spacing)], indexing='ij'))
    return np.linalg.norm(grid - np.asarray(centre)[:, None, None, None], axis=0) <= radius_mm


def test_two_cubes_with_known_overlap():
    a = cube((20, 20, 20), (2, 2, 2), 10)  # 1000 voxels
    b = cube((20, 20, 20), (7, 2, 2), 10)  # overlaps in 5x10x10 = 500
    assert dice(a, b) == pytest.approx(2 * 500 / 2000)
    assert iou(a, b) == pytest.approx(500 / 1500)


def test_shifted_sphere_hd95_in_millimetres():
    spacing = (1.0, 1.0, 1.0)
    reference = sphere((48, 48, 48), (24, 24, 24), 10, spacing)
    shifted = sphere((48, 48, 48), (27, 24, 24), 10, spacing)
    # A 3 mm shift moves the surface by at most 3 mm; most points move less.
    assert 2.0 <= hd95(shifted, reference, spacing) <= 3.0 + 1.0


def test_anisotropic_spacing_is_honoured():
    spacing = (1.0, 1.0, 4.0)
    reference = cube((30, 30, 30), (5, 5, 5), 10)
    shifted_z = np.roll(reference, 2, axis=2)  # two slices = 8 mm
    shifted_x = np.roll(reference, 2, axis=0)  # two voxels = 2 mm
    assert hd95(shifted_z, reference, spacing) == pytest.approx(8.0)
    assert hd95(shifted_x, reference, spacing) == pytest.approx(2.0)
    assert volume_ml(reference, spacing) == pytest.approx(1000 * 4 / 1000)


def test_distances_match_an_independent_brute_force():
    rng = np.random.default_rng(0)
    spacing = (0.7, 1.1, 2.0)
    a = ndimage.binary_dilation(rng.random((16, 16, 10)) > 0.97, iterations=2)
    b = ndimage.binary_dilation(rng.random((16, 16, 10)) > 0.97, iterations=2)

    def surface_points(mask):
        surface = mask & ~ndimage.binary_erosion(mask, border_value=0)
        return np.argwhere(surface) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    distances = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
    forward, backward = distances.min(1), distances.min(0)
    result = case_metrics(a, b, spacing)
    assert result['hd95_mm'] == pytest.approx(np.percentile(np.concatenate([forward, backward]), 95))
    assert result['asd_mm'] == pytest.approx(np.concatenate([forward, backward]).mean())


def test_empty_cases_follow_the_documented_convention():
    empty = np.zeros((8, 8, 8), bool)
    full = cube((8, 8, 8), (2, 2, 2), 3)
    both_empty = case_metrics(empty, empty, (1, 1, 1))
    assert both_empty['dice'] == 1.0 and both_empty['hd95_mm'] == 0.0 and both_empty['asd_mm'] == 0.0
    missed = case_metrics(empty, full, (1, 1, 1))
    assert missed['dice'] == 0.0 and math.isnan(missed['hd95_mm'])
    assert missed['reference_ml'] == pytest.approx(27 / 1000)
    spurious = case_metrics(full, empty, (1, 1, 1))
    assert spurious['dice'] == 0.0 and math.isnan(spurious['asd_mm'])


@pytest.mark.parametrize('seed', range(4))
def test_dice_hd95_and_asd_equal_medpys(seed):
    """MedPy (a development-only dependency) is the reference the README names; its ASD pools both directions."""
    binary = pytest.importorskip(
        'medpy.metric.binary', reason='MedPy is in requirements-dev.txt; install it to compare'
    )
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.5, 2.0, 3))
    prediction = ndimage.binary_dilation(rng.random((24, 20, 16)) > 0.985, iterations=3)
    reference = ndimage.binary_dilation(rng.random((24, 20, 16)) > 0.99, iterations=2)
    ours = case_metrics(prediction, reference, spacing)
    assert ours['dice'] == pytest.approx(binary.dc(prediction, reference), abs=1e-12)
    assert ours['hd95_mm'] == pytest.approx(binary.hd95(prediction, reference, voxelspacing=spacing), abs=1e-9)
    assert ours['asd_mm'] == pytest.approx(binary.assd(prediction, reference, voxelspacing=spacing), abs=1e-9)
