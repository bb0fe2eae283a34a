"""One run per folder: a second ``main.py`` or ``predict.py`` on a folder in use
is refused, a killed run's lock is taken over.

A run writes ``.heartseg.lock`` into its folder (its process id, host, start
time and command), created exclusively, and removes it when it ends. A second
run that finds the lock of a live process is refused in one line naming it; a
lock whose process is gone (killed, crashed, the machine rebooted) is stale,
and the next run replaces it. A lock written on another host cannot be checked
from here, so it is honoured; the message says which file to delete if that
run is known to be over.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with folder_lock(folder):
    ...     (folder / LOCK_NAME).is_file()
    True
    >>> (folder / LOCK_NAME).exists()
    False
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from heartseg.errors import UserError

LOCK_NAME = '.heartseg.lock'
BEING_WRITTEN_S = 5  # a lock younger than this whose record cannot be read yet is being written, not stale


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs."""
    path = folder / LOCK_NAME
    mine = claim(path)
    try:
        yield
    finally:
        if read_holder(path) == mine:
            path.unlink(missing_ok=True)


def claim(path: Path) -> dict:
    """Create the lock file for this process, replacing a stale one; the record written, or a one-line refusal."""
    record = {
        'pid': os.getpid(),
        'host': socket.gethostname(),
        'started': datetime.now().isoformat(timespec='seconds'),
        'command': ' '.join(sys.argv),
    }
    for _ in range(
        3 + 10
    ):  # waits while a racing run writes its record; a stale lock is removed and the claim tried again
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            refuse_if_in_use(path.parent)
            if read_holder(path) is None and is_fresh(path):
                time.sleep(BEING_WRITTEN_S / 10)  # another run has created it and is writing its record
                continue
            path.unlink(missing_ok=True)  # stale: its process is gone, or its record was cut short long ago
            continue
        except OSError as error:
            raise UserError(path.parent, f'cannot lock the folder ({error.strerror or error})') from None
        with os.fdopen(descriptor, 'w') as handle:
            handle.write(json.dumps(record))
        return record
    raise UserError(path.parent, 'another run keeps taking this folder; is a job starting again and again?')


def refuse_if_in_use(folder: Path) -> None:
    """A one-line refusal if a live run holds ``folder``'s lock."""
    path = folder / LOCK_NAME
    holder = read_holder(path)
    if holder is not None and is_running(holder):
        raise UserError(folder, in_use(holder, path))


def read_holder(path: Path) -> dict | None:
    """The lock's record, or None when there is none or it cannot be read (a lock cut short by a crash is stale)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get('pid'), int) else None


def is_fresh(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < BEING_WRITTEN_S
    except FileNotFoundError:
        return False


def is_running(holder: dict) -> bool:
    """Whether the lock's process still runs; a lock from another host is assumed to."""
    if holder.get('host') != socket.gethostname():
        return True
    try:
        os.kill(holder['pid'], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the process exists, under another user
        return True
    return True


def in_use(holder: dict, path: Path) -> str:
    where = 'this machine' if holder.get('host') == socket.gethostname() else f'host {holder.get("host")}'
    return (
        f'is in use by another run (process {holder["pid"]} on {where}, started {holder.get("started")}: '
        f'{holder.get("command", "")[:120]}); wait for it to end or choose another folder'
        + ('' if where == 'this machine' else f' (if that run is over, delete {path})')
    )
