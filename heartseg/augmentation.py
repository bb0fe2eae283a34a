"""Patch augmentation with TorchIO: the one place to change what the network sees in training.

Spatial transforms move the image and its label together (the label resampled
nearest, so it stays integer); intensity transforms touch the image only.

Example:
    >>> [type(transform).__name__ for transform in augmentation('default').transforms]
    ['RandomFlip', 'RandomAffine', 'RandomGamma', 'RandomBiasField', 'RandomNoise']
"""

from __future__ import annotations

import torchio as tio

STRENGTHS = ('none', 'light', 'default')


def augmentation(strength: str) -> tio.Transform | None:
    """Patch augmentation: ``'none'``, ``'light'`` (flips) or ``'default'``.

    The default follows nnU-Net's family (flips, small affine, gamma, bias
    field, noise) at probabilities that keep a 2-core CPU ahead of the model.
    """
    assert strength in STRENGTHS, f'augmentation strength must be one of {STRENGTHS}, got {strength!r}'
    if strength == 'none':
        return None
    flips = tio.RandomFlip(axes=(0, 1, 2))
    if strength == 'light':
        return flips
    return tio.Compose([
        flips,
        tio.RandomAffine(scales=0.15, degrees=15, isotropic=False, default_pad_value='minimum', p=0.3),
        tio.RandomGamma(log_gamma=0.3, p=0.3),
        # Order 2, not TorchIO's 3: half the polynomial terms, and the costliest transform here.
        tio.RandomBiasField(coefficients=0.3, order=2, p=0.2),
        tio.RandomNoise(std=(0, 0.1), p=0.2),
    ])
