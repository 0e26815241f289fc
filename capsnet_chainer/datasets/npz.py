"""One's own images as arrays in an ``.npz`` file (``train.py --dataset npz``).

.. csv-table::
    :header: key, shape, dtype, format

    ``x_train``, "``N x H x W`` or ``N x H x W x C`` (``C`` 1 to 4)", "``uint8`` or
    float", "0..255, or 0..1 for floats"
    ``y_train``, ``N``, integer, "class, ``0 .. J - 1``"
    ``x_test``, as ``x_train`` (same ``H``, ``W``, ``C``), as ``x_train``, as ``x_train``
    ``y_test``, ``N``, integer, as ``y_train``
    ``class_names`` (optional), ``J``, strings, "the name of each class, in label order"

Written, for example, by ``numpy.savez('mine.npz', x_train=..., y_train=..., x_test=...,
y_test=..., class_names=['cat', 'dog'])``. Without ``class_names`` the classes are ``0 ..
J - 1``, ``J`` the largest label plus one. Every class needs training images, and there
must be two classes at least. Each problem is one
:class:`~capsnet_chainer.datasets.idx.DatasetError` naming the file and the array.
"""

import os

import numpy

from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.images import check_labels
from capsnet_chainer.datasets.images import LabelledImages
from capsnet_chainer.datasets.images import resize
from capsnet_chainer.datasets.images import to_images
from capsnet_chainer.errors import SettingError

#: The arrays an ``.npz`` file must hold.
KEYS = ('x_train', 'y_train', 'x_test', 'y_test')


def _load(path, data_dir_name):
    if path is None:
        raise SettingError('data_dir', 'is needed: the .npz file with {}'.format(
            ', '.join(KEYS)))
    if not os.path.isfile(path):
        raise DatasetError('{} {}: no such file (an .npz file with {})'.format(
            data_dir_name, path, ', '.join(KEYS)))
    try:
        npz = numpy.load(path, allow_pickle=False)
        if not isinstance(npz, numpy.lib.npyio.NpzFile):
            raise ValueError('a single array, not an npz archive')
        with npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DatasetError('{}: lacks the array(s) {} (it has: {})'.format(
                    path, ', '.join(missing), ', '.join(npz.files) or 'none'))
            return {k: npz[k] for k in npz.files if k in KEYS + ('class_names',)}
    except DatasetError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects, ...
        raise DatasetError('{}: not a readable .npz file ({}: {})'.format(
            path, type(e).__name__, e)) from None


def class_names_of(arrays, path):
    """The ``class_names`` array as a list of str, or ``None``."""
    names = arrays.get('class_names')
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in 'US':
        raise DatasetError('{}: class_names must be a 1-D array of strings, got {} of shape '
                           '{}'.format(path, names.dtype, names.shape))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(set(names)) != len(names):
        raise DatasetError('{}: class_names repeats a name'.format(path))
    return names


def read_npz(path, image_size=None, data_dir_name='data_dir', test_only=False):
    """Reads the training and test sets of an ``.npz`` file (the layout above).

    Args:
        path (str): The file.
        image_size (tuple of int): ``(H, W)`` to resize every image to (bilinear);
            ``None``: the arrays' own.
        data_dir_name (str): How messages name ``path``.
        test_only (bool): Return no training set (its arrays are still checked: they
            decide the classes), and resize only the test images.

    Returns:
        tuple: ``(train, test)``, two
        :class:`~capsnet_chainer.datasets.images.LabelledImages`; ``train`` is ``None``
        with ``test_only``.
    """
    arrays = _load(path, data_dir_name)
    x = {k: to_images(arrays[k], '{}: {}'.format(path, k)) for k in ('x_train', 'x_test')}
    if x['x_train'].shape[1:] != x['x_test'].shape[1:]:
        shapes = ['{} x {} x {}'.format(*x[k].shape[2:], x[k].shape[1]) for k in x]
        raise DatasetError('{}: x_train holds images of H x W x C = {}, x_test of {}: they '
                           'must be alike'.format(path, *shapes))
    names = class_names_of(arrays, path)
    if names is None:
        n_class = 1 + max((int(arrays[k].max(initial=0)) for k in ('y_train', 'y_test')
                           if arrays[k].dtype.kind in 'iu'), default=0)
    else:
        n_class = len(names)
    t = {k: check_labels(arrays[k], len(x['x' + k[1:]]), n_class, '{}: {}'.format(path, k))
         for k in ('y_train', 'y_test')}
    present = numpy.bincount(t['y_train'], minlength=n_class)
    if n_class < 2 or (present > 0).sum() < 2:
        raise DatasetError('{}: y_train holds {} class(es); a classifier needs two at '
                           'least'.format(path, (present > 0).sum()))
    absent = numpy.flatnonzero(present == 0)
    if len(absent):
        in_test = [k for k in absent if (t['y_test'] == k).any()]
        shown = ', '.join(names[k] if names else str(k) for k in (in_test or absent)[:5])
        if in_test:
            raise DatasetError('{}: y_test holds class(es) {} that y_train never has: the '
                               'classes of the test set differ from those of the training '
                               'set'.format(path, shown))
        raise DatasetError('{}: class(es) {} of class_names have no training images'.format(
            path, shown))
    names = names or [str(k) for k in range(n_class)]
    sets = []
    for split in ('train', 'test'):
        if test_only and split == 'train':
            sets.append(None)
            continue
        images = x['x_' + split]
        if image_size is not None:
            images = resize(images, image_size)
        sets.append(LabelledImages(images, t['y_' + split], names))
    return tuple(sets)
