"""A data-loader worker that dies becomes a one-line error, not a hang or a traceback.

Example:
    >>> with reporting_worker_failures():
    ...     pass
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from heartseg.errors import UserError


@contextmanager
def reporting_worker_failures() -> Iterator[None]:
    """A loader worker that dies (killed, or out of shared memory) becomes a one-line error.

    PyTorch reports the death from a SIGCHLD handler, so it can surface anywhere in the
    main process, not only while a batch is fetched. A batch being read when the worker
    dies can fail first, on its broken connection, before that report.
    """
    hint = (
        'The last completed epoch is saved: resume with --resume; '
        'if workers run out of shared memory (/dev/shm), use fewer --num-workers'
    )
    try:
        yield
    except (OSError, EOFError) as error:  # ConnectionError is an OSError
        if not _is_broken_worker_connection(error):
            raise
        _ignore_further_worker_deaths()
        raise UserError(
            'data loader', f'DataLoader worker connection broke ({error!r}); the worker died. {hint}'
        ) from None
    except RuntimeError as error:
        if 'DataLoader worker' not in str(error):
            raise
        _ignore_further_worker_deaths()
        reason = str(error).strip().splitlines()[0]
        raise UserError('data loader', f'{reason} {hint}') from None


_LOADER_SOURCE = Path(torch.utils.data.__file__).parent.as_posix()


def _is_broken_worker_connection(error: OSError | EOFError) -> bool:
    broken = isinstance(error, (ConnectionError, EOFError)) or 'end of file during message' in str(error)
    # Only a batch fetch talks to the workers; a broken pipe elsewhere (stdout closed, say) is not theirs.
    fetching = any(
        _LOADER_SOURCE in Path(frame.f_code.co_filename).as_posix()
        for frame, _ in traceback.walk_tb(error.__traceback__)
    )
    return broken and fetching


def _ignore_further_worker_deaths() -> None:
    # The loader is finished with; PyTorch's SIGCHLD handler would otherwise report the same
    # death a second time, as a traceback, while this one is being printed. Its later loaders
    # still notice a dead worker, through their status checks.
    if hasattr(signal, 'SIGCHLD') and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
