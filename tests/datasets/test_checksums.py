"""The checksums of official files."""

import hashlib

import pytest
from chainer import testing

from capsnet_chainer.datasets import checksums
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.fileio import file_digest


def test_digests_and_verify(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(b'official bytes')
    md5 = hashlib.md5(b'official bytes').hexdigest()
    assert file_digest(str(path), 'md5') == md5
    assert file_digest(str(path), 'sha256') == hashlib.sha256(
        b'official bytes').hexdigest()
    checksums.verify(str(path), md5, 'CIFAR-10', 'https://example.org/')
    with pytest.raises(DatasetError) as e:
        checksums.verify(str(path), '0' * 32, 'CIFAR-10', 'https://example.org/')
    message = str(e.value)
    assert message.startswith(str(path) + ': MD5 checksum mismatch')
    assert 'not the official CIFAR-10 file' in message and 'https://example.org/' in message
    assert '--dataset npz' in message


testing.run_module(__name__, __file__)
