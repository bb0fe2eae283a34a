"""heartseg.folder_lock: one run per folder, stale locks taken over, a lock being written never taken."""

import json
import os
import threading
import time

import pytest

from heartseg.errors import UserError
from heartseg.folder_lock import LOCK_NAME, folder_lock


def test_a_lock_whose_record_is_still_being_written_is_not_taken_as_stale(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.touch()  # a racing run has created the lock and not yet written its record
    live = {'pid': os.getpid(), 'host': os.uname().nodename, 'started': 'now', 'command': 'main.py'}
    writer = threading.Timer(0.3, lambda: lock.write_text(json.dumps(live)))
    writer.start()
    with pytest.raises(UserError, match='is in use by another run'):
        with folder_lock(tmp_path):
            pass
    writer.join()
    assert json.loads(lock.read_text()) == live, 'the other run keeps its lock'


def test_an_unreadable_lock_left_long_ago_is_stale(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text('{"pid": ')  # cut short by a crash
    old = time.time() - 60
    os.utime(lock, (old, old))
    with folder_lock(tmp_path):
        assert json.loads(lock.read_text())['pid'] == os.getpid()
    assert not lock.exists()
