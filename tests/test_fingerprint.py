"""heartseg.fingerprint: geometry in canonical axis order, in the affine's millimetres; the network planned per axis."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from heartseg.fingerprint import CaseHeader, NetworkPlan, canonical_header, plan_network, spacing_and_patch_for_device


def test_canonical_header_reads_spacing_from_the_affine_in_ras_order():
    swap_first_axes = np.diag([2.0, 3.0, 4.0, 1.0])[[1, 0, 2, 3]]  # voxel axis 0 runs along y (2 mm), axis 1 along x (3 mm)
    image = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), swap_first_axes)
    image.header.set_zooms((1.0, 1.0, 1.0))  # a pixdim that disagrees with the sform
    header = canonical_header('case', image)
    assert header.spacing == (3.0, 2.0, 4.0) and header.shape == (6, 5, 7) and header.orientation == 'ARS'


@pytest.mark.parametrize('spacing,levels,pools,divisors', [
    ((0.625, 0.625, 5.0), 4, [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]], (16, 16, 4)),
    ((1.5, 1.5, 10.0), 4, [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]], (16, 16, 4)),
    ((1.25, 1.25, 5.0), 4, [[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], (16, 16, 8)),
    ((5.0, 1.0, 1.0), 2, [[1, 2, 2], [1, 2, 2]], (1, 4, 4)),
])
def test_a_thick_axis_is_not_pooled_while_over_twice_the_finest_spacing(spacing, levels, pools, divisors):
    plan = plan_network(spacing, levels)
    assert plan.pool_sizes == pools and plan.divisors == divisors
    # Its kernel is 1 along the axis wherever the axis is not pooled, and 3 once it is (the bridge included).
    for pool, kernel in zip(plan.pool_sizes, plan.kernel_sizes):
        assert kernel == [3 if p == 2 else 1 for p in pool]
    assert len(plan.kernel_sizes) == levels + 1


@pytest.mark.parametrize('spacing', [(1.25, 1.25, 1.25), (1.4, 1.4, 2.5), (0.625, 0.625, 1.25)])
def test_isotropic_enough_data_keeps_todays_network(spacing):
    assert plan_network(spacing, 4) == NetworkPlan(None, None, (16, 16, 16))


def test_isotropic_pooling_can_be_asked_for_on_thick_slices():
    assert plan_network((1.25, 1.25, 5.0), 4, per_axis=False) == NetworkPlan(None, None, (16, 16, 16))


def test_the_patch_is_a_multiple_of_each_axis_own_pooling():
    headers = [CaseHeader(f'c{i}', (48, 48, 10), (1.5, 1.5, 10.0), 'RAS') for i in range(3)]
    spacing, patch, network = spacing_and_patch_for_device(headers, 'cpu', levels=4)
    assert spacing == (1.5, 1.5, 10.0) and network.divisors == (16, 16, 4)
    assert patch == (48, 48, 8), 'the 10 slices round down to a multiple of 4, not up to 16 of padding'
    _, isotropic_patch, _ = spacing_and_patch_for_device(headers, 'cpu', levels=4, per_axis=False)
    assert isotropic_patch == (48, 48, 16)
