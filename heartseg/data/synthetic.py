"""Built-in synthetic left-atrium dataset, in MSD or nnU-Net v2 layout.

The volumes are meant to be learnable but not trivial: an atrium-like blob
of varied size and shape with pulmonary-vein-like tubes, a dark wall, a
bright distractor chamber next to it, textured tissue, a multiplicative bias
field, Rician noise, anisotropic voxels and an oblique, axis-permuted affine.

With ``structures=3`` the wall and the chamber are labelled too (2 and 3),
three mutually exclusive structures like ACDC's cavity, myocardium and
right ventricle.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = write_synthetic_dataset(Path(tempfile.mkdtemp()) / 'Synthetic', num_cases=2, shape=(32, 32, 16))
    >>> sorted(p.name for p in (root / 'imagesTr').iterdir())
    ['synthetic_000.nii.gz', 'synthetic_001.nii.gz']
    >>> v2 = write_synthetic_dataset(Path(tempfile.mkdtemp()) / 'Dataset001_Synthetic', num_cases=2, shape=(32, 32, 16),
    ...                              layout='nnunet_v2')
    >>> sorted(p.name for p in (v2 / 'imagesTr').iterdir())
    ['synthetic_000_0000.nii.gz', 'synthetic_001_0000.nii.gz']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from heartseg.data.cases import MSD, NNUNET_V2
from heartseg.data.fingerprint import rotation_matrix
from heartseg.files import atomic_write_text, save_nifti

DEFAULT_SHAPE = (72, 72, 36)
DEFAULT_SPACING = (1.4, 1.4, 2.5)
STRUCTURE_NAMES = ('left atrium', 'atrial wall', 'neighbouring chamber')
LAYOUTS = (MSD, NNUNET_V2)


def synthetic_affine(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> np.ndarray:
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
    structures: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(image, label, affine)`` for one synthetic case,
    labelling the first ``structures`` of :data:`STRUCTURE_NAMES`."""
    assert 1 <= structures <= len(STRUCTURE_NAMES), f'structures must be 1 to {len(STRUCTURE_NAMES)}, got {structures}'

    rng = np.random.default_rng(seed)
    coords = np.stack(np.meshgrid(*[np.arange(s) * d for s, d in zip(shape, spacing)], indexing='ij'))
    extent = np.asarray(shape) * np.asarray(spacing)
    centre = extent * rng.uniform(0.4, 0.6, size=3)
    atrium = _atrium(rng, coords, centre)
    wall = ndimage.binary_dilation(atrium, iterations=2) & ~atrium
    chamber_centre = centre + rng.choice([-1, 1], size=3) * rng.uniform(18, 26, size=3) * np.array([1, 1, 0.5])
    chamber = (
        ((coords - chamber_centre[:, None, None, None]) / rng.uniform(10, 16, size=3)[:, None, None, None]) ** 2
    ).sum(0) < 1
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
    label = np.zeros(shape, dtype=np.uint8)
    for value, mask in list(enumerate((atrium, wall, chamber), start=1))[:structures]:
        label[mask] = value
    return image, label, synthetic_affine(rng, shape, spacing)


def write_synthetic_dataset(
    root: Path,
    num_cases: int = 24,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    seed: int = 0,
    structures: int = 1,
    layout: str = MSD,
    test_cases: int = 0,
) -> Path:
    """Write a synthetic dataset to ``root`` in ``layout`` (``'msd'`` or ``'nnunet_v2'``) and return it.

    ``test_cases`` more scans, without labels, go to ``imagesTs/``.
    """
    assert layout in LAYOUTS, f'layout must be one of {LAYOUTS}, got {layout!r}'
    v2 = layout == NNUNET_V2
    training = []
    for index in range(num_cases + test_cases):
        case_id = f'synthetic_{index:03d}'
        image, label, affine = synthetic_case(seed * 100_003 + index, shape, spacing, structures)
        image_name = f'{case_id}_0000.nii.gz' if v2 else f'{case_id}.nii.gz'
        if index >= num_cases:
            save_nifti(image, affine, root / 'imagesTs' / image_name)
            continue
        save_nifti(image, affine, root / 'imagesTr' / image_name)
        save_nifti(label, affine, root / 'labelsTr' / f'{case_id}.nii.gz')
        training.append({'image': f'./imagesTr/{image_name}', 'label': f'./labelsTr/{case_id}.nii.gz'})
    names = ('background', *STRUCTURE_NAMES[:structures])
    if v2:
        description = {
            'name': root.name,
            'channel_names': {'0': 'MRI'},
            'labels': {name: value for value, name in enumerate(names)},
            'numTraining': num_cases,
            'file_ending': '.nii.gz',
        }
    else:
        description = {
            'name': 'SyntheticHeart',
            'description': 'Synthetic left-atrium-like MRI volumes generated by synthetic.py',
            'tensorImageSize': '3D',
            'modality': {'0': 'MRI'},
            'labels': {str(value): name for value, name in enumerate(names)},
            'numTraining': num_cases,
            'numTest': test_cases,
            'training': training,
            'test': [f'./imagesTs/synthetic_{index:03d}.nii.gz' for index in range(num_cases, num_cases + test_cases)],
        }
    atomic_write_text(root / 'dataset.json', json.dumps(description, indent=1))
    return root
