import errno
import os

import pytest
from chainer import testing

from capsnet_chainer.fileio import file_sha256
from capsnet_chainer.fileio import write_atomic


def test_write_atomic_keeps_the_old_file_on_a_full_disk(tmp_path):
    path = tmp_path / 'best'
    path.write_bytes(b'old model')

    def fills_the_disk(f):
        f.write(b'half of the new mod')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as e:
        write_atomic(str(path), fills_the_disk)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == b'old model'
    assert os.listdir(str(tmp_path)) == ['best']


def test_file_sha256(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'abc')
    assert file_sha256(str(path)) == (
        'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')


testing.run_module(__name__, __file__)
