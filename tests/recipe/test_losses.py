import pytest
import torch
import torch.nn.functional as F

from heartseg.outputs import Outputs
from heartseg.planning.config import LOSS_ALIASES, canonical_loss
from heartseg.training.losses import CrossEntropyDiceLoss, DeepSupervisionLoss, SoftDiceLoss, build_loss

SIGMOID = Outputs('sigmoid', ((1,),))
SOFTMAX = Outputs('softmax', ((1,), (2,)))


def test_soft_dice_of_known_overlap():
    prediction = torch.full((1, 1, 4, 4, 4), -50.0)
    prediction[..., :2] = 50.0  # sigmoid saturates: 32 voxels of foreground
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., 1:3] = 1  # 32 voxels, 16 of them shared
    assert float(SoftDiceLoss(SIGMOID)(prediction, target)) == pytest.approx(1 - 2 * 16 / 64, abs=1e-4)


def test_deep_supervision_weights_halve_per_scale_against_pooled_targets():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    logits = [torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 2, 2, 2)]
    inner = CrossEntropyDiceLoss(SIGMOID)
    expected = sum(
        weight / 1.75 * inner(scale_logits, F.avg_pool3d(target, 2**scale) if scale else target)
        for scale, (weight, scale_logits) in enumerate(zip((1, 0.5, 0.25), logits))
    )
    assert float(DeepSupervisionLoss(inner)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


def test_single_logits_tensor_is_scored_by_the_plain_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8, 8), (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    assert float(build_loss('ce_dice', SIGMOID)(logits, target)) == pytest.approx(
        float(CrossEntropyDiceLoss(SIGMOID)(logits, target)), rel=1e-6
    )
    assert float(build_loss('ce', SIGMOID)(logits, target)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, target)), rel=1e-6
    )


def test_softmax_loss_is_cross_entropy_plus_dice_over_the_structures_only():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 6, 6, 6))
    target = torch.stack([SOFTMAX.target(one) for one in label])
    logits = torch.randn(2, 3, 6, 6, 6)
    probabilities = logits.softmax(1)
    intersection = (probabilities * target).sum((0, 2, 3, 4))[1:]
    total = (probabilities.sum((0, 2, 3, 4)) + target.sum((0, 2, 3, 4)))[1:]
    dice = (
        1 - ((2 * intersection + 1e-5) / (total + 1e-5)).mean()
    )  # background (channel 0) left out, as nnU-Net's do_bg=False
    expected = F.cross_entropy(logits, target) + dice
    assert float(build_loss('ce_dice', SOFTMAX)(logits, target)) == pytest.approx(float(expected), rel=1e-5)
    assert float(build_loss('ce', SOFTMAX)(logits, target)) == pytest.approx(
        float(F.cross_entropy(logits, target)), rel=1e-6
    )


def test_softmax_loss_vanishes_for_confident_correct_logits():
    label = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
    label[0, 2:5, 2:5] = 1
    label[0, 5:7] = 2
    target = SOFTMAX.target(label)[None]
    assert float(build_loss('ce_dice', SOFTMAX)(target * 40 - 20, target)) < 1e-4


def test_deep_supervision_pools_the_target_per_axis_like_the_network():
    """A thick-slice network keeps its slices at coarse scales; the target is pooled to each scale's own shape."""
    torch.manual_seed(0)
    target = (torch.rand(1, 1, 8, 8, 4) > 0.5).float()
    logits = [torch.randn(1, 1, 8, 8, 4), torch.randn(1, 1, 4, 4, 4)]  # the first level pooled 2x2x1
    inner = CrossEntropyDiceLoss(SIGMOID)
    expected = (inner(logits[0], target) + 0.5 * inner(logits[1], F.avg_pool3d(target, (2, 2, 1)))) / 1.5
    assert float(DeepSupervisionLoss(inner)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize('outputs', [SIGMOID, SOFTMAX], ids=['sigmoid', 'softmax'])
@pytest.mark.parametrize('alias', sorted(LOSS_ALIASES))
def test_an_alias_gives_the_same_loss_as_its_canonical_name(alias, outputs):
    torch.manual_seed(0)
    label = torch.randint(0, outputs.channels + (outputs.kind == 'sigmoid'), (2, 1, 6, 6, 6))
    target = torch.stack([outputs.target(one) for one in label])
    logits = torch.randn(2, outputs.channels, 6, 6, 6)
    canonical = LOSS_ALIASES[alias]
    assert canonical != alias and canonical_loss(alias) == canonical
    assert float(build_loss(alias, outputs)(logits, target)) == float(build_loss(canonical, outputs)(logits, target))


def test_an_unknown_loss_name_is_refused():
    with pytest.raises(AssertionError, match="'dice'"):
        canonical_loss('dice')
