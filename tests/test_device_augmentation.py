"""heartseg.device_augmentation: TorchIO's transforms, batched on the device; labels exact and aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from ddp_worker import blob_subjects
from test_augmentation import two_structure_subject
from torchio.transforms.augmentation.intensity.random_bias_field import BiasField
from torchio.transforms.augmentation.intensity.random_gamma import Gamma

from heartseg.augmentation import AFFINE, BIAS_FIELD, FLIP_PROBABILITY, GAMMA, NOISE
from heartseg.device_augmentation import DeviceAugmentation, sampling_matrix
from heartseg.sampling import PatchDataset, one_hot_foreground

SHAPE = (32, 32, 32)
# The GPU check runs this file on CUDA as well.
DEVICES = ['cpu', *(['cuda'] if torch.cuda.is_available() else [])]


def neutral(batch: int = 1, bias_terms: int = 10) -> dict[str, torch.Tensor]:
    """Parameters that change nothing, for one transform at a time to be set."""
    return {
        'flip': torch.zeros(batch, 3, dtype=torch.bool),
        'affine': torch.eye(3).repeat(batch, 1, 1),
        'gamma': torch.ones(batch),
        'bias': torch.zeros(batch, bias_terms),
        'noise_std': torch.zeros(batch),
        'noise_seed': torch.zeros(batch, dtype=torch.int64),
    }


def smooth_image(shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    """A smooth, positive, non-symmetric volume, so that interpolation differences stay small and misplacement shows."""
    x, y, z = torch.meshgrid(*(torch.linspace(0, 1, n) for n in shape), indexing='ij')
    return (2 + torch.sin(3 * x + 1) * torch.cos(2 * y) + 0.5 * z**2 + 0.3 * x * y)[None]


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels whose axes are not the world's: the rotation must be done in millimetres."""
    angle = np.radians(30)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag([0.8, 1.1, 1.6])
    affine[:3, 3] = (-12, 30, 7)
    return affine


def test_flips_are_exact_for_image_and_target():
    subject = two_structure_subject()
    images = subject['image'].data[None].float() + torch.rand(1, 1, *SHAPE)
    targets = one_hot_foreground(subject['label'].data, (1, 2))[None]
    parameters = neutral()
    parameters['flip'] = torch.tensor([[True, False, True]])
    flipped_images, flipped_targets = DeviceAugmentation('light')(images, targets, parameters)
    assert torch.equal(flipped_images, images.flip(2, 4)) and torch.equal(flipped_targets, targets.flip(2, 4))


@pytest.mark.parametrize('device', DEVICES)
def test_the_affine_matches_torchio_in_millimetres(device):
    affine = oblique_affine()
    label = torch.zeros(1, *SHAPE, dtype=torch.uint8)
    label[0, 9:20, 6:18, 12:26] = 1
    subject = tio.Subject(image=tio.ScalarImage(tensor=smooth_image(), affine=affine), label=tio.LabelMap(tensor=label, affine=affine))
    scales, degrees = np.array([0.88, 1.12, 1.05]), np.array([12.0, -9.0, 14.0])
    reference = tio.Affine(scales=scales, degrees=degrees, translation=(0, 0, 0), default_pad_value='minimum')(subject)
    parameters = neutral()
    parameters['affine'] = torch.as_tensor(sampling_matrix(scales, degrees, affine, SHAPE), dtype=torch.float32)[None]
    images, targets = DeviceAugmentation('default')(subject['image'].data[None].float().to(device), label[None].float().to(device), parameters)
    images, targets = images.cpu(), targets.cpu()
    centre = (slice(None), slice(6, 26), slice(6, 26), slice(6, 26))  # away from the padded border, where samplers differ
    image_error = (images[0][centre] - reference['image'].data[centre]).abs().max()
    assert image_error < 2e-3, f'image differs from TorchIO by {image_error:.4f}'
    agreement = (targets[0] == reference['label'].data).float().mean()
    assert agreement > 0.995, f'target agrees with TorchIO on only {agreement:.4f} of the voxels'
    assert not torch.equal(targets[0], label.float()), 'the affine must move the target'


def test_gamma_and_bias_field_are_torchio_s():
    image = smooth_image() - 2.5  # negative values take TorchIO's sign-preserving power
    coefficients = np.linspace(-0.3, 0.3, 10)
    parameters = neutral()
    parameters['gamma'] = torch.tensor([1.3])
    parameters['bias'] = torch.as_tensor(coefficients, dtype=torch.float32)[None]
    ours, _ = DeviceAugmentation('default')(image[None], torch.zeros(1, 1, *SHAPE), parameters)
    subject = tio.Subject(image=tio.ScalarImage(tensor=image))
    reference = BiasField(coefficients=coefficients.tolist(), order=BIAS_FIELD['order'])(Gamma(1.3)(subject))['image'].data
    assert torch.allclose(ours[0], reference, atol=1e-5), float((ours[0] - reference).abs().max())


@pytest.mark.parametrize('device', DEVICES)
def test_noise_has_the_drawn_spread_and_is_seeded(device):
    parameters = neutral(2)
    parameters['noise_std'] = torch.tensor([0.05, 0.0])
    parameters['noise_seed'] = torch.tensor([7, 7])
    images = torch.zeros(2, 1, *SHAPE, device=device)
    augment = DeviceAugmentation('default')
    noisy, _ = augment(images, torch.zeros_like(images), parameters)
    assert float(noisy[0].std()) == pytest.approx(0.05, rel=0.02) and not noisy[1].any()
    assert torch.equal(noisy, augment(images, torch.zeros_like(images), parameters)[0])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('seed', range(6))
def test_augmented_targets_stay_one_hot_and_aligned_with_their_images(seed, device):
    """The full draw, spatial part checked through an image that is its own label."""
    subject = two_structure_subject()
    targets = one_hot_foreground(subject['label'].data, (1, 2))[None].repeat(4, 1, 1, 1, 1)
    images = targets.sum(1, keepdim=True)
    augment = DeviceAugmentation('default')
    rng = np.random.default_rng(seed)
    draws = [augment.draw(rng, subject['image'].affine, SHAPE) for _ in range(4)]
    parameters = {name: torch.stack([draw[name] for draw in draws]) for name in draws[0]}
    parameters.update(gamma=torch.ones(4), bias=torch.zeros(4, 10), noise_std=torch.zeros(4))  # spatial only
    parameters['affine'][0] = torch.as_tensor(sampling_matrix([1.1, 0.9, 1.0], [10, -12, 8], subject['image'].affine, SHAPE))
    moved_images, moved_targets = (tensor.cpu() for tensor in augment(images.to(device), targets.to(device), parameters))
    assert set(moved_targets.unique().tolist()) <= {0.0, 1.0} and moved_targets.sum(1).max() <= 1
    assert (moved_targets[:, 0].flatten(1).any(1) & moved_targets[:, 1].flatten(1).any(1)).all(), 'a structure vanished'
    agreement = ((moved_images[:, 0] > 0.5) == (moved_targets.sum(1) > 0)).float().mean()
    assert agreement > 0.97, f'image and target agree on only {agreement:.3f} of the voxels'
    misaligned = ((moved_images[:, 0] > 0.5) == (moved_targets.sum(1).roll(2, dims=1) > 0)).float().mean()
    assert misaligned < agreement - 0.02, 'the check must notice a target two voxels off'


def test_the_loader_s_batch_is_left_as_it_was():
    """Every transform applies, none flips: the in-place steps must work on a copy."""
    images, targets = smooth_image()[None], (smooth_image()[None] > 2.5).float()
    originals = images.clone(), targets.clone()
    parameters = neutral()
    parameters.update(affine=torch.as_tensor(sampling_matrix([1.1, 0.9, 1.0], [10, -12, 8], np.eye(4), SHAPE), dtype=torch.float32)[None],
                      gamma=torch.tensor([1.3]), bias=parameters['bias'] + 0.2, noise_std=torch.tensor([0.1]))
    augmented_images, augmented_targets = DeviceAugmentation('default')(images, targets, parameters)
    assert not torch.equal(augmented_images, images) and not torch.equal(augmented_targets, targets)
    assert torch.equal(images, originals[0]) and torch.equal(targets, originals[1])


def test_draws_follow_torchio_s_probabilities_and_ranges():
    augment, rng = DeviceAugmentation('default'), np.random.default_rng(0)
    draws = [augment.draw(rng, np.eye(4), (16, 16, 16)) for _ in range(4000)]
    stacked = {name: torch.stack([draw[name] for draw in draws]) for name in draws[0]}
    rates = {
        'flip': stacked['flip'].float().mean(0),
        'affine': (stacked['affine'] != torch.eye(3)).flatten(1).any(1).float().mean(),
        'gamma': (stacked['gamma'] != 1).float().mean(),
        'bias': stacked['bias'].any(1).float().mean(),
        'noise': (stacked['noise_std'] > 0).float().mean(),
    }
    expected = {'flip': FLIP_PROBABILITY, 'affine': AFFINE['p'], 'gamma': GAMMA['p'], 'bias': BIAS_FIELD['p'], 'noise': NOISE['p']}
    for name, rate in rates.items():
        assert torch.allclose(rate, torch.tensor(expected[name]), atol=0.03), (name, rate)
    assert stacked['gamma'].log().abs().max() <= GAMMA['log_gamma'] + 1e-6
    assert stacked['bias'].abs().max() <= BIAS_FIELD['coefficients'] and stacked['noise_std'].max() <= NOISE['std']
    light = [DeviceAugmentation('light').draw(rng, np.eye(4), (16, 16, 16)) for _ in range(50)]
    assert all(torch.equal(draw['affine'], torch.eye(3)) and draw['gamma'] == 1 for draw in light)


def test_device_augmentation_parameters_depend_only_on_seed_epoch_and_index():
    datasets = [PatchDataset(blob_subjects(), (16, 16, 16), samples_per_epoch=6, seed=4, device_augmentation=DeviceAugmentation('default'))
                for _ in range(2)]
    torch.manual_seed(5)  # the global generator must not matter
    first, second = datasets[0][9][2], datasets[1][9][2]
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(first[name], datasets[0][3][2][name]) for name in first), 'another position must draw anew'
