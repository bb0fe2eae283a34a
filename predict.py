"""Predict label masks for new scans, in each scan's exact grid, say how far to trust each, and evaluate them.

Every mask has the input's shape, affine, qform/sform and orientation. The
checkpoint carries everything else: architecture, spacing, normalisation,
patch size and label values. Several checkpoints, or a cross-validation run
folder, predict as one ensemble. An ONNX or TorchScript file written by
export.py runs through the same steps.

Quality control is on by default: qc.csv gives each mask a predicted Dice, a
flag and the reasons, and review.html shows the cases worst first
(heartseg/quality/qc.py). A stopped run over a folder, started again with the same
command, skips the cases it finished. ``torchrun --nproc_per_node=N predict.py``
shares the cases out over N processes, one GPU each.

Example:
    python predict.py --checkpoint runs/la/best.pt --input scans/ --output masks/
    python predict.py --checkpoint runs/la/best.pt --input ../shared/data/LA2018/dataset.json \\
        --subset validation --output masks/ --labels ../shared/data/LA2018/labelsTr
    python predict.py --checkpoint runs/cv --input scans/ --output masks/   # the 5-fold ensemble
    python predict.py --checkpoint la.onnx --input scans/ --output masks/   # a file from export.py
    torchrun --nproc_per_node=4 predict.py --checkpoint runs/la --input scans/ --output masks/
"""

from __future__ import annotations

import sys

from heartseg.commands.predict import main
from heartseg.errors import run_cli

__all__ = ['main', 'cli']


def cli() -> int:
    """The console command (pyproject.toml): one line and a non-zero exit for bad input, never a traceback."""
    return run_cli(main)


if __name__ == '__main__':
    sys.exit(cli())
