"""Command-line values checked where they are parsed: one line naming the flag, the value and what is allowed.

Every script builds its parser with :class:`Parser`, and gives each numeric
flag one of the value types below, so a bad value stops the script before any
run folder or output file exists: ``run_cli`` prints the one line and exits
with code 2.

Example:
    >>> parser = Parser(prog='demo')
    >>> _ = parser.add_argument('--batch-size', type=integer(minimum=1))
    >>> parser.parse_args(['--batch-size', '4']).batch_size
    4
    >>> integer(minimum=1)('0')
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 0 is not allowed: an integer of at least 1 is required
    >>> parser.parse_args(['--batch-size', 'two'])
    Traceback (most recent call last):
    ...
    heartseg.errors.UserError: --batch-size: 'two' is not an integer (see demo --help)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from heartseg.errors import UserError


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to a flag's help unless the help already says its default, or it has none (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or '(default' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UserError` s: one line naming the flag, exit code 2."""

    def error(self, message: str) -> NoReturn:
        if message.startswith('argument ') and ': ' in message:
            flag, problem = message.removeprefix('argument ').split(': ', 1)
            raise UserError(flag.split('/')[0], f'{problem} (see {self.prog} --help)')
        raise UserError(self.prog, f'{message} (see --help)')


def user_path(text: str) -> Path:
    """A file or folder flag's value, with ``~`` expanded as a shell would, also where the shell did not
    (``--data=~/LA2018``, a quoted path, a config file).

    Example:
        >>> user_path('~/LA2018') == Path.home() / 'LA2018'
        True
    """
    return Path(text).expanduser()


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer of at least ``minimum``, and at most ``maximum`` if given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f'of at least {minimum}' if maximum is None else f'from {minimum} to {maximum}'
            raise argparse.ArgumentTypeError(f'{value} is not allowed: an integer {bound} is required')
        return value

    parse.__name__ = f'integer >= {minimum}'
    return parse


def number(minimum: float, below: float | None = None, inclusive: bool = True) -> Callable[[str], float]:
    """A finite number of at least ``minimum`` (above it if not ``inclusive``), and below ``below`` if given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
        low_ok = value >= minimum if inclusive else value > minimum
        if not math.isfinite(value) or not low_ok or (below is not None and value >= below):
            bound = f'{"at least" if inclusive else "above"} {minimum:g}' + (
                f' and below {below:g}' if below is not None else ''
            )
            raise argparse.ArgumentTypeError(f'{text} is not allowed: a finite number {bound} is required')
        return value

    parse.__name__ = 'number'
    return parse
