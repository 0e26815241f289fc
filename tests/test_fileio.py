import pytest
from chainer import testing

from capsnet_chainer.fileio import write_atomic


def test_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / 'file'
    path.write_bytes(b'old')

    def failing(f):
        f.write(b'half')
        raise OSError('disk full')
    with pytest.raises(OSError):
        write_atomic(str(path), failing)
    assert path.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['file']


testing.run_module(__name__, __file__)
