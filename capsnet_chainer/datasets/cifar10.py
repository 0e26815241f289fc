"""CIFAR-10 from its official "python version" distribution (``--dataset cifar10``).

``--data-dir`` may name the archive ``cifar-10-python.tar.gz``, a folder holding it, the
folder ``cifar-10-batches-py`` it extracts to, or a folder holding that one. The archive
is checked against the MD5 that the CIFAR page (:data:`URL`) publishes, an extracted
file against the MD5 of that file in torchvision's reader (the page publishes the
archive's only). The batches are Python pickles: a dict with ``b'data'`` (10000 x 3072
``uint8``, each row an image's red, green and blue planes of 32 x 32, row by row) and
``b'labels'`` (10,000 ints 0..9); ``batches.meta`` names the classes. They are read
only after the checksum, by an unpickler that builds nothing but NumPy arrays and
built-in values.

.. csv-table::
    :header: name, shape, dtype, format

    :obj:`x`, ":math:`(3, 32, 32)`", :obj:`float32`, "RGB, ``uint8 / 255``"
    :obj:`t`, ":math:`()`", :obj:`int32`, "class 0..9: airplane, automobile, bird, cat,
    deer, dog, frog, horse, ship, truck"
"""

import io
import os
import pickle
import tarfile

import numpy

from capsnet_chainer.datasets import checksums
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.images import LabelledImages
from capsnet_chainer.errors import SettingError

URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
ARCHIVE = 'cifar-10-python.tar.gz'
#: The archive's MD5, as the CIFAR page publishes it.
ARCHIVE_MD5 = 'c58f30108f718f92721af3b95e74349a'
FOLDER = 'cifar-10-batches-py'
#: MD5 of each extracted file (torchvision's ``CIFAR10``).
MD5 = {
    'data_batch_1': 'c99cafc152244af753f735de768cd75f',
    'data_batch_2': 'd4bba439e000b95fd0a9bffe97cbabec',
    'data_batch_3': '54ebc095f3ab1f0389bbae665268c751',
    'data_batch_4': '634d18415352ddfa80567beed471001a',
    'data_batch_5': '482c414d41f54cd18b22e5b47cb7c3cb',
    'test_batch': '40351d587109b95175f43aff81a1287e',
    'batches.meta': '5ff9c542aee3614f3951f8cda6e48888',
}
TRAIN_BATCHES = tuple('data_batch_{}'.format(k) for k in range(1, 6))
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
               'ship', 'truck')
TITLE = 'CIFAR-10'


class _ArrayUnpickler(pickle.Unpickler):
    """Builds NumPy arrays and built-in values, nothing else."""

    ALLOWED = {('numpy.core.multiarray', '_reconstruct'),
               ('numpy._core.multiarray', '_reconstruct'), ('numpy', 'ndarray'),
               ('numpy', 'dtype'), ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError('refused to build {}.{}'.format(module, name))
        return super().find_class(module, name)


def parse_batch(data, where):
    """The images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int32 of one pickled
    batch."""
    batch = unpickle(data, where)
    try:
        x = numpy.asarray(batch[b'data'], numpy.uint8)
        t = numpy.asarray(batch[b'labels'], numpy.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError('{}: not a CIFAR-10 batch (no data or labels: {})'.format(
            where, e)) from None
    if x.ndim != 2 or x.shape[1] != 3072 or t.shape != (len(x),):
        raise DatasetError('{}: data must be N x 3072 with N labels, got {} and {}'.format(
            where, x.shape, t.shape))
    if len(t) and (t.min() < 0 or t.max() > 9):
        raise DatasetError('{}: labels must be 0..9'.format(where))
    return x.reshape((-1, 3, 32, 32)), t.astype(numpy.int32)


def unpickle(data, where):
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding='bytes').load()
    except Exception as e:
        raise DatasetError('{}: not a readable CIFAR-10 pickle ({}: {})'.format(
            where, type(e).__name__, e)) from None


def _members(path, data_dir_name, names=tuple(MD5)):
    """``{name: bytes}`` of ``names`` (default: the seven files), from the archive or the
    folder, checked; all seven must be there."""
    names = [name for name in MD5 if name in names]  # checked in the table's order
    if path is None:
        raise SettingError('data_dir', 'is needed: where {} or its folder {} is ({})'.format(
            ARCHIVE, FOLDER, URL))
    candidates = [path, os.path.join(path, ARCHIVE), os.path.join(path, FOLDER)]
    for where in candidates:
        if os.path.isfile(where):
            data = checksums.read_verified(where, ARCHIVE_MD5, TITLE, URL)
            with tarfile.open(fileobj=io.BytesIO(data), mode='r:gz') as archive:
                found = {os.path.basename(m.name): m for m in archive.getmembers()
                         if m.isfile() and os.path.basename(m.name) in MD5}
                _check_all(where, found)
                return {name: archive.extractfile(found[name]).read() for name in names}
        if os.path.isdir(where) and any(os.path.isfile(os.path.join(where, n)) for n in MD5):
            _check_all(where, [n for n in MD5 if os.path.isfile(os.path.join(where, n))])
            return {name: checksums.read_verified(os.path.join(where, name), MD5[name],
                                                  TITLE, URL) for name in names}
    raise DatasetError('{} {}: neither {} nor the folder {} with {} (the "CIFAR-10 python '
                       'version" from {})'.format(data_dir_name, path, ARCHIVE, FOLDER,
                                                  ', '.join(MD5), URL))


def _check_all(where, found):
    missing = [name for name in MD5 if name not in found]
    if missing:
        raise DatasetError('{}: lacks {} of the CIFAR-10 python version ({})'.format(
            where, ', '.join(missing), URL))


def read_cifar10(path, data_dir_name='data_dir', test_only=False):
    """Reads CIFAR-10's training (50,000) and test (10,000) images.

    Args:
        test_only (bool): Read only the test batch (the training batches must be there).

    Returns:
        tuple: ``(train, test)``, two
        :class:`~capsnet_chainer.datasets.images.LabelledImages`, images
        ``(N, 3, 32, 32)`` float32 in [0, 1]; ``train`` is ``None`` with ``test_only``.
    """
    batches = {'train': TRAIN_BATCHES, 'test': ('test_batch',)}
    if test_only:
        del batches['train']
    members = _members(path, data_dir_name, ('batches.meta',) + sum(batches.values(), ()))
    names = class_names(members['batches.meta'], path)
    sets = {}
    for key, files in batches.items():
        parts = [parse_batch(members[n], '{}: {}'.format(path, n)) for n in files]
        x = numpy.concatenate([p[0] for p in parts]).astype(numpy.float32)
        x *= 1. / 255.
        sets[key] = LabelledImages(x, numpy.concatenate([p[1] for p in parts]), names)
    return sets.get('train'), sets['test']


def class_names(meta, path):
    """The names of ``batches.meta``; they must be CIFAR-10's."""
    meta = unpickle(meta, '{}: batches.meta'.format(path))
    names = meta.get(b'label_names') if isinstance(meta, dict) else None
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names or ())
    if names != CLASS_NAMES:
        raise DatasetError('{}: batches.meta names the classes {}, not CIFAR-10\'s'.format(
            path, ', '.join(names) or 'none'))
    return names
