"""smallNORB from its official files (``--dataset smallnorb``): 24,300 stereo pairs of
96 x 96 grey images of toys in 5 classes for training and as many for testing, from
:data:`URL`.

``--data-dir`` holds, for each of the training and test sets, a ``-dat.mat`` file (the
images, ``N x 2 x 96 x 96`` ``uint8``: the two cameras of a pair) and a ``-cat.mat`` file
(the class of each pair, ``int32``), as published (``.mat.gz``) or decompressed
(``.mat``); the ``-info.mat`` files (instance, elevation, azimuth, lighting) are not
needed. The ``.mat`` extension notwithstanding these are not MATLAB files but the NORB
binary matrix format: a little-endian ``int32`` magic number (:data:`UBYTE_MAGIC` or
:data:`INT_MAGIC`), the number of dimensions, the dimensions (at least 3 of them, the
missing ones 1), then the values in C order. A ``.gz`` file is checked against the
SHA-256 of TensorFlow Datasets' checksum list (the NORB page publishes none); a
decompressed one against the dimensions its header must state.

Each pair is kept as an image of two channels and downsampled to 48 x 48 at reading by
taking every other pixel: the paper "resized the images to 48x48", the official code with
TensorFlow 1's bilinear resize, which at exactly half the size takes the pixel at each
even row and column.

.. csv-table::
    :header: name, shape, dtype, format

    :obj:`x`, ":math:`(2, 48, 48)`", :obj:`float32`, "the two cameras, ``uint8 / 255``"
    :obj:`t`, ":math:`()`", :obj:`int32`, "class 0..4: animal, human, airplane, truck, car"
"""

import os
import struct

import numpy

from capsnet_chainer.datasets import checksums
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.idx import gunzip
from capsnet_chainer.datasets.images import LabelledImages
from capsnet_chainer.errors import SettingError

URL = 'https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/'
TITLE = 'smallNORB'
#: The magic numbers of a matrix of bytes and of int32.
UBYTE_MAGIC, INT_MAGIC = 0x1E3D4C55, 0x1E3D4C54
#: The file names of each set, without ``-dat.mat`` or ``-cat.mat``.
PREFIXES = {'train': 'smallnorb-5x46789x9x18x6x2x96x96-training',
            'test': 'smallnorb-5x01235x9x18x6x2x96x96-testing'}
#: SHA-256 of the published ``.mat.gz`` files (TensorFlow Datasets' checksum list).
SHA256 = {
    PREFIXES['train'] + '-dat.mat.gz':
        '5ffd6272a07d32695ee1082a26a41a93a37aab8c28da047f8c34ed348d214873',
    PREFIXES['train'] + '-cat.mat.gz':
        '2784e542c1922060691090952b6cd6278879a216c90f81476f0f00256d42cdaa',
    PREFIXES['test'] + '-dat.mat.gz':
        'cf7104eed3e51174d2f65b66d1e5878b9da233b886f161b0d88f4510ba2c7474',
    PREFIXES['test'] + '-cat.mat.gz':
        'ecaf6d5bb8c3bc5eab9cf0258f6d2198dd474e016e374836fc097f2e5ff509ff',
}
#: Pairs in each set, and the side of the published images.
N_PAIRS, SIDE = 24300, 96
CLASS_NAMES = ('animal', 'human', 'airplane', 'truck', 'car')


def parse_matrix(data, where):
    """An array of the NORB binary matrix format, from the file's bytes.

    Raises:
        DatasetError: An unknown magic number, or fewer or more bytes than the header
            states.
    """
    if len(data) < 8:
        raise DatasetError('{}: {} bytes, too short for a NORB matrix header'.format(
            where, len(data)))
    magic, ndim = struct.unpack('<ii', data[:8])
    dtypes = {UBYTE_MAGIC: numpy.uint8, INT_MAGIC: numpy.dtype('<i4')}
    if magic not in dtypes or not 0 < ndim < 8:
        raise DatasetError('{}: not a NORB byte or int matrix (magic number {:#x}, {} '
                           'dimensions)'.format(where, magic & 0xffffffff, ndim))
    n_dims = max(3, ndim)
    head = 8 + 4 * n_dims
    if len(data) < head:
        raise DatasetError('{}: truncated in its header'.format(where))
    shape = struct.unpack('<{}i'.format(n_dims), data[8:head])[:ndim]
    dtype = numpy.dtype(dtypes[magic])
    size = int(numpy.prod(shape)) * dtype.itemsize
    if len(data) - head != size:
        raise DatasetError('{}: its header states {} values of {}, {} bytes, but {} bytes '
                           'follow (truncated?)'.format(where, ' x '.join(map(str, shape)),
                                                        dtype.name, size, len(data) - head))
    return numpy.frombuffer(data, dtype, offset=head).reshape(shape)


def _read(folder, name):
    """The bytes of ``name`` (``-dat.mat`` or ``-cat.mat``) from ``folder``: the ``.gz``
    (checked) or the decompressed file."""
    path = os.path.join(folder, name)
    if os.path.isfile(path + '.gz'):
        data = checksums.read_verified(path + '.gz', SHA256[name + '.gz'], TITLE, URL,
                                       'sha256')
        return gunzip(data, path + '.gz'), path + '.gz'
    with open(path, 'rb') as f:
        return f.read(), path


def read_set(folder, prefix):
    """The images ``(N, 2, 48, 48)`` uint8 and labels ``(N,)`` int32 of one set
    (:data:`N_PAIRS` pairs)."""
    data, where = _read(folder, prefix + '-dat.mat')
    x = parse_matrix(data, where)
    if x.dtype != numpy.uint8 or x.shape != (N_PAIRS, 2, SIDE, SIDE):
        raise DatasetError('{}: must hold {} x 2 x {} x {} bytes, holds {} x {}'.format(
            where, N_PAIRS, SIDE, SIDE, ' x '.join(map(str, x.shape)), x.dtype.name))
    data, where = _read(folder, prefix + '-cat.mat')
    t = parse_matrix(data, where)
    if t.dtype.kind != 'i' or t.shape != (N_PAIRS,):
        raise DatasetError('{}: must hold {} int32 classes, holds {} x {}'.format(
            where, N_PAIRS, ' x '.join(map(str, t.shape)), t.dtype.name))
    if t.min() < 0 or t.max() >= len(CLASS_NAMES):
        raise DatasetError('{}: classes must be 0..4'.format(where))
    return x[:, :, ::2, ::2].copy(), t.astype(numpy.int32)


def read_smallnorb(path, data_dir_name='data_dir', test_only=False):
    """Reads smallNORB's training and test pairs, downsampled to 48 x 48.

    Args:
        path (str): The folder of the files.
        data_dir_name (str): How messages name ``path``.
        test_only (bool): Read only the test files (the training files must be there).

    Returns:
        tuple: ``(train, test)``, two
        :class:`~capsnet_chainer.datasets.images.LabelledImages`, images
        ``(N, 2, 48, 48)`` float32 in [0, 1]; ``train`` is ``None`` with ``test_only``.
    """
    if path is None:
        raise SettingError('data_dir', 'is needed: the folder of the smallNORB files '
                           '({})'.format(URL))
    names = [p + s for p in PREFIXES.values() for s in ('-dat.mat', '-cat.mat')]
    absent = [n for n in names if not (os.path.isfile(os.path.join(path, n))
                                       or os.path.isfile(os.path.join(path, n + '.gz')))]
    if absent:
        raise DatasetError('{} {}: {} not found (nor .gz); the folder must hold {} ({})'
                           .format(data_dir_name, path, ', '.join(absent),
                                   ', '.join(names), URL))
    sets = {}
    for key, prefix in PREFIXES.items():
        if test_only and key != 'test':
            continue
        x, t = read_set(path, prefix)
        x = x.astype(numpy.float32)
        x *= 1. / 255.
        sets[key] = LabelledImages(x, t, CLASS_NAMES)
    return sets.get('train'), sets['test']
