"""The protocols of ``--dataset``: the settings each takes, and the training, held-out
and test sets it makes of its source's digits."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import affnist
from capsnet_chainer.datasets import multimnist
from capsnet_chainer.datasets import protocols
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.placement import expand
from capsnet_chainer.datasets.placement import RandomPlacement
from capsnet_chainer.errors import SettingError


def digits(n, seed=0):
    rng = numpy.random.RandomState(seed)
    x = rng.uniform(0, 1, (n, 1, 28, 28)).astype(numpy.float32)
    t = (numpy.arange(n) % 10).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


# What each protocol is


def test_the_protocols_of_dataset():
    assert list(protocols.PROTOCOLS) == ['mnist', 'fashion-mnist', 'multimnist', 'affnist',
                                         'folder', 'npz', 'cifar10', 'svhn', 'smallnorb']
    for name, protocol in protocols.PROTOCOLS.items():
        assert protocols.protocol(name) is protocol and protocol.name == name
    table = {name: (p.title, p.source, p.pairs, p.max_shift, p.canvas)
             for name, p in list(protocols.PROTOCOLS.items())[:4]}
    assert table == {
        'mnist': ('MNIST', 'mnist', False, 2, None),
        'fashion-mnist': ('Fashion-MNIST', 'fashion-mnist', False, 2, None),
        'multimnist': ('MultiMNIST', 'mnist', True, 4, 36),
        'affnist': ('MNIST on a 40x40 canvas (the affNIST protocol)', 'mnist', False, None,
                    40),
    }
    assert protocols.protocol('mnist').class_names == tuple(str(d) for d in range(10))
    names = list(protocols.protocol('fashion-mnist').class_names)
    assert names[0] == 'T-shirt/top' and names[9] == 'Ankle boot'


def test_unknown_protocol_is_a_setting_error_naming_the_known_ones():
    with pytest.raises(SettingError) as e:
        protocols.protocol('cifar')
    assert e.value.setting == 'dataset' and e.value.value == 'cifar'
    assert 'unknown data set' in str(e.value)
    assert 'mnist, fashion-mnist, multimnist, affnist, folder, npz, cifar10' in str(e.value)


# The settings: Protocol.check, the one place that checks them


def test_check_gives_the_default_shift_and_refuses_one_of_the_whole_image():
    mnist = protocols.protocol('mnist')
    assert mnist.check() == 2
    assert mnist.check(0) == 0 and mnist.check(27, shift_per_image=True) == 27
    assert mnist.check(3, data_parallel=True) == 3
    assert protocols.protocol('multimnist').check() == 4
    assert protocols.protocol('affnist').check() is None
    with pytest.raises(SettingError) as e:
        mnist.check(28)
    assert (e.value.setting, e.value.value) == ('max_shift', 28)
    assert str(e.value) == 'max_shift=28: would shift the whole 28x28 image out of view'
    with pytest.raises(SettingError, match='out of view'):
        protocols.protocol('multimnist').check(30)


@pytest.mark.parametrize('kwargs, setting, message', [
    ({'max_shift': 2}, 'max_shift',
     '--dataset affnist places each digit at random on the 40x40 canvas and shifts '
     'nothing'),
    ({'max_shift': 0}, 'max_shift', 'shifts nothing'),
    ({'shift_per_image': True}, 'shift_per_image', 'shifts nothing'),
])
def test_affnist_takes_no_shift(kwargs, setting, message):
    with pytest.raises(SettingError) as e:
        protocols.protocol('affnist').check(**kwargs)
    assert e.value.setting == setting and message in e.value.message


def test_multimnist_refuses_a_shift_per_image_and_several_processes():
    pairs = protocols.protocol('multimnist')
    with pytest.raises(SettingError) as e:
        pairs.check(shift_per_image=True)
    assert e.value.setting == 'shift_per_image'
    assert 'already shifts each digit of a pair on its own' in e.value.message
    with pytest.raises(SettingError) as e:
        pairs.check(data_parallel=True)
    assert e.value.setting == 'communicator'
    assert 'draws its training pairs in one process' in e.value.message


# The sets of a run


def test_single_digit_protocols_keep_the_digits_and_shift():
    train, test = digits(40), digits(20, 1)
    data = protocols.protocol('mnist').make_data(train, None, test, max_shift=3, seed=5)
    assert data.train is train and data.test is test and data.test_set == {}
    assert data.converter.max_shift == 3
    assert protocols.protocol('fashion-mnist').make_data(
        train, None, test).converter.max_shift == 2


def test_single_digit_protocols_shift_per_image_and_by_part():
    train, heldout, test = digits(40), digits(10, 1), digits(20, 2)
    data = protocols.protocol('mnist').make_data(train, heldout, test, shift_per_image=True,
                                                 seed=5, part=(1, 2))
    assert isinstance(data.converter, RandomShift) and data.heldout is heldout
    assert data.converter.max_shift == 2
    batch = [train[i] for i in range(8)]
    expected = RandomShift(2, per_image=True, seed=5, part=(1, 2))(batch)[0]
    numpy.testing.assert_array_equal(data.converter(batch)[0], expected)
    assert protocols.protocol('mnist').make_test_set(test) is test
    assert protocols.protocol('mnist').recorded_test_set({'test_set': {'pairs': 3}}, 5) == {}


def test_multimnist_sets():
    train, heldout, test = digits(60), digits(20, 1), digits(30, 2)
    pairs = protocols.protocol('multimnist')
    data = pairs.make_data(train, heldout, test, n_test=45, seed=3)
    # Training: pairs drawn on the fly from the training digits, the paper's 4 px
    assert isinstance(data.train, multimnist.PairSampler) and len(data.train) == 60
    assert data.train.max_shift == 4
    numpy.testing.assert_array_equal(data.train.images, train._datasets[0][:, 0])
    x, t2, single = data.converter([data.train[0], data.train[1]])
    assert x.shape == (2, 1, 36, 36) and t2.shape == (2, 2) and single.shape == (2, 2, 1,
                                                                                 36, 36)
    # Test: 45 fixed pairs from the test digits and the protocol's seed
    assert data.test_set == {'pairs': 45, 'seed': protocols.MULTIMNIST_TEST_SEED,
                             'max_shift': 4}
    expected = multimnist.make_test_set(test._datasets[0], test._datasets[1], 45,
                                        protocols.MULTIMNIST_TEST_SEED)
    got = chainer.dataset.concat_examples(data.test[:])
    for a, b in zip(got, expected):
        numpy.testing.assert_array_equal(a, b)
    # ... regenerated from the record alone; a prefix of a larger set
    again = pairs.make_test_set(test, dict(data.test_set, pairs=60))
    numpy.testing.assert_array_equal(
        chainer.dataset.concat_examples(again[:45])[0], got[0])
    # Held out: one pair per held-out digit, from its own seed
    assert len(data.heldout) == 20
    assert (data.heldout[0][1] == heldout[0][1]).any()
    with pytest.raises(ValueError, match='shifts each digit'):
        pairs.make_data(train, None, test, shift_per_image=True)
    with pytest.raises(ValueError, match='unknown data set'):
        protocols.protocol('cifar')


def test_multimnist_without_n_test_pairs_each_test_digit_once():
    train, test = digits(20), digits(12, 1)
    pairs = protocols.protocol('multimnist')
    data = pairs.make_data(train, None, test, max_shift=2)
    assert protocols.MULTIMNIST_TEST_PAIRS == 10000
    assert data.test_set == {'pairs': 10000, 'seed': protocols.MULTIMNIST_TEST_SEED,
                             'max_shift': 2}
    assert len(data.test) == 10000 and data.heldout is None
    # Without a record, make_test_set makes the protocol's own pairs (4 px shifts): the
    # first 10 of them are the 10 pairs of the same seed and shift
    default = pairs.make_test_set(test)
    assert len(default) == 10000
    first = pairs.make_test_set(test, {'pairs': 10, 'seed': protocols.MULTIMNIST_TEST_SEED,
                                       'max_shift': 4})
    for a, b in zip(chainer.dataset.concat_examples(default[:10]),
                    chainer.dataset.concat_examples(first[:])):
        numpy.testing.assert_array_equal(a, b)


def test_recorded_test_set_of_pairs_is_the_model_files_or_the_protocols():
    pairs = protocols.protocol('multimnist')
    default = {'pairs': protocols.MULTIMNIST_TEST_PAIRS,
               'seed': protocols.MULTIMNIST_TEST_SEED, 'max_shift': 4}
    assert pairs.recorded_test_set({}) == default
    recorded = {'pairs': 16, 'seed': 7, 'max_shift': 3}
    meta = {'test_set': recorded}
    assert pairs.recorded_test_set(meta) == recorded
    assert pairs.recorded_test_set(meta, n_test=8) == recorded  # fewer: the first 8
    # More than recorded: more pairs from the same seed; the record is not changed
    assert pairs.recorded_test_set(meta, n_test=40) == dict(recorded, pairs=40)
    assert meta['test_set'] == recorded


def test_multimnist_is_refused_under_mpi():
    with pytest.raises(ValueError, match='draws its training pairs in one process'):
        protocols.protocol('multimnist').make_data(digits(20), None, digits(20, 1),
                                                   part=(0, 2))


def test_affnist_sets():
    train, heldout, test = digits(40), digits(10, 1), digits(20, 2)
    data = protocols.protocol('affnist').make_data(train, heldout, test, seed=4)
    assert data.train is train and data.test_set == {}
    assert isinstance(data.converter, RandomPlacement)
    assert data.converter.size == 40
    x, t = data.converter([train[0], train[1]])
    assert x.shape == (2, 1, 40, 40) and x.sum() == pytest.approx(
        train._datasets[0][:2].sum(), rel=1e-5)  # the whole digit, placed
    # Tested (and held out) on the digits centred: the expanded MNIST test set
    xt, tt = chainer.dataset.concat_examples(data.test[:])
    numpy.testing.assert_array_equal(xt, expand(test._datasets[0]))
    numpy.testing.assert_array_equal(tt, test._datasets[1])
    assert chainer.dataset.concat_examples(data.heldout[:])[0].shape == (10, 1, 40, 40)
    for kwargs in ({'max_shift': 2}, {'shift_per_image': True}):
        with pytest.raises(ValueError, match='places each digit at random on the 40x40 '
                           'canvas and shifts nothing'):
            protocols.protocol('affnist').make_data(train, None, test, **kwargs)
    # The test set of the run's title: the expanded MNIST test set
    assert affnist.EXPANDED_KEY == 'expanded'


def test_describe_and_in_shape():
    train, heldout, test = digits(40), digits(10, 1), digits(20, 2)
    mnist = protocols.protocol('mnist')
    data = mnist.make_data(train, None, test)
    assert mnist.describe(data) == 'MNIST (40 training, 20 test images)'
    assert mnist.in_shape(data) == (1, 28, 28)
    placed = protocols.protocol('affnist')
    data = placed.make_data(train, None, test)
    assert placed.in_shape(data) == (1, 40, 40)
    assert placed.describe(data) == ('MNIST on a 40x40 canvas (the affNIST protocol) '
                                     '(40 training, 20 test images)')
    pairs = protocols.protocol('multimnist')
    data = pairs.make_data(train, heldout, test, n_test=12)
    assert pairs.in_shape(data) == (1, 36, 36)
    assert pairs.describe(data) == (
        'MultiMNIST (pairs of 36x36 drawn on the fly from 40 training digits, shifts up to '
        '4 px; 12 test pairs from seed {}, 10 held-out pairs)'.format(
            protocols.MULTIMNIST_TEST_SEED))


def test_load_reads_the_source_and_pairs_draw_on_every_test_digit(mnist_dir):
    train, test = protocols.protocol('mnist').load(mnist_dir, n_train=30, n_test=20)
    assert (len(train), len(test)) == (30, 20)
    train, test = protocols.protocol('multimnist').load(mnist_dir, n_train=30, n_test=20)
    assert (len(train), len(test)) == (30, 10000)  # n_test counts pairs, not digits
    with pytest.raises(SettingError) as e:
        protocols.protocol('affnist').load(mnist_dir, n_test=10001)
    assert e.value.setting == 'n_test' and e.value.value == 10001


@pytest.mark.parametrize('name', ['mnist', 'multimnist', 'affnist'])
def test_test_only_gives_the_test_set_of_a_full_load(mnist_dir, name):
    protocol = protocols.protocol(name)
    _, test = protocol.load(mnist_dir, n_train=30, n_test=20)
    none, alone = protocol.load(mnist_dir, n_test=20, test_only=True)
    assert none is None
    for got, want in zip(dataset_arrays(alone), dataset_arrays(test)):
        numpy.testing.assert_array_equal(got, want)


testing.run_module(__name__, __file__)
