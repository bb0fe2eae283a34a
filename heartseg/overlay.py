"""The validation picture logged to TensorBoard: one slice, with the reference and predicted contours in colour.

Example:
    >>> import torch
    >>> label = torch.zeros(40, 30, 10, dtype=torch.uint8)
    >>> label[10:20, 8:18, 3:7] = 1
    >>> overlay_image(torch.randn(40, 30, 10), label, label).shape
    (480, 640, 3)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

# Enough pixels to judge a boundary by eye: the slice is enlarged to about this size, without smoothing.
LONG_SIDE_PIXELS = 640
CONTOUR_PIXELS = 2
# Reference green, prediction red: where they coincide the contour turns yellow.
REFERENCE_CHANNEL, PREDICTION_CHANNEL = 1, 0


def overlay_image(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of the axial slice through the reference's largest cross-section.

    The image is in grey (0.5 to 99.5 percentile window); the reference label's
    contour is green and the prediction's red. Anterior is up and the patient's
    left on the right, as viewers show RAS data.
    """
    slice_index = int(label.sum(dim=(0, 1)).argmax()) if label.any() else label.shape[2] // 2
    grey = _grey(image[:, :, slice_index].float().numpy())
    scale = max(1, math.ceil(LONG_SIDE_PIXELS / max(grey.shape)))
    picture = np.stack([_enlarge(grey, scale)] * 3, axis=-1)
    outlines = {channel: _contour(_enlarge(mask[:, :, slice_index].numpy() > 0, scale))
                for channel, mask in ((REFERENCE_CHANNEL, label), (PREDICTION_CHANNEL, prediction))}
    picture[outlines[REFERENCE_CHANNEL] | outlines[PREDICTION_CHANNEL]] = 0
    for channel, outline in outlines.items():
        picture[outline, channel] = 255
    return np.ascontiguousarray(picture.transpose(1, 0, 2)[::-1])


def _grey(slice_: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_, (0.5, 99.5))
    return (np.clip((slice_ - low) / (high - low + 1e-8), 0, 1) * 255).astype(np.uint8)


def _enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=CONTOUR_PIXELS, border_value=0)
