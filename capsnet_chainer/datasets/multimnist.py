"""MultiMNIST: overlapping digit pairs, drawn on the fly or as a fixed test set.

Sec. 6 of Sabour et al. [#]_: "We generate the MultiMNIST training and test dataset by
overlaying a digit on top of another digit from the same set (training or test) but
different class. Each digit is shifted up to 4 pixels in each direction resulting in a
36x36 image."

The pieces here take arrays, never files:

* :func:`pad_and_shift` puts 28x28 digits at the centre of a 36x36 canvas (offset 4)
  and shifts each by whole pixels, :func:`overlay` merges two canvases as
  ``min(a + b, 1)``.
* :class:`PairSampler` draws training pairs on the fly from one split, seeded, with a
  random state that Chainer's serializers save and restore, so that a resumed run
  draws the identical stream; :func:`make_test_set` makes a fixed set of pairs that a
  seed regenerates bit for bit.

The two-digit loss is in :mod:`capsnet_chainer.functions` (with the other equations),
and the pair accuracy in :mod:`capsnet_chainer.evaluation.metrics`.

Shapes use ``N`` examples, ``B`` batch, ``J`` classes (10) and ``D`` capsule dimensions
(16); a canvas is ``(1, S, S)`` with ``S = 36``.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import numpy

from capsnet_chainer.datasets.arrays import as_images
from capsnet_chainer.random_state import serialize_random_state

#: Canvas side of the paper's MultiMNIST.
CANVAS = 36
#: The paper's largest shift per axis, in pixels (the official code's default is 6).
MAX_SHIFT = 4


def _as_digits(images):
    """``(N, H, W)`` or ``(N, 1, H, W)`` -> a float32 ``(N, H, W)`` array."""
    return as_images(images).astype(numpy.float32, copy=False)[:, 0]


def pad_and_shift(images, dy, dx, size=CANVAS):
    """Places each digit at the centre of a ``size`` x ``size`` canvas, then shifts it.

    The ``H`` x ``W`` digit starts at row ``(size - H) // 2 + dy`` and column
    ``(size - W) // 2 + dx`` (offset 4 for 28 in 36). Pixels that fall outside the
    canvas are dropped: with shifts of at most ``(size - H) // 2`` (4, the paper) none
    is lost; with larger ones (the official code's 6) a digit that reaches the edge of
    its 28x28 frame has that edge cut.

    Args:
        images (numpy.ndarray): Digits ``(N, H, W)`` or ``(N, 1, H, W)``, float32 in
            [0, 1], ``H, W <= size``.
        dy (array of ints): Rows to shift each digit down (negative: up), ``(N,)``.
        dx (array of ints): Columns to shift each digit right (negative: left), ``(N,)``.
        size (int): Canvas side.

    Returns:
        numpy.ndarray: Canvases ``(N, 1, size, size)``, float32, zero where no digit
        pixel lands.
    """
    images = _as_digits(images)
    N, H, W = images.shape
    if H > size or W > size:
        raise ValueError('digits of {}x{} do not fit a canvas of {}'.format(H, W, size))
    dy = numpy.broadcast_to(numpy.asarray(dy), (N,)).astype(numpy.int64)
    dx = numpy.broadcast_to(numpy.asarray(dx), (N,)).astype(numpy.int64)
    rows = (size - H) // 2 + dy[:, None, None] + numpy.arange(H)[None, :, None]  # (N, H, 1)
    cols = (size - W) // 2 + dx[:, None, None] + numpy.arange(W)[None, None, :]  # (N, 1, W)
    n = numpy.broadcast_to(numpy.arange(N)[:, None, None], (N, H, W))
    rows = numpy.broadcast_to(rows, (N, H, W))
    cols = numpy.broadcast_to(cols, (N, H, W))
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    out = numpy.zeros((N, 1, size, size), numpy.float32)
    out[n[inside], 0, rows[inside], cols[inside]] = images[inside]
    return out


def overlay(a, b):
    """Merges two images pixel by pixel as ``min(a + b, 1)`` (same shapes, any)."""
    xp = chainer.backend.get_array_module(a)
    return xp.minimum(a + b, 1).astype(a.dtype, copy=False)


class PairSampler(chainer.dataset.DatasetMixin):
    """MultiMNIST pairs drawn on the fly from one split (Sec. 6 of the paper).

    Example ``i`` has digit ``i`` of the split as its base; each access draws, from the
    sampler's own :class:`numpy.random.RandomState`, a second digit of a different class
    and the shifts of both. The second digit is drawn uniformly among all the digits of
    the split whose class differs from the base's (one draw, no rejection loop; the
    same distribution as drawing from the whole split until the class differs, so
    classes appear in proportion to their frequency). Each digit then gets its own
    shift ``(dy, dx)``, every component uniform in ``[-max_shift, max_shift]``. The
    image is ``overlay(base, second)``.

    Each access draws anew: reading example ``i`` twice gives two pairs with the same
    base. The stream depends only on the seed and the order of accesses, so a
    :class:`~chainer.iterators.SerialIterator` (which reads its batch in order, when
    asked) gives a reproducible stream. Multiprocess iterators copy the sampler into
    their workers and so repeat its draws: use a serial iterator. To resume a run
    exactly, serialize this object with the rest of the snapshot (:meth:`serialize`;
    the updater does not serialize its iterator's dataset), as well as the iterator.

    Args:
        images (numpy.ndarray): Digits ``(N, 28, 28)`` or ``(N, 1, 28, 28)``, float32
            in [0, 1].
        labels (numpy.ndarray): Their classes ``(N,)``, integers in ``[0, n_class)``;
            at least two classes must be present.
        max_shift (int): Largest shift per axis (4, the paper; 6, the official code).
        seed (int): Seed of the sampler's random state.
        size (int): Canvas side (36).

    An example is a tuple ``(x, labels, digits)``:

    .. csv-table::
        :header: name, shape, dtype, meaning

        :obj:`x`, ":math:`(1, S, S)`", :obj:`float32`, "the merged image"
        :obj:`labels`, ":math:`(2,)`", :obj:`int32`, "base class, second class
        (always different)"
        :obj:`digits`, ":math:`(2, 1, S, S)`", :obj:`float32`, "the two shifted
        digits alone, the targets of the per-digit reconstructions"
    """

    def __init__(self, images, labels, max_shift=MAX_SHIFT, seed=0, size=CANVAS):
        self.images = _as_digits(images)
        self.labels = numpy.asarray(labels).astype(numpy.int32)
        if self.labels.shape != (len(self.images),):
            raise ValueError('labels must be ({},), got shape {}'.format(
                len(self.images), self.labels.shape))
        if len(self.labels) and self.labels.min() < 0:
            raise ValueError('labels must be >= 0')
        max_shift = int(max_shift)
        if max_shift < 0:
            raise ValueError('max_shift must be >= 0, got {}'.format(max_shift))
        self.max_shift = max_shift
        self.size = int(size)
        # Indices sorted by class (stable): class c occupies [start[c], start[c + 1]).
        self._by_class = numpy.argsort(self.labels, kind='stable')
        counts = numpy.bincount(self.labels) if len(self.labels) else numpy.zeros(0, int)
        if (counts > 0).sum() < 2:
            raise ValueError('pairs need digits of at least two classes')
        self._count = counts
        self._start = numpy.concatenate([[0], numpy.cumsum(counts)])
        self.rng = numpy.random.RandomState(seed)

    def __len__(self):
        return len(self.images)

    def draw(self, i):
        """Draws the second digit and the shifts for base digit ``i``.

        Uses the random state exactly twice: one ``randint`` for the second digit, one
        for the four shift components.

        Returns:
            tuple: ``(j, shifts)``: the index of the second digit (its class differs
            from digit ``i``'s) and ``shifts`` ``(2, 2)`` int64, rows ``(dy, dx)`` of the
            base and of the second digit.
        """
        c = int(self.labels[i])
        r = int(self.rng.randint(len(self.labels) - self._count[c]))
        # Rank r among the digits not of class c: skip class c's block in sorted order.
        if r >= self._start[c]:
            r += self._count[c]
        j = int(self._by_class[r])
        shifts = self.rng.randint(-self.max_shift, self.max_shift + 1, size=(2, 2))
        return j, shifts.astype(numpy.int64)

    def compose(self, i, j, shifts):
        """The pair of digits ``i`` and ``j`` with ``shifts``, without drawing.

        Args:
            i, j (int or array of ints): Base and second digits, scalars or ``(n,)``.
            shifts (array of ints): ``(2, 2)`` or ``(n, 2, 2)``, as from :meth:`draw`.

        Returns:
            tuple: ``(x, labels, digits)``: ``(1, S, S)``, ``(2,)``, ``(2, 1, S, S)``
            for scalars; with a leading ``n`` axis for arrays.
        """
        scalar = numpy.ndim(i) == 0
        i = numpy.atleast_1d(i)
        j = numpy.atleast_1d(j)
        shifts = numpy.asarray(shifts).reshape(-1, 2, 2)
        n = len(i)
        idx = numpy.stack([i, j], axis=1).reshape(-1)  # (2n,): base, second, base, ...
        digits = pad_and_shift(self.images[idx], shifts[:, :, 0].reshape(-1),
                               shifts[:, :, 1].reshape(-1), self.size)
        digits = digits.reshape(n, 2, 1, self.size, self.size)
        x = overlay(digits[:, 0], digits[:, 1])
        labels = self.labels[idx].reshape(n, 2)
        if scalar:
            return x[0], labels[0], digits[0]
        return x, labels, digits

    def get_example(self, i):
        """Draws a pair on base digit ``i``: ``(x, labels, digits)`` (see the class)."""
        j, shifts = self.draw(i)
        return self.compose(i, j, shifts)

    def serialize(self, serializer):
        """Saves or restores the random state (all that a resumed stream needs)."""
        serialize_random_state(serializer, self.rng)


def make_test_set(images, labels, n, seed, max_shift=MAX_SHIFT, size=CANVAS):
    """A fixed MultiMNIST set, regenerated bit for bit from ``seed``.

    Pair ``k`` has digit ``k % N`` of the split as its base (each digit is the base of
    ``n / N`` pairs, as in the official code, which uses every test digit as the base of
    many pairs); the second digit and the shifts are drawn as in :class:`PairSampler`
    seeded with ``seed``. :class:`numpy.random.RandomState` keeps its stream across
    NumPy versions, so the set depends only on the digits, ``n``, ``seed``,
    ``max_shift`` and ``size``.

    Memory: ``3 * n * size * size * 4`` bytes (15.5 kB a pair at 36x36).

    Args:
        images (numpy.ndarray): Digits of one split ``(N, 28, 28)`` or
            ``(N, 1, 28, 28)``, float32 in [0, 1].
        labels (numpy.ndarray): Their classes ``(N,)``.
        n (int): Number of pairs.
        seed (int): Seed.
        max_shift (int): Largest shift per axis.
        size (int): Canvas side.

    Returns:
        tuple: ``x`` ``(n, 1, S, S)`` float32, ``labels`` ``(n, 2)`` int32 and
        ``digits`` ``(n, 2, 1, S, S)`` float32 (the two shifted digits of each pair).
    """
    n = int(n)
    if n < 0:
        raise ValueError('n must be >= 0, got {}'.format(n))
    sampler = PairSampler(images, labels, max_shift=max_shift, seed=seed, size=size)
    base = numpy.arange(n) % len(sampler)
    second = numpy.empty(n, numpy.int64)
    shifts = numpy.empty((n, 2, 2), numpy.int64)
    for k in range(n):
        second[k], shifts[k] = sampler.draw(base[k])
    return sampler.compose(base, second, shifts)
