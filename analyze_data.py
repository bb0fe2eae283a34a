"""Analyse a dataset (MSD or nnU-Net v2 layout): per-case statistics, a training plan and integrity problems.

The command's work and its flags are in ``heartseg.commands.analyze``.

Example:
    python analyze_data.py ../shared/data/LA2018 --output /tmp/la_analysis
    python analyze_data.py data/Task02_Heart --workers 4
"""

from __future__ import annotations

import sys

from heartseg.commands.analyze import main
from heartseg.errors import run_cli

__all__ = ['main', 'cli']


def cli() -> int:
    """The console command (pyproject.toml): one line and a non-zero exit for bad input, never a traceback."""
    return run_cli(main)


if __name__ == '__main__':
    sys.exit(cli())
