"""Images of any size and channels: the checks of the arrays a user gives, resizing,
and the labelled set the readers hand on."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.images import check_labels
from capsnet_chainer.datasets.images import format_size
from capsnet_chainer.datasets.images import LabelledImages
from capsnet_chainer.datasets.images import resize
from capsnet_chainer.datasets.images import to_images


def test_uint8_and_float_images_become_float32_channels_first():
    x = numpy.arange(2 * 3 * 4 * 3).reshape((2, 3, 4, 3)).astype(numpy.uint8)
    y = to_images(x, 'x')
    assert y.shape == (2, 3, 3, 4) and y.dtype == numpy.float32
    numpy.testing.assert_allclose(y[1, 2, 0, 3], x[1, 0, 3, 2] / 255)
    grey = to_images(numpy.full((5, 6, 7), 0.25), 'x')
    assert grey.shape == (5, 1, 6, 7) and (grey == 0.25).all()


@pytest.mark.parametrize('x, message', [
    (numpy.zeros((4, 5), numpy.uint8), 'got shape (4, 5)'),
    (numpy.zeros((2, 3, 20, 20), numpy.uint8), 'channels first? give N x H x W x C'),
    (numpy.zeros((2, 8, 8, 5), numpy.uint8), 'C from 1 to 4'),
    (numpy.zeros((0, 8, 8), numpy.uint8), 'no images'),
    (numpy.zeros((2, 8, 8), numpy.int64), 'uint8 (0..255) or float (0..1), got int64'),
    (numpy.full((2, 8, 8), 1.5), 'must lie in [0, 1], got 1.5..1.5'),
    (numpy.full((2, 8, 8), numpy.nan), 'NaN or infinite'),
])
def test_bad_images_are_refused_naming_the_array(x, message):
    with pytest.raises(DatasetError) as e:
        to_images(x, 'mine.npz: x_train')
    assert str(e.value).startswith('mine.npz: x_train: ') and message in str(e.value)


def test_labels_are_checked():
    numpy.testing.assert_array_equal(check_labels(numpy.array([[1], [0]]), 2, 2, 'y'),
                                     [1, 0])
    for t, n, message in [(numpy.array([0, 2]), 2, 'label 2 (at index 1) is out of range'),
                          (numpy.array([-1, 0]), 2, 'label -1 (at index 0)'),
                          (numpy.array([0.0, 1.0]), 2, 'must be N integers'),
                          (numpy.array([0, 1, 1]), 2, '3 labels for 2 images')]:
        with pytest.raises(DatasetError, match='^y: .*' + message.replace('(', r'\(')
                           .replace(')', r'\)')):
            check_labels(t, n, 2, 'y')


def test_resize_is_bilinear_per_channel_and_keeps_the_range():
    x = numpy.zeros((2, 3, 8, 8), numpy.float32)
    x[:, 1] = 1.0
    x[1, 2, :4] = 1.0
    y = resize(x, (4, 6))
    assert y.shape == (2, 3, 4, 6) and y.dtype == numpy.float32
    numpy.testing.assert_allclose(y[:, 1], 1.0, atol=1e-6)
    numpy.testing.assert_allclose(y[:, 0], 0.0, atol=1e-6)
    assert y[1, 2, 0].min() > 0.9 and y[1, 2, 3].max() < 0.1
    assert resize(x, (8, 8)) is x
    assert format_size((4, 6)) == '4x6'


def test_labelled_images_keep_their_classes_in_a_subset():
    x = numpy.zeros((5, 1, 2, 2), numpy.float32)
    data = LabelledImages(x, numpy.arange(5, dtype=numpy.int32) % 2, ['a', 'b'], ['a note'],
                          {'seed': 1})
    first = data.subset(3)
    assert len(first) == 3 and first.class_names == ('a', 'b')
    assert first.notes == ['a note'] and first.record == {'seed': 1}
    assert data.subset(None) is data and data.subset(9) is data
    assert data[1][1] == 1 and data.images is x


testing.run_module(__name__, __file__)
