"""Affine instance normalisation that trains fast on channels_last_3d CPU tensors.

nnU-Net normalises each channel of each sample on its own (InstanceNorm).
``nn.GroupNorm`` with one channel per group computes exactly that, and its
CPU forward keeps channels_last_3d tensors in place where
``nn.InstanceNorm3d`` copies them. Its CPU backward on such tensors is slow,
though: over the default plan's stage tensors, 2.3 times slower than a few
vectorised reductions in fp32 and 4.5 times slower in bf16 (``python -m
benchmarks.benchmark norm``; BENCHMARKS.md). So on the CPU the backward pass is
computed here, in at least fp32.

Example:
    >>> import torch
    >>> from heartseg.normalization import InstanceNorm3d
    >>> norm = InstanceNorm3d(8)
    >>> x = torch.randn(2, 8, 16, 16, 8).to(memory_format=torch.channels_last_3d)
    >>> norm(x).shape
    torch.Size([2, 8, 16, 16, 8])
"""

from __future__ import annotations

import torch
from torch import nn


class InstanceNorm3d(nn.GroupNorm):
    """Affine InstanceNorm over ``(N, C, D, H, W)``, with GroupNorm's parameters and state-dict keys."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == 'cpu' and x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return _ChannelsLastInstanceNorm.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """GroupNorm's own forward; a backward written as reductions over ``(N, voxels, C)`` rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        compute_dtype = torch.promote_types(x.dtype, weight.dtype)
        # GroupNorm's channels_last forward is slower in bf16 than a cast to fp32 and an fp32 pass.
        out, mean, rstd = torch.native_group_norm(x.to(compute_dtype), weight, bias, n, c, x[0, 0].numel(), c, eps)
        ctx.save_for_backward(x, weight, mean.view(n, 1, c), rstd.view(n, 1, c))
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        compute_dtype = mean.dtype
        rows, grad_rows = (_rows(t).to(compute_dtype) for t in (x, grad))
        voxels = rows.shape[1]
        grad_sum = grad_rows.sum(1, keepdim=True)
        grad_dot_normalised = rstd * ((grad_rows * rows).sum(1, keepdim=True) - mean * grad_sum)
        # d/dx of w * (x - mean) * rstd + b is  a * grad + b_x * x + constant, per sample and channel.
        grad_scale = rstd * weight.to(compute_dtype)
        x_scale = -grad_scale * rstd * grad_dot_normalised / voxels
        constant = -grad_scale * grad_sum / voxels - x_scale * mean
        grad_x = torch.addcmul(constant, rows, x_scale).addcmul_(grad_rows, grad_scale)
        grad_x = grad_x.to(x.dtype).view(x.shape[0], *x.shape[2:], x.shape[1]).permute(0, 4, 1, 2, 3)
        grad_weight = grad_dot_normalised.sum((0, 1)).to(weight.dtype)
        grad_bias = grad_sum.sum((0, 1)).to(weight.dtype)
        return grad_x, grad_weight, grad_bias, None


def _rows(volume: torch.Tensor) -> torch.Tensor:
    """``(N, C, D, H, W)`` as ``(N, D*H*W, C)``: a view for channels_last_3d tensors."""
    return volume.permute(0, 2, 3, 4, 1).reshape(volume.shape[0], -1, volume.shape[1])
