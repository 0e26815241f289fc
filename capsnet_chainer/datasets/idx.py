"""The IDX files of MNIST and Fashion-MNIST: parsing, writing, gzip and the pinned checksums.

Every payload is checked against pinned SHA-256 values of the *decompressed* IDX bytes,
because the ``.gz`` containers differ between copies.
"""

import collections
import gzip
import hashlib
import os
import struct
import zlib

import numpy

from capsnet_chainer.errors import CapsNetError


class DatasetError(CapsNetError):
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

#: The same for Fashion-MNIST, which uses the same four file names (sizes as MNIST's).
FASHION_MNIST_FILES = collections.OrderedDict([
    ('train-images-idx3-ubyte.gz',
     ('c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888', 47040016)),
    ('train-labels-idx1-ubyte.gz',
     ('bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9', 60008)),
    ('t10k-images-idx3-ubyte.gz',
     ('5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b', 7840016)),
    ('t10k-labels-idx1-ubyte.gz',
     ('0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34', 10008)),
])

_IDX_UBYTE = 0x08
#: The first two bytes of a gzip file.
GZIP_MAGIC = b'\x1f\x8b'


def sha256_hex(data):
    """SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


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


def gunzip(data, name):
    """Decompresses a ``.gz`` file's bytes, or raises :class:`DatasetError`."""
    if data[:2] != GZIP_MAGIC:
        raise DatasetError('{}: not a gzip file (starts with 0x{}); expected the .gz file '
                           'as published'.format(name, data[:4].hex()))
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise DatasetError('{}: truncated or corrupt gzip data ({}: {}); delete it and '
                           'download it again'.format(name, type(e).__name__, e)) from None


def _expected_for(name, expected_sha256, files, what):
    """Returns ``(sha256, size, what)`` to verify ``name`` against, or ``None``."""
    if expected_sha256 is not None:
        return expected_sha256, None, 'the expected data'
    if files is None:
        files, what = MNIST_FILES, 'MNIST'
    entry = files.get(os.path.basename(name))
    if entry is None:
        return None
    return entry[0], entry[1], what


def verify(payload, name, expected_sha256=None, files=None, what='MNIST'):
    """Raises :class:`DatasetError` unless ``payload`` has the pinned checksum of
    ``name`` (or ``expected_sha256``) in ``files`` (``None``: :data:`MNIST_FILES`);
    names not listed there pass. ``what`` names the data set in the message."""
    expected = _expected_for(name, expected_sha256, files, what)
    if expected is None:
        return
    sha, size, what = expected
    got = sha256_hex(payload)
    if got != sha:
        size_note = ''
        if size is not None and size != len(payload):
            size_note = ' ({} bytes decompressed, expected {})'.format(len(payload), size)
        raise DatasetError(
            '{}: checksum mismatch: expected {}, got {}{}: the file is corrupt or not '
            '{}'.format(name, sha, got, size_note, what))


def read_payload(path, expected_sha256=None, files=None, what='MNIST'):
    """Reads, gunzips and verifies one ``.gz`` file (see :func:`verify`); returns the IDX
    payload."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise DatasetError('{}: cannot read: {}'.format(path, e)) from None
    payload = gunzip(data, path)
    verify(payload, path, expected_sha256, files, what)
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
    return parse_idx(read_payload(path, expected_sha256), path)
