"""heartseg.augmentation: labels stay integer and move with their image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from heartseg.augmentation import STRENGTHS, augmentation
from heartseg.sampling import seeded


def two_structure_subject() -> tio.Subject:
    """An off-centre ball (label 1) and a slab (label 2); the image is 1 inside them and 0 outside."""
    grid = np.stack(np.meshgrid(*(np.arange(32),) * 3, indexing='ij'))
    label = np.zeros((32, 32, 32), np.uint8)
    label[((grid - np.array([10, 12, 16])[:, None, None, None]) ** 2).sum(0) < 36] = 1
    label[22:28, 6:26, 8:20] = 2
    image = (label > 0).astype(np.float32)
    affine = np.diag([1.2, 1.2, 1.5, 1.0])
    return tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
                       label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine))


@pytest.mark.parametrize('strength', STRENGTHS)
def test_augmented_labels_stay_integer_and_aligned_with_the_image(strength):
    subject = two_structure_subject()
    transform = augmentation(strength)
    changed = 0
    for seed in range(24):
        with seeded(seed):
            augmented = transform(subject) if transform is not None else subject
        label, image = augmented['label'].data, augmented['image'].data
        # TorchIO may return the label as float after resampling; nearest interpolation keeps its values exact.
        assert set(label.unique().tolist()) <= {0, 1, 2}, label.unique()
        assert (label == 1).any() and (label == 2).any(), 'a structure vanished'
        agreement = float(((image > 0.5) == (label > 0)).float().mean())
        assert agreement > 0.97, f'seed {seed}: image and label agree on only {agreement:.3f} of the voxels'
        changed += not torch.equal(label, subject['label'].data)
    assert (changed > 0) == (strength != 'none')
