"""One error type for problems a user can fix, and the CLI wrapper that reports it.

Every script catches :class:`UserError` at its entry point and prints a single
line naming the file and the problem, then exits with status 2, instead of a
traceback.

Example:
    >>> raise UserError('data/imagesTr/a.nii.gz', 'file is truncated')
    Traceback (most recent call last):
    ...
    heartseg.errors.UserError: data/imagesTr/a.nii.gz: file is truncated
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem.strip().splitlines()[0] if problem.strip() else 'unknown problem'
        super().__init__(f'{self.where}: {self.problem}')


class DiskFull(UserError):
    """A write that ran out of space: nothing half-written is kept, and the run can go on once there is space."""

    def __init__(self, where: str | Path, hint: str = 'free some space and run the same command again'):
        super().__init__(where, f'the disk is full (no space left on device); nothing half-written was kept: {hint}')


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main`` and turn user errors and Ctrl-C into one-line messages."""
    try:
        return main(argv) or 0
    except UserError as error:
        _report(f'error: {error}')
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _report('interrupted')
        return EXIT_INTERRUPTED


def _report(message: str) -> None:
    # tqdm.write clears the bars it knows of. A loader worker's death or Ctrl-C arrives as a signal, and
    # can interrupt a bar's own clean-up after it blanked the line but before it returned to column 0;
    # the leading '\r' makes the message start the line either way.
    tqdm.write('\r' + message, file=sys.stderr)
