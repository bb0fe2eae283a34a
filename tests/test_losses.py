import pytest
import torch
import torch.nn.functional as F

from heartseg.losses import BCEDiceLoss, DeepSupervisionLoss, SoftDiceLoss, build_loss


def test_soft_dice_of_known_overlap():
    prediction = torch.full((1, 1, 4, 4, 4), -50.0)
    prediction[..., :2] = 50.0  # sigmoid saturates: 32 voxels of foreground
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., 1:3] = 1  # 32 voxels, 16 of them shared
    assert float(SoftDiceLoss()(prediction, target)) == pytest.approx(1 - 2 * 16 / 64, abs=1e-4)


def test_deep_supervision_weights_halve_per_scale_against_pooled_targets():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    logits = [torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 2, 2, 2)]
    inner = BCEDiceLoss()
    expected = sum(
        weight / 1.75 * inner(scale_logits, F.avg_pool3d(target, 2**scale) if scale else target)
        for scale, (weight, scale_logits) in enumerate(zip((1, 0.5, 0.25), logits))
    )
    assert float(DeepSupervisionLoss(inner)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


def test_single_logits_tensor_is_scored_by_the_plain_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8, 8), (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    assert float(build_loss('bce_dice')(logits, target)) == pytest.approx(float(BCEDiceLoss()(logits, target)), rel=1e-6)
    assert float(build_loss('bce')(logits, target)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, target)), rel=1e-6)
