"""Export a trained model to ONNX or TorchScript, to deploy it outside this code.

The command's work and its flags are in ``heartseg.commands.export``.

Example:
    python export.py --checkpoint runs/la/best.pt --output la.onnx
    python export.py --checkpoint runs/la --output la.pt
    python export.py --checkpoint runs/cv --output exported/cv.onnx
    python predict.py --checkpoint la.onnx --input scans/ --output masks/
"""

from __future__ import annotations

import sys

from heartseg.commands.export import main
from heartseg.errors import run_cli

__all__ = ['main', 'cli']


def cli() -> int:
    """The console command (pyproject.toml): one line and a non-zero exit for bad input, never a traceback."""
    return run_cli(main)


if __name__ == '__main__':
    sys.exit(cli())
