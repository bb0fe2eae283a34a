"""Multi-process training with PyTorch's own engine, launched by ``torchrun``.

``torchrun --nproc_per_node=N main.py ...`` starts N copies of ``main.py``
with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`session` joins
them into one process group (NCCL on GPUs, gloo on CPUs); a plain
``python main.py`` runs as a group of one, and every helper here is then a
no-op. Rank 0 alone plans the run and writes logs and checkpoints.

Example:
    >>> with session('cpu'):
    ...     is_main(), world_size()
    (True, 1)
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from heartseg.errors import UserError

T = TypeVar('T')
# Long enough for rank 0 to preprocess a dataset while the others wait at a barrier.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


@contextmanager
def session(device: str | None) -> Iterator[None]:
    """Join the torchrun process group for the duration of the block (if launched by torchrun).

    Failures of a collective, which mean that another rank died, become one-line
    errors instead of tracebacks.
    """
    if not launched_by_torchrun():
        yield
        return
    use_cuda = device != 'cpu' and torch.cuda.is_available()
    if use_cuda:
        local_rank, gpus = int(os.environ['LOCAL_RANK']), torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(
                'torchrun',
                f'process {local_rank} has no GPU of its own ({gpus} visible); '
                f'use --nproc_per_node={gpus}, or --device cpu',
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group('nccl' if use_cuda else 'gloo', timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
        # Leave together: a rank that tears down gloo while another still talks to it can abort.
        dist.barrier()
    except dist.DistError as error:
        raise UserError(
            f'rank {rank()}', f'a collective operation failed, most likely because another rank exited: {error}'
        ) from None
    finally:
        # Free the trainer's DDP wrapper (often held in reference cycles) while the interpreter
        # is whole: if gloo's work objects die only at interpreter shutdown, the process aborts.
        gc.collect()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's own GPU under torchrun; the given device otherwise."""
    if device.type == 'cuda' and launched_by_torchrun():
        return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return device


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(values: list[Any]) -> list[Any]:
    """The concatenation of every rank's list, in rank order, on every rank."""
    if world_size() == 1:
        return values
    gathered: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(gathered, values)
    return [value for part in gathered for value in part]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches); the other ranks then run it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks.

    DDP keeps rank 0's buffers during training, but each rank's last forward
    pass updates its own; averaging makes every rank validate and save one model.
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world_size()


class _SumOverRanks(torch.autograd.Function):
    # Every rank computes the same loss from the sum, so each rank's share of the
    # gradient is the sum of all ranks' output gradients; DDP's averaging of the
    # parameter gradients then gives exactly the single-process gradient.
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        total = gradient.clone()
        dist.all_reduce(total)
        return total


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks: gradients flow back to each rank's share."""
    if world_size() == 1:
        return tensor
    return _SumOverRanks.apply(tensor)
