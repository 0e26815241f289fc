"""Arrays of an .npz file: the shapes and dtypes taken, the class names, and one clear
error, naming the file and the array, for each thing that can be wrong."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import npz
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.errors import SettingError


def arrays(n_train=8, n_test=4, shape=(18, 20), channels=None, dtype=numpy.uint8,
           n_class=3):
    rs = numpy.random.RandomState(0)
    extra = () if channels is None else (channels,)
    top = 256 if dtype == numpy.uint8 else 1.0
    make = ((lambda n: rs.randint(0, top, size=(n,) + shape + extra).astype(dtype))
            if dtype == numpy.uint8 else
            (lambda n: rs.uniform(0, top, size=(n,) + shape + extra).astype(dtype)))
    return {'x_train': make(n_train), 'y_train': numpy.arange(n_train) % n_class,
            'x_test': make(n_test), 'y_test': numpy.arange(n_test) % n_class}


def write(tmp_path, **changes):
    data = arrays()
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    path = str(tmp_path / 'mine.npz')
    numpy.savez(path, **data)
    return path


@pytest.mark.parametrize('channels, dtype', [(None, numpy.uint8), (3, numpy.uint8),
                                             (1, numpy.float32), (2, numpy.float64)])
def test_arrays_are_read(tmp_path, channels, dtype):
    data = arrays(channels=channels, dtype=dtype)
    path = str(tmp_path / 'a.npz')
    numpy.savez(path, **data)
    train, test = npz.read_npz(path)
    C = channels or 1
    assert train.images.shape == (8, C, 18, 20) and test.images.shape == (4, C, 18, 20)
    scale = 255 if dtype == numpy.uint8 else 1
    x = data['x_train'].reshape((8, 18, 20, C)).transpose((0, 3, 1, 2)) / scale
    numpy.testing.assert_allclose(train.images, x, rtol=1e-6)
    numpy.testing.assert_array_equal(test.labels, data['y_test'])
    assert train.class_names == ('0', '1', '2')


def test_class_names_and_image_size(tmp_path):
    path = write(tmp_path, class_names=numpy.array(['cat', 'dog', 'emu', 'fox']),
                 y_train=numpy.array([0, 1, 2, 3, 0, 1, 2, 3]))
    train, test = npz.read_npz(path, image_size=(24, 17))
    assert train.class_names == ('cat', 'dog', 'emu', 'fox')
    assert train.images.shape[2:] == test.images.shape[2:] == (24, 17)


@pytest.mark.parametrize('changes, message', [
    ({'y_test': None}, 'lacks the array(s) y_test'),
    ({'x_train': numpy.zeros((8, 18), numpy.uint8)}, 'x_train: images must be'),
    ({'x_test': numpy.zeros((4, 18, 20), numpy.int32)}, 'x_test: images must be uint8'),
    ({'x_test': numpy.full((4, 18, 20), 2.0)}, 'x_test: float images must lie in [0, 1]'),
    ({'x_test': numpy.zeros((4, 18, 21), numpy.uint8)}, 'x_train holds images of'),
    ({'y_train': numpy.arange(7)}, 'y_train: 7 labels for 8 images'),
    ({'y_train': numpy.arange(8) * 1.0}, 'y_train: labels must be N integers'),
    ({'y_test': numpy.array([0, 1, 3, 0])}, 'y_test holds class(es) 3 that y_train never '
                                            'has: the classes of the test set differ'),
    ({'y_train': numpy.zeros(8, int), 'y_test': numpy.zeros(4, int)},
     'y_train holds 1 class(es); a classifier needs two'),
    ({'class_names': numpy.array(['a', 'b'])}, 'y_train: label 2 (at index 2) is out of '
                                               'range: the classes are 0 to 1'),
    ({'class_names': numpy.array(['a', 'b', 'c', 'd'])}, 'class(es) d of class_names have '
                                                         'no training images'),
    ({'class_names': numpy.array(['a', 'a', 'b'])}, 'class_names repeats a name'),
    ({'class_names': numpy.array([['a', 'b', 'c']])}, 'class_names must be a 1-D array'),
])
def test_bad_arrays_are_refused_naming_the_file(tmp_path, changes, message):
    path = write(tmp_path, **changes)
    with pytest.raises(DatasetError) as e:
        npz.read_npz(path)
    assert str(e.value).startswith(path + ': ') and message in str(e.value)


def test_what_is_not_an_npz_file(tmp_path):
    with pytest.raises(DatasetError, match='--data-dir .*nothing.npz: no such file'):
        npz.read_npz(str(tmp_path / 'nothing.npz'), data_dir_name='--data-dir')
    with pytest.raises(SettingError, match='is needed'):
        npz.read_npz(None)
    path = tmp_path / 'text.npz'
    path.write_text('hello')
    with pytest.raises(DatasetError, match='not a readable .npz file'):
        npz.read_npz(str(path))
    objects = str(tmp_path / 'objects.npz')
    numpy.savez(objects, **arrays(), class_names=numpy.array(['a', 1, None], object))
    with pytest.raises(DatasetError, match='not a readable .npz file'):
        npz.read_npz(objects)


testing.run_module(__name__, __file__)
