"""The augmentation of ``heartseg/augmentation.py`` as batched tensor operations on the training device.

With ``--augment-on device`` the loader workers only crop. Each patch's random
parameters are still drawn in its worker, from the patch's own seeded
generator, so the patch stream stays a pure function of ``(seed, epoch,
index)``; the training device then applies them to the whole batch, in
TorchIO's order: flips, affine, gamma, bias field, noise.

- The affine is built in millimetres from the patch's own affine, as TorchIO's
  ``RandomAffine`` builds it (scaling and rotation about the patch centre),
  and applied by one ``affine_grid``/``grid_sample``: the image linearly,
  padded with its minimum; the one-hot target nearest, so it stays exactly 0
  or 1, padded with background.
- Gamma, bias field and noise use TorchIO's formulas.

kornia has 3D flips and affines but no 3D gamma, bias field or noise, and
would be a new runtime dependency; MONAI's transforms take one sample at a
time. So these few tensor operations are our own, and
``tests/test_device_augmentation.py`` holds them to TorchIO's output.

Example:
    >>> augment = DeviceAugmentation('default')
    >>> parameters = augment.draw(np.random.default_rng(0), np.eye(4), (8, 8, 8))
    >>> images, targets = augment(torch.randn(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8),
    ...                           {name: value[None] for name, value in parameters.items()})
    >>> images.shape, targets.unique().tolist()
    (torch.Size([1, 1, 8, 8, 8]), [0.0])
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from heartseg.augmentation import AFFINE, BIAS_FIELD, FLIP_AXES, FLIP_PROBABILITY, GAMMA, NOISE


class DeviceAugmentation:
    """Draw per patch (in the loader), apply per batch (on the device).

    Args:
        strength: ``'light'`` (flips) or ``'default'`` (flips, affine, gamma,
            bias field, noise), as :func:`heartseg.augmentation.augmentation`.
    """

    def __init__(self, strength: str):
        assert strength in ('light', 'default'), f"device augmentation strength must be 'light' or 'default', got {strength!r}"
        self.full = strength == 'default'

    def draw(self, rng: np.random.Generator, affine: np.ndarray, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """One patch's parameters; neutral values (identity, γ = 1, zero bias and noise) where a transform is not applied.

        Args:
            rng: The patch's seeded generator.
            affine: The patch's 4×4 voxel-to-world affine.
            shape: The patch's shape in voxels.
        """
        flip = [axis in FLIP_AXES and rng.random() < FLIP_PROBABILITY for axis in range(3)]
        matrix, gamma = np.eye(3), 1.0
        bias = np.zeros(len(_bias_terms(BIAS_FIELD['order'])))
        noise_std = 0.0
        if self.full:
            if rng.random() < AFFINE['p']:
                scales = rng.uniform(1 - AFFINE['scales'], 1 + AFFINE['scales'], 3)
                degrees = rng.uniform(-AFFINE['degrees'], AFFINE['degrees'], 3)
                matrix = sampling_matrix(scales, degrees, affine, shape)
            if rng.random() < GAMMA['p']:
                gamma = float(np.exp(rng.uniform(-GAMMA['log_gamma'], GAMMA['log_gamma'])))
            if rng.random() < BIAS_FIELD['p']:
                bias = rng.uniform(-BIAS_FIELD['coefficients'], BIAS_FIELD['coefficients'], len(bias))
            if rng.random() < NOISE['p']:
                noise_std = float(rng.uniform(0, NOISE['std']))
        return {
            'flip': torch.tensor(flip),
            'affine': torch.as_tensor(matrix, dtype=torch.float32),
            'gamma': torch.tensor(gamma, dtype=torch.float32),
            'bias': torch.as_tensor(bias, dtype=torch.float32),
            'noise_std': torch.tensor(noise_std, dtype=torch.float32),
            'noise_seed': torch.tensor(int(rng.integers(2**62))),
        }

    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 parameters: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch: ``(B, C, X, Y, Z)`` images and one-hot targets, with the collated draws of its patches."""
        parameters = {name: value.to(images.device) for name, value in parameters.items()}
        # _flip returns new tensors, so the transforms after it work in place without touching the loader's batch.
        images, targets = _flip(images, targets, parameters['flip'])
        _affine(images, targets, parameters['affine'])
        _gamma(images, parameters['gamma'])
        _bias_field(images, parameters['bias'])
        _noise(images, parameters['noise_std'], parameters['noise_seed'])
        return images, targets


def sampling_matrix(scales: np.ndarray, degrees: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """TorchIO's ``Affine(scales, degrees)`` about the patch centre, as ``grid_sample``'s output → input matrix.

    TorchIO moves the content by rotation, then scaling, in RAS millimetres; the
    rotation is ITK's ``Euler3DTransform`` (about y, then x, then z). Sampling
    needs the inverse, from output to input voxels, in the normalised
    coordinates of ``align_corners=True`` (−1 and 1 at the corner voxels'
    centres) and in ``grid_sample``'s reversed axis order.
    """
    x, y, z = np.radians(degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    about_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    about_z = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    content_motion = np.diag(scales) @ about_z @ about_x @ about_y
    voxel_to_world = np.asarray(affine, dtype=np.float64)[:3, :3]
    half_extent = np.diag((np.asarray(shape) - 1) / 2)
    to_world = voxel_to_world @ half_extent
    output_to_input = np.linalg.inv(to_world) @ np.linalg.inv(content_motion) @ to_world
    return output_to_input[::-1, ::-1].copy()


def _flip(images: torch.Tensor, targets: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for axis in range(3):
        chosen = flips[:, axis].view(-1, 1, 1, 1, 1)
        images = torch.where(chosen, images.flip(axis + 2), images)
        targets = torch.where(chosen, targets.flip(axis + 2), targets)
    return images, targets


def _affine(images: torch.Tensor, targets: torch.Tensor, matrices: torch.Tensor) -> None:
    chosen = ~(matrices == torch.eye(3, device=matrices.device)).all(dim=(1, 2))
    if not chosen.any():
        return
    theta = F.pad(matrices[chosen], (0, 1))  # no translation: the centre stays
    grid = F.affine_grid(theta, list(images[chosen].shape), align_corners=True)
    minimum = images[chosen].amin(dim=(2, 3, 4), keepdim=True)
    images[chosen] = F.grid_sample(images[chosen] - minimum, grid, mode='bilinear', padding_mode='zeros', align_corners=True) + minimum
    targets[chosen] = F.grid_sample(targets[chosen], grid, mode='nearest', padding_mode='zeros', align_corners=True)


def _gamma(images: torch.Tensor, gammas: torch.Tensor) -> None:
    chosen = gammas != 1
    if chosen.any():
        selected = images[chosen]
        # TorchIO's sign-preserving power for images with negative values (z-scored MRI has them).
        images[chosen] = selected.sign() * selected.abs() ** gammas[chosen].view(-1, 1, 1, 1, 1)


def _bias_field(images: torch.Tensor, coefficients: torch.Tensor) -> None:
    chosen = coefficients.any(dim=1)
    if chosen.any():
        basis = _bias_basis(tuple(images.shape[2:]), images.device)
        field = torch.exp(torch.einsum('bt,txyz->bxyz', coefficients[chosen], basis))
        images[chosen] = images[chosen] * field[:, None]


def _noise(images: torch.Tensor, stds: torch.Tensor, seeds: torch.Tensor) -> None:
    for index in torch.nonzero(stds > 0).flatten().tolist():
        generator = torch.Generator(images.device).manual_seed(int(seeds[index]))
        noise = torch.randn(images.shape[1:], generator=generator, device=images.device)
        images[index] += noise * stds[index]


@functools.lru_cache(maxsize=1)
def _bias_terms(order: int) -> tuple[tuple[int, int, int], ...]:
    """Exponents of TorchIO's polynomial bias field, in its coefficient order."""
    return tuple((i, j, k) for i in range(order + 1) for j in range(order + 1 - i) for k in range(order + 1 - i - j))


@functools.lru_cache(maxsize=2)
def _bias_basis(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """The bias field's polynomial terms over a patch, coordinates from −1 to 1 along each axis as in TorchIO."""
    x, y, z = torch.meshgrid(*(torch.linspace(-1, 1, n, device=device) for n in shape), indexing='ij')
    return torch.stack([x**i * y**j * z**k for i, j, k in _bias_terms(BIAS_FIELD['order'])])
