"""Images of any size and channels with named classes: what the readers of a folder of
images, of arrays in an ``.npz`` file and of CIFAR-10, SVHN and smallNORB hand to their
protocols (:mod:`~capsnet_chainer.datasets.image_protocols`).

.. csv-table::
    :header: name, shape, dtype, format

    :obj:`x`, ":math:`(C, H, W)`", :obj:`float32`, "``uint8 / 255`` (or the float given),
    in :math:`[0, 1]`"
    :obj:`t`, ":math:`()`", :obj:`int32`, "class, :math:`[0, J - 1]`, named by
    ``class_names``"

The arrays a user gives are checked here, with errors that name the file and the array:
:func:`to_images` takes ``N x H x W`` or ``N x H x W x C`` arrays, ``uint8`` 0..255 or
float 0..1, and :func:`check_labels` the labels.
"""

import chainer
import numpy

from capsnet_chainer.datasets.idx import DatasetError

#: The most channels an image may have (grey, grey and alpha, RGB, RGBA).
MAX_CHANNELS = 4


class LabelledImages(chainer.datasets.TupleDataset):
    """Images ``(N, C, H, W)`` float32 and labels ``(N,)`` int32, with their classes.

    Args:
        x (numpy.ndarray): The images.
        t (numpy.ndarray): The labels, ``0 .. len(class_names) - 1``.
        class_names (sequence of str): The names of the classes, in label order.
        notes (sequence of str): What the reader did that a user should hear of (a mix
            of grey and colour images read as colour, say).
        record (dict): How the set was made, for model files to record (a held-out
            split's fraction and seed, say); JSON-able.

    Attributes:
        class_names (tuple of str): As given.
        notes (list of str): As given.
        record (dict): As given (``{}`` by default).
    """

    def __init__(self, x, t, class_names, notes=(), record=None):
        super().__init__(x, t)
        self.class_names = tuple(str(name) for name in class_names)
        self.notes = list(notes)
        self.record = dict(record or {})

    @property
    def images(self):
        return self._datasets[0]

    @property
    def labels(self):
        return self._datasets[1]

    def subset(self, n):
        """The first ``n`` examples (all for ``None``), with the same classes."""
        if n is None or n >= len(self):
            return self
        return LabelledImages(self.images[:n], self.labels[:n], self.class_names,
                              self.notes, self.record)


def to_images(x, where):
    """Images as float32 ``(N, C, H, W)`` in [0, 1].

    Args:
        x (numpy.ndarray): ``N x H x W`` or ``N x H x W x C`` (channels last, ``C`` up to
            :data:`MAX_CHANNELS`), ``uint8`` 0..255 or float 0..1.
        where (str): How messages name the array (``'data.npz: x_train'``).

    Raises:
        DatasetError: Another shape or dtype, or float values outside [0, 1] or not
            finite.
    """
    x = numpy.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or not 1 <= x.shape[3] <= MAX_CHANNELS:
        hint = (' (channels first? give N x H x W x C)' if x.ndim == 4
                and 1 <= x.shape[1] <= MAX_CHANNELS else '')
        raise DatasetError('{}: images must be N x H x W or N x H x W x C with C from 1 to '
                           '{}, got shape {}{}'.format(where, MAX_CHANNELS, x.shape, hint))
    if x.shape[0] == 0 or min(x.shape[1:3]) == 0:
        raise DatasetError('{}: no images (shape {})'.format(where, x.shape))
    if x.dtype == numpy.uint8:
        y = x.astype(numpy.float32)
        y *= 1. / 255.
    elif x.dtype.kind == 'f':
        if not numpy.isfinite(x).all():
            raise DatasetError('{}: holds NaN or infinite values'.format(where))
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise DatasetError('{}: float images must lie in [0, 1], got {:g}..{:g} (uint8 '
                               'images may hold 0..255)'.format(where, low, high))
        y = x.astype(numpy.float32)
    else:
        raise DatasetError('{}: images must be uint8 (0..255) or float (0..1), got {}'
                           .format(where, x.dtype))
    return numpy.ascontiguousarray(y.transpose((0, 3, 1, 2)))


def check_labels(t, n, n_class, where):
    """Labels as int32 ``(N,)``, each in ``0 .. n_class - 1``.

    Args:
        t (numpy.ndarray): The labels, integers, ``N`` or ``N x 1``.
        n (int): The number of images they label.
        n_class (int): The number of classes.
        where (str): How messages name the array.

    Raises:
        DatasetError: Not integers, not ``n`` of them, or out of range.
    """
    t = numpy.asarray(t)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dtype.kind not in 'iu' or t.ndim != 1:
        raise DatasetError('{}: labels must be N integers, got {} of shape {}'.format(
            where, t.dtype, t.shape))
    if len(t) != n:
        raise DatasetError('{}: {} labels for {} images'.format(where, len(t), n))
    bad = numpy.flatnonzero((t < 0) | (t >= n_class))
    if len(bad):
        raise DatasetError('{}: label {} (at index {}) is out of range: the classes are 0 '
                           'to {}'.format(where, t[bad[0]], bad[0], n_class - 1))
    return t.astype(numpy.int32)


def resize(x, size):
    """Images ``(N, C, H, W)`` resized to ``size`` ``(H', W')``, each channel by Pillow's
    bilinear filter (which averages over the pixels it reduces), float32."""
    from PIL import Image
    H, W = size
    if tuple(x.shape[2:]) == (H, W):
        return x
    out = numpy.empty(x.shape[:2] + (H, W), numpy.float32)
    for n in range(len(x)):
        for c in range(x.shape[1]):
            image = Image.fromarray(numpy.ascontiguousarray(x[n, c], numpy.float32))
            out[n, c] = numpy.asarray(image.resize((W, H), Image.Resampling.BILINEAR))
    return numpy.clip(out, 0, 1, out=out)


def format_size(size):
    """``(H, W)`` as ``'HxW'``."""
    return '{}x{}'.format(*size)
