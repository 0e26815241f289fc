"""What each ``--dataset`` trains and tests on: the protocols of the paper's experiments.

A protocol turns the digits of a source data set (:mod:`capsnet_chainer.mnist`) into
the training set, the held-out set, the test set and the training converter (the
augmentation) of one experiment:

.. csv-table::
    :header: ``--dataset``, source, training examples, augmentation, test set

    ``mnist``, MNIST, "``(x, t)``, 28x28", "shift up to ``--max-shift`` (2) px", "the
    10,000 test digits"
    ``fashion-mnist``, Fashion-MNIST, as MNIST, as MNIST, as MNIST
    ``multimnist``, MNIST, "``(x, t2, digits)``, 36x36 pairs drawn on the fly
    (:class:`~capsnet_chainer.multimnist.PairSampler`)", "none: each digit is shifted up
    to ``--max-shift`` (4) px when its pair is drawn", "``--n-test`` fixed pairs
    (10,000), regenerated from :data:`MULTIMNIST_TEST_SEED`"
    ``affnist``, MNIST, "``(x, t)``, 40x40", "each digit placed at random on the 40x40
    canvas (:class:`~capsnet_chainer.affnist.RandomPlacement`), nothing else", "the
    expanded MNIST test set (digits centred); ``analyze.py`` adds affNIST or its
    stand-in (:func:`~capsnet_chainer.affnist.get_affnist_eval`)"

A test set that is generated rather than read is described by a small dict
(:attr:`Data.test_set`) that model files record, so that ``analyze.py`` regenerates
the very set the run was tested on (:func:`make_test_set`).
"""

import collections

import chainer
import numpy

from capsnet_chainer import affnist
from capsnet_chainer import multimnist
from capsnet_chainer.affnist import dataset_arrays
from capsnet_chainer.augment import RandomShift

#: ``(title, source data set, two digits per image, default --max-shift (None: the
#: digits are not shifted), canvas side (None: the source's 28x28))``.
Protocol = collections.namedtuple('Protocol', 'title source pairs max_shift canvas')

PROTOCOLS = collections.OrderedDict([
    ('mnist', Protocol('MNIST', 'mnist', False, 2, None)),
    ('fashion-mnist', Protocol('Fashion-MNIST', 'fashion-mnist', False, 2, None)),
    ('multimnist', Protocol('MultiMNIST', 'mnist', True, multimnist.MAX_SHIFT,
                            multimnist.CANVAS)),
    ('affnist', Protocol('MNIST on a 40x40 canvas (the affNIST protocol)', 'mnist', False,
                         None, affnist.CANVAS)),
])

#: Seed of the MultiMNIST test pairs (fixed: every run is tested on the same pairs).
MULTIMNIST_TEST_SEED = 20171026
#: Seed of the MultiMNIST pairs made of the digits that ``--validation`` holds out.
MULTIMNIST_HELDOUT_SEED = 20171027
#: Test pairs when ``--n-test`` is not given: each test digit is the base of one pair.
MULTIMNIST_TEST_PAIRS = 10000

#: The sets of a run: datasets of examples, the training converter, and the
#: description of a generated test set (``{}`` for a test set read from files).
Data = collections.namedtuple('Data', 'train heldout test converter test_set')


def protocol(name):
    """The :class:`Protocol` of ``name``; ``ValueError`` names the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError('unknown data set {!r}; choose one of {}'.format(
            name, ', '.join(PROTOCOLS))) from None


def source_n_test(name, n_test):
    """How many test digits to read for ``--n-test`` (``None``: all).

    MultiMNIST's ``--n-test`` counts pairs, and the pairs draw on all 10,000 digits.
    """
    return None if protocol(name).pairs else n_test


def _pairs(digits, n, seed, max_shift):
    x, t2, single = multimnist.make_test_set(*dataset_arrays(digits), n=n, seed=seed,
                                             max_shift=max_shift)
    return chainer.datasets.TupleDataset(x, t2, single)


def make_data(name, train, heldout, test, n_test=None, max_shift=None,
              shift_per_image=False, seed=0, part=(0, 1)):
    """The sets of a training run of protocol ``name``.

    Args:
        name (str): A key of :data:`PROTOCOLS`.
        train, heldout, test: Digits ``(x, t)`` of the source data set, as
            :func:`~capsnet_chainer.mnist.get_dataset` gives them (``heldout``: the
            images ``--validation`` holds out, or ``None``).
        n_test (int): MultiMNIST: test pairs (``None``: :data:`MULTIMNIST_TEST_PAIRS`).
        max_shift (int): Largest shift in pixels (``None``: the protocol's default).
        shift_per_image (bool): One shift per image rather than per batch (single
            digits only; MultiMNIST always shifts each digit on its own).
        seed (int): Seed of the augmentation or of the training pairs.
        part (tuple of int): ``(rank, processes)`` in data-parallel training: the
            converter augments this rank's part of each global batch as one process
            would (:mod:`capsnet_chainer.distributed`). MultiMNIST's pairs are drawn
            per process, so it takes one process only.

    Returns:
        Data: The training, held-out and test sets, the converter, and ``test_set``.
    """
    spec = protocol(name)
    if max_shift is None:
        max_shift = spec.max_shift
    if spec.max_shift is None:  # affnist: placed at random on the canvas, not shifted
        if max_shift is not None or shift_per_image:
            raise ValueError('the {} protocol places each digit at random on its canvas; '
                             'it takes no shift'.format(name))
        if heldout is not None:
            heldout = make_test_set(name, heldout)
        return Data(train, heldout, make_test_set(name, test),
                    affnist.RandomPlacement(spec.canvas, seed=seed, part=part), {})
    if not spec.pairs:
        converter = RandomShift(max_shift, per_image=shift_per_image, seed=seed, part=part)
        return Data(train, heldout, test, converter, {})
    if part[1] > 1:
        raise ValueError('MultiMNIST draws its pairs in one process; data-parallel '
                         'training of it is not supported yet')
    if shift_per_image:
        raise ValueError('shift_per_image applies to single digits; MultiMNIST shifts '
                         'each digit of a pair on its own')
    n_test = MULTIMNIST_TEST_PAIRS if n_test is None else int(n_test)
    test_set = {'pairs': n_test, 'seed': MULTIMNIST_TEST_SEED, 'max_shift': max_shift}
    sampler = multimnist.PairSampler(*dataset_arrays(train), max_shift=max_shift, seed=seed)
    if heldout is not None:
        heldout = _pairs(heldout, len(heldout), MULTIMNIST_HELDOUT_SEED, max_shift)
    test = make_test_set(name, test, test_set)
    # The pairs are shifted as they are drawn: the converter only batches them.
    return Data(sampler, heldout, test, chainer.dataset.concat_examples, test_set)


def make_test_set(name, test, test_set=None):
    """The test set of protocol ``name`` from the source's test digits ``test``.

    Args:
        test_set (dict): :attr:`Data.test_set` as a model file records it (MultiMNIST:
            ``pairs``, ``seed`` and ``max_shift``); ignored for test sets read from
            files.
    """
    spec = protocol(name)
    if not spec.pairs and spec.canvas:  # the expanded test set: digits centred
        x, t = dataset_arrays(test)
        return chainer.datasets.TupleDataset(affnist.expand(x, spec.canvas), t)
    if not spec.pairs:
        return test
    return _pairs(test, test_set['pairs'], test_set['seed'], test_set['max_shift'])


def describe(name, data):
    """One line on the sets of a run, for the start of ``train.py``."""
    spec = protocol(name)
    if not spec.pairs:
        return '{} ({} training, {} test images)'.format(
            spec.title, len(data.train), len(data.test))
    held = (', {} held-out pairs'.format(len(data.heldout))
            if data.heldout is not None else '')
    return ('{} (pairs of 36x36 drawn on the fly from {} training digits, shifts up to '
            '{} px; {} test pairs from seed {}{})'.format(
                spec.title, len(data.train), data.test_set['max_shift'],
                data.test_set['pairs'], data.test_set['seed'], held))


def in_shape(data):
    """The shape ``(C, H, W)`` of the images of ``data``."""
    return tuple(numpy.shape(data.test[0][0]))
