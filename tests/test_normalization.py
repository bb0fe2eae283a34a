"""InstanceNorm3d: GroupNorm's results and parameters, with a CPU backward of its own for channels_last_3d."""

import pytest
import torch
from torch import nn

from heartseg.normalization import InstanceNorm3d


def _pair(channels: int, dtype: torch.dtype = torch.float64) -> tuple[nn.GroupNorm, InstanceNorm3d]:
    """A GroupNorm with random affine parameters,
    and ours loaded strictly from its state dict (as old checkpoints are)."""
    reference = nn.GroupNorm(channels, channels).to(dtype)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    ours = InstanceNorm3d(channels).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _forward_backward(module: nn.Module, volume: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    volume = volume.clone().requires_grad_()
    out = module(volume)
    out.backward(grad)
    return out, volume.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize('shape', [(2, 8, 12, 10, 6), (1, 3, 5, 4, 7)])
def test_channels_last_gradients_equal_group_norm(shape):
    torch.manual_seed(0)
    reference, ours = _pair(shape[1])
    volume = (3 * torch.randn(shape, dtype=torch.float64) + 1).to(memory_format=torch.channels_last_3d)
    grad = torch.randn(shape, dtype=torch.float64).to(memory_format=torch.channels_last_3d)
    expected = _forward_backward(reference, volume, grad)
    actual = _forward_backward(ours, volume, grad)
    for name, a, e in zip(('output', 'input grad', 'weight grad', 'bias grad'), actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=name)
    assert actual[0].is_contiguous(memory_format=torch.channels_last_3d), 'the output must stay channels_last_3d'
    assert actual[1].is_contiguous(memory_format=torch.channels_last_3d), 'the input grad must stay channels_last_3d'


def test_bf16_input_gives_bf16_results_close_to_fp32():
    torch.manual_seed(1)
    shape = (2, 8, 16, 12, 8)
    reference, ours = _pair(8, torch.float32)
    volume = torch.randn(shape).to(memory_format=torch.channels_last_3d)
    grad = torch.randn(shape).to(memory_format=torch.channels_last_3d)
    expected = _forward_backward(reference, volume, grad)
    out, volume_grad, weight_grad, bias_grad = _forward_backward(ours, volume.bfloat16(), grad.bfloat16())
    assert out.dtype == volume_grad.dtype == torch.bfloat16
    assert weight_grad.dtype == bias_grad.dtype == torch.float32, 'parameter gradients keep the parameters dtype'
    for name, a, e in zip(('output', 'input grad'), (out, volume_grad), expected):
        torch.testing.assert_close(a.float(), e, rtol=0.05, atol=0.05, msg=name)
    # The parameter gradients sum over all voxels, so bf16 rounding of the inputs shows as a small relative error.
    for name, a, e in zip(('weight grad', 'bias grad'), (weight_grad, bias_grad), expected[2:]):
        torch.testing.assert_close(a, e, rtol=0.02, atol=0.5, msg=name)


def test_other_layouts_use_group_norm_itself():
    torch.manual_seed(2)
    reference, ours = _pair(4, torch.float32)
    volume = torch.randn(2, 4, 6, 6, 6)
    assert torch.equal(ours(volume), reference(volume))
