"""heartseg.devices: device choice and where mixed precision pays."""

from __future__ import annotations

import re

import pytest
import torch

from heartseg.devices import mixed_precision_dtype, select_device
from heartseg.errors import UserError


@pytest.mark.parametrize('native_bf16', [True, False])
def test_a_cpu_trains_in_bf16_only_with_native_bf16_instructions(monkeypatch, native_bf16):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: native_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False, raising=False)
    assert mixed_precision_dtype(torch.device('cpu')) == (torch.bfloat16 if native_bf16 else None)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_asking_for_cuda_without_it_is_a_one_line_error():
    with pytest.raises(UserError, match="'cuda' requested but CUDA is not available"):
        select_device('cuda')


@pytest.mark.parametrize(
    'name,problem',
    [
        ('gpu', "unknown device 'gpu'"),
        ('cuda:3', "'cuda:3' requested but this machine has 1 CUDA device(s)"),
        ('mps', "'mps' requested but Apple MPS is not available"),
        ('meta', "device 'meta' is not supported"),
    ],
)
def test_a_device_that_is_not_here_is_a_one_line_error(monkeypatch, name, problem):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    with pytest.raises(UserError, match=re.escape(problem)):
        select_device(name)
