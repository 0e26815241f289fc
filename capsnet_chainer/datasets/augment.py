"""Shift augmentation: images moved by whole pixels with zero fill, as a converter."""

import operator

import chainer
import numpy

from capsnet_chainer.random_state import check_part
from capsnet_chainer.random_state import serialize_random_state


def shift_images(x, dy, dx):
    """Shifts images by whole pixels, filling the vacated border with zeros.

    Args:
        x (:ref:`ndarray`): Images of shape ``(B, C, H, W)`` (any leading axes).
        dy (int): Rows to shift down (negative: up).
        dx (int): Columns to shift right (negative: left).

    Returns:
        :ref:`ndarray`: A new array of the same shape, dtype and device as ``x``.
    """
    xp = chainer.backend.get_array_module(x)
    dy, dx = operator.index(dy), operator.index(dx)
    y = xp.zeros_like(x)
    H, W = x.shape[-2:]
    if abs(dy) >= H or abs(dx) >= W:
        return y
    y[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return y


def shift_each(x, shifts):
    """Shifts a batch of images ``(B, C, H, W)`` by :meth:`RandomShift.draw_shifts`'s
    ``shifts``: one ``(dy, dx)`` for all, or an ``(B, 2)`` array, one row per image."""
    if isinstance(shifts, tuple):
        return shift_images(x, *shifts)
    xp = chainer.backend.get_array_module(x)
    y = xp.empty_like(x)
    for dy, dx in numpy.unique(shifts, axis=0):
        index = numpy.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
        index = xp.asarray(index)
        y[index] = shift_images(x[index], int(dy), int(dx))
    return y


class RandomShift(chainer.dataset.Converter):
    """Converter that concatenates a batch and shifts its images at random.

    Shifts are integers drawn uniformly from ``[-max_shift, max_shift]`` for rows and
    columns independently, with zero fill, as in Sabour et al. [#]_ (Sec. 5: "shifted
    by up to 2 pixels in each direction with zero padding"). Use it as the
    ``converter`` of the training updater only; evaluate with the default
    :func:`~chainer.dataset.concat_examples`.

    ``StandardUpdater.serialize`` does not serialize its converter, so to resume the
    same sequence of shifts, serialize this object too (e.g. from an extension).

    .. [#] Sabour, Frosst and Hinton, *Dynamic Routing Between Capsules*, NIPS 2017.

    Args:
        max_shift (int): Largest shift in pixels; 0 disables shifting.
        per_image (bool): Draw one shift per image. ``False`` draws one ``(dy, dx)`` for
            the whole batch.
        seed (int): Seed of the converter's own :class:`numpy.random.RandomState`.
        part (tuple of int): ``(i, n)``: each batch is part ``i`` of ``n`` equal,
            contiguous parts of a global batch (data-parallel training, see
            :mod:`capsnet_chainer.training.distributed`). Per-image shifts are then drawn for
            the whole global batch and part ``i`` of them applied, so that ``n``
            converters seeded alike shift as one converter of the global batch does.
            One shift per batch needs nothing: every part draws the same.
    """

    def __init__(self, max_shift=2, per_image=False, seed=None, part=(0, 1)):
        max_shift = operator.index(max_shift)
        if max_shift < 0:
            raise ValueError('max_shift must be >= 0, got {}'.format(max_shift))
        index, n_part = check_part(part)
        self.max_shift = max_shift
        self.per_image = per_image
        self.part = (index, n_part)
        self.random_state = numpy.random.RandomState(seed)

    def __call__(self, batch, device=None):
        """Converts a batch.

        Args:
            batch (list): Examples ``(x, t, ...)`` with ``x`` of shape ``(C, H, W)``.
            device (~chainer.backend.Device): Where to send the arrays; ``None`` leaves
                them where they are.

        Returns:
            tuple: ``(x, t, ...)``, with ``x`` of shape ``(B, C, H, W)`` shifted.
        """
        return self.to_device(self.on_host(batch), device)

    def on_host(self, batch):
        """The host's part of :meth:`__call__`: the batch concatenated and shifted."""
        arrays = chainer.dataset.concat_examples(batch)
        x, rest = arrays[0], arrays[1:]
        if self.max_shift > 0:
            x = shift_each(x, self.draw_shifts(len(x)))
        return (x,) + tuple(rest)

    def to_device(self, arrays, device):
        """The rest of :meth:`__call__`: the arrays of :meth:`on_host` sent to ``device``."""
        return tuple(chainer.dataset.to_device(device, a) for a in arrays)

    def draw_shifts(self, n):
        """Draws the shifts of a batch of ``n`` images from :attr:`random_state`.

        Returns:
            ``(dy, dx)`` (ints) for one shift per batch, else an int array ``(n, 2)``:
            this part's rows of the shifts drawn for the whole global batch.
        """
        m = self.max_shift
        if not self.per_image:
            dy, dx = self.random_state.randint(-m, m + 1, size=2)
            return int(dy), int(dx)
        index, n_part = self.part
        shifts = self.random_state.randint(-m, m + 1, size=(n * n_part, 2))
        return shifts[index * n:(index + 1) * n]

    def serialize(self, serializer):
        """Saves or restores the full state of the random number generator."""
        serialize_random_state(serializer, self.random_state)
