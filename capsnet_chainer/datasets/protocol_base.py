"""What every ``--dataset`` protocol is (:class:`Protocol`), and the sets of a run it
makes (:class:`Data`); the protocols themselves are
:mod:`~capsnet_chainer.datasets.protocols` (MNIST's) and
:mod:`~capsnet_chainer.datasets.image_protocols` (one's own images, CIFAR-10, SVHN,
smallNORB).

A protocol knows where its images come from (:meth:`Protocol.load`), which settings it
takes (:meth:`Protocol.check`, the one place that checks them), how it turns the
source's images into the sets and the training converter of one experiment
(:meth:`Protocol.make_data`), what network the paper uses on them
(:meth:`Protocol.network`), and what a model file must record to redo its test set
(:meth:`Protocol.recorded_test_set`, :meth:`Protocol.recorded_settings`).
"""

import collections

import numpy

from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.images import format_size
from capsnet_chainer.datasets.mnist import DATASETS
from capsnet_chainer.datasets.mnist import get_dataset
from capsnet_chainer.errors import SettingError

#: The sets of a run: datasets of examples, the training converter, the description of
#: a generated or preprocessed test set (``{}`` for a test set read from files as it is)
#: and the names of the classes (``None``: the protocol's :attr:`Protocol.class_names`).
Data = collections.namedtuple('Data', 'train heldout test converter test_set class_names',
                              defaults=(None,))

#: The settings (``train.py`` flags) that only some protocols take, beyond the shift,
#: and the protocols that take them.
SETTINGS = {'image_size': ('folder', 'npz'), 'test_fraction': ('folder',)}


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
        settings (tuple of str): The settings of :data:`SETTINGS` it takes.
        none_of_the_above (bool): Whether its network routes with the extra category by
            default (``--none-of-the-above`` / ``--no-none-of-the-above`` choose).
    """

    pairs = False
    max_shift = 2
    canvas = None
    settings = ()
    none_of_the_above = False

    def __init__(self, name, title, source):
        self.name = name
        self.title = title
        self.source = source

    @property
    def class_names(self):
        """The names of the classes, in label order."""
        return DATASETS[self.source].class_names

    def check_settings(self, settings):
        """Refuses a setting of :data:`SETTINGS` given to a protocol that does not take
        it."""
        for name, value in settings.items():
            if value is not None and name not in self.settings:
                raise SettingError(name, 'applies to --dataset {}, not {}'.format(
                    ' and '.join(SETTINGS[name]), self.name),
                    format_size(value) if name == 'image_size' else value)

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False, **settings):
        """Checks the settings of a run of this protocol, before anything is loaded.

        Args:
            max_shift (int): Largest shift in pixels (``None``: the protocol's default).
            shift_per_image (bool): One shift per image rather than per batch.
            data_parallel (bool): Training over several processes.
            settings: The settings of :data:`SETTINGS` (``None``: not given).

        Returns:
            int or None: ``max_shift``, the default where it was ``None``.

        Raises:
            SettingError: A setting this protocol does not take.
        """
        self.check_settings(settings)
        if max_shift is None:
            max_shift = self.max_shift
        if max_shift is not None and max_shift >= 28:
            raise SettingError('max_shift', 'would shift the whole 28x28 image out of view',
                               max_shift)
        return max_shift

    def load(self, data_dir=None, n_train=None, n_test=None, data_dir_name='data_dir',
             test_only=False, **settings):
        """The training and test images of the source, ``(train, test)`` of ``(x, t)``
        (:func:`~capsnet_chainer.datasets.mnist.get_dataset`); with ``test_only``,
        ``(None, test)``, the test set as a full load gives it (readers of large data
        sets then read no training images; MNIST's are read anyway, they are few)."""
        train, test = get_dataset(self.source, data_dir=data_dir, n_train=n_train,
                                  n_test=n_test, data_dir_name=data_dir_name)
        return None if test_only else train, test

    def make_data(self, train, heldout, test, n_test=None, max_shift=None,
                  shift_per_image=False, seed=0, part=(0, 1)):
        """The sets of a training run.

        Args:
            train, heldout, test: Images ``(x, t)`` of the source, as :meth:`load` gives
                them (``heldout``: the images ``--validation`` holds out, or ``None``).
            n_test (int): MultiMNIST: test pairs (``None``: the protocol's default).
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

    def recorded_settings(self, meta):
        """The settings of :meth:`load` that the run of a model file used (from its
        ``meta['train_args']``), to read its test set again."""
        args = meta.get('train_args') or {}
        return {k: args[k] for k in self.settings if args.get(k) is not None}

    def names(self, data):
        """The class names of the sets of a run."""
        return tuple(data.class_names or self.class_names)

    def run_class_names(self, meta, test):
        """The class names to analyze a model with: those its file records (``meta``),
        which the test set read again (``test``) must have.

        Raises:
            DatasetError: The test set has other classes than the model.
        """
        found = tuple(getattr(test, 'class_names', None) or self.class_names)
        recorded = tuple(meta.get('class_names') or found)
        if recorded != found:
            raise DatasetError('the test set has the classes {}, but the model was trained '
                               'on {}: give the data it was trained with'.format(
                                   ', '.join(found), ', '.join(recorded)))
        return recorded

    def network(self, data, none_of_the_above=None):
        """The arguments of :class:`~capsnet_chainer.CapsNet` that the data set decides:
        the input shape, one class capsule per class, and where the paper changes the
        network for it (Sec. 7), those changes. The MNIST network's are only
        ``in_shape`` and ``n_class`` (and ``none_of_the_above`` when asked for).

        Args:
            none_of_the_above (bool): ``--none-of-the-above`` (``None``: the protocol's
                default).
        """
        network = {'in_shape': self.in_shape(data), 'n_class': len(self.names(data))}
        if none_of_the_above is None:
            none_of_the_above = self.none_of_the_above
        if none_of_the_above:
            network['none_of_the_above'] = True
        return network

    def preprocessing(self, data, max_shift=None, shift_per_image=False):
        """What is done to the images in training and in testing, in words, for the
        model file: ``{'train': ..., 'test': ...}``."""
        shift = ('none' if not max_shift else 'shifted up to {} px, one shift per {}, zero '
                 'fill'.format(max_shift, 'image' if shift_per_image else 'batch'))
        return {'train': shift, 'test': 'none'}

    def describe(self, data):
        """One line on the sets of a run, for the start of ``train.py``."""
        return '{} ({} training, {} test images)'.format(
            self.title, len(data.train), len(data.test))

    def in_shape(self, data):
        """The shape ``(C, H, W)`` of the images of ``data``."""
        return tuple(int(n) for n in numpy.shape(data.test[0][0]))
