"""Data sets as arrays: images as ``(N, 1, H, W)``, and the arrays of a data set."""

import re

import numpy
import pytest

from capsnet_chainer.datasets import arrays  # before chainer: restores numpy.sctypes

import chainer
from chainer import testing


def test_as_images_adds_the_channel_axis_and_keeps_the_dtype():
    x = numpy.arange(2 * 3 * 4, dtype=numpy.uint8).reshape((2, 3, 4))
    y = arrays.as_images(x)
    assert y.shape == (2, 1, 3, 4) and y.dtype == numpy.uint8
    numpy.testing.assert_array_equal(y[:, 0], x)
    four = numpy.zeros((5, 1, 6, 7), numpy.float64)
    assert arrays.as_images(four) is four  # already (N, 1, H, W): the array itself
    assert arrays.as_images([[[1, 2]]]).shape == (1, 1, 1, 2)  # any array-like


@pytest.mark.parametrize('shape', [(28, 28), (2, 3, 28, 28), (2, 1, 1, 28, 28), (4,)])
def test_as_images_refuses_other_shapes_naming_them(shape):
    message = '(N, H, W) or (N, 1, H, W), got shape {}'.format(shape)
    with pytest.raises(ValueError, match=re.escape(message)):
        arrays.as_images(numpy.zeros(shape))


def test_dataset_arrays_of_a_tuple_dataset_are_its_own():
    x = numpy.random.RandomState(0).rand(4, 1, 2, 2).astype(numpy.float32)
    t = numpy.arange(4, dtype=numpy.int32)
    images, labels = arrays.dataset_arrays(chainer.datasets.TupleDataset(x, t))
    assert images is x and labels is t  # not copies
    # A third array (MultiMNIST's single digits) is left out
    images, labels = arrays.dataset_arrays(chainer.datasets.TupleDataset(x, t, x))
    assert images is x and labels is t


def test_dataset_arrays_of_a_pair_and_of_a_list_of_examples():
    x = numpy.random.RandomState(1).rand(3, 1, 2, 2).astype(numpy.float32)
    t = numpy.array([2, 0, 1], numpy.int32)
    images, labels = arrays.dataset_arrays((x, t))
    assert images is x and labels is t
    # A list of two examples is a dataset, not a pair (images, labels)
    images, labels = arrays.dataset_arrays([(x[0], t[0]), (x[1], t[1])])
    numpy.testing.assert_array_equal(images, x[:2])
    numpy.testing.assert_array_equal(labels, t[:2])
    examples = [(x[i], t[i], x[i]) for i in range(3)]  # (x, t, ...) examples
    images, labels = arrays.dataset_arrays(examples)
    assert images.shape == (3, 1, 2, 2) and labels.dtype == numpy.int32
    numpy.testing.assert_array_equal(images, x)
    numpy.testing.assert_array_equal(labels, t)
    sub = chainer.datasets.SubDataset(chainer.datasets.TupleDataset(x, t), 1, 3)
    images, labels = arrays.dataset_arrays(sub)
    numpy.testing.assert_array_equal(images, x[1:])
    numpy.testing.assert_array_equal(labels, t[1:])


testing.run_module(__name__, __file__)
