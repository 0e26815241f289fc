"""The protocols of one's own images and of the paper's other data sets (Sec. 7 of
Sabour et al. [#]_): images of any size and channels, classes from the data.

.. csv-table::
    :header: ``--dataset``, source, training, test, network (beyond the input's shape)

    ``folder``, "a folder of images (:mod:`~capsnet_chainer.datasets.folder`)", "shift up
    to ``--max-shift`` (2) px", "``test/``, or a held-out ``--test-fraction``", "as MNIST's"
    ``npz``, "arrays (:mod:`~capsnet_chainer.datasets.npz`)", as ``folder``, "``x_test``",
    "as MNIST's"
    ``cifar10``, "CIFAR-10 (:mod:`~capsnet_chainer.datasets.cifar10`)", "random 24x24
    crops, flips, brightness, contrast", "the centre 24x24", "64 primary capsule types,
    none-of-the-above, per-image standardization"
    ``svhn``, "SVHN (:mod:`~capsnet_chainer.datasets.svhn`)", "shift up to 2 px (ours)",
    "the 26,032 test digits", "conv1 of 64 channels, 16 types of 6-D primary capsules,
    8-D class capsules"
    ``smallnorb``, "smallNORB (:mod:`~capsnet_chainer.datasets.smallnorb`), 48x48",
    "random 32x32 crops, brightness, contrast", "the centre 32x32", "per-image
    standardization"

``docs/cifar10_svhn_smallnorb.md`` says which choice comes from the paper's text, which
from the official code and which is ours. A model file records the class names, the
preprocessing and (:attr:`~capsnet_chainer.datasets.protocol_base.Data.test_set`) the
crop of the test images or a held-out split, so that ``analyze.py`` makes the same test
set again.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer

from capsnet_chainer.datasets import cifar10
from capsnet_chainer.datasets import smallnorb
from capsnet_chainer.datasets import svhn
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.datasets.crops import center_crop
from capsnet_chainer.datasets.crops import RandomCrop
from capsnet_chainer.datasets.folder import read_folder
from capsnet_chainer.datasets.images import format_size
from capsnet_chainer.datasets.npz import read_npz
from capsnet_chainer.datasets.protocol_base import Data
from capsnet_chainer.datasets.protocol_base import Protocol
from capsnet_chainer.errors import SettingError

#: The official code's brightness shift (63 of 255) and contrast factors.
BRIGHTNESS, CONTRAST = 63 / 255, (0.2, 1.8)


class ImageProtocol(Protocol):
    """Images read by one of this package's readers, shifted as MNIST's (or, with
    ``crop``, cropped and jittered as the paper's CIFAR-10 and smallNORB).

    Args:
        name, title: As :class:`~capsnet_chainer.datasets.protocol_base.Protocol`'s.
        read (callable): ``read(data_dir, data_dir_name=..., test_only=..., **settings)``
            -> ``(train, test)`` of :class:`~capsnet_chainer.datasets.images.
            LabelledImages`; with ``test_only``, ``(None, test)``, the same ``test``
            without reading the training images.
        class_names (tuple of str): The classes when the data set fixes them (``()``:
            they come from the data).
        settings (tuple of str): The settings of
            :data:`~capsnet_chainer.datasets.protocol_base.SETTINGS` that ``read`` takes.
        crop (tuple of int): ``(h, w)``: train on random crops, test on the centre crop;
            ``None``: shift as MNIST.
        jitter (dict): :class:`~capsnet_chainer.datasets.crops.RandomCrop`'s ``flip``,
            ``brightness`` and ``contrast``.
        capsnet (dict): The :class:`~capsnet_chainer.CapsNet` arguments of the paper's
            network for this data set.
        none_of_the_above (bool): The network's default.
    """

    def __init__(self, name, title, read, class_names=(), settings=(), crop=None,
                 jitter=None, capsnet=None, none_of_the_above=False):
        super().__init__(name, title, name)
        self.read = read
        self._class_names = tuple(class_names)
        self.settings = tuple(settings)
        self.crop = crop
        self.jitter = dict(jitter or {})
        self.capsnet = dict(capsnet or {})
        self.none_of_the_above = none_of_the_above
        if crop:
            self.max_shift = None

    @property
    def class_names(self):
        return self._class_names

    def check(self, max_shift=None, shift_per_image=False, data_parallel=False, **settings):
        self.check_settings(settings)
        if self.crop and (max_shift is not None or shift_per_image):
            raise SettingError('max_shift' if max_shift is not None else 'shift_per_image',
                               '--dataset {} trains on random {} crops and shifts nothing'
                               .format(self.name, format_size(self.crop)))
        return self.max_shift if max_shift is None else max_shift

    def load(self, data_dir=None, n_train=None, n_test=None, data_dir_name='data_dir',
             test_only=False, **settings):
        """The training and test images, the first ``n_train`` and ``n_test`` of them;
        with ``test_only``, ``(None, test)``: the training images are not read."""
        train, test = self.read(data_dir, data_dir_name=data_dir_name, test_only=test_only,
                                **{k: v for k, v in settings.items() if k in self.settings})
        for n, images, flag in ((n_train, train, 'n_train'), (n_test, test, 'n_test')):
            if n is not None and images is not None and n > len(images):
                raise SettingError(flag, 'exceeds the {} images of {}'.format(
                    len(images), self.title), n)
        return None if train is None else train.subset(n_train), test.subset(n_test)

    def make_data(self, train, heldout, test, n_test=None, max_shift=None,
                  shift_per_image=False, seed=0, part=(0, 1)):
        if not self.crop:
            data = super().make_data(train, heldout, test, n_test, max_shift,
                                     shift_per_image, seed, part)
            side = min(self.in_shape(data)[1:])
            if data.converter.max_shift >= side:
                raise SettingError('max_shift', 'would shift the whole {}x{} image out of '
                                   'view'.format(*self.in_shape(data)[1:]),
                                   data.converter.max_shift)
            return data._replace(test_set=dict(test.record), class_names=test.class_names)
        self.check(max_shift, shift_per_image, part[1] > 1)
        test_set = {'crop': list(self.crop)}
        converter = RandomCrop(self.crop, seed=seed, part=part, **self.jitter)
        if heldout is not None:
            heldout = self.make_test_set(heldout, test_set)
        return Data(train, heldout, self.make_test_set(test, test_set), converter, test_set,
                    test.class_names)

    def make_test_set(self, test, test_set=None):
        """The test images, their centre cropped where ``test_set`` (as recorded) says."""
        crop = (test_set or {}).get('crop')
        if not crop:
            return test
        x, t = dataset_arrays(test)
        return chainer.datasets.TupleDataset(center_crop(x, crop), t)

    def recorded_test_set(self, meta, n_test=None):
        """The crop (or the held-out split) the model file records, else the protocol's."""
        return dict(meta.get('test_set') or ({'crop': list(self.crop)} if self.crop else {}))

    def network(self, data, none_of_the_above=None):
        network = super().network(data, none_of_the_above)
        network.update(self.capsnet)
        return network

    def preprocessing(self, data, max_shift=None, shift_per_image=False):
        if not self.crop:
            said = super().preprocessing(data, max_shift, shift_per_image)
            notes = list(getattr(data.test, 'notes', []))
            return dict(said, read=notes) if notes else said
        jitter = [k for k, on in (('flip left-right', self.jitter.get('flip')),
                                  ('brightness +-63/255',
                                   self.jitter.get('brightness')),
                                  ('contrast x0.2..1.8', self.jitter.get('contrast'))) if on]
        return {'train': 'random {} crops{}'.format(format_size(self.crop), ''.join(
                    ', ' + j for j in jitter)),
                'test': 'the centre {} crop'.format(format_size(self.crop))}

    def describe(self, data):
        shape = self.in_shape(data)
        notes = ''.join('; ' + n for n in getattr(data.test, 'notes', []))
        return '{} ({} training, {} test images of {}x{}, {} channel{}, {} classes{})'.format(
            self.title, len(data.train), len(data.test), shape[1], shape[2], shape[0],
            '' if shape[0] == 1 else 's', len(self.names(data)), notes)


PROTOCOLS = (
    ImageProtocol('folder', 'image folder', read_folder,
                  settings=('image_size', 'test_fraction')),
    ImageProtocol('npz', 'npz arrays', read_npz, settings=('image_size',)),
    ImageProtocol('cifar10', 'CIFAR-10', cifar10.read_cifar10,
                  class_names=cifar10.CLASS_NAMES, crop=(24, 24),
                  jitter={'flip': True, 'brightness': BRIGHTNESS, 'contrast': CONTRAST},
                  capsnet={'n_primary_type': 64, 'standardize': True},
                  none_of_the_above=True),
    ImageProtocol('svhn', 'SVHN', svhn.read_svhn, class_names=svhn.CLASS_NAMES,
                  capsnet={'conv1_channels': 64, 'n_primary_type': 16, 'primary_dim': 6,
                           'capsule_dim': 8}),
    ImageProtocol('smallnorb', 'smallNORB (48x48)', smallnorb.read_smallnorb,
                  class_names=smallnorb.CLASS_NAMES,
                  crop=(32, 32), jitter={'brightness': BRIGHTNESS, 'contrast': CONTRAST},
                  capsnet={'standardize': True}),
)
