"""Task02_Heart download code, tested against local archives (there is no internet here)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import TINY_NET

from heartseg.data.download import download_task02, extract, fetch
from heartseg.errors import UserError


def make_archive(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, 'w') as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


def task02_members() -> dict[str, bytes]:
    dataset = {'labels': {'0': 'background', '1': 'left atrium'}, 'modality': {'0': 'MRI'}, 'training': []}
    return {
        'Task02_Heart/dataset.json': json.dumps(dataset).encode(),
        'Task02_Heart/imagesTr/la_003.nii.gz': b'x' * 300_000,
        'Task02_Heart/imagesTr/._la_003.nii.gz': b'resource fork',
    }


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP range support, and counts the bytes it sent."""

    sent_bytes = 0

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        start = 0
        if 'Range' in self.headers:
            start = int(self.headers['Range'].split('=')[1].split('-')[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        # Counted before writing: the client may finish reading before this thread runs again.
        type(self).sent_bytes += len(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv('no_proxy', '127.0.0.1')  # behind a proxy, urllib would send it the local requests
    served = tmp_path / 'served'
    served.mkdir()
    RangeHandler.sent_bytes = 0
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()


def test_download_verifies_extracts_and_drops_resource_forks(server, tmp_path):
    served, url = server
    md5 = make_archive(served / 'Task02_Heart.tar', task02_members())
    folder = download_task02(tmp_path / 'data', url=f'{url}/Task02_Heart.tar', md5=md5)
    assert (folder / 'dataset.json').is_file()
    assert (folder / 'imagesTr' / 'la_003.nii.gz').stat().st_size == 300_000
    assert not (folder / 'imagesTr' / '._la_003.nii.gz').exists()
    assert not list((tmp_path / 'data').glob('*.part'))


def test_interrupted_download_resumes_from_part_file(server, tmp_path):
    served, url = server
    archive = served / 'Task02_Heart.tar'
    md5 = make_archive(archive, task02_members())
    destination = tmp_path / 'Task02_Heart.tar'
    already = archive.read_bytes()[:200_000]
    destination.with_name('Task02_Heart.tar.part').write_bytes(already)
    fetch(f'{url}/Task02_Heart.tar', destination, md5)
    assert destination.read_bytes() == archive.read_bytes()
    assert RangeHandler.sent_bytes == archive.stat().st_size - len(already)


def test_file_url_works(tmp_path):
    archive = tmp_path / 'Task02_Heart.tar'
    md5 = make_archive(archive, task02_members())
    folder = download_task02(tmp_path / 'data', url=archive.as_uri(), md5=md5)
    assert (folder / 'dataset.json').is_file()


@pytest.mark.parametrize('url', ['example.com/Task02_Heart.tar', 'ftp://example.com/Task02_Heart.tar'])
def test_a_url_without_a_fetchable_scheme_is_refused_before_anything_is_written(tmp_path, url):
    with pytest.raises(UserError, match='is not a URL this can fetch') as error:
        fetch(url, tmp_path / 'data' / 'Task02_Heart.tar', md5='0' * 32)
    assert error.value.where == '--download-url' and not (tmp_path / 'data').exists()


def test_tampered_archive_is_deleted_and_reported(server, tmp_path):
    served, url = server
    make_archive(served / 'Task02_Heart.tar', task02_members())
    with pytest.raises(UserError, match='checksum mismatch') as error:
        fetch(f'{url}/Task02_Heart.tar', tmp_path / 'Task02_Heart.tar', md5='0' * 32)
    assert 'deleted' in str(error.value)
    assert not list(tmp_path.glob('Task02_Heart.tar*'))


@pytest.mark.parametrize('member', ['../escape.txt', '/tmp/absolute_escape.txt', 'Task02_Heart/../../escape.txt'])
def test_extraction_refuses_escaping_members(tmp_path, member):
    archive = tmp_path / 'evil.tar'
    make_archive(archive, {member: b'owned'})
    destination = tmp_path / 'out'
    with pytest.raises(UserError, match='refusing'):
        extract(archive, destination)
    assert not (tmp_path / 'escape.txt').exists()
    assert not Path('/tmp/absolute_escape.txt').exists()
    assert list(destination.iterdir()) == []


def test_extraction_refuses_links(tmp_path):
    archive = tmp_path / 'links.tar'
    with tarfile.open(archive, 'w') as tar:
        info = tarfile.TarInfo('Task02_Heart/passwd')
        info.type = tarfile.SYMTYPE
        info.linkname = '/etc/passwd'
        tar.addfile(info)
    with pytest.raises(UserError, match='link member'):
        extract(archive, tmp_path / 'out')


def test_main_download_flag_trains_on_the_extracted_task(small_dataset_template, tmp_path, monkeypatch):
    """`python main.py --download` end to end, against a local archive standing in for the mirror."""
    import functools

    from heartseg.commands import train as main_module
    from heartseg.errors import run_cli

    archive = tmp_path / 'Task02_Heart.tar'
    with tarfile.open(archive, 'w') as tar:
        tar.add(small_dataset_template, arcname='Task02_Heart')
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(main_module, 'download_task02', functools.partial(download_task02, md5=md5))
    monkeypatch.chdir(tmp_path)
    argv = [
        '--download',
        '--download-url',
        archive.as_uri(),
        '--run-dir',
        'runs/task02',
        '--epochs',
        '1',
        '--steps-per-epoch',
        '2',
        *TINY_NET,
    ]
    assert run_cli(main_module.main, argv) == 0
    assert (tmp_path / 'data' / 'Task02_Heart' / 'dataset.json').is_file()
    assert json.loads((tmp_path / 'runs' / 'task02' / 'config.json').read_text())['config']['data'] == str(
        (tmp_path / 'data' / 'Task02_Heart').resolve()
    )
