"""MultiMNIST: overlapping digit pairs, their two-digit loss and their scoring.

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
* :func:`two_digit_margin_loss`, :func:`two_digit_reconstruction_loss` (with
  :func:`reconstruct_both`) and :func:`two_digit_loss` are the paper's loss with both
  digits present; :func:`pair_accuracy` scores an image as right when its two labels
  are its two longest capsules.

Shapes use ``N`` examples, ``B`` batch, ``J`` classes (10) and ``D`` capsule dimensions
(16); a canvas is ``(1, S, S)`` with ``S = 36``.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import chainer.functions as F
import numpy

from capsnet_chainer import metrics
from capsnet_chainer.functions import capsule_length
from capsnet_chainer.functions import one_hot

#: Canvas side of the paper's MultiMNIST.
CANVAS = 36
#: The paper's largest shift per axis, in pixels (the official code's default is 6).
MAX_SHIFT = 4


def _as_digits(images):
    """``(N, 28, 28)`` or ``(N, 1, 28, 28)`` -> a float32 ``(N, 28, 28)`` array."""
    images = numpy.asarray(images, numpy.float32)
    if images.ndim == 4:
        if images.shape[1] != 1:
            raise ValueError('images must have one channel, got shape {}'.format(
                images.shape))
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError('images must be (N, H, W) or (N, 1, H, W), got shape {}'.format(
            images.shape))
    return images


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
        kind, keys, pos, has_gauss, gauss = self.rng.get_state()
        keys = serializer('keys', keys)
        pos = serializer('pos', pos)
        has_gauss = serializer('has_gauss', has_gauss)
        gauss = serializer('gauss', gauss)
        self.rng.set_state((kind, numpy.asarray(keys, numpy.uint32), int(pos),
                            int(has_gauss), float(gauss)))


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


# Loss


def two_digit_margin_loss(lengths, labels2, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    """The margin loss (Eq. 4 of the paper) with both digits present.

    ``T_k = 1`` for the two classes of ``labels2``, 0 for the others; summed over
    classes, mean over the batch. With two equal labels the class counts once.

    Args:
        lengths (~chainer.Variable): Capsule lengths ``(B, J)``.
        labels2 (array): Classes of the two digits ``(B, 2)``, int.

    Returns:
        ~chainer.Variable: Scalar loss.
    """
    B, J = lengths.shape
    xp = chainer.backend.get_array_module(labels2)
    present = xp.minimum(one_hot(labels2[:, 0], J, lengths.dtype)
                         + one_hot(labels2[:, 1], J, lengths.dtype), 1)  # (B, J)
    loss = (present * F.relu(m_plus - lengths) ** 2
            + lambda_ * (1 - present) * F.relu(lengths - m_minus) ** 2)
    return F.sum(loss) / B


def reconstruct_both(decode, v, labels2):
    """Reconstructs each digit from the capsules masked by its own label.

    Args:
        decode (callable): ``decode(v, labels) -> (B, C, H, W)``, e.g.
            ``CapsNet.decode``, which masks ``v`` to the capsule of ``labels``.
        v (~chainer.Variable): Digit capsules ``(B, J, D)``.
        labels2 (array): ``(B, 2)``, int32.

    Returns:
        ~chainer.Variable: ``(B, 2, C, H, W)``: the reconstruction of digit ``k`` at
        ``[:, k]``.
    """
    return F.stack([decode(v, labels2[:, k]) for k in range(labels2.shape[1])], axis=1)


def two_digit_reconstruction_loss(x_rec, digits):
    """Sum of squared errors of each reconstruction against its own digit, summed over
    the two digits, mean over the batch (unweighted: the caller weights it, 0.0005).

    Args:
        x_rec (~chainer.Variable): Reconstructions ``(B, 2, C, H, W)``
            (:func:`reconstruct_both`).
        digits (~chainer.Variable or array): The shifted single digits, same shape
            (:class:`PairSampler`'s ``digits``).

    Returns:
        ~chainer.Variable: Scalar loss.
    """
    return F.sum(F.squared_difference(x_rec, digits)) / x_rec.shape[0]


def two_digit_loss(v, labels2, digits=None, decode=None, recon_weight=0.0005,
                   lengths=None):
    """The MultiMNIST training loss: two-digit margin loss plus, with ``decode``, the
    weighted reconstruction loss of both digits.

    Args:
        v (~chainer.Variable): Digit capsules ``(B, J, D)``.
        labels2 (array): ``(B, 2)``, int32.
        digits (array): The single digits ``(B, 2, C, H, W)``; needed with ``decode``.
        decode (callable or None): ``decode(v, labels)``, see :func:`reconstruct_both`.
        recon_weight (float): Weight of the reconstruction loss.
        lengths (~chainer.Variable): ``capsule_length(v)`` ``(B, J)`` where the caller
            has it already (``None``: computed here).

    Returns:
        tuple: ``(loss, parts)``: the scalar loss and a dict for :func:`chainer.report`
        with ``loss/margin`` and, with ``decode``, ``loss/recon`` (weighted).
    """
    if lengths is None:
        lengths = capsule_length(v)
    loss = two_digit_margin_loss(lengths, labels2)
    parts = {'loss/margin': loss}
    if decode is not None:
        if digits is None:
            raise ValueError('digits are needed to compute the reconstruction loss')
        recon = recon_weight * two_digit_reconstruction_loss(
            reconstruct_both(decode, v, labels2), digits)
        parts['loss/recon'] = recon
        loss = loss + recon
    return loss, parts


# Scoring


def top_two(scores):
    """The two highest-scoring classes of each row, highest first ``(B, 2)``.

    Ties are broken towards the lower class index (as a stable sort of ``-scores``).
    Runs on the device of ``scores`` (NumPy or CuPy).
    """
    xp = chainer.backend.get_array_module(scores)
    first = scores.argmax(axis=1)  # (B,): argmax takes the first of equal maxima
    rest = scores.copy()
    rest[xp.arange(len(scores)), first] = -xp.inf
    second = rest.argmax(axis=1)  # (B,)
    return xp.stack([first, second], axis=1)


def pair_hits(scores, labels2):
    """Which of each image's two labels are among its two top classes, ``(B, 2)`` bool.

    On the device of ``scores``; :func:`pair_accuracy` checks and averages it.
    """
    top2 = top_two(scores)  # (B, 2)
    return (top2[:, :, None] == labels2[:, None, :]).any(axis=1)  # (B, 2): label k found


def pair_accuracy(scores, labels2):
    """Fractions of images whose two digits are both, or at least one, recognised.

    The prediction of an image is the set of its two highest-scoring classes (the two
    longest capsules; :func:`top_two`). An image is right when that set equals the set
    of its two labels, and "at least one right" when it contains at least one of them.

    Args:
        scores (array): Class scores ``(B, J)``, e.g. capsule lengths.
        labels2 (array): ``(B, 2)``, ints, the two labels of each row different.

    Returns:
        tuple of floats: ``(both, at_least_one)``, fractions in [0, 1] (0 for B = 0).
    """
    scores = numpy.asarray(metrics.to_cpu(scores))
    labels2 = numpy.asarray(metrics.to_cpu(labels2))
    if scores.ndim != 2 or labels2.shape != (scores.shape[0], 2):
        raise ValueError('scores must be (B, J) and labels2 (B, 2), got {} and {}'.format(
            scores.shape, labels2.shape))
    if (labels2[:, 0] == labels2[:, 1]).any():
        raise ValueError('every row of labels2 needs two different classes')
    if len(scores) == 0:
        return 0.0, 0.0
    hit = pair_hits(scores, labels2)
    return float(hit.all(axis=1).mean()), float(hit.any(axis=1).mean())
