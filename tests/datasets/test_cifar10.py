"""CIFAR-10's python version: the archive or its folder, checked by MD5, read by an
unpickler that builds arrays only; small files in the official format stand in for the
real ones."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import os
import pickle

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import cifar10
from capsnet_chainer.datasets.idx import DatasetError
from official_files import accept_cifar10
from official_files import write_cifar10


@pytest.mark.parametrize('archive', [True, False])
@pytest.mark.parametrize('given', ['file', 'folder'])
def test_the_archive_or_its_folder_is_read(tmp_path, monkeypatch, archive, given):
    path, (x, t), (x_test, t_test), md5 = write_cifar10(str(tmp_path / 'd'), archive=archive)
    accept_cifar10(monkeypatch, md5)
    train, test = cifar10.read_cifar10(path if given == 'file' else str(tmp_path / 'd'))
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.class_names == cifar10.CLASS_NAMES
    # the batches in order; each row the red, green and blue planes, row by row
    numpy.testing.assert_allclose(train.images, x.transpose((0, 3, 1, 2)) / 255, rtol=1e-6)
    numpy.testing.assert_allclose(test.images, x_test.transpose((0, 3, 1, 2)) / 255,
                                  rtol=1e-6)
    assert train.images.flags.c_contiguous and test.images.flags.c_contiguous
    numpy.testing.assert_array_equal(train.labels, t)
    numpy.testing.assert_array_equal(test.labels, t_test)


def test_files_that_are_not_the_official_ones_are_refused(tmp_path):
    path, _, _, _ = write_cifar10(str(tmp_path), archive=True)
    with pytest.raises(DatasetError) as e:
        cifar10.read_cifar10(path)
    assert 'MD5 checksum mismatch' in str(e.value) and cifar10.URL in str(e.value)
    folder, _, _, _ = write_cifar10(str(tmp_path / 'f'), archive=False)
    with pytest.raises(DatasetError, match='data_batch_1: MD5 checksum mismatch'):
        cifar10.read_cifar10(folder)


def test_a_folder_without_the_files_is_named(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match='--data-dir .*: neither cifar-10-python.tar.gz '
                                           'nor the folder cifar-10-batches-py'):
        cifar10.read_cifar10(str(tmp_path), data_dir_name='--data-dir')
    folder, _, _, md5 = write_cifar10(str(tmp_path / 'f'), archive=False)
    accept_cifar10(monkeypatch, md5)
    os.remove(os.path.join(folder, 'test_batch'))
    with pytest.raises(DatasetError, match='lacks test_batch'):
        cifar10.read_cifar10(folder)


def test_only_arrays_are_unpickled(tmp_path):
    class Evil(object):
        def __reduce__(self):
            return (os.system, ('echo unpickled',))
    with pytest.raises(DatasetError, match='refused to build posix.system'):
        cifar10.unpickle(pickle.dumps({b'data': Evil()}, protocol=2), 'evil')
    bad = pickle.dumps({b'data': numpy.zeros((2, 100), numpy.uint8), b'labels': [0, 1]},
                       protocol=2)
    with pytest.raises(DatasetError, match='data must be N x 3072'):
        cifar10.parse_batch(bad, 'bad')
    with pytest.raises(DatasetError, match='labels must be 0..9'):
        cifar10.parse_batch(pickle.dumps({b'data': numpy.zeros((1, 3072), numpy.uint8),
                                          b'labels': [10]}, protocol=2), 'bad')


testing.run_module(__name__, __file__)
