"""Patch augmentation with TorchIO: the one place to change what the network sees in training.

Spatial transforms move the image and its label together (the label resampled
nearest, so it stays integer); intensity transforms touch the image only. The
settings below are also those of ``heartseg/device_augmentation.py``, which
applies the same transforms to whole batches on the training device.

Example:
    >>> [type(transform).__name__ for transform in augmentation('default').transforms]
    ['RandomFlip', 'RandomAffine', 'RandomGamma', 'RandomBiasField', 'RandomNoise']
"""

from __future__ import annotations

import torchio as tio

STRENGTHS = ('none', 'light', 'default')
# Where the transforms run: in the loader workers, patch by patch, or on the training device, batch by batch.
PLACES = ('loader', 'device')

# nnU-Net's family (flips, small affine, gamma, bias field, noise) at probabilities that keep a 2-core CPU
# ahead of the model. Each is applied with probability p; ranges are TorchIO's (scale factors in
# 1 ± scales, angles in ± degrees, log γ in ± log_gamma, bias coefficients in ± coefficients, noise std in [0, std]).
FLIP_AXES = (0, 1, 2)
FLIP_PROBABILITY = 0.5  # per axis
AFFINE = {'scales': 0.15, 'degrees': 15.0, 'p': 0.3}
GAMMA = {'log_gamma': 0.3, 'p': 0.3}
# Order 2, not TorchIO's 3: half the polynomial terms, and the costliest transform here.
BIAS_FIELD = {'coefficients': 0.3, 'order': 2, 'p': 0.2}
NOISE = {'std': 0.1, 'p': 0.2}


def augmentation(strength: str) -> tio.Transform | None:
    """Patch augmentation: ``'none'``, ``'light'`` (flips) or ``'default'`` (all of the above)."""
    assert strength in STRENGTHS, f'augmentation strength must be one of {STRENGTHS}, got {strength!r}'
    if strength == 'none':
        return None
    flips = tio.RandomFlip(axes=FLIP_AXES, flip_probability=FLIP_PROBABILITY)
    if strength == 'light':
        return flips
    return tio.Compose([
        flips,
        tio.RandomAffine(scales=AFFINE['scales'], degrees=AFFINE['degrees'], isotropic=False,
                         default_pad_value='minimum', p=AFFINE['p']),
        tio.RandomGamma(log_gamma=GAMMA['log_gamma'], p=GAMMA['p']),
        tio.RandomBiasField(coefficients=BIAS_FIELD['coefficients'], order=BIAS_FIELD['order'], p=BIAS_FIELD['p']),
        tio.RandomNoise(std=(0, NOISE['std']), p=NOISE['p']),
    ])
