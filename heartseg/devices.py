"""Which device a run uses, and whether mixed precision pays there.

Example:
    >>> select_device('cpu')
    device(type='cpu')
"""

from __future__ import annotations

import torch

from heartseg.errors import UserError


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on ``device``, or None where mixed precision would not pay.

    On a CPU with native bf16 instructions (AVX512-BF16 or AMX) bf16 convolutions
    make a training step faster (BENCHMARKS.md); without them oneDNN emulates
    bf16 and a step gets slower.
    """
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == 'cpu' and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16() -> bool:
    probes = (getattr(torch.cpu, name, None) for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported'))
    return any(probe() for probe in probes if probe is not None)


def select_device(name: str) -> torch.device:
    """``'auto'`` picks CUDA, then Apple MPS, then CPU; a named device must exist here."""
    if name != 'auto':
        return _named_device(name)
    if torch.cuda.is_available():
        return torch.device('cuda')
    if torch.backends.mps.is_available():
        return torch.device('mps')
    return torch.device('cpu')


def _named_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError('--device', f'unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device', f'{name!r} requested but CUDA is not available')
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            '--device', f'{name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)'
        )
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise UserError('--device', f'{name!r} requested but Apple MPS is not available')
    if device.type not in ('cpu', 'cuda', 'mps'):
        raise UserError('--device', f'device {name!r} is not supported; expected auto, cpu, cuda, cuda:N or mps')
    return device
