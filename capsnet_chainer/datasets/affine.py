"""The stand-in for affNIST: the MNIST test digits under random affine transformations,
for the affNIST experiment (Sec. 5.2 of Sabour et al. [#]_) where the official files
are absent.

Each image is a test digit under a random affine transformation drawn from the ranges
below, then translated so that the whole digit stays on the canvas. The ranges are
meant to be affNIST's, as its page describes its transformations (docs/affnist.md says
how they were checked; the shear is uncertain):

* rotation within :data:`MAX_ROTATION` (20) degrees;
* shear within :data:`MAX_SHEAR` (0.2: the horizontal coordinate gains up to 0.2 x the
  vertical one);
* vertical and horizontal scale factors, each in :data:`SCALE_RANGE` (0.8 to 1.2);
* a translation that keeps the digit inside the 40x40 image.

Every parameter is drawn uniformly and independently. The stand-in is *not* affNIST:
its transformations are drawn anew, its interpolation is our own, and its figures are
not comparable with the paper's 79%. Its key and title
(:data:`~capsnet_chainer.datasets.affnist.STANDIN_TITLE`) say so.

Shapes: ``N`` examples, ``S`` canvas side (40); digits are ``(N, 28, 28)`` or
``(N, 1, 28, 28)``; canvases ``(N, 1, S, S)`` float32 in [0, 1].

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import collections
import operator

import numpy

from capsnet_chainer.datasets.arrays import as_images
from capsnet_chainer.datasets.placement import CANVAS

#: Where affNIST is published.
AFFNIST_URL = 'https://www.cs.toronto.edu/~tijmen/affNIST/'
#: Largest rotation of the stand-in, degrees (affNIST's 20; docs/affnist.md gives the sources).
MAX_ROTATION = 20.0
#: Largest shear factor of the stand-in: 0.2, about 11 degrees. The one uncertain range:
#: docs/affnist.md says why 0.2, and not the 45 degrees that one source gives.
MAX_SHEAR = 0.2
#: Range of each of the vertical and horizontal scale factors (affNIST's 0.8 to 1.2).
SCALE_RANGE = (0.8, 1.2)
#: The stand-in's ranges, to record beside its results.
STANDIN_RANGES = collections.OrderedDict([
    ('rotation_degrees', [-MAX_ROTATION, MAX_ROTATION]),
    ('shear', [-MAX_SHEAR, MAX_SHEAR]),
    ('scale_y', list(SCALE_RANGE)),
    ('scale_x', list(SCALE_RANGE)),
    ('translation', 'uniform over the positions that keep the whole digit on the canvas'),
    ('source', AFFNIST_URL),
])


def affine_matrices(rotation, shear, scale_y, scale_x):
    """The linear parts of the stand-in's transformations, in ``(row, column)``
    coordinates: scale, then shear, then rotate.

    ``A = R(rotation) @ [[1, 0], [shear, 1]] @ diag(scale_y, scale_x)``. A positive
    rotation turns the image counter-clockwise as displayed (rows down): 90 degrees is
    :func:`numpy.rot90`. A positive shear moves lower rows to the right.

    Args:
        rotation (array): Degrees, ``(n,)``.
        shear, scale_y, scale_x (array): ``(n,)``.

    Returns:
        numpy.ndarray: ``(n, 2, 2)`` float64, mapping ``(dy, dx)`` about the digit's
        centre to ``(dy, dx)`` about the canvas centre.
    """
    theta = numpy.deg2rad(numpy.asarray(rotation, numpy.float64))
    c, s = numpy.cos(theta), numpy.sin(theta)
    R = numpy.stack([numpy.stack([c, -s], -1), numpy.stack([s, c], -1)], -2)
    shear = numpy.asarray(shear, numpy.float64)
    H = numpy.zeros(shear.shape + (2, 2))
    H[..., 0, 0] = H[..., 1, 1] = 1
    H[..., 1, 0] = shear
    S = numpy.zeros(shear.shape + (2, 2))
    S[..., 0, 0] = scale_y
    S[..., 1, 1] = scale_x
    return R @ H @ S


def warp(images, matrices, translations, size=CANVAS, chunk=1024):
    """Affine warp of digits onto a ``size`` x ``size`` zero canvas, bilinear.

    Output pixel ``p`` (row, column) takes the digit at
    ``A^-1 (p - c_out - t) + c_in``, with ``c_in`` and ``c_out`` the centres of the digit
    and of the canvas (``(H - 1) / 2``, ``(size - 1) / 2``), interpolated bilinearly
    with zero outside the digit. With ``A = I`` the digit lands centred as in
    :func:`~capsnet_chainer.datasets.placement.expand`; an integer ``t`` moves it by
    whole pixels, exactly.

    Args:
        images (numpy.ndarray): Digits ``(N, H, W)`` or ``(N, 1, H, W)``.
        matrices (numpy.ndarray): ``(N, 2, 2)``, invertible (:func:`affine_matrices`).
        translations (numpy.ndarray): ``(N, 2)``, ``(t_row, t_col)`` in pixels.
        size (int): Canvas side.
        chunk (int): Images computed at once (memory: about ``chunk * size**2 * 100``
            bytes).

    Returns:
        numpy.ndarray: ``(N, 1, size, size)`` float32.
    """
    x = as_images(images)[:, 0].astype(numpy.float64)
    N, H, W = x.shape
    inv = numpy.linalg.inv(numpy.asarray(matrices, numpy.float64).reshape(N, 2, 2))
    t = numpy.asarray(translations, numpy.float64).reshape(N, 2)
    c_in = numpy.array([(H - 1) / 2, (W - 1) / 2])
    c_out = (size - 1) / 2
    grid = numpy.stack(numpy.meshgrid(numpy.arange(size), numpy.arange(size),
                                      indexing='ij'), -1).reshape(-1, 2)  # (P, 2)
    # Zero border: 1 before, 2 after, so that the clipped coordinates below (in
    # [-1, H] and [-1, W]) and their +1 neighbours all index zeros outside the digit.
    padded = numpy.zeros((N, H + 3, W + 3))
    padded[:, 1:H + 1, 1:W + 1] = x
    out = numpy.empty((N, size * size), numpy.float32)
    for i in range(0, N, chunk):
        j = min(i + chunk, N)
        d = grid[None] - c_out - t[i:j, None, :]  # (n, P, 2)
        src = numpy.einsum('nab,npb->npa', inv[i:j], d) + c_in
        sy = numpy.clip(src[..., 0], -1, H)
        sx = numpy.clip(src[..., 1], -1, W)
        y0, x0 = numpy.floor(sy), numpy.floor(sx)
        wy, wx = sy - y0, sx - x0
        y0 = y0.astype(numpy.int64) + 1
        x0 = x0.astype(numpy.int64) + 1
        n = numpy.arange(j - i)[:, None]
        img = padded[i:j]
        out[i:j] = ((1 - wy) * ((1 - wx) * img[n, y0, x0] + wx * img[n, y0, x0 + 1])
                    + wy * ((1 - wx) * img[n, y0 + 1, x0] + wx * img[n, y0 + 1, x0 + 1]))
    return out.reshape(N, 1, size, size)


def support_extent(images, matrices):
    """Where the warped ink can be non-zero, relative to the canvas centre, before
    translation.

    A bilinear sample is non-zero only inside the open box that extends the digit's ink
    by one pixel on every side; this returns the bounding box of that box's image under
    each matrix. A digit without ink uses its whole frame.

    Returns:
        tuple: ``lo`` and ``hi``, ``(N, 2)`` float64 (row, column).
    """
    x = as_images(images)[:, 0]
    N, H, W = x.shape
    ink = x > 0
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (N, H), (N, W)
    blank = ~rows.any(axis=1)
    r0 = numpy.where(blank, 0, rows.argmax(axis=1))
    r1 = numpy.where(blank, H - 1, H - 1 - rows[:, ::-1].argmax(axis=1))
    c0 = numpy.where(blank, 0, cols.argmax(axis=1))
    c1 = numpy.where(blank, W - 1, W - 1 - cols[:, ::-1].argmax(axis=1))
    cy, cx = (H - 1) / 2, (W - 1) / 2
    corners = numpy.stack([numpy.stack([r - cy, c - cx], -1)
                           for r in (r0 - 1, r1 + 1) for c in (c0 - 1, c1 + 1)], 1)  # (N,4,2)
    mapped = numpy.einsum('nab,nkb->nka', numpy.asarray(matrices, numpy.float64), corners)
    return mapped.min(axis=1), mapped.max(axis=1)


def draw_affine_params(rng, images, size=CANVAS):
    """Draws one stand-in transformation for each digit.

    Uses ``rng`` twice: one ``uniform`` of shape ``(N, 4)`` for rotation, shear and the
    two scales, then one of shape ``(N, 2)`` for the translation, uniform over the
    interval that keeps the digit's non-zero pixels on the canvas (see
    :func:`support_extent`); where no translation can (a digit too large for the
    canvas), the digit is centred and its edges are cut.

    Returns:
        dict: ``rotation``, ``shear``, ``scale_y``, ``scale_x`` ``(N,)``,
        ``translation`` ``(N, 2)``, float64, and ``cut`` ``(N,)`` bool.
    """
    images = as_images(images)
    N = len(images)
    u = rng.uniform(size=(N, 4))
    params = {
        'rotation': MAX_ROTATION * (2 * u[:, 0] - 1),
        'shear': MAX_SHEAR * (2 * u[:, 1] - 1),
        'scale_y': SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 2],
        'scale_x': SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 3],
    }
    A = affine_matrices(params['rotation'], params['shear'], params['scale_y'],
                        params['scale_x'])
    lo, hi = support_extent(images, A)
    c = (size - 1) / 2
    # Pixel centres 0 .. size-1 must hold every non-zero sample: the open support
    # (c + lo + t, c + hi + t) must lie within [-1, size].
    low, high = -1 - c - lo, size - c - hi
    cut = (low > high).any(axis=1)
    v = rng.uniform(size=(N, 2))
    params['translation'] = numpy.where(low <= high, low + (high - low) * v,
                                        (low + high) / 2)
    params['cut'] = cut
    return params


def make_affine_test_set(images, labels, n=None, seed=0, size=CANVAS):
    """The stand-in for affNIST: a fixed affine-transformed MNIST test set on the
    ``size`` x ``size`` canvas, regenerated bit for bit from ``seed``.

    Example ``k`` is digit ``k % N`` under its own transformation
    (:func:`draw_affine_params`, from a :class:`numpy.random.RandomState` seeded with
    ``seed``; :func:`warp`). RandomState keeps its stream across NumPy versions, so the
    parameters depend only on the digits, ``n``, ``seed`` and ``size``; the pixels also
    on the floating-point arithmetic (identical on one platform). Title it
    :data:`STANDIN_TITLE`: it is not affNIST.

    Args:
        images (numpy.ndarray): Test digits ``(N, 28, 28)`` or ``(N, 1, 28, 28)``,
            float32 in [0, 1].
        labels (numpy.ndarray): Their classes ``(N,)``.
        n (int): Number of examples (``None``: ``N``, one transformation per digit).
        seed (int): Seed.
        size (int): Canvas side.

    Returns:
        tuple: ``x`` ``(n, 1, size, size)`` float32, ``t`` ``(n,)`` int32 and
        ``params`` (:func:`draw_affine_params`'s dict, plus ``source`` ``(n,)``, the
        index of each example's digit).
    """
    images = as_images(images)
    labels = numpy.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError('labels must be ({},), got shape {}'.format(
            len(images), labels.shape))
    n = len(images) if n is None else operator.index(n)
    if n < 0 or (n and not len(images)):
        raise ValueError('n must be >= 0 (and the digits not empty), got {}'.format(n))
    source = numpy.arange(n) % max(len(images), 1)
    digits = images[source]
    params = draw_affine_params(numpy.random.RandomState(seed), digits, size)
    A = affine_matrices(params['rotation'], params['shear'], params['scale_y'],
                        params['scale_x'])
    x = warp(digits, A, params['translation'], size)
    params['source'] = source
    return x, labels[source].astype(numpy.int32), params
