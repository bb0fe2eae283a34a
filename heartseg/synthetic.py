"""Built-in synthetic left-atrium dataset in MSD layout.

The volumes are meant to be learnable but not trivial: an atrium-like blob
of varied size and shape with pulmonary-vein-like tubes, a dark wall, a
bright distractor chamber next to it, textured tissue, a multiplicative bias
field, Rician noise, anisotropic voxels and an oblique, axis-permuted affine.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = write_synthetic_dataset(Path(tempfile.mkdtemp()) / 'Synthetic', num_cases=2, shape=(32, 32, 16))
    >>> sorted(p.name for p in (root / 'imagesTr').iterdir())
    ['synthetic_000.nii.gz', 'synthetic_001.nii.gz']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from heartseg.augmentation import rotation_matrix
from heartseg.files import atomic_write_text, save_nifti

DEFAULT_SHAPE = (72, 72, 36)
DEFAULT_SPACING = (1.4, 1.4, 2.5)


def synthetic_affine(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """An oblique affine whose voxel axes are flipped like a scanner's LPS-ish storage."""
    flips = np.diag([-1.0, -1.0, 1.0])
    rotation = rotation_matrix(rng.uniform(-12, 12, size=3)) @ flips
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2)
    return affine


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-8)


def _atrium(rng: np.random.Generator, coords: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A lumpy ellipsoid with 2-4 vein-like tubes; coordinates in mm."""
    radii = rng.uniform(11, 19, size=3)
    offset = coords - centre[:, None, None, None]
    lumps = 0.18 * _smooth_noise(rng, coords.shape[1:], sigma=4)
    body = (((offset / radii[:, None, None, None]) ** 2).sum(0)) < (1 + lumps)
    for _ in range(rng.integers(2, 5)):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        length = rng.uniform(1.1, 1.9) * radii.max()
        radius = rng.uniform(2.5, 4.5)
        along = np.clip(np.tensordot(direction, offset, axes=1), 0, length)
        closest = along[None] * direction[:, None, None, None]
        body |= np.linalg.norm(offset - closest, axis=0) < radius
    return body


def synthetic_case(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(image, label, affine)`` for one synthetic case."""
    rng = np.random.default_rng(seed)
    coords = np.stack(np.meshgrid(*[np.arange(s) * d for s, d in zip(shape, spacing)], indexing='ij'))
    extent = np.asarray(shape) * np.asarray(spacing)
    centre = extent * rng.uniform(0.4, 0.6, size=3)
    atrium = _atrium(rng, coords, centre)
    wall = ndimage.binary_dilation(atrium, iterations=2) & ~atrium
    chamber_centre = centre + rng.choice([-1, 1], size=3) * rng.uniform(18, 26, size=3) * np.array([1, 1, 0.5])
    chamber = (((coords - chamber_centre[:, None, None, None]) / rng.uniform(10, 16, size=3)[:, None, None, None]) ** 2).sum(0) < 1
    chamber &= ~ndimage.binary_dilation(atrium, iterations=3)

    tissue = 0.35 + 0.08 * _smooth_noise(rng, shape, sigma=2) + 0.05 * _smooth_noise(rng, shape, sigma=0.7)
    image = tissue
    image = np.where(chamber, rng.uniform(0.75, 0.95) + 0.05 * _smooth_noise(rng, shape, 1.5), image)
    image = np.where(atrium, rng.uniform(0.7, 0.9) + 0.06 * _smooth_noise(rng, shape, 1.5), image)
    image = np.where(wall, 0.15, image)
    axes = [np.linspace(-1, 1, s) for s in shape]
    grid = np.meshgrid(*axes, indexing='ij')
    bias = np.exp(sum(rng.uniform(-0.3, 0.3) * g for g in grid) + rng.uniform(-0.2, 0.2) * grid[0] * grid[1])
    image = image * bias
    sigma = rng.uniform(0.04, 0.08)
    image = np.hypot(image + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    image = (image * 500).astype(np.float32)
    return image, atrium.astype(np.uint8), synthetic_affine(rng, shape, spacing)


def write_synthetic_dataset(
    root: Path,
    num_cases: int = 24,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    seed: int = 0,
) -> Path:
    """Write an MSD-layout synthetic dataset to ``root`` and return it."""
    training = []
    for index in range(num_cases):
        name = f'synthetic_{index:03d}.nii.gz'
        image, label, affine = synthetic_case(seed * 100_003 + index, shape, spacing)
        save_nifti(image, affine, root / 'imagesTr' / name)
        save_nifti(label, affine, root / 'labelsTr' / name)
        training.append({'image': f'./imagesTr/{name}', 'label': f'./labelsTr/{name}'})
    description = {
        'name': 'SyntheticHeart',
        'description': 'Synthetic left-atrium-like MRI volumes generated by synthetic.py',
        'tensorImageSize': '3D',
        'modality': {'0': 'MRI'},
        'labels': {'0': 'background', '1': 'left atrium'},
        'numTraining': num_cases,
        'numTest': 0,
        'training': training,
        'test': [],
    }
    atomic_write_text(root / 'dataset.json', json.dumps(description, indent=1))
    return root
