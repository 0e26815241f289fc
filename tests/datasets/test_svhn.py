"""SVHN's .mat files (format 2), checked by MD5: small files written with SciPy stand in
for the real ones."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import os

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import svhn
from capsnet_chainer.datasets.idx import DatasetError
from official_files import write_svhn

pytest.importorskip('scipy')


def test_the_digits_are_read_with_10_as_0(tmp_path, monkeypatch):
    (x, t), (x_test, t_test), md5 = write_svhn(str(tmp_path))
    monkeypatch.setattr(svhn, 'MD5', md5)
    train, test = svhn.read_svhn(str(tmp_path))
    assert train.images.shape == (12, 3, 32, 32) and test.images.shape == (5, 3, 32, 32)
    numpy.testing.assert_allclose(train.images, x.transpose((0, 3, 1, 2)) / 255, rtol=1e-6)
    numpy.testing.assert_array_equal(train.labels, t)
    assert (train.labels == 0).any() and train.labels.max() == 9
    numpy.testing.assert_array_equal(test.labels, t_test)
    assert train.class_names == tuple(str(d) for d in range(10))


def test_what_is_refused(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match='train_32x32.mat, .*test_32x32.mat not found'):
        svhn.read_svhn(str(tmp_path))
    _, _, md5 = write_svhn(str(tmp_path))
    with pytest.raises(DatasetError, match='MD5 checksum mismatch'):
        svhn.read_svhn(str(tmp_path))
    from scipy.io import savemat
    path = str(tmp_path / 'other.mat')
    savemat(path, {'X': numpy.zeros((28, 28, 1, 2), numpy.uint8), 'y': numpy.ones((2, 1))})
    with pytest.raises(DatasetError, match='X must be 32 x 32 x 3 x N uint8'):
        svhn.parse_svhn_mat(path)
    savemat(path, {'X': numpy.zeros((32, 32, 3, 2), numpy.uint8), 'y': numpy.zeros((2, 1))})
    with pytest.raises(DatasetError, match='y must hold 1..10'):
        svhn.parse_svhn_mat(path)
    savemat(path, {'images': numpy.zeros(2)})
    with pytest.raises(DatasetError, match='needs the variables X and y'):
        svhn.parse_svhn_mat(path)
    with open(path, 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(DatasetError, match='not a readable .mat file'):
        svhn.parse_svhn_mat(path)
    assert os.path.isfile(str(tmp_path / 'train_32x32.mat'))


testing.run_module(__name__, __file__)
