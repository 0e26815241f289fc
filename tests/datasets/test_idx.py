import gzip
import struct

import numpy
import pytest

from capsnet_chainer.datasets import idx  # before chainer: restores numpy.sctypes

from chainer import testing


def idx_bytes(code, shape, body):
    header = bytes((0, 0, code, len(shape))) + b''.join(struct.pack('>i', d) for d in shape)
    return header + bytes(body)


def gz(data):
    return gzip.compress(data, compresslevel=1)


# parse_idx / format_idx


def test_parse_idx_labels():
    a = idx.parse_idx(idx_bytes(0x08, (5,), [3, 1, 4, 1, 5]), 'labels')
    assert a.dtype == numpy.uint8
    assert a.shape == (5,)
    assert a.tolist() == [3, 1, 4, 1, 5]


def test_parse_idx_images():
    body = numpy.arange(24, dtype=numpy.uint8)
    a = idx.parse_idx(idx_bytes(0x08, (2, 3, 4), body), 'images')
    assert a.dtype == numpy.uint8
    assert a.shape == (2, 3, 4)
    numpy.testing.assert_array_equal(a, body.reshape((2, 3, 4)))
    assert a.flags.writeable


def test_parse_idx_empty_dimension():
    assert idx.parse_idx(idx_bytes(0x08, (0, 28, 28), b''), 'x').shape == (0, 28, 28)


def test_format_idx_round_trip():
    a = numpy.random.RandomState(0).randint(0, 256, size=(3, 5, 7)).astype(numpy.uint8)
    data = idx.format_idx(a)
    assert data[:4] == b'\x00\x00\x08\x03'
    assert data[4:16] == struct.pack('>3i', 3, 5, 7)
    numpy.testing.assert_array_equal(idx.parse_idx(data, 'a'), a)
    with pytest.raises(ValueError):
        idx.format_idx(a.astype(numpy.float32))


@pytest.mark.parametrize('data, match', [
    (b'\x01\x00\x08\x01' + struct.pack('>i', 1) + b'\x00', 'bad magic number 0x01000801'),
    (b'\x00\x00\x08\x00', 'bad magic number'),
    (b'\x00\x00', 'shorter than the 4-byte magic'),
    (idx_bytes(0x0D, (1,), b'\x00' * 4), 'unsupported IDX type code 0x0d'),
    (idx_bytes(0x08, (2, 3), b'\x00' * 5), 'truncated: header says 18 bytes, file has 17'),
    (idx_bytes(0x08, (2, 3), b'\x00' * 7), 'too long: header says 18 bytes, file has 19'),
    (b'\x00\x00\x08\x03' + struct.pack('>i', 2), 'truncated: header says 3 dimensions'),
])
def test_parse_idx_rejects(data, match):
    with pytest.raises(idx.DatasetError, match=match) as e:
        idx.parse_idx(data, 'some-file')
    assert str(e.value).startswith('some-file: ')


# read_idx_gz


def test_read_idx_gz_checksum_mismatch(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(gz(idx_bytes(0x08, (3,), [1, 2, 3])))
    with pytest.raises(idx.DatasetError) as e:
        idx.read_idx_gz(str(path))
    message = str(e.value)
    assert str(path) in message
    assert 'checksum mismatch' in message
    assert idx.MNIST_FILES['train-labels-idx1-ubyte.gz'][0] in message
    assert 'not MNIST' in message


def test_read_idx_gz_unlisted_name_and_explicit_checksum(tmp_path):
    payload = idx_bytes(0x08, (3,), [1, 2, 3])
    path = tmp_path / 'other-labels-idx1-ubyte.gz'
    path.write_bytes(gz(payload))
    assert idx.read_idx_gz(str(path)).tolist() == [1, 2, 3]
    good = idx.sha256_hex(payload)
    assert idx.read_idx_gz(str(path), expected_sha256=good).tolist() == [1, 2, 3]
    with pytest.raises(idx.DatasetError, match='checksum mismatch'):
        idx.read_idx_gz(str(path), expected_sha256='0' * 64)


def test_read_idx_gz_truncated(tmp_path):
    path = tmp_path / 'x-idx1-ubyte.gz'
    path.write_bytes(gz(idx_bytes(0x08, (1000,), numpy.arange(1000) % 251))[:-12])
    with pytest.raises(idx.DatasetError, match='truncated or corrupt gzip') as e:
        idx.read_idx_gz(str(path))
    assert str(path) in str(e.value)


def test_read_idx_gz_corrupt(tmp_path):
    data = bytearray(gz(idx_bytes(0x08, (1000,), numpy.arange(1000) % 251)))
    data[20:30] = b'\xff' * 10
    path = tmp_path / 'x-idx1-ubyte.gz'
    path.write_bytes(bytes(data))
    with pytest.raises(idx.DatasetError, match='truncated or corrupt gzip'):
        idx.read_idx_gz(str(path))


def test_read_idx_gz_not_gzip(tmp_path):
    path = tmp_path / 't10k-labels-idx1-ubyte.gz'
    path.write_bytes(idx_bytes(0x08, (3,), [1, 2, 3]))
    with pytest.raises(idx.DatasetError, match='not a gzip file'):
        idx.read_idx_gz(str(path))


testing.run_module(__name__, __file__)
