"""The protocols of one's own images and of CIFAR-10, SVHN and smallNORB: the settings
each takes, the sets and converters it makes, the network the paper uses, and what a
model file records to make the same test set again."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import functools
import os

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import cifar10
from capsnet_chainer.datasets import folder
from capsnet_chainer.datasets import npz
from capsnet_chainer.datasets import protocols
from capsnet_chainer.datasets import smallnorb
from capsnet_chainer.datasets import svhn
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.crops import RandomCrop
from capsnet_chainer.errors import SettingError
from capsnet_chainer.model import CapsNet
from official_files import accept_cifar10
from official_files import write_cifar10
from official_files import write_image
from official_files import write_image_folder
from official_files import write_smallnorb
from official_files import write_svhn


def run(name, data_dir, **settings):
    protocol = protocols.protocol(name)
    shift = settings.pop('max_shift', None)
    protocol.check(shift, **settings)
    train, test = protocol.load(data_dir, **settings)
    return protocol, protocol.make_data(train, None, test, max_shift=protocol.check(shift),
                                        seed=1)


def test_folder_trains_as_mnist_on_its_own_images(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=5, colour=True)
    protocol, data = run('folder', root, image_size=(18, 19), test_fraction=0.4)
    assert isinstance(data.converter, RandomShift) and data.converter.max_shift == 2
    assert data.class_names == ('cat', 'dog', 'fish')
    assert data.test_set == {'test_fraction': 0.4, 'seed': 20171107}
    assert protocol.network(data) == {'in_shape': (3, 18, 19), 'n_class': 3}
    assert protocol.describe(data) == ('image folder (9 training, 6 test images of '
                                       '18x19, 3 channels, 3 classes)')
    x, t = data.converter([data.train[i] for i in range(4)])
    assert x.shape == (4, 3, 18, 19)
    assert protocol.recorded_test_set({'test_set': data.test_set}) == data.test_set
    # the shift must leave something in view
    with pytest.raises(SettingError, match='would shift the whole 18x19 image out of view'):
        run('folder', root, image_size=(18, 19), max_shift=18)


def test_npz_takes_image_size_and_refuses_test_fraction(tmp_path):
    path = str(tmp_path / 'a.npz')
    numpy.savez(path, x_train=numpy.zeros((4, 20, 20), numpy.uint8), y_train=[0, 1, 0, 1],
                x_test=numpy.zeros((2, 20, 20), numpy.uint8), y_test=[1, 0])
    protocol, data = run('npz', path, image_size=(17, 18))
    assert protocol.in_shape(data) == (1, 17, 18) and data.test_set == {}
    with pytest.raises(SettingError, match='applies to --dataset folder, not npz'):
        protocols.protocol('npz').check(test_fraction=0.2)
    for name in ('cifar10', 'svhn', 'smallnorb'):
        with pytest.raises(SettingError, match='applies to --dataset folder and npz'):
            protocols.protocol(name).check(image_size=(32, 32))


def test_cifar10_crops_and_its_network(tmp_path, monkeypatch):
    path, _, (x_test, _), md5 = write_cifar10(str(tmp_path))
    accept_cifar10(monkeypatch, md5)
    protocol, data = run('cifar10', str(tmp_path))
    converter = data.converter
    assert isinstance(converter, RandomCrop) and converter.size == (24, 24)
    assert converter.flip and converter.brightness == pytest.approx(63 / 255)
    assert converter.contrast == (0.2, 1.8)
    assert data.test_set == {'crop': [24, 24]}
    numpy.testing.assert_allclose(data.test[0][0],
                                  x_test[0].transpose((2, 0, 1))[:, 4:28, 4:28] / 255,
                                  rtol=1e-6)
    network = protocol.network(data)
    assert network == {'in_shape': (3, 24, 24), 'n_class': 10, 'n_primary_type': 64,
                       'standardize': True, 'none_of_the_above': True}
    assert 'none_of_the_above' not in protocol.network(data, none_of_the_above=False)
    assert CapsNet(**network).count_params() == 13150912
    assert protocol.preprocessing(data) == {
        'train': 'random 24x24 crops, flip left-right, brightness +-63/255, contrast '
                 'x0.2..1.8', 'test': 'the centre 24x24 crop'}
    assert protocol.recorded_test_set({}) == {'crop': [24, 24]}
    with pytest.raises(SettingError, match='trains on random 24x24 crops and shifts nothing'):
        protocol.check(max_shift=2)
    with pytest.raises(SettingError, match='exceeds the 6 images of CIFAR-10'):
        protocol.load(str(tmp_path), n_test=7)
    assert len(protocol.load(str(tmp_path), n_train=3)[0]) == 3


def test_svhn_has_the_papers_smaller_network(tmp_path, monkeypatch):
    pytest.importorskip('scipy')
    _, _, md5 = write_svhn(str(tmp_path))
    monkeypatch.setattr(svhn, 'MD5', md5)
    protocol, data = run('svhn', str(tmp_path))
    assert isinstance(data.converter, RandomShift) and data.converter.max_shift == 2
    assert protocol.network(data) == {'in_shape': (3, 32, 32), 'n_class': 10,
                                      'conv1_channels': 64, 'n_primary_type': 16,
                                      'primary_dim': 6, 'capsule_dim': 8}


def test_smallnorb_crops_32_of_48(tmp_path, monkeypatch):
    write_smallnorb(str(tmp_path), n_pairs=4)
    monkeypatch.setattr(smallnorb, 'N_PAIRS', 4)
    protocol, data = run('smallnorb', str(tmp_path))
    assert data.converter.size == (32, 32) and not data.converter.flip
    assert protocol.in_shape(data) == (2, 32, 32)
    assert protocol.network(data) == {'in_shape': (2, 32, 32), 'n_class': 5,
                                      'standardize': True}
    x, t = data.converter([data.train[i] for i in range(4)])
    assert x.shape == (4, 2, 32, 32)


# A test-only load (analyze.py): the test set of a full load, no training images read


def folder_source(tmp_path, monkeypatch, test=0):
    root = write_image_folder(str(tmp_path), per_class=5, test=test)
    write_image(os.path.join(root, 'train', 'dog', 'colour.png'),  # a mix: read as RGB
                numpy.full((20, 24, 3), [255, 0, 0], numpy.uint8))
    settings = {'image_size': (18, 19)}
    if not test:
        settings['test_fraction'] = 0.4
    return 'folder', root, settings, (folder, 'decode')


def npz_source(tmp_path, monkeypatch):
    path = str(tmp_path / 'a.npz')
    rs = numpy.random.RandomState(0)
    numpy.savez(path, x_train=rs.randint(0, 256, (4, 20, 20), numpy.uint8),
                y_train=[0, 1, 0, 2], x_test=rs.randint(0, 256, (3, 20, 20), numpy.uint8),
                y_test=[1, 0, 2], class_names=['a', 'b', 'c'])
    return 'npz', path, {'image_size': (17, 18)}, (npz, 'resize')


def cifar10_source(tmp_path, monkeypatch, archive=True):
    path, _, _, md5 = write_cifar10(str(tmp_path), archive=archive)
    accept_cifar10(monkeypatch, md5)
    return 'cifar10', path, {}, (cifar10, 'parse_batch')


def svhn_source(tmp_path, monkeypatch):
    pytest.importorskip('scipy')
    _, _, md5 = write_svhn(str(tmp_path))
    monkeypatch.setattr(svhn, 'MD5', md5)
    return 'svhn', str(tmp_path), {}, (svhn, 'parse_svhn_mat')


def smallnorb_source(tmp_path, monkeypatch):
    _, _, sha256 = write_smallnorb(str(tmp_path), n_pairs=4, gz=True)
    monkeypatch.setattr(smallnorb, 'SHA256', sha256)
    monkeypatch.setattr(smallnorb, 'N_PAIRS', 4)
    return 'smallnorb', str(tmp_path), {}, (smallnorb, 'read_set')


@pytest.mark.parametrize('source, reads', [
    (folder_source, 'each test image'),  # decoded
    (functools.partial(folder_source, test=2), 'each test image'),
    (npz_source, 'once'),  # the test images resized
    (cifar10_source, 'once'),  # the test batch unpickled
    (functools.partial(cifar10_source, archive=False), 'once'),
    (svhn_source, 'once'),  # the test file parsed
    (smallnorb_source, 'once'),  # the test set read
])
def test_test_only_reads_the_test_set_of_a_full_load(tmp_path, monkeypatch, source, reads):
    name, data_dir, settings, (module, reader) = source(tmp_path, monkeypatch)
    protocol = protocols.protocol(name)
    train, test = protocol.load(data_dir, **settings)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return read(*args, **kwargs)
    read = getattr(module, reader)
    monkeypatch.setattr(module, reader, counted)
    none, alone = protocol.load(data_dir, test_only=True, **settings)
    assert none is None and len(train) > 0
    assert len(calls) == (len(test) if reads == 'each test image' else 1)
    assert alone.images.dtype == test.images.dtype == numpy.float32
    numpy.testing.assert_array_equal(alone.images, test.images)
    numpy.testing.assert_array_equal(alone.labels, test.labels)
    assert (alone.class_names, alone.notes, alone.record) == (
        test.class_names, test.notes, test.record)
    assert protocol.run_class_names({}, alone) == protocol.run_class_names({}, test)
    test_set = protocol.recorded_test_set({'test_set': test.record})
    for got, want in zip(dataset_arrays(protocol.make_test_set(alone, test_set)),
                         dataset_arrays(protocol.make_test_set(test, test_set))):
        numpy.testing.assert_array_equal(got, want)
    assert len(protocol.load(data_dir, n_test=2, test_only=True, **settings)[1]) == 2


testing.run_module(__name__, __file__)
