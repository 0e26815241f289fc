"""smallNORB's binary matrices (.mat, not MATLAB), decompressed or gzipped (checked by
SHA-256), downsampled to 48x48 as the official code's resize does."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import os

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import smallnorb
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.fileio import file_digest
from official_files import norb_matrix
from official_files import write_smallnorb


@pytest.mark.parametrize('gz', [False, True])
def test_the_pairs_are_read_and_downsampled(tmp_path, monkeypatch, gz):
    (x, t), (x_test, t_test), sha256 = write_smallnorb(str(tmp_path), n_pairs=7, gz=gz)
    monkeypatch.setattr(smallnorb, 'SHA256', sha256)
    with monkeypatch.context() as m:
        m.setattr(smallnorb, 'N_PAIRS', 7)
        train, test = smallnorb.read_smallnorb(str(tmp_path))
    assert train.images.shape == test.images.shape == (7, 2, 48, 48)
    numpy.testing.assert_allclose(train.images, x[:, :, ::2, ::2] / 255, rtol=1e-6)
    numpy.testing.assert_array_equal(test.labels, t_test)
    assert train.class_names == ('animal', 'human', 'airplane', 'truck', 'car')
    with pytest.raises(DatasetError, match='must hold 24300 x 2 x 96 x 96 bytes, holds 7'):
        smallnorb.read_smallnorb(str(tmp_path))


def test_gzipped_files_are_checked(tmp_path, monkeypatch):
    _, _, sha256 = write_smallnorb(str(tmp_path), n_pairs=3, gz=True)
    monkeypatch.setattr(smallnorb, 'N_PAIRS', 3)
    with pytest.raises(DatasetError, match='-dat.mat.gz: SHA256 checksum mismatch'):
        smallnorb.read_smallnorb(str(tmp_path))
    # A truncated file of the right checksum is named as such
    name = smallnorb.PREFIXES['train'] + '-dat.mat.gz'
    path = os.path.join(str(tmp_path), name)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    sha256[name] = file_digest(path)
    monkeypatch.setattr(smallnorb, 'SHA256', sha256)
    with pytest.raises(DatasetError, match='-dat.mat.gz: truncated or corrupt gzip data'):
        smallnorb.read_smallnorb(str(tmp_path))


def test_the_matrix_format():
    a = numpy.arange(24, dtype=numpy.int32).reshape((2, 3, 4))
    numpy.testing.assert_array_equal(smallnorb.parse_matrix(norb_matrix(a), 'a'), a)
    c = numpy.array([4, 0, 2], numpy.int32)  # one dimension, stored as 3 x 1 x 1
    data = norb_matrix(c)
    assert len(data) == 8 + 12 + 12
    numpy.testing.assert_array_equal(smallnorb.parse_matrix(data, 'c'), c)
    with pytest.raises(DatasetError, match='c: its header states 3 values of int32, 12 '
                                           'bytes, but 8 bytes follow'):
        smallnorb.parse_matrix(data[:-4], 'c')
    with pytest.raises(DatasetError, match='not a NORB byte or int matrix'):
        smallnorb.parse_matrix(b'\0' * 24, 'z')
    with pytest.raises(DatasetError, match='too short'):
        smallnorb.parse_matrix(b'\0', 'z')


def test_missing_files_and_wrong_classes(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match='training-dat.mat, .* not found \\(nor .gz\\)'):
        smallnorb.read_smallnorb(str(tmp_path))
    write_smallnorb(str(tmp_path), n_pairs=2)
    name = smallnorb.PREFIXES['test'] + '-cat.mat'
    with open(os.path.join(str(tmp_path), name), 'wb') as f:
        f.write(norb_matrix(numpy.array([0, 7], numpy.int32)))
    monkeypatch.setattr(smallnorb, 'N_PAIRS', 2)
    with pytest.raises(DatasetError, match='classes must be 0..4'):
        smallnorb.read_smallnorb(str(tmp_path))


testing.run_module(__name__, __file__)
