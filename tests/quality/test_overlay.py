"""heartseg.quality.overlay: the TensorBoard picture shows the reference in green and the prediction in red
(several structures: side by side, one colour each), large enough to judge."""

from __future__ import annotations

import numpy as np
import torch

from heartseg.quality.overlay import LONG_SIDE_PIXELS, PANEL_GAP_PIXELS, STRUCTURE_COLOURS, overlay_image


def test_contours_are_coloured_where_the_masks_have_their_boundaries():
    image = torch.zeros(32, 24, 6)
    label = torch.zeros(32, 24, 6, dtype=torch.uint8)
    prediction = torch.zeros_like(label)
    label[4:12, 4:12, 2] = 1  # the reference alone, near the origin
    prediction[20:28, 12:20, 2] = 1  # the prediction alone, elsewhere
    picture = overlay_image(image, label, prediction)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert max(picture.shape[:2]) >= LONG_SIDE_PIXELS
    green = (picture[..., 1] == 255) & (picture[..., 0] == 0)
    red = (picture[..., 0] == 255) & (picture[..., 1] == 0)
    assert green.any() and red.any()
    scale = picture.shape[1] // 32
    # Back in voxel coordinates (x along the width, y up the height): green around x 4-11, red around x 20-27.
    green_x = np.nonzero(green)[1] // scale
    red_x = np.nonzero(red)[1] // scale
    assert green_x.min() >= 4 and green_x.max() <= 11
    assert red_x.min() >= 20 and red_x.max() <= 27
    # Anterior (high y) is up: the red square (y 12-19) sits above the green one (y 4-11).
    assert np.nonzero(red)[0].mean() < np.nonzero(green)[0].mean()


def test_agreeing_contours_turn_yellow():
    label = torch.zeros(16, 16, 4, dtype=torch.uint8)
    label[4:12, 4:12, 1] = 1
    picture = overlay_image(torch.randn(16, 16, 4), label, label.clone())
    yellow = (picture[..., 0] == 255) & (picture[..., 1] == 255) & (picture[..., 2] == 0)
    assert yellow.any() and not ((picture[..., 1] == 255) & (picture[..., 0] == 0)).any()


def test_several_structures_show_side_by_side_one_colour_each():
    label = torch.zeros(24, 24, 4, dtype=torch.uint8)
    label[2:10, 2:10, 1] = 1
    label[14:22, 14:22, 1] = 2
    prediction = torch.zeros_like(label)
    prediction[2:10, 2:10, 1] = 2  # structure 2 predicted where structure 1 is
    picture = overlay_image(torch.zeros(24, 24, 4), label, prediction, structure_values=(1, 2))
    single = overlay_image(torch.zeros(24, 24, 4), label, prediction)
    assert picture.shape[1] == 2 * single.shape[1] + PANEL_GAP_PIXELS, 'reference and prediction panels side by side'
    reference_panel, prediction_panel = picture[:, : single.shape[1]], picture[:, -single.shape[1] :]
    first, second = (np.array(rgb, dtype=np.uint8) for rgb in STRUCTURE_COLOURS[:2])
    assert coloured(reference_panel, first).any() and coloured(reference_panel, second).any()
    assert coloured(prediction_panel, second).any() and not coloured(prediction_panel, first).any()
    # The prediction's structure 2 sits where the reference's structure 1 is (low x: the left of the panel).
    scale = single.shape[1] // 24
    assert np.nonzero(coloured(prediction_panel, second))[1].max() // scale < 12


def coloured(panel: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    return (panel == rgb).all(axis=-1)
