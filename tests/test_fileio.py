import errno
import hashlib
import os
import subprocess
import sys
import tempfile
import threading

import pytest
from chainer import testing

from capsnet_chainer.fileio import BackgroundWriter
from capsnet_chainer.fileio import file_digest
from capsnet_chainer.fileio import ImmediateWriter
from capsnet_chainer.fileio import remove_stale_temp_files
from capsnet_chainer.fileio import write_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fills_the_disk(f):
    """A ``write`` that stops half-way with a full disk."""
    f.write(b'half of the new mod')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_atomic_keeps_the_old_file_on_a_full_disk(tmp_path):
    path = tmp_path / 'best'
    path.write_bytes(b'old model')
    with pytest.raises(OSError) as e:
        write_atomic(str(path), fills_the_disk)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == b'old model'
    assert os.listdir(str(tmp_path)) == ['best']


def test_file_digest(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'abc')
    assert file_digest(str(path)) == file_digest(str(path), 'sha256') == (
        'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
    assert file_digest(str(path), 'md5') == '900150983cd24fb0d6963f7d28e17f72'
    # more than one chunk of 1 MiB
    data = bytes(range(256)) * 8193
    path.write_bytes(data)
    assert file_digest(str(path)) == hashlib.sha256(data).hexdigest()


def test_background_writer_writes_in_order_and_wait_waits(tmp_path):
    writer = BackgroundWriter()
    release = threading.Event()
    events = []

    def slow(f):
        assert release.wait(10)
        f.write(b'first')

    writer.submit(str(tmp_path / 'a'), slow, then=lambda: events.append('a'))
    writer.submit(str(tmp_path / 'b'), lambda f: f.write(b'second'),
                  then=lambda: events.append(('b', (tmp_path / 'a').exists())))
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()  # not yet
    release.set()
    writer.wait()
    assert (tmp_path / 'a').read_bytes() == b'first'
    assert (tmp_path / 'b').read_bytes() == b'second'
    assert events == ['a', ('b', True)]  # b after a was in place


def test_background_writer_raises_a_failed_write_once_and_drops_the_rest(tmp_path):
    path = tmp_path / 'best'
    path.write_bytes(b'old model')
    writer = BackgroundWriter()
    release = threading.Event()

    def fills_the_disk_once_released(f):  # still writing when 'after' is queued
        assert release.wait(10)
        fills_the_disk(f)

    writer.submit(str(path), fills_the_disk_once_released,
                  error=lambda e: OSError(e.errno, 'cannot write it', str(path)))
    writer.submit(str(tmp_path / 'after'), lambda f: f.write(b'x'))
    release.set()
    with pytest.raises(OSError, match='cannot write it') as e:
        writer.wait()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == b'old model'
    assert sorted(os.listdir(str(tmp_path))) == ['best']  # no temporary file, no 'after'
    writer.wait()  # raised once
    writer.submit(str(tmp_path / 'later'), lambda f: f.write(b'y'))  # usable again
    writer.wait()
    assert (tmp_path / 'later').read_bytes() == b'y'


def test_immediate_writer_writes_and_raises_at_once(tmp_path):
    writer = ImmediateWriter()
    events = []
    writer.submit(str(tmp_path / 'a'), lambda f: f.write(b'x'), then=lambda: events.append(1))
    assert (tmp_path / 'a').read_bytes() == b'x' and events == [1]
    with pytest.raises(OSError, match='cannot write it'):
        writer.submit(str(tmp_path / 'a'), fills_the_disk,
                      error=lambda e: OSError(e.errno, 'cannot write it'))
    assert (tmp_path / 'a').read_bytes() == b'x'


def test_background_writer_raises_at_the_next_submit(tmp_path):
    writer = BackgroundWriter()
    writer.submit(str(tmp_path / 'dir' / 'missing' / 'f'), lambda f: f.write(b'x'))
    writer._thread.join()
    with pytest.raises(OSError):
        writer.submit(str(tmp_path / 'g'), lambda f: f.write(b'y'))


def test_a_process_that_fails_completes_its_background_writes(tmp_path):
    """The writer's threads are not daemons: a process ending with an error still
    writes whole what it submitted."""
    code = (
        'import time\n'
        'from capsnet_chainer.fileio import BackgroundWriter\n'
        'def slow(f):\n'
        '    time.sleep(1)\n'
        '    f.write(b"complete")\n'
        'BackgroundWriter().submit({!r}, slow)\n'
        'raise RuntimeError("training failed")\n').format(str(tmp_path / 'snapshot'))
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and 'training failed' in proc.stderr
    assert (tmp_path / 'snapshot').read_bytes() == b'complete'
    assert os.listdir(str(tmp_path)) == ['snapshot']


def test_remove_stale_temp_files_removes_only_write_atomics_leftovers(tmp_path):
    names = ['.snapshot_iter_4.ab12cd34.tmp', '.log.x_y_z_12.tmp', 'snapshot_epoch_1',
             'notes.tmp', '.hidden', '.short.abc.tmp', '.UPPER.ABCDEFGH.tmp']
    for name in names:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / '.folder.abcdefgh.tmp').mkdir()  # a folder is not a file of ours
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / n) for n in (
        '.snapshot_iter_4.ab12cd34.tmp', '.log.x_y_z_12.tmp'))
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        ['snapshot_epoch_1', 'notes.tmp', '.hidden', '.short.abc.tmp',
         '.UPPER.ABCDEFGH.tmp', '.folder.abcdefgh.tmp'])


def test_remove_stale_temp_files_of_one_name_and_of_a_missing_folder(tmp_path):
    (tmp_path / '.best.abcd1234.tmp').write_bytes(b'x')
    (tmp_path / '.best_model.abcd1234.tmp').write_bytes(b'x')
    assert remove_stale_temp_files(str(tmp_path), 'best') == [
        str(tmp_path / '.best.abcd1234.tmp')]
    assert os.listdir(str(tmp_path)) == ['.best_model.abcd1234.tmp']
    assert remove_stale_temp_files(str(tmp_path / 'missing')) == []


def test_the_temporary_files_of_write_atomic_are_those_it_removes(tmp_path):
    """A write killed before its rename leaves the file that write_atomic names as
    ``tempfile`` does; the clean-up recognises it (and write_atomic's own failure
    leaves nothing)."""
    fd, leftover = tempfile.mkstemp(prefix='.model.', suffix='.tmp', dir=str(tmp_path))
    os.close(fd)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(tmp_path / 'model'), lambda f: (f.write(b'half'), _interrupt()))
    assert os.listdir(str(tmp_path)) == [os.path.basename(leftover)]
    assert remove_stale_temp_files(str(tmp_path), 'model') == [leftover]
    assert os.listdir(str(tmp_path)) == []


def _interrupt():
    raise KeyboardInterrupt


testing.run_module(__name__, __file__)
