"""Trains a tiny run under ``torchrun`` for test_distributed.py, and saves each rank's weights and last gradients.

Usage: torchrun --nproc_per_node=N tests/ddp_worker.py CONFIG_JSON OUTPUT_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchio as tio

from heartseg import distributed
from heartseg.planning.config import RunConfig
from training import create_trainer


def blob_subjects(count: int = 4, shape: tuple[int, int, int] = (24, 24, 16)) -> list[tio.Subject]:
    """Noisy bright boxes: a deterministic, preprocessed-looking dataset."""
    generator = torch.Generator().manual_seed(0)
    subjects = []
    for index in range(count):
        label = torch.zeros(1, *shape, dtype=torch.uint8)
        label[:, 4 + index : 14 + index, 6:16, 3:11] = 1
        image = label.float() + 0.5 * torch.randn(1, *shape, generator=generator)
        subjects.append(tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label)))
    return subjects


def main(config_path: str, output: str) -> None:
    with distributed.session('cpu'):
        config = RunConfig.from_dict(json.loads(Path(config_path).read_text()))
        subjects = blob_subjects()
        trainer = create_trainer(config, subjects, subjects[:3])
        trainer.fit()
        gradients = {name: parameter.grad for name, parameter in trainer.model.named_parameters()}
        torch.save(
            {'weights': trainer.model.state_dict(), 'gradients': gradients},
            Path(output) / f'rank{distributed.rank()}.pt',
        )


if __name__ == '__main__':
    main(*sys.argv[1:])
