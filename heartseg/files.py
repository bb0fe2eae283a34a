"""Atomic file writes: a reader never sees a half-written checkpoint or output.

Each writer writes to a temporary file in the destination folder, flushes it
to disk, then renames it over the destination, which POSIX makes atomic.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / 'example.json'
    >>> atomic_write_text(path, '{}')
    >>> path.read_text()
    '{}'
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
import torch

from heartseg.errors import DiskFull, UserError

FIGURE_DPI = 100  # the dataset report's and the cardiac-function figures' resolution

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffixes last, since nibabel picks the format from them.
    suffixes = ''.join(path.suffixes[-2:])
    handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=f'.tmp{suffixes}', dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, 'rb') as written:
            os.fsync(written.fileno())
        os.chmod(temporary_path, 0o666 & ~_UMASK)
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary_path)``, then move the result to ``path``.

    Raises:
        DiskFull: The disk filled up; the temporary file is gone and ``path`` is as it was.
        UserError: Any other failure to write.
    """
    try:
        with _atomic_path(path) as temporary:
            write(temporary)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(path) from None
        raise UserError(path, f'cannot write file ({error.strerror or error})') from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Write rows as a CSV file, atomically: the columns in order of first appearance, a row's missing ones empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)), restval='', lineterminator='\n'
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically. The object is serialised in memory first: torch's own writer reports a full disk
    as an unrelated ``RuntimeError`` (``unexpected pos``), a plain write as the ``OSError`` it is."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda temporary: write_bytes(temporary, buffer.getbuffer()))


def write_bytes(path: Path, data: bytes | memoryview) -> None:
    with open(path, 'wb') as handle:
        handle.write(data)


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, like: nib.Nifti1Image | None = None) -> None:
    """Write a NIfTI image atomically.

    With ``like``, the output copies that image's header, qform and sform
    exactly (codes included), so it lies in the same grid.
    """
    if like is None:
        image = nib.Nifti1Image(data, affine)
    else:
        header = like.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1, 0)
        image = nib.Nifti1Image(data, None, header=header)
        image.set_qform(like.get_qform(), code=int(like.header['qform_code']))
        image.set_sform(like.get_sform(), code=int(like.header['sform_code']))
    image.set_data_dtype(data.dtype)
    atomic_write(path, lambda temporary: nib.save(image, temporary))


def atomic_savefig(figure: Any, path: Path) -> None:
    """Render a matplotlib ``Figure`` with Agg (no display needed) and move the PNG into place atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only the figure-writing commands need matplotlib

    FigureCanvasAgg(figure)
    atomic_write(path, lambda temporary: figure.savefig(temporary, format='png', dpi=FIGURE_DPI))


def canonical_folder(folder: Path) -> Path:
    """The one spelling that folders are compared in: absolute, with ``~``, ``..`` and links resolved as the OS
    resolves them (``a/link/..`` is the link target's parent, not ``a``).

    Example:
        >>> canonical_folder(Path('/data/x/../LA2018')) == canonical_folder(Path('/data/LA2018'))
        True
    """
    return Path(os.path.realpath(folder.expanduser()))


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content: a file edited in place, or restored with its old size and time, is told apart."""
    digest = hashlib.sha256()
    try:
        with open(path, 'rb') as handle:
            for block in iter(lambda: handle.read(1 << 20), b''):
                digest.update(block)
    except OSError as error:
        raise UserError(path, f'cannot read file ({error.strerror or error})') from None
    return digest.hexdigest()


def ensure_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and prove that a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            _write_probe(probe)
    except OSError as error:
        raise UserError(folder, f'output folder is not writable ({error.strerror or error})') from None


def _write_probe(probe: IO[bytes]) -> None:
    # A megabyte catches a full disk as well as missing permissions.
    probe.write(b'\0' * (1 << 20))
    probe.flush()
    os.fsync(probe.fileno())
