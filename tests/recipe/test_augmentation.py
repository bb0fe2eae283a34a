"""heartseg.training.augmentation: patches sampled from the volume around them,
labels exact and aligned, nnU-Net's intensity transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from ddp_worker import blob_subjects

from heartseg.data.fingerprint import rotation_matrix
from heartseg.planning.plan import dummy_2d_axis
from heartseg.training.augmentation import (
    BLUR,
    BRIGHTNESS,
    CONTRAST,
    FLIP_PROBABILITY,
    GAMMA,
    LOW_RESOLUTION,
    NOISE,
    ROTATION,
    SCALING,
    Augmentation,
    SpatialDraw,
    below_or_above_one,
    sample_patch,
    source_offsets,
)
from heartseg.training.sampling import PatchDataset

DEVICES = ['cpu', *(['cuda'] if torch.cuda.is_available() else [])]
SHAPE = (40, 36, 24)
SPACING = np.diag([1.2, 1.0, 2.0])
PATCH = (24, 20, 12)
RAMP = np.array([0.3, -0.7, 1.1])


def ramp_case() -> tuple[torch.Tensor, torch.Tensor]:
    """An image linear in the voxel indices (trilinear interpolation reproduces it
    exactly), and a label that is 1 everywhere."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing='ij'))
    image = np.tensordot(RAMP, grid, axes=1) + 100.0
    return torch.tensor(image, dtype=torch.float32)[None], torch.ones(1, *SHAPE, dtype=torch.uint8)


def source_voxels(corner: tuple[int, int, int], motion: np.ndarray) -> np.ndarray:
    """``(3, *PATCH)``: where each output voxel of the patch at ``corner`` is sampled from, in the volume's voxels."""
    half = (np.array(PATCH) - 1) / 2
    offsets = np.stack(np.meshgrid(*(np.arange(n) - h for n, h in zip(PATCH, half)), indexing='ij'))
    return (
        np.tensordot(source_offsets(motion, SPACING), offsets, axes=1) + (np.array(corner) + half)[:, None, None, None]
    )


@pytest.mark.parametrize(
    'corner,zoom,degrees,leaves',
    [
        ((8, 8, 6), 1.3, (10.0, -5.0, 10.0), False),
        ((0, 0, 0), 0.75, (ROTATION['degrees'], -20.0, 25.0), True),
        ((16, 16, 12), 0.75, (-15.0, ROTATION['degrees'], -25.0), True),
    ],
)
def test_a_rotated_and_scaled_patch_is_filled_from_the_volume_and_padded_only_outside_it(corner, zoom, degrees, leaves):
    image, label = ramp_case()
    motion = zoom * rotation_matrix(np.array(degrees))
    patch_image, patch_label = sample_patch(image, label, corner, PATCH, SPACING, SpatialDraw((False,) * 3, motion))
    sources = source_voxels(corner, motion)
    upper = np.array(SHAPE)[:, None, None, None] - 1
    inside = np.all((sources >= 0) & (sources <= upper), axis=0)
    # Nearest labels take the padding half a voxel out; the linear image, a whole voxel out.
    outside = np.any((sources < -0.5) | (sources > upper + 0.5), axis=0)
    beyond = np.any((sources < -1) | (sources > upper + 1), axis=0)
    assert inside.any() and outside.any() == leaves, (
        'the cases must cover a patch within the volume and patches leaving it'
    )
    assert torch.all(patch_label[0][torch.from_numpy(inside)] == 1), (
        'a voxel whose source is inside the volume was labelled as filler'
    )
    assert torch.all(patch_label[0][torch.from_numpy(outside)] == 0), (
        'a voxel whose source is outside the volume must be background'
    )
    expected = np.tensordot(RAMP, sources, axes=1) + 100.0
    assert np.abs(patch_image[0].numpy() - expected)[inside].max() < 1e-3, (
        'the image was not sampled where its label was'
    )
    padding = patch_image[0][torch.from_numpy(beyond)]
    assert torch.allclose(padding, image.min().expand_as(padding), atol=1e-4), 'padding is the case minimum'


def test_rotation_is_rigid_and_scaling_uniform_in_millimetres_on_anisotropic_voxels():
    offsets = np.random.default_rng(0).normal(size=(3, 50))
    rotation = rotation_matrix(np.array([20.0, -30.0, 10.0]))
    for zoom in (1.0, 0.7, 1.4):
        moved = SPACING @ source_offsets(zoom * rotation, SPACING) @ offsets
        assert np.allclose(np.linalg.norm(moved, axis=0), np.linalg.norm(SPACING @ offsets, axis=0) / zoom)


def test_without_rotation_or_scaling_the_patch_is_an_exact_crop_then_mirrored():
    image, label = torch.randn(1, *SHAPE), torch.randint(0, 3, (1, *SHAPE), dtype=torch.uint8)
    corner = (3, 5, 7)
    window = (slice(None), slice(3, 27), slice(5, 25), slice(7, 19))
    patch_image, patch_label = sample_patch(
        image, label, corner, PATCH, SPACING, SpatialDraw((True, False, True), None)
    )
    assert torch.equal(patch_image, image[window].flip([1, 3])) and torch.equal(patch_label, label[window].flip([1, 3]))


def two_structure_case() -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre ball (label 1) and a slab (label 2); the image is 1 inside them and 0 outside."""
    grid = np.stack(np.meshgrid(*(np.arange(32),) * 3, indexing='ij'))
    label = np.zeros((32, 32, 32), np.uint8)
    label[((grid - np.array([10, 12, 16])[:, None, None, None]) ** 2).sum(0) < 36] = 1
    label[22:28, 6:26, 8:20] = 2
    return torch.from_numpy((label > 0).astype(np.float32))[None], torch.from_numpy(label)[None]


@pytest.mark.parametrize('strength', ['light', 'default'])
def test_augmented_labels_stay_exact_and_aligned_with_the_image(strength):
    image, label = two_structure_case()
    augmentation, moved = Augmentation(strength), 0
    for seed in range(60):
        draw = augmentation.draw_spatial(np.random.default_rng(seed))
        patch_image, patch_label = sample_patch(image, label, (0, 0, 0), (32, 32, 32), np.diag([1.2, 1.2, 1.5]), draw)
        assert set(patch_label.unique().tolist()) <= {0, 1, 2} and patch_label.dtype == torch.uint8
        agreement = float(((patch_image > 0.5) == (patch_label > 0)).float().mean())
        assert agreement > 0.97, f'seed {seed}: image and label agree on only {agreement:.3f} of the voxels'
        moved += draw.motion is not None
    assert (moved > 0) == (strength == 'default')


@pytest.mark.parametrize(
    'spacing,patch,expected',
    [
        ((1.5625, 1.5625, 10.0), (128, 144, 10), 2),  # ACDC at the CPU plan: 14x thinner along z
        ((10.0, 1.5625, 1.5625), (10, 256, 224), 0),  # nnU-Net's axis order
        ((0.625, 0.625, 5.0), (80, 64, 32), None),  # thick slices, but a patch only 2.5x thinner: 3D
        ((1.25, 1.25, 1.25), (64, 64, 48), None),
    ],
)
def test_thin_patches_are_augmented_in_2d_by_nnunet_s_rule(spacing, patch, expected):
    assert dummy_2d_axis(spacing, patch) == expected


def test_dummy_2d_rotates_and_scales_only_across_the_thick_axis_and_never_lowers_its_resolution():
    augmentation, rng = Augmentation('default', thick_axis=2), np.random.default_rng(0)
    motions = [d.motion for d in (augmentation.draw_spatial(rng) for _ in range(2000)) if d.motion is not None]
    for motion in motions:
        assert np.allclose(motion[2], [0, 0, 1]) and np.allclose(motion[:, 2], [0, 0, 1]), 'the thick axis moved'
    angles = np.degrees([np.arctan2(m[1, 0], m[0, 0]) for m in motions])
    assert np.abs(angles).max() > 150, 'in 2D nnU-Net rotates by up to 180 degrees'
    zooms = [augmentation.draw_intensity(rng, channels=1)['low_resolution'][0] for _ in range(2000)]
    assert all(float(zoom[2]) == 1 for zoom in zooms) and any(float(zoom[0]) < 1 for zoom in zooms)


def test_a_dummy_2d_patch_takes_each_slice_from_its_own_slice():
    """Every output voxel comes from the slice it sits in,
    never from a neighbouring 10 mm slice nor from padding above or below."""
    label = torch.arange(1, 13, dtype=torch.uint8).view(1, 1, 1, 12).expand(1, 96, 96, 12).contiguous()
    image = label.float()
    augmentation = Augmentation('default', thick_axis=2)
    moved = 0
    for seed in range(200):
        draw = augmentation.draw_spatial(np.random.default_rng(seed))
        moved += draw.motion is not None
        patch_image, patch_label = sample_patch(
            image, label, (32, 32, 1), (32, 32, 10), np.diag([1.5, 1.5, 10.0]), draw
        )
        slices = torch.arange(2, 12).view(1, 1, 1, 10).flip([3] if draw.flips[2] else [])
        assert torch.all(patch_label == slices), f'seed {seed}: a label from another slice'
        assert torch.allclose(patch_image, slices.float().expand_as(patch_image), atol=1e-3), (
            f'seed {seed}: the image blends slices'
        )
    assert moved > 50


def test_each_transform_is_drawn_with_its_probability_and_within_its_range():
    augmentation, rng, draws = Augmentation('default'), np.random.default_rng(0), 4000
    spatial = [augmentation.draw_spatial(rng) for _ in range(draws)]
    intensity = [augmentation.draw_intensity(rng, channels=1) for _ in range(draws)]
    stacked = {name: torch.stack([d[name] for d in intensity]) for name in intensity[0]}
    moved = np.mean([d.motion is not None for d in spatial])
    expected_moved = 1 - (1 - ROTATION['p']) * (1 - SCALING['p'])
    shares = {
        'flip': (np.mean([d.flips for d in spatial]), FLIP_PROBABILITY),
        'rotation or scaling': (moved, expected_moved),
        'noise': (float((stacked['noise_std'] > 0).float().mean()), NOISE['p']),
        'blur': (float((stacked['blur_sigma'] > 0).any(dim=2).float().mean()), BLUR['p'] * BLUR['p_per_channel']),
        'brightness': (float((stacked['brightness'] != 1).float().mean()), BRIGHTNESS['p']),
        'contrast': (float((stacked['contrast'] != 1).float().mean()), CONTRAST['p']),
        'low resolution': (
            float((stacked['low_resolution'] != 1).all(dim=2).float().mean()),
            LOW_RESOLUTION['p'] * LOW_RESOLUTION['p_per_channel'],
        ),
        'inverted gamma': (float((stacked['inverted_gamma'] != 1).float().mean()), GAMMA['p_inverted']),
        'gamma': (float((stacked['gamma'] != 1).float().mean()), GAMMA['p']),
    }
    for name, (share, p) in shares.items():
        assert abs(share - p) < 0.03, f'{name}: drawn {share:.3f} of the time, expected {p}'
    noise = stacked['noise_std'][stacked['noise_std'] > 0]
    assert noise.max() <= NOISE['std'][1] and abs(float(noise.mean()) - np.mean(NOISE['std'])) < 0.01, (
        'the drawn value is the std, as in nnU-Net'
    )
    gammas = stacked['gamma'][stacked['gamma'] != 1]
    assert gammas.min() >= GAMMA['gamma'][0] and gammas.max() <= GAMMA['gamma'][1]


def test_gamma_darkens_as_often_as_it_brightens_as_nnunet_s_bgcontrast_draws_it():
    draws = np.array([below_or_above_one(np.random.default_rng(seed), *GAMMA['gamma']) for seed in range(4000)])
    assert abs(np.mean(draws < 1) - 0.5) < 0.03, (
        f'{np.mean(draws < 1):.3f} of the gammas below 1; a plain U(0.7, 1.5) gives 0.375'
    )
    assert draws.min() >= GAMMA['gamma'][0] and draws.max() <= GAMMA['gamma'][1]
    assert np.mean(draws > 1.25) == pytest.approx(0.25, abs=0.03), 'above 1, uniform up to the top of the range'


def test_gamma_keeps_a_z_scored_image_s_mean_spread_and_order():
    image = torch.randn(1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    in_image_order = image.flatten().argsort()
    augmentation = Augmentation('default')
    for gamma in (0.7, 1.5):
        for name in ('gamma', 'inverted_gamma'):
            parameters = augmentation.draw_intensity(np.random.default_rng(0), channels=1)
            parameters.update(
                {key: torch.ones(1) for key in ('gamma', 'inverted_gamma')},
                low_resolution=torch.ones(1, 3),
                noise_std=torch.tensor(0.0),
                blur_sigma=torch.zeros(1, 3),
                brightness=torch.tensor(1.0),
                contrast=torch.tensor(1.0),
            )
            parameters[name] = torch.tensor([gamma])
            augmented = augmentation.intensity(image, parameters)
            assert (
                abs(float(augmented.mean() - image.mean())) < 1e-4 and abs(float(augmented.std() - image.std())) < 1e-4
            )
            # Order, not argsort equality: float rounding may tie two voxels a few ulps apart.
            steps = augmented.flatten()[in_image_order].diff()
            assert float(steps.min()) > -1e-6, f'{name} {gamma} is not monotonic: a step of {float(steps.min()):.2g}'
            assert not torch.allclose(augmented, image, atol=1e-2), f'{name} {gamma} changed nothing'


def test_contrast_keeps_the_range_and_blur_and_low_resolution_smooth():
    # Offset from 0, so that zero padding or an unnormalised kernel would move the mean; a nearest 2x
    # subsample of 16**3 unit-variance voxels keeps it within 0.2 (4.5 standard errors).
    image = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) + 5
    augmentation = Augmentation('default')
    neutral = {key: torch.ones(1) for key in ('gamma', 'inverted_gamma')}
    neutral.update(
        low_resolution=torch.ones(1, 3),
        noise_std=torch.tensor(0.0),
        noise_seed=torch.tensor(0),
        blur_sigma=torch.zeros(1, 3),
        brightness=torch.tensor(1.0),
        contrast=torch.tensor(1.0),
    )
    assert torch.equal(augmentation.intensity(image, neutral), image), 'neutral parameters change nothing'
    contrasted = augmentation.intensity(image, {**neutral, 'contrast': torch.tensor(1.25)})
    assert contrasted.min() >= image.min() and contrasted.max() <= image.max() and contrasted.std() > image.std()
    for smoothed in (
        augmentation.intensity(image, {**neutral, 'blur_sigma': torch.tensor([[1.0, 0.5, 1.0]])}),
        augmentation.intensity(image, {**neutral, 'low_resolution': torch.tensor([[0.5, 0.5, 0.5]])}),
    ):
        assert smoothed.shape == image.shape and smoothed.std() < 0.8 * image.std()
        assert abs(float(smoothed.mean() - image.mean())) < 0.2
    noisy = augmentation.intensity(image, {**neutral, 'noise_std': torch.tensor(0.3), 'noise_seed': torch.tensor(5)})
    assert abs(float((noisy - image).std()) - 0.3) < 0.01
    assert torch.equal(
        noisy, augmentation.intensity(image, {**neutral, 'noise_std': torch.tensor(0.3), 'noise_seed': torch.tensor(5)})
    )


@pytest.mark.parametrize('device', DEVICES)
def test_the_intensity_transforms_give_the_same_patches_in_the_loader_and_on_the_device(device):
    def dataset(place: str) -> PatchDataset:
        return PatchDataset(
            blob_subjects(), (16, 16, 16), samples_per_epoch=24, seed=3, augmentation=Augmentation('default', place)
        )

    in_loader, on_device = dataset('loader'), dataset('device')
    changed = 0
    for index in range(24):
        image, target, parameters = in_loader[index]
        raw, device_target, device_parameters = on_device[index]
        assert parameters == {} and set(device_parameters) >= {'gamma', 'noise_std'}
        batch = torch.utils.data.default_collate([(raw, device_parameters)])
        loader_batch = batch[0].clone()
        augmented = Augmentation('default', 'device').apply_intensity(batch[0].to(device), batch[1])
        assert torch.equal(batch[0], loader_batch), "the loader's batch must be left as it was"
        if device == 'cpu':
            assert torch.equal(augmented[0], image)
        elif float(device_parameters['noise_std']) == 0:  # CUDA draws other noise than the CPU from the same seed
            assert torch.allclose(augmented[0].cpu(), image, atol=1e-4, rtol=0)
        assert torch.equal(target, device_target)
        changed += not torch.equal(raw, image)
    assert changed > 0, 'no patch had its intensities augmented'


def test_the_dataset_pads_a_case_smaller_than_the_patch_with_its_minimum():
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.rand(1, 10, 10, 10) + 5),
        label=tio.LabelMap(tensor=torch.ones(1, 10, 10, 10, dtype=torch.uint8)),
    )
    image, target, _ = PatchDataset([subject], (12, 12, 12), samples_per_epoch=2, seed=0)[0]
    assert image.shape == (1, 12, 12, 12) and float(image.min()) >= 5 and target[0, 11, 11, 11] == 0
