"""Train a 3D U-Net on Task02_Heart or any MSD or nnU-Net v2 dataset.

With no ``--data`` and no ``./data/Task02_Heart`` it writes a built-in
synthetic dataset under ``./data/`` and trains on it with a short CPU
schedule, so ``python main.py`` works out of the box.

The command line becomes overrides, ``heartseg.planning`` plans the run from
them, the dataset and the device, and ``heartseg.run`` trains it
(``heartseg.commands.train``; the flags are in ``heartseg.commands.train_flags``).

Example:
    python main.py --data ../shared/data/LA2018 --run-dir runs/la --time-limit 30
    python main.py --data ../shared/data/LA2018 --plan-only
    python main.py --resume runs/la --epochs 200
    python main.py --data ../shared/data/LA2018 --folds 5 --run-dir runs/cv --time-limit 60
    python main.py --data Dataset002_Heart --splits splits_final.json --folds 5 --fold 0 --run-dir runs/cv/fold_0
    python main.py --score-folds runs/cv
"""

from __future__ import annotations

import sys

from heartseg.commands.train import main
from heartseg.errors import run_cli

__all__ = ['main', 'cli']


def cli() -> int:
    """The console command (pyproject.toml): one line and a non-zero exit for bad input, never a traceback."""
    return run_cli(main)


if __name__ == '__main__':
    sys.exit(cli())
