"""Figures of a CapsNet trained on MultiMNIST, as the paper's Figure 5.

Each example is a column of three tiles: the input (grey), then the reconstructions of
its two digits overlaid in two colours, red for the first and green for the second
(overlap shows yellow):

* ``L``: each digit reconstructed from the capsule of its true label (the training
  mask; red the first label, green the second);
* ``R``: from the two longest capsules, the network's own reading of the image (red
  the longest, green the second longest).

The column's title gives the labels (``L``) and the prediction (``R``). As in
:mod:`capsnet_chainer.evaluation.figures`, the computation (:func:`pair_tiles`, NumPy arrays that
tests check) is apart from the drawing (:func:`plot_pairs`).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017, Sec. 6,
   Fig. 5.
"""

import numpy

from capsnet_chainer.evaluation.figures import GAP
from capsnet_chainer.evaluation.figures import new_axes
from capsnet_chainer.evaluation.metrics import decode
from capsnet_chainer.evaluation.metrics import digit_capsules
from capsnet_chainer.functions import top_two
from capsnet_chainer.inference import to_cpu

#: Channels (RGB) of the first and second digit of a pair.
COLOURS = (0, 1)


def overlay_rgb(first, second):
    """Two grey images ``(..., H, W)`` as one RGB image ``(..., H, W, 3)``: ``first`` in
    red, ``second`` in green, clipped to [0, 1]."""
    rgb = numpy.zeros(first.shape + (3,), numpy.float32)
    rgb[..., COLOURS[0]] = first
    rgb[..., COLOURS[1]] = second
    return numpy.clip(rgb, 0, 1)


def pair_tiles(model, x, t2):
    """The tiles of Figure 5 for images ``x`` with labels ``t2``.

    Args:
        model (~capsnet_chainer.CapsNet): The network.
        x (array): Images ``(K, 1, H, W)``.
        t2 (array): Their two labels ``(K, 2)``.

    Returns:
        tuple: ``(tiles, pred)``: RGB tiles ``(3, K, H, W, 3)`` (rows: the input, the
        ``L`` and the ``R`` reconstructions) and the two longest capsules ``(K, 2)``,
        the longest first.
    """
    x = numpy.asarray(to_cpu(x))
    t2 = numpy.asarray(to_cpu(t2)).astype(numpy.int32)
    v = digit_capsules(model, x)  # (K, J, D)
    pred = top_two(numpy.sqrt((v * v).sum(axis=2))).astype(numpy.int32)  # (K, 2)
    grey = x[:, 0]  # (K, H, W)
    rows = [numpy.repeat(grey[..., None], 3, axis=-1)]
    for labels in (t2, pred):
        rec = [decode(model, v, labels[:, k]) for k in range(2)]  # 2 x (K, H, W)
        rows.append(overlay_rgb(*rec))
    return numpy.stack(rows), pred


def plot_pairs(model, x, t2, ax=None, title=None):
    """Draws :func:`pair_tiles`: one column per example, titled ``L a,b`` / ``R c,d``.

    Returns:
        ~matplotlib.axes.Axes: ``ax``; ``ax.images[r * K + c]`` is tile ``[r, c]``.
    """
    title_inches = 0.45 + (0.3 if title else 0)
    K = len(x)
    if ax is None:
        ax = new_axes(3, max(K, 4), extra_top=title_inches)
    if K == 0:
        ax.set_axis_off()
        ax.text(0.5, 0.5, title or 'no examples', ha='center', va='center',
                transform=ax.transAxes)
        return ax
    tiles, pred = pair_tiles(model, x, t2)
    t2 = numpy.asarray(to_cpu(t2))
    R, C, H, W = tiles.shape[:4]
    for r in range(R):
        for c in range(C):
            x0, y0 = c * (W + GAP), r * (H + GAP)
            ax.imshow(tiles[r, c], interpolation='nearest', extent=(x0, x0 + W, y0 + H, y0))
    for c in range(C):
        ax.text(c * (W + GAP) + W / 2, -GAP, 'L {},{}\nR {},{}'.format(
            *t2[c], *pred[c]), ha='center', va='bottom', fontsize=7, clip_on=False)
    ax.set_xlim(-GAP / 2, max(C, 4) * (W + GAP) - GAP / 2)
    ax.set_ylim(R * (H + GAP) - GAP / 2, -GAP / 2)
    ax.set_aspect('equal')
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8, pad=28)
    return ax
