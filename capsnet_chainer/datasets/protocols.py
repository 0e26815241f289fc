"""What each ``--dataset`` trains and tests on: the protocols of the paper's experiments.

A protocol is an object that knows where its images come from (:meth:`Protocol.load`),
which settings it takes (:meth:`Protocol.check`, the one place that checks them), and
how it turns the source's images into the training set, the held-out set, the test set
and the training converter of one experiment (:meth:`Protocol.make_data`):

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

A test set that is generated rather than read is described by a small dict
(:attr:`Data.test_set`) that model files record, so that ``analyze.py`` regenerates
the very set the run was tested on (:meth:`Protocol.make_test_set`).
"""

import collections

import chainer
import numpy

from capsnet_chainer.datasets import multimnist
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.mnist import DATASETS
from capsnet_chainer.datasets.mnist import get_dataset
from capsnet_chainer.datasets.placement import CANVAS
from capsnet_chainer.datasets.placement import expand
from capsnet_chainer.datasets.placement import RandomPlacement
from capsnet_chainer.errors import SettingError

#: Seed of the MultiMNIST test pairs (fixed: every run is tested on the same pairs).
MULTIMNIST_TEST_SEED = 20171026
#: Seed of the MultiMNIST pairs made of the digits that ``--validation`` holds out.
MULTIMNIST_HELDOUT_SEED = 20171027
#: Test pairs when ``--n-test`` is not given: each test digit is the base of one pair.
MULTIMNIST_TEST_PAIRS = 10000

#: The sets of a run: datasets of examples, the training converter, and the
#: description of a generated test set (``{}`` for a test set read from files).
Data = collections.namedtuple('Data', 'train heldout test converter test_set')


class Protocol(object):
    """Single digits shifted by whole pixels (MNIST, Fashion-MNIST): the base protocol.

    Args:
        name (str): The ``--dataset`` name.
        title (str): How reports name it.
        source (str): The data set of its images, a key of
            :data:`~capsnet_chainer.datasets.mnist.DATASETS`.

    Attributes:
        pairs (bool): Two digits per image (labels ``(B, 2)``).
        max_shift (int or None): The default largest shift; ``None``: nothing is
            shifted.
        canvas (int or None): The side of the canvas the digits are put on; ``None``:
            the source's 28x28.
    """

    pairs = False
    max_shift = 2
    canvas = None

    def __init__(self, name, title, source):
        self.name = name
        self.title = title
        self.source = source

    @property
    def class_names(self):
        """The names of the classes, in label order."""
        return DATASETS[self.source].class_names

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False):
        """Checks the settings of a run of this protocol, before anything is loaded.

        Args:
            max_shift (int): Largest shift in pixels (``None``: the protocol's default).
            shift_per_image (bool): One shift per image rather than per batch.
            data_parallel (bool): Training over several processes.

        Returns:
            int or None: ``max_shift``, the default where it was ``None``.

        Raises:
            SettingError: A setting this protocol does not take.
        """
        if max_shift is None:
            max_shift = self.max_shift
        if max_shift is not None and max_shift >= 28:
            raise SettingError('max_shift', 'would shift the whole 28x28 image out of view',
                               max_shift)
        return max_shift

    def load(self, data_dir=None, n_train=None, n_test=None, data_dir_name='data_dir'):
        """The training and test images of the source, ``(train, test)`` of ``(x, t)``
        (:func:`~capsnet_chainer.datasets.mnist.get_dataset`)."""
        return get_dataset(self.source, data_dir=data_dir, n_train=n_train, n_test=n_test,
                           data_dir_name=data_dir_name)

    def make_data(self, train, heldout, test, n_test=None, max_shift=None,
                  shift_per_image=False, seed=0, part=(0, 1)):
        """The sets of a training run.

        Args:
            train, heldout, test: Images ``(x, t)`` of the source, as :meth:`load` gives
                them (``heldout``: the images ``--validation`` holds out, or ``None``).
            n_test (int): MultiMNIST: test pairs (``None``: :data:`MULTIMNIST_TEST_PAIRS`).
            max_shift, shift_per_image: As :meth:`check` takes them.
            seed (int): Seed of the augmentation or of the training pairs.
            part (tuple of int): ``(rank, processes)`` in data-parallel training: the
                converter augments this rank's part of each global batch as one process
                would (:mod:`capsnet_chainer.training.distributed`).

        Returns:
            Data: The training, held-out and test sets, the converter, and ``test_set``.
        """
        max_shift = self.check(max_shift, shift_per_image, part[1] > 1)
        converter = RandomShift(max_shift, per_image=shift_per_image, seed=seed, part=part)
        return Data(train, heldout, test, converter, {})

    def make_test_set(self, test, test_set=None):
        """The test set from the source's test images ``test``.

        Args:
            test_set (dict): :attr:`Data.test_set` as a model file records it (for a
                generated test set; ignored for one read from files).
        """
        return test

    def recorded_test_set(self, meta, n_test=None):
        """The ``test_set`` to analyze a model with: ``{}``, the test set is read."""
        return {}

    def describe(self, data):
        """One line on the sets of a run, for the start of ``train.py``."""
        return '{} ({} training, {} test images)'.format(
            self.title, len(data.train), len(data.test))

    def in_shape(self, data):
        """The shape ``(C, H, W)`` of the images of ``data``."""
        return tuple(numpy.shape(data.test[0][0]))


class PlacedDigits(Protocol):
    """Each digit placed at random on a larger canvas, and nothing else (the affNIST
    experiment's training set, Sec. 5.2); tested on the digits centred there."""

    max_shift = None
    canvas = CANVAS

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False):
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


class DigitPairs(Protocol):
    """MultiMNIST (Sec. 6): pairs of overlaid digits of different classes, each shifted
    on its own, drawn on the fly for training and fixed, from a seed, for testing."""

    pairs = True
    max_shift = multimnist.MAX_SHIFT
    canvas = multimnist.CANVAS

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False):
        if data_parallel:
            raise SettingError('communicator', '--dataset {} draws its training pairs in '
                               'one process (the pair stream is not yet split over '
                               'processes); train it without --communicator'.format(
                                   self.name))
        if shift_per_image:
            raise SettingError('shift_per_image', '--dataset {} already shifts each digit '
                               'of a pair on its own'.format(self.name))
        return super().check(max_shift)

    def load(self, data_dir=None, n_train=None, n_test=None, data_dir_name='data_dir'):
        """As :meth:`Protocol.load`, every test digit: ``n_test`` counts pairs, and the
        pairs draw on all of them."""
        return super().load(data_dir, n_train, None, data_dir_name)

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
))


def protocol(name):
    """The protocol of ``--dataset name``; a :class:`SettingError` names the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise SettingError('dataset', 'unknown data set; choose one of {}'.format(
            ', '.join(PROTOCOLS)), name) from None
