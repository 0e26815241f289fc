"""Checking a data set's official files against their published checksums (CIFAR-10,
SVHN, smallNORB), so that a damaged download or another copy is named, not trained on.

Each reader keeps the table of its files; :func:`verify` compares a file with its entry,
and :func:`read_verified` reads a file once for the check and the reader.
A file of the right name whose checksum differs is refused: the message says so and
that arrays of one's own train with ``--dataset npz`` or ``--dataset folder``.
"""

import hashlib

from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.fileio import file_digest

#: What to do with files that are not the official ones, said by every mismatch.
OTHER_FILES = ('download it again from {url}; to train on other images, use --dataset '
               'npz (arrays) or --dataset folder (image files)')


def verify(path, expected, title, url, algorithm='md5', data=None):
    """Checks ``path`` against ``expected``.

    Args:
        path (str): The file.
        expected (str): Its published digest, hex.
        title (str): The data set, for the message (``'CIFAR-10'``).
        url (str): Where the official files are, for the message.
        algorithm (str): ``'md5'`` or ``'sha256'``.
        data (bytes): The file's bytes where the caller has read them already
            (``None``: read from ``path``).

    Raises:
        DatasetError: The digest differs.
    """
    got = (file_digest(path, algorithm) if data is None
           else hashlib.new(algorithm, data).hexdigest())
    if got != expected:
        raise DatasetError('{}: {} checksum mismatch ({} {}, the official file has {}): not '
                           'the official {} file, or damaged; {}'.format(
                               path, algorithm.upper(), algorithm, got, expected, title,
                               OTHER_FILES.format(url=url)))


def read_verified(path, expected, title, url, algorithm='md5'):
    """The bytes of ``path``, read once and checked by :func:`verify` (same arguments).
    """
    with open(path, 'rb') as f:
        data = f.read()
    verify(path, expected, title, url, algorithm, data)
    return data
