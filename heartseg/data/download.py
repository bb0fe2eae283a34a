"""Download and safely extract the Medical Segmentation Decathlon's Task02_Heart.

The archive is streamed to ``<name>.part``, resumed with an HTTP range request
after an interruption, verified by MD5, and only then renamed. Extraction
uses tarfile's ``data`` filter, which refuses absolute paths, ``..`` members
and links that point outside the destination.

Example:
    >>> download_task02(Path('data'))  # doctest: +SKIP
    PosixPath('data/Task02_Heart')
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from heartseg.errors import UserError

TASK02_URL = 'https://msd-for-monai.s3-us-west-2.amazonaws.com/Task02_Heart.tar'
TASK02_MD5 = '06ee59366e1e5124267b774dbd654057'
TASK02_FOLDER = 'Task02_Heart'
CHUNK_BYTES = 1 << 20
URL_SCHEMES = ('http', 'https', 'file')


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path, md5: str) -> Path:
    """Download ``url`` to ``destination``, resuming a ``.part`` file, then verify it."""
    if urllib.parse.urlsplit(url).scheme not in URL_SCHEMES:
        raise UserError(
            '--download-url',
            f'{url!r} is not a URL this can fetch; expected one starting with '
            + ', '.join(f'{s}://' for s in URL_SCHEMES),
        )
    if destination.is_file() and md5_of(destination) == md5:
        return destination
    partial = destination.with_name(destination.name + '.part')
    destination.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have and getattr(response, 'status', None) == 206
            if not resumed:
                have = 0  # the server ignored the range: start over
            total = _content_length(response, have)
            with (
                open(partial, 'ab' if resumed else 'wb') as handle,
                tqdm(
                    total=total,
                    initial=have,
                    unit='B',
                    unit_scale=True,
                    desc=f'Downloading {destination.name}',
                ) as progress,
            ):
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b''):
                    handle.write(chunk)
                    progress.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, 'reason', error)
        raise UserError(url, f'download failed ({reason}); run again to resume from {partial}') from None
    actual = md5_of(partial)
    if actual != md5:
        partial.unlink()
        raise UserError(
            partial,
            f'checksum mismatch (MD5 {actual}, expected {md5}); the file was deleted, run again to download afresh',
        )
    partial.replace(destination)
    return destination


def _content_length(response, already_have: int) -> int | None:
    length = response.headers.get('Content-Length')
    return int(length) + already_have if length else None


def extract(archive: Path, destination: Path) -> None:
    """Extract a tar archive safely into ``destination``, atomically per archive."""
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix='.extracting-', dir=destination))
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _check_member(archive, member)
            tar.extractall(staging, filter='data')
        for item in staging.iterdir():
            target = destination / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            item.replace(target)
    except tarfile.FilterError as error:
        raise UserError(archive, f'refusing unsafe archive member ({error})') from None
    except tarfile.TarError as error:
        raise UserError(archive, f'not a valid tar archive ({error})') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    # The data filter would quietly strip a leading '/'; an archive that needs it is not trusted.
    if member.issym() or member.islnk():
        raise UserError(archive, f'refusing to extract link member {member.name!r}')
    if member.name.startswith('/') or '..' in Path(member.name).parts:
        raise UserError(archive, f'refusing member {member.name!r} whose path escapes the destination')


def download_task02(data_root: Path, url: str = TASK02_URL, md5: str = TASK02_MD5) -> Path:
    """Fetch, verify and extract Task02_Heart under ``data_root``; return its folder."""
    folder = data_root / TASK02_FOLDER
    if (folder / 'dataset.json').is_file():
        return folder
    archive = fetch(url, data_root / f'{TASK02_FOLDER}.tar', md5)
    extract(archive, data_root)
    # The MSD archives carry macOS resource forks ('._case.nii.gz') that are not images.
    for fork in folder.rglob('._*'):
        fork.unlink()
    if not (folder / 'dataset.json').is_file():
        raise UserError(archive, f'archive did not contain {TASK02_FOLDER}/dataset.json')
    return folder
