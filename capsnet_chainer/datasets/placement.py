"""MNIST placed at random on a 40x40 canvas: the training set of the paper's affNIST
experiment (Sec. 5.2 of Sabour et al. [#]_), and its expanded test set.

Sec. 5.2: "we trained a CapsNet and a traditional convolutional network (with
MaxPooling and DropOut) on a padded and translated MNIST training set, in which each
example is an MNIST digit placed randomly on a black background of 40 x 40 pixels."

* :class:`RandomPlacement`, the training converter: each 28x28 digit at a uniformly
  random integer position on the 40x40 zero canvas (top-left offset 0..12 per axis; the
  official code's ``--pad=6 --shift=6``), with a random state that snapshots save.
* :func:`expand`: the expanded MNIST test set, digits centred (offset 6), which is
  affNIST's own ``just_centered`` version ("centered in the 40x40 image by adding an edge
  of 6 background pixels around the original 28x28").

Shapes: ``B`` batch, ``S`` canvas side (40); digits are ``(N, 28, 28)`` or
``(N, 1, 28, 28)``; canvases ``(N, 1, S, S)``.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import operator

import chainer
import numpy

from capsnet_chainer.datasets.arrays import as_images
from capsnet_chainer.random_state import check_part
from capsnet_chainer.random_state import serialize_random_state

#: Canvas side of the paper's padded MNIST and of affNIST.
CANVAS = 40


def place(x, dy, dx, size=CANVAS):
    """Puts each image on a ``size`` x ``size`` zero canvas, top-left corner at
    ``(dy[i], dx[i])``.

    Args:
        x (:ref:`ndarray`): Images ``(B, C, H, W)``, NumPy or CuPy, ``H, W <= size``.
        dy, dx (array of ints): Row and column of each image's top-left corner, ``(B,)``,
            in ``[0, size - H]`` and ``[0, size - W]``.
        size (int): Canvas side.

    Returns:
        :ref:`ndarray`: ``(B, C, size, size)``, the dtype and device of ``x``.
    """
    xp = chainer.backend.get_array_module(x)
    B, C, H, W = x.shape
    dy = numpy.broadcast_to(numpy.asarray(dy, numpy.int64), (B,))
    dx = numpy.broadcast_to(numpy.asarray(dx, numpy.int64), (B,))
    if B and (dy.min() < 0 or dy.max() > size - H or dx.min() < 0 or dx.max() > size - W):
        raise ValueError('every {}x{} image must lie inside the {}x{} canvas'.format(
            H, W, size, size))
    out = xp.zeros((B, C, size, size), x.dtype)
    rows = xp.asarray(dy[:, None, None, None] + numpy.arange(H)[None, None, :, None])
    cols = xp.asarray(dx[:, None, None, None] + numpy.arange(W)[None, None, None, :])
    b = xp.arange(B)[:, None, None, None]
    c = xp.arange(C)[None, :, None, None]
    out[b, c, rows, cols] = x
    return out


def expand(images, size=CANVAS):
    """The expanded MNIST test set: each digit at the centre of a ``size`` x ``size``
    zero canvas (offset ``(size - 28) // 2``, 6 for 40: affNIST's ``just_centered``).

    Args:
        images (numpy.ndarray): Digits ``(N, H, W)`` or ``(N, 1, H, W)``.
        size (int): Canvas side.

    Returns:
        numpy.ndarray: ``(N, 1, size, size)``, the dtype of ``images``.
    """
    x = as_images(images)
    H, W = x.shape[2:]
    if H > size or W > size:
        raise ValueError('digits of {}x{} do not fit a canvas of {}'.format(H, W, size))
    return place(x, (size - H) // 2, (size - W) // 2, size)


class RandomPlacement(chainer.dataset.Converter):
    """Converter that concatenates a batch and puts each digit at a random position on a
    ``size`` x ``size`` zero canvas: the paper's training set for affNIST (Sec. 5.2,
    "each example is an MNIST digit placed randomly on a black background of 40 x 40
    pixels").

    Each image draws its own top-left corner ``(dy, dx)``, both uniform over the integers
    ``0 .. size - 28`` (0..12 for 40), so the whole digit is always on the canvas: the
    official code's expanded MNIST (``mnist_shift.py --pad=6 --shift=6``: padded by 6,
    shifted by -6..6 per axis) has the same 13 x 13 positions, each once. Use it as the
    ``converter`` of the training updater only, with no other augmentation; evaluate on
    :func:`expand`. Each call draws ``(B, 2)`` integers from the converter's own
    :class:`numpy.random.RandomState`; ``StandardUpdater.serialize`` does not save its
    converter, so serialize this object too (:meth:`serialize`) to resume the same
    placements.

    Args:
        size (int): Canvas side.
        seed (int): Seed of the converter's random state.
        part (tuple of int): ``(i, n)``: each batch is part ``i`` of ``n`` equal,
            contiguous parts of a global batch (data-parallel training, see
            :mod:`capsnet_chainer.training.distributed`): the positions are drawn for the whole
            global batch and part ``i`` of them used, so that ``n`` converters seeded
            alike place as one converter of the global batch does.
    """

    def __init__(self, size=CANVAS, seed=None, part=(0, 1)):
        size = operator.index(size)
        if size < 1:
            raise ValueError('size must be >= 1, got {}'.format(size))
        index, n_part = check_part(part)
        self.size = size
        self.part = (index, n_part)
        self.random_state = numpy.random.RandomState(seed)

    def __call__(self, batch, device=None):
        """Converts a batch.

        Args:
            batch (list): Examples ``(x, t, ...)``, ``x`` of shape ``(C, H, W)``.
            device (~chainer.backend.Device): Where to send the arrays; ``None`` leaves
                them where they are.

        Returns:
            tuple: ``(x, t, ...)``, ``x`` of shape ``(B, C, size, size)``.
        """
        arrays = chainer.dataset.concat_examples(batch)
        x, rest = arrays[0], arrays[1:]
        B, _, H, W = x.shape
        if H > self.size or W > self.size:
            raise ValueError('images of {}x{} do not fit a canvas of {}'.format(
                H, W, self.size))
        index, n_part = self.part
        offsets = self.random_state.randint(
            0, [self.size - H + 1, self.size - W + 1], size=(B * n_part, 2))
        offsets = offsets[index * B:(index + 1) * B]
        x = place(x, offsets[:, 0], offsets[:, 1], self.size)
        return tuple(chainer.dataset.to_device(device, a) for a in (x,) + tuple(rest))

    def serialize(self, serializer):
        """Saves or restores the full state of the random number generator."""
        serialize_random_state(serializer, self.random_state)
