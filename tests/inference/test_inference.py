"""heartseg.inference.sliding_window: sliding windows give back what the network computes, in every configuration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heartseg.inference.sliding_window import BLENDINGS, predict_logits, sliding_window_logits, window_starts


class Identity(nn.Module):
    """A 'network' whose logits are its input, so any blending or mirroring error shows."""

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return patch.clone()


class Shifted(nn.Module):
    """Logits that depend on where a voxel sits in its window: windows disagree, so blending weights matter."""

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, patch.shape[2]).view(1, 1, -1, 1, 1)
        return patch + ramp


@pytest.mark.parametrize('shape', [(40, 36, 20), (12, 30, 9), (16, 16, 16)], ids=['larger', 'smaller-and-odd', 'exact'])
@pytest.mark.parametrize('overlap', [0.0, 0.25, 0.5, 0.8])
@pytest.mark.parametrize('blending', BLENDINGS)
@pytest.mark.parametrize('mirror_axes', [(), (0, 1), (0, 1, 2)], ids=['plain', 'in-plane', 'mirrored'])
def test_an_identity_network_gives_back_its_input(shape, overlap, blending, mirror_axes):
    image = torch.randn(2, *shape)
    logits = predict_logits(
        Identity(), image, (16, 16, 16), mirror_axes, overlap=overlap, blending=blending, batch_size=3
    )
    torch.testing.assert_close(logits, image, rtol=0, atol=1e-5)


@pytest.mark.parametrize('blending', BLENDINGS)
def test_overlapping_windows_are_blended_with_the_centre_weighted_most(blending):
    image = torch.zeros(1, 48, 16, 16)
    logits = sliding_window_logits(Shifted(), image, (16, 16, 16), overlap=0.5, blending=blending)
    # Voxel 15 lies at the edge of the window starting at 0 (ramp 1.0) and near the centre of the one
    # starting at 8 (ramp 0.47): both weightings let the centre dominate, where a plain mean would give 0.73.
    assert 0.45 < float(logits[0, 15, 8, 8]) < 0.55
    assert torch.isfinite(logits).all()


def test_mirroring_averages_the_network_s_view_of_each_flip():
    """A ramp along the first axis and its mirror image average to 0.5: each flip must really be run and undone."""
    image = torch.zeros(1, 16, 16, 16)
    plain = predict_logits(Shifted(), image, (16, 16, 16))
    mirrored = predict_logits(Shifted(), image, (16, 16, 16), (0, 1, 2))
    across_the_ramp = predict_logits(Shifted(), image, (16, 16, 16), (1, 2))
    torch.testing.assert_close(plain[0, :, 0, 0], torch.linspace(0, 1, 16))
    torch.testing.assert_close(mirrored, torch.full_like(mirrored, 0.5))
    torch.testing.assert_close(across_the_ramp, plain)  # flips across the ramp leave it as it is


@pytest.mark.parametrize(
    'size,patch,overlap,expected',
    [
        (48, 16, 0.5, [0, 8, 16, 24, 32]),
        (40, 16, 0.5, [0, 8, 16, 24]),
        (16, 16, 0.5, [0]),
        (10, 16, 0.5, [0]),
        (41, 16, 0.0, [0, 16, 25]),
    ],
)
def test_windows_cover_the_volume_and_the_last_is_flush_with_its_end(size, patch, overlap, expected):
    starts = window_starts(size, patch, overlap)
    assert starts == expected
    assert starts[0] == 0 and (size <= patch or starts[-1] == size - patch)
