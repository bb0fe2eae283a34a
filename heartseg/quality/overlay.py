"""The validation picture logged to TensorBoard: one slice, with the reference and predicted contours in colour.

One structure: the reference's contour green, the prediction's red, on one
picture. Several: the reference (left) and the prediction (right) side by
side, each structure in its own colour.

Example:
    >>> import torch
    >>> label = torch.zeros(40, 30, 10, dtype=torch.uint8)
    >>> label[10:20, 8:18, 3:7] = 1
    >>> overlay_image(torch.randn(40, 30, 10), label, label).shape
    (480, 640, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

# Enough pixels to judge a boundary by eye: the slice is enlarged to about this size, without smoothing.
LONG_SIDE_PIXELS = 640
CONTOUR_PIXELS = 2
# Reference green, prediction red: where they coincide the contour turns yellow.
REFERENCE_CHANNEL, PREDICTION_CHANNEL = 1, 0
# One colour per structure when there are several, in label order.
STRUCTURE_COLOURS = (
    (255, 64, 64),
    (64, 255, 64),
    (64, 128, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 160, 0),
)
PANEL_GAP_PIXELS = 8


def overlay_image(
    image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor, structure_values: Sequence[int] = (1,)
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of the axial slice through the reference's largest cross-section.

    The image is in grey (0.5 to 99.5 percentile window). Anterior is up and
    the patient's left on the right, as viewers show RAS data.

    Args:
        structure_values: The label values of the structures; with one, every
            foreground voxel counts as it.
    """
    slice_index = int(label.sum(dim=(0, 1)).argmax()) if label.any() else label.shape[2] // 2
    grey = _grey(image[:, :, slice_index].float().numpy())
    scale = max(1, math.ceil(LONG_SIDE_PIXELS / max(grey.shape)))
    background = np.stack([_enlarge(grey, scale)] * 3, axis=-1)
    label_slice, prediction_slice = label[:, :, slice_index].numpy(), prediction[:, :, slice_index].numpy()
    if len(structure_values) == 1:
        outlines = {
            channel: _contour(_enlarge(mask > 0, scale))
            for channel, mask in ((REFERENCE_CHANNEL, label_slice), (PREDICTION_CHANNEL, prediction_slice))
        }
        background[outlines[REFERENCE_CHANNEL] | outlines[PREDICTION_CHANNEL]] = 0
        for channel, outline in outlines.items():
            background[outline, channel] = 255
        return _display(background)
    panels = [
        _display(_structure_contours(background.copy(), mask, structure_values, scale))
        for mask in (label_slice, prediction_slice)
    ]
    gap = np.zeros((panels[0].shape[0], PANEL_GAP_PIXELS, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate([panels[0], gap, panels[1]], axis=1))


def _structure_contours(picture: np.ndarray, label_slice: np.ndarray, values: Sequence[int], scale: int) -> np.ndarray:
    for index, value in enumerate(values):
        picture[_contour(_enlarge(label_slice == value, scale))] = STRUCTURE_COLOURS[index % len(STRUCTURE_COLOURS)]
    return picture


def _display(picture: np.ndarray) -> np.ndarray:
    """From (x, y) voxel order to rows top to bottom with anterior up."""
    return np.ascontiguousarray(picture.transpose(1, 0, 2)[::-1])


def _grey(slice_: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slice_, (0.5, 99.5))
    return (np.clip((slice_ - low) / (high - low + 1e-8), 0, 1) * 255).astype(np.uint8)


def _enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=CONTOUR_PIXELS, border_value=0)
