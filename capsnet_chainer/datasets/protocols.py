"""What each ``--dataset`` trains and tests on: the protocols of the paper's experiments.

A protocol (:class:`~capsnet_chainer.datasets.protocol_base.Protocol`) is an object that
knows where its images come from, which settings it takes (the one place that checks
them), and how it turns the source's images into the training set, the held-out set,
the test set and the training converter of one experiment:

.. csv-table::
    :header: ``--dataset``, source, training examples, augmentation, test set

    ``mnist``, MNIST, "``(x, t)``, 28x28", "shift up to ``--max-shift`` (2) px", "the
    10,000 test digits"
    ``fashion-mnist``, Fashion-MNIST, as MNIST, as MNIST, as MNIST
    ``multimnist``, MNIST, "``(x, t2, digits)``, 36x36 pairs drawn on the fly
    (:class:`~capsnet_chainer.datasets.multimnist.PairSampler`)", "none: each digit is
    shifted up to ``--max-shift`` (4) px when its pair is drawn", "``--n-test`` fixed
    pairs (10,000), regenerated from :data:`MULTIMNIST_TEST_SEED`"
    ``affnist``, MNIST, "``(x, t)``, 40x40", "each digit placed at random on the 40x40
    canvas (:class:`~capsnet_chainer.datasets.placement.RandomPlacement`), nothing
    else", "the expanded MNIST test set (digits centred); ``analyze.py`` adds affNIST or
    its stand-in (:func:`~capsnet_chainer.datasets.affnist.get_affnist_eval`)"
    ``folder``, ``npz``, ``cifar10``, ``svhn``, ``smallnorb``, "one's own images, CIFAR-10,
    SVHN, smallNORB", "``(x, t)``, any size and channels", "see
    :mod:`~capsnet_chainer.datasets.image_protocols`", "their test images"

A test set that is generated rather than read is described by a small dict
(:attr:`Data.test_set`) that model files record, so that ``analyze.py`` regenerates
the very set the run was tested on (:meth:`Protocol.make_test_set`).
"""

import collections

import chainer

from capsnet_chainer.datasets import image_protocols
from capsnet_chainer.datasets import multimnist
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.datasets.placement import CANVAS
from capsnet_chainer.datasets.placement import expand
from capsnet_chainer.datasets.placement import RandomPlacement
from capsnet_chainer.datasets.protocol_base import Data
from capsnet_chainer.datasets.protocol_base import Protocol
from capsnet_chainer.datasets.protocol_base import SETTINGS  # noqa: F401
from capsnet_chainer.errors import SettingError

#: Seed of the MultiMNIST test pairs (fixed: every run is tested on the same pairs).
MULTIMNIST_TEST_SEED = 20171026
#: Seed of the MultiMNIST pairs made of the digits that ``--validation`` holds out.
MULTIMNIST_HELDOUT_SEED = 20171027
#: Test pairs when ``--n-test`` is not given: each test digit is the base of one pair.
MULTIMNIST_TEST_PAIRS = 10000


class PlacedDigits(Protocol):
    """Each digit placed at random on a larger canvas, and nothing else (the affNIST
    experiment's training set, Sec. 5.2); tested on the digits centred there."""

    max_shift = None
    canvas = CANVAS

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False, **settings):
        self.check_settings(settings)
        given = [name for name, on in (('max_shift', max_shift is not None),
                                       ('shift_per_image', shift_per_image)) if on]
        if given:
            raise SettingError(given[0], '--dataset {} places each digit at random on the '
                               '{}x{} canvas and shifts nothing'.format(
                                   self.name, self.canvas, self.canvas))
        return None

    def make_data(self, train, heldout, test, n_test=None, max_shift=None,
                  shift_per_image=False, seed=0, part=(0, 1)):
        self.check(max_shift, shift_per_image, part[1] > 1)
        if heldout is not None:
            heldout = self.make_test_set(heldout)
        return Data(train, heldout, self.make_test_set(test),
                    RandomPlacement(self.canvas, seed=seed, part=part), {})

    def make_test_set(self, test, test_set=None):
        x, t = dataset_arrays(test)
        return chainer.datasets.TupleDataset(expand(x, self.canvas), t)

    def preprocessing(self, data, max_shift=None, shift_per_image=False):
        side = '{0}x{0} canvas'.format(self.canvas)
        return {'train': 'each digit placed at random on the ' + side,
                'test': 'each digit centred on the ' + side}


class DigitPairs(Protocol):
    """MultiMNIST (Sec. 6): pairs of overlaid digits of different classes, each shifted
    on its own, drawn on the fly for training and fixed, from a seed, for testing."""

    pairs = True
    max_shift = multimnist.MAX_SHIFT
    canvas = multimnist.CANVAS

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False, **settings):
        self.check_settings(settings)
        if data_parallel:
            raise SettingError('communicator', '--dataset {} draws its training pairs in '
                               'one process (the pair stream is not yet split over '
                               'processes); train it without --communicator'.format(
                                   self.name))
        if shift_per_image:
            raise SettingError('shift_per_image', '--dataset {} already shifts each digit '
                               'of a pair on its own'.format(self.name))
        return super().check(max_shift)

    def load(self, data_dir=None, n_train=None, n_test=None, data_dir_name='data_dir',
             test_only=False, **settings):
        """As :meth:`Protocol.load`, every test digit: ``n_test`` counts pairs, and the
        pairs draw on all of them."""
        return super().load(data_dir, n_train, None, data_dir_name, test_only)

    def make_data(self, train, heldout, test, n_test=None, max_shift=None,
                  shift_per_image=False, seed=0, part=(0, 1)):
        max_shift = self.check(max_shift, shift_per_image, part[1] > 1)
        n_test = MULTIMNIST_TEST_PAIRS if n_test is None else int(n_test)
        test_set = {'pairs': n_test, 'seed': MULTIMNIST_TEST_SEED, 'max_shift': max_shift}
        sampler = multimnist.PairSampler(*dataset_arrays(train), max_shift=max_shift,
                                         seed=seed)
        if heldout is not None:
            heldout = _pairs(heldout, len(heldout), MULTIMNIST_HELDOUT_SEED, max_shift)
        # The pairs are shifted as they are drawn: the converter only batches them.
        return Data(sampler, heldout, self.make_test_set(test, test_set),
                    chainer.dataset.concat_examples, test_set)

    def make_test_set(self, test, test_set=None):
        test_set = test_set or self.recorded_test_set({})
        return _pairs(test, test_set['pairs'], test_set['seed'], test_set['max_shift'])

    def recorded_test_set(self, meta, n_test=None):
        """The pairs the model file records (``meta['test_set']``), else the protocol's;
        ``n_test`` beyond their number draws more pairs from the same seed (the first
        ``n`` pairs of a seed are the same for every ``n``)."""
        test_set = dict(meta.get('test_set') or {
            'pairs': MULTIMNIST_TEST_PAIRS, 'seed': MULTIMNIST_TEST_SEED,
            'max_shift': self.max_shift})
        if n_test and n_test > test_set['pairs']:
            test_set['pairs'] = n_test
        return test_set

    def preprocessing(self, data, max_shift=None, shift_per_image=False):
        return {'train': 'pairs of digits of different classes drawn on the fly, each '
                         'digit shifted up to {} px'.format(max_shift),
                'test': 'fixed pairs (the test_set record)'}

    def describe(self, data):
        held = (', {} held-out pairs'.format(len(data.heldout))
                if data.heldout is not None else '')
        return ('{} (pairs of {}x{} drawn on the fly from {} training digits, shifts up to '
                '{} px; {} test pairs from seed {}{})'.format(
                    self.title, self.canvas, self.canvas, len(data.train),
                    data.test_set['max_shift'], data.test_set['pairs'],
                    data.test_set['seed'], held))


def _pairs(digits, n, seed, max_shift):
    x, t2, single = multimnist.make_test_set(*dataset_arrays(digits), n=n, seed=seed,
                                             max_shift=max_shift)
    return chainer.datasets.TupleDataset(x, t2, single)


PROTOCOLS = collections.OrderedDict((p.name, p) for p in (
    Protocol('mnist', 'MNIST', 'mnist'),
    Protocol('fashion-mnist', 'Fashion-MNIST', 'fashion-mnist'),
    DigitPairs('multimnist', 'MultiMNIST', 'mnist'),
    PlacedDigits('affnist', 'MNIST on a 40x40 canvas (the affNIST protocol)', 'mnist'),
) + image_protocols.PROTOCOLS)


def protocol(name):
    """The protocol of ``--dataset name``; a :class:`SettingError` names the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise SettingError('dataset', 'unknown data set; choose one of {}'.format(
            ', '.join(PROTOCOLS)), name) from None
