"""SVHN, the Street View House Numbers, from its official "format 2" files
(``--dataset svhn``): ``train_32x32.mat`` (73,257 digits, the "small training set" of the
paper's Sec. 7) and ``test_32x32.mat`` (26,032) in ``--data-dir``, from :data:`URL`.

Each is a MATLAB (v5) file with ``X`` (32 x 32 x 3 x N ``uint8``, RGB) and ``y`` (N x 1,
the digit, with 10 for the digit 0). The files are checked against the MD5s of
torchvision's reader (the SVHN page publishes none) and read with SciPy, an optional
dependency: ``pip install 'capsnet-chainer[svhn]'``.

.. csv-table::
    :header: name, shape, dtype, format

    :obj:`x`, ":math:`(3, 32, 32)`", :obj:`float32`, "RGB, ``uint8 / 255``"
    :obj:`t`, ":math:`()`", :obj:`int32`, "the digit 0..9 (SVHN's label 10 is 0)"
"""

import io
import os

import numpy

from capsnet_chainer.datasets import checksums
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.images import LabelledImages
from capsnet_chainer.datasets.matfile import read_mat
from capsnet_chainer.errors import SettingError

URL = 'http://ufldl.stanford.edu/housenumbers/'
TITLE = 'SVHN'
#: MD5 of each file (torchvision's ``SVHN``).
MD5 = {'train_32x32.mat': 'e26dedcc434d2e4c54c9b2d4a06d8373',
       'test_32x32.mat': 'eb5a983be6a315427106f1b164d9cef3'}
CLASS_NAMES = tuple(str(d) for d in range(10))
#: The file of the test set (the other is the training set's).
TEST_FILE = 'test_32x32.mat'


def parse_svhn_mat(f, path=None):
    """The images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int32 (0..9) of one file
    ``f`` (a path or a binary file object; ``path`` names it, default ``f``)."""
    path = f if path is None else path
    mat = read_mat(f, path, "SVHN's .mat files", 'svhn')
    if 'X' not in mat or 'y' not in mat:
        raise DatasetError('{}: needs the variables X and y (found: {})'.format(
            path, ', '.join(k for k in mat if not k.startswith('__')) or 'none'))
    x, y = numpy.asarray(mat['X']), numpy.asarray(mat['y']).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != numpy.uint8:
        raise DatasetError('{}: X must be 32 x 32 x 3 x N uint8, got {} {}'.format(
            path, ' x '.join(map(str, x.shape)), x.dtype))
    if len(y) != x.shape[3]:
        raise DatasetError('{}: {} labels for {} images'.format(path, len(y), x.shape[3]))
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DatasetError('{}: y must hold 1..10 (10 for the digit 0)'.format(path))
    return x.transpose((3, 2, 0, 1)), (y % 10).astype(numpy.int32)


def read_svhn(path, data_dir_name='data_dir', test_only=False):
    """Reads SVHN's training and test digits from the folder ``path``.

    Args:
        test_only (bool): Read only the test file (the training file must be there).

    Returns:
        tuple: ``(train, test)``, two
        :class:`~capsnet_chainer.datasets.images.LabelledImages`, images
        ``(N, 3, 32, 32)`` float32 in [0, 1]; ``train`` is ``None`` with ``test_only``.
    """
    if path is None:
        raise SettingError('data_dir', 'is needed: the folder with {} ({})'.format(
            ' and '.join(MD5), URL))
    files = [os.path.join(path, name) for name in MD5]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
        raise DatasetError('{} {}: {} not found; the folder must hold {} ({})'.format(
            data_dir_name, path, ', '.join(absent), ' and '.join(MD5), URL))
    sets = []
    for name, where in zip(MD5, files):
        if test_only and name != TEST_FILE:
            sets.append(None)
            continue
        data = checksums.read_verified(where, MD5[name], TITLE, URL)
        x, t = parse_svhn_mat(io.BytesIO(data), where)
        x = x.astype(numpy.float32)
        x *= 1. / 255.
        sets.append(LabelledImages(x, t, CLASS_NAMES))
    return tuple(sets)
