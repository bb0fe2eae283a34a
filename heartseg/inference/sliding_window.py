"""Sliding-window inference over a whole preprocessed volume.

Windows overlap and are blended with a Gaussian (nnU-Net) or Hann weight, so
patch borders, where the network sees least context, count least.

Example:
    >>> import torch
    >>> from mymodel import UNet3D
    >>> net = UNet3D(levels=2, base_channels=4).eval()
    >>> sliding_window_logits(net, torch.zeros(1, 40, 36, 20), (16, 16, 16)).shape
    torch.Size([1, 40, 36, 20])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heartseg.planning.config import DEFAULT_OVERLAP

BLENDINGS = ('gaussian', 'hann')
# The sliding-window defaults of validation and prediction alike.
DEFAULT_BLENDING = 'gaussian'
DEFAULT_WINDOW_BATCH = 2


def blending_weights(patch_size: tuple[int, int, int], mode: str = 'gaussian') -> torch.Tensor:
    """Per-voxel window weight, peaking at the centre and strictly positive."""
    assert mode in BLENDINGS, f'blending must be one of {BLENDINGS}, got {mode!r}'
    profiles = []
    for size in patch_size:
        position = torch.arange(size, dtype=torch.float32)
        if mode == 'gaussian':
            sigma = size / 8  # nnU-Net's sigma scale of 1/8
            profile = torch.exp(-0.5 * ((position - (size - 1) / 2) / sigma) ** 2)
        else:
            profile = torch.sin(torch.pi * (position + 0.5) / size) ** 2
        profiles.append(profile)
    weights = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    weights = weights / weights.max()
    return weights.clamp_min(1e-3)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window starts every ``patch * (1 - overlap)`` voxels, the last one flush with the end.

    The same grid as MONAI's ``sliding_window_inference``, so results can be compared.
    """
    if size <= patch:
        return [0]
    interval = max(1, int(patch * (1 - overlap)))
    count = int(np.ceil((size - patch) / interval)) + 1
    return sorted({min(i * interval, size - patch) for i in range(count)})


@torch.inference_mode()
def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: tuple[int, int, int],
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_WINDOW_BATCH,
    blending: str = DEFAULT_BLENDING,
    device: torch.device | str = 'cpu',
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Blend window logits over ``image`` of shape ``(C, X, Y, Z)``.

    Returns:
        Logits of shape ``(classes, X, Y, Z)`` on the CPU.
    """
    assert 0 <= overlap < 1, f'overlap must be in [0, 1), got {overlap}'
    device = torch.device(device)
    spatial = image.shape[1:]
    before = [max(0, p - s) // 2 for s, p in zip(spatial, patch_size)]
    after = [max(0, p - s) - b for s, p, b in zip(spatial, patch_size, before)]
    # Pad symmetrically with the image minimum (background after z-scoring).
    padded = F.pad(
        image, [pad for b, a in zip(reversed(before), reversed(after)) for pad in (b, a)], value=float(image.min())
    )
    shape = padded.shape[1:]
    weights = blending_weights(patch_size, blending).to(device)
    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch_size))))
    accumulated = None
    normaliser = torch.zeros(shape, device=device)
    for first in range(0, len(starts), batch_size):
        corners = starts[first : first + batch_size]
        windows = torch.stack([_window(padded, corner, patch_size) for corner in corners]).to(device)
        # On CUDA the training dtype (devices.mixed_precision_dtype); CPU inference stays fp32.
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None and device.type == 'cuda'):
            logits = model(windows).float()
        if accumulated is None:
            accumulated = torch.zeros((logits.shape[1], *shape), device=device)
        for corner, window_logits in zip(corners, logits):
            region = tuple(slice(c, c + p) for c, p in zip(corner, patch_size))
            accumulated[(slice(None), *region)].addcmul_(window_logits, weights)
            normaliser[region] += weights
    logits = accumulated / normaliser
    return logits[(slice(None), *(slice(b, b + s) for b, s in zip(before, spatial)))].cpu()


def _window(volume: torch.Tensor, corner: tuple[int, ...], patch_size: tuple[int, int, int]) -> torch.Tensor:
    return volume[(slice(None), *(slice(c, c + p) for c, p in zip(corner, patch_size)))]


def mirrorings(axes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Every combination of flips of the spatial ``axes`` (0 to 2), the identity first: ``2**len(axes)`` of them.

    Each is given as the dimensions of a ``(C, X, Y, Z)`` tensor to flip.

    Example:
        >>> mirrorings((0, 1))
        ((), (1,), (2,), (1, 2))
    """
    dims = tuple(axis + 1 for axis in axes)
    return tuple(flips for count in range(len(dims) + 1) for flips in itertools.combinations(dims, count))


def mirrored_logits(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: tuple[int, int, int],
    mirror_axes: Sequence[int] = (),
    **window_options,
) -> Iterator[torch.Tensor]:
    """Sliding-window logits of the image and of each of its mirrorings along ``mirror_axes``, each flipped back.

    Args:
        mirror_axes: Spatial axes (0 to 2) whose flips are test-time augmentation; none: the image alone.
        window_options: Passed on to :func:`sliding_window_logits`.
    """
    for dims in mirrorings(mirror_axes):
        flipped = image.flip(dims) if dims else image
        logits = sliding_window_logits(model, flipped, patch_size, **window_options)
        yield logits.flip(dims) if dims else logits


def predict_logits(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: tuple[int, int, int],
    mirror_axes: Sequence[int] = (),
    **window_options,
) -> torch.Tensor:
    """Sliding-window logits, averaged over the mirrorings along ``mirror_axes``."""
    total, count = None, 0
    for logits in mirrored_logits(model, image, patch_size, mirror_axes, **window_options):
        total = logits if total is None else total + logits
        count += 1
    return total / count
