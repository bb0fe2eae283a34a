"""Runs main.py with announced pauses around every atomic rename, for test_reliability.py.

Before and after each rename that puts a file in place (checkpoints, metrics,
config) it prints ``KILLPOINT before <name>`` or ``KILLPOINT after <name>`` and
pauses, so the test can SIGKILL the run at exactly that moment.

Usage: python tests/kill_driver.py MAIN_ARGUMENTS...
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from heartseg.errors import run_cli
from main import main

PAUSE_SECONDS = 0.3
_replace = os.replace


def announced_replace(source: str | Path, destination: str | Path) -> None:
    name = Path(destination).name
    print(f'KILLPOINT before {name}', flush=True)
    time.sleep(PAUSE_SECONDS)
    _replace(source, destination)
    print(f'KILLPOINT after {name}', flush=True)
    time.sleep(PAUSE_SECONDS)


if __name__ == '__main__':
    os.replace = announced_replace
    sys.exit(run_cli(main, sys.argv[1:]))
