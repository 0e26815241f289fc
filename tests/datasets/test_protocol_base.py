"""What every protocol has: the settings only some take, the network the data decides,
the class names a model file records, the settings it records to read its data again."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import protocols
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.protocol_base import Data
from capsnet_chainer.errors import SettingError


def mnist_data():
    x = numpy.zeros((3, 1, 28, 28), numpy.float32)
    test = chainer.datasets.TupleDataset(x, numpy.zeros(3, numpy.int32))
    return Data(test, None, test, None, {})


def test_data_names_no_classes_unless_given():
    data = mnist_data()
    assert data.class_names is None
    assert protocols.protocol('mnist').names(data) == tuple(str(d) for d in range(10))
    assert protocols.protocol('mnist').names(data._replace(class_names=['a', 'b'])) == (
        'a', 'b')


@pytest.mark.parametrize('name', ['mnist', 'fashion-mnist', 'multimnist', 'affnist'])
@pytest.mark.parametrize('setting, value', [('image_size', (32, 32)), ('test_fraction', 0.1)])
def test_the_settings_of_own_images_are_refused_by_mnists_protocols(name, setting, value):
    with pytest.raises(SettingError, match='applies to --dataset folder') as e:
        protocols.protocol(name).check(**{setting: value})
    assert e.value.setting == setting
    assert protocols.protocol(name).check(image_size=None, test_fraction=None) == \
        protocols.protocol(name).max_shift


def test_the_mnist_network_is_its_shape_and_classes():
    mnist = protocols.protocol('mnist')
    assert mnist.network(mnist_data()) == {'in_shape': (1, 28, 28), 'n_class': 10}
    assert mnist.network(mnist_data(), none_of_the_above=True) == {
        'in_shape': (1, 28, 28), 'n_class': 10, 'none_of_the_above': True}
    assert mnist.network(mnist_data(), none_of_the_above=False) == {
        'in_shape': (1, 28, 28), 'n_class': 10}


def test_recorded_class_names_and_settings():
    mnist = protocols.protocol('mnist')
    test = mnist_data().test
    assert mnist.run_class_names({}, test) == tuple(str(d) for d in range(10))
    with pytest.raises(DatasetError, match='the test set has the classes 0, 1, .* but the '
                                           'model was trained on a, b'):
        mnist.run_class_names({'class_names': ['a', 'b']}, test)
    folder = protocols.protocol('folder')
    meta = {'train_args': {'image_size': [20, 30], 'test_fraction': None, 'seed': 3}}
    assert folder.recorded_settings(meta) == {'image_size': [20, 30]}
    assert mnist.recorded_settings(meta) == {}


def test_preprocessing_in_words():
    mnist = protocols.protocol('mnist')
    assert mnist.preprocessing(None, 2) == {
        'train': 'shifted up to 2 px, one shift per batch, zero fill', 'test': 'none'}
    assert protocols.protocol('affnist').preprocessing(None)['test'] == (
        'each digit centred on the 40x40 canvas')


testing.run_module(__name__, __file__)
