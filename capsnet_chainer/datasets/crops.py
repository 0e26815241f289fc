"""Crops and photometric jitter: the training converter of the paper's CIFAR-10 and
smallNORB experiments (Sec. 7 of Sabour et al. [#]_), and the centre crop of their
test sets.

* :class:`RandomCrop`: each image cropped at a random position ("24 x 24 patches of the
  image" for CIFAR-10, "random 32x32 crops" for smallNORB), then, as the official code
  does, flipped left-right at random (CIFAR-10), its brightness shifted and its
  contrast scaled at random; with a random state that snapshots save.
* :func:`center_crop`: the test images' centre ("We passed the central 32x32 patch
  during test").

Shapes: images ``(B, C, H, W)``, crops ``(B, C, h, w)``.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import numpy

from capsnet_chainer.random_state import check_part
from capsnet_chainer.random_state import serialize_random_state


def crop_offsets_fit(shape, size):
    """Raises ``ValueError`` unless a ``size`` ``(h, w)`` crop fits images of ``shape``
    ``(..., H, W)``."""
    H, W = shape[-2:]
    if size[0] > H or size[1] > W:
        raise ValueError('a {}x{} crop does not fit images of {}x{}'.format(
            size[0], size[1], H, W))


def center_crop(x, size):
    """The centre ``size`` ``(h, w)`` of images ``(B, C, H, W)``: offset ``(H - h) // 2``
    (TensorFlow's ``resize_image_with_crop_or_pad``, which the official code uses)."""
    crop_offsets_fit(x.shape, size)
    h, w = size
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, top:top + h, left:left + w].copy()


def adjust_contrast(x, factor):
    """Each channel's deviation from its mean scaled by ``factor`` ``(B,)`` (TensorFlow's
    ``adjust_contrast``)."""
    mean = x.mean(axis=(2, 3), keepdims=True)
    return (x - mean) * factor.reshape((-1, 1, 1, 1)).astype(x.dtype) + mean


class RandomCrop(chainer.dataset.Converter):
    """Converter that concatenates a batch, crops each image at a random position and
    jitters it.

    For each image, in this order: a crop of ``size`` at a position uniform over all that
    fit; with ``flip``, a left-right flip with probability 1/2; with ``brightness``
    ``b``, a shift of every pixel by the same value uniform in ``[-b, b]``; with
    ``contrast`` ``(lo, hi)``, each channel's deviation from its mean scaled by a factor
    uniform in ``[lo, hi]``. As in the official code, nothing is clipped (the network's
    per-image standardization then undoes the brightness shift; the reconstruction
    target keeps it). Use it as the training updater's converter only; the test set
    takes :func:`center_crop`. ``StandardUpdater.serialize`` does not save its
    converter: serialize this object too to resume the same crops.

    Args:
        size (tuple of int): ``(h, w)`` of the crops.
        flip (bool): Flip left-right at random.
        brightness (float): Largest brightness shift (0: none).
        contrast (tuple of float): Range of the contrast factor (``None``: none).
        seed (int): Seed of the converter's random state.
        part (tuple of int): ``(i, n)``: each batch is part ``i`` of ``n`` equal,
            contiguous parts of a global batch (data-parallel training): every draw is
            made for the whole global batch and part ``i`` of them used, so that ``n``
            converters seeded alike crop as one converter of the global batch does.
    """

    def __init__(self, size, flip=False, brightness=0.0, contrast=None, seed=None,
                 part=(0, 1)):
        self.size = tuple(int(n) for n in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError('size must be (h, w), got {!r}'.format(size))
        self.flip = bool(flip)
        self.brightness = float(brightness)
        self.contrast = None if contrast is None else tuple(float(c) for c in contrast)
        self.part = check_part(part)
        self.random_state = numpy.random.RandomState(seed)

    def draw(self, B, room):
        """The draws of a batch of ``B``, crops with ``room`` ``(H - h, W - w)``: offsets
        ``(B, 2)``, flips ``(B,)`` bool, brightness shifts and contrast factors ``(B,)``
        (``None`` where not jittered)."""
        index, n_part = self.part
        rs, total = self.random_state, B * n_part
        mine = slice(index * B, (index + 1) * B)
        draws = [rs.randint(0, numpy.asarray(room) + 1, size=(total, 2))[mine]]
        draws.append(rs.rand(total)[mine] < 0.5 if self.flip else None)
        draws.append(rs.uniform(-self.brightness, self.brightness, total)[mine]
                     if self.brightness else None)
        draws.append(rs.uniform(*self.contrast, size=total)[mine]
                     if self.contrast else None)
        return draws

    def __call__(self, batch, device=None):
        """Converts a batch of examples ``(x, t, ...)``, ``x`` ``(C, H, W)``; returns
        ``(x, t, ...)`` with ``x`` ``(B, C, h, w)``, sent to ``device``."""
        arrays = chainer.dataset.concat_examples(batch)
        x, rest = arrays[0], arrays[1:]
        crop_offsets_fit(x.shape, self.size)
        h, w = self.size
        offsets, flips, shifts, factors = self.draw(len(x), (x.shape[2] - h, x.shape[3] - w))
        y = x[:, :, :h, :w].copy()
        for n, (top, left) in enumerate(offsets):
            y[n] = x[n, :, top:top + h, left:left + w]
        if flips is not None:
            y[flips] = y[flips][..., ::-1]
        if shifts is not None:
            y += shifts.reshape((-1, 1, 1, 1)).astype(y.dtype)
        if factors is not None:
            y = adjust_contrast(y, factors)
        return tuple(chainer.dataset.to_device(device, a) for a in (y,) + tuple(rest))

    def serialize(self, serializer):
        """Saves or restores the full state of the random number generator."""
        serialize_random_state(serializer, self.random_state)
