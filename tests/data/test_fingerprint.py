"""heartseg.data.fingerprint: geometry in canonical axis order, in the affine's millimetres;
the network planned per axis."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from heartseg.data.fingerprint import CaseHeader, NetworkPlan, canonical_header, plan_network, suggest_target_spacing


def test_canonical_header_reads_spacing_from_the_affine_in_ras_order():
    swap_first_axes = np.diag([2.0, 3.0, 4.0, 1.0])[
        [1, 0, 2, 3]
    ]  # voxel axis 0 runs along y (2 mm), axis 1 along x (3 mm)
    image = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), swap_first_axes)
    image.header.set_zooms((1.0, 1.0, 1.0))  # a pixdim that disagrees with the sform
    header = canonical_header('case', image)
    assert header.spacing == (3.0, 2.0, 4.0) and header.shape == (6, 5, 7) and header.orientation == 'ARS'


@pytest.mark.parametrize(
    'spacing,patch,levels,pools,kernels',
    [
        # nnU-Net's own get_pool_and_conv_props on its ACDC plan (thick axis first), stage 0's [1, 1, 1] left out:
        (
            (10.0, 1.5625, 1.5625),
            (10, 256, 224),
            5,
            [[1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
            [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        ),
        (
            (10.0, 1.5625, 1.5625),
            (16, 256, 224),
            5,
            [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
            [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        ),
        (
            (5.0, 1.5625, 1.5625),
            (20, 256, 224),
            5,
            [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
            [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        ),
        # The CPU's ACDC patch: z pooled once, to a 5-slice bridge, not twice to 2 or 3.
        (
            (1.5625, 1.5625, 10.0),
            (128, 144, 10),
            4,
            [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 1]],
            [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        ),
        # Isotropic, but z too short for a fourth pooling: nnU-Net keeps every feature map at least 4 voxels long.
        ((1.25, 1.25, 1.25), (64, 64, 48), 4, [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]], [[3, 3, 3]] * 5),
    ],
)
def test_pooling_and_kernels_follow_nnunet_s_rule(spacing, patch, levels, pools, kernels):
    plan = plan_network(spacing, patch, levels)
    assert plan.pool_sizes == pools and plan.kernel_sizes == kernels and plan.levels == levels
    assert plan.divisors == tuple(int(np.prod([p[axis] for p in pools])) for axis in range(3))


def test_an_axis_is_pooled_only_while_its_spacing_is_strictly_under_twice_the_finest():
    """At exactly twice the finest spacing an axis waits a level (nnU-Net's '< 2'; today's code pooled it at once)."""
    assert plan_network((1.0, 1.0, 2.0), (64, 64, 64), 3).pool_sizes == [[2, 2, 1], [2, 2, 2], [2, 2, 2]]


def test_a_patch_too_small_to_pool_plans_fewer_levels():
    plan = plan_network((1.0, 1.0, 1.0), (16, 16, 16), 4)
    assert plan.levels == 2 and plan.pool_sizes == [[2, 2, 2], [2, 2, 2]] and len(plan.kernel_sizes) == 3


@pytest.mark.parametrize('spacing', [(1.25, 1.25, 1.25), (1.4, 1.4, 2.5), (0.625, 0.625, 1.2)])
def test_isotropic_enough_data_with_room_to_pool_keeps_today_s_network(spacing):
    assert plan_network(spacing, (128, 128, 128), 4) == NetworkPlan(None, None, (16, 16, 16), 4)


def test_isotropic_pooling_can_be_asked_for_on_thick_slices():
    assert plan_network((1.25, 1.25, 5.0), (64, 64, 16), 4, per_axis=False) == NetworkPlan(None, None, (16, 16, 16), 4)


@pytest.mark.parametrize(
    'shapes,spacings,expected',
    [
        # A thin stack of thick slices: the 10th percentile of the thick axis.
        ([(256, 256, 10)] * 4 + [(256, 256, 25)], [(1.5, 1.5, 10.0)] * 4 + [(1.5, 1.5, 4.0)], (1.5, 1.5, 6.4)),
        # ... but never finer than the other axes (nnU-Net's clamp).
        ([(256, 256, 10)] * 3 + [(256, 256, 100)] * 2, [(1.5, 1.5, 10.0)] * 3 + [(1.5, 1.5, 1.0)] * 2, (1.5, 1.5, 1.5)),
        # Thick slices, but as many of them as in-plane voxels: nnU-Net's voxel condition keeps the median.
        ([(100, 100, 80)] * 4 + [(100, 100, 160)], [(1.0, 1.0, 4.0)] * 4 + [(1.0, 1.0, 2.0)], (1.0, 1.0, 4.0)),
        # Over 3x the finest but not over 3x the coarsest other axis: not anisotropic for nnU-Net.
        ([(256, 100, 10)] * 5, [(1.0, 2.0, 5.0)] * 4 + [(1.0, 2.0, 1.0)], (1.0, 2.0, 5.0)),
    ],
)
def test_the_target_spacing_follows_nnunet_s_anisotropy_rule(shapes, spacings, expected):
    headers = [CaseHeader(f'c{i}', shape, spacing, 'RAS') for i, (shape, spacing) in enumerate(zip(shapes, spacings))]
    assert suggest_target_spacing(headers) == pytest.approx(expected)
