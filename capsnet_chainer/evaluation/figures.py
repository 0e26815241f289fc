"""Figures of a trained CapsNet's capsules: reconstructions, masking, perturbations.

Each figure is made in two steps. A *computation* function returns the tiles as a NumPy
array ``(rows, cols, H, W)`` (row-major, one 28x28 grey-level image per tile; ``(rows,
cols, H, W, 3)`` for colour images), so that tests can check the content. :func:`draw_grid`
then draws them into one :class:`~matplotlib.axes.Axes`, one
:class:`~matplotlib.image.AxesImage` per tile, in row-major order, with grey levels 0..1,
axes off and tight spacing. Given images (and the unperturbed row of a perturbation
figure) use :data:`GIVEN_CMAP` (green), reconstructions :data:`RECON_CMAP` (blue); colour
images are drawn in their own colours. With ``class_names`` (a data set whose classes are
not the digits 0..9), the figures name the class of each column, row or figure.

The drawing uses :class:`matplotlib.figure.Figure` directly, never :mod:`matplotlib.pyplot`,
so nothing here needs a display or leaves figures open.

Every model evaluation goes through :func:`capsnet_chainer.inference.batched` (test mode,
in batches, on the model's device; results come back as NumPy arrays). The other
figures of an analysis (confusion, error curves, mistakes) are
:mod:`capsnet_chainer.evaluation.plots`.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017, Sec. 5.1
   (Fig. 3, reconstructions) and Fig. 4 (dimension perturbations).
"""

import io
import os

import matplotlib.figure
import matplotlib.patches
import numpy

from capsnet_chainer.evaluation.metrics import decode
from capsnet_chainer.evaluation.metrics import digit_capsules
from capsnet_chainer.evaluation.metrics import image_tiles
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.inference import to_cpu

#: Colour map of given images and of the unperturbed row.
GIVEN_CMAP = 'Greens'
#: Colour map of reconstructions.
RECON_CMAP = 'Blues'
#: The reference's perturbations: -0.30 .. 0.30 in steps of 0.075 (9 rows).
REFERENCE_STEPS = numpy.arange(-4, 5) * 0.075
#: The paper's Fig. 4: -0.25 .. 0.25 in steps of 0.05 (11 steps).
PAPER_STEPS = numpy.arange(-5, 6) * 0.05
#: ``--perturbation`` choices: the steps, and whether each row is a step (the
#: reference) or a capsule dimension (the paper's Fig. 4).
PERTURBATIONS = {'reference': (REFERENCE_STEPS, 'steps'), 'paper': (PAPER_STEPS, 'dims')}

#: Gap between tiles, in pixels.
GAP = 2
#: The frame of a colour tile that a grey one would draw in :data:`GIVEN_CMAP`.
FRAME_COLOUR = 'tab:green'
#: Size of one 28-pixel tile in the saved PNG, in inches (at :data:`DPI`).
TILE_INCHES = 0.5
DPI = 100


# Computation


def select_samples(labels, per_class=2, n_class=10):
    """The first ``per_class`` examples of each class, in dataset order.

    Args:
        labels (array): Labels ``(B,)``, e.g. of the test set.
        per_class (int): Examples to keep per class.
        n_class (int): Classes.

    Returns:
        numpy.ndarray: Indices ``(n_class * per_class,)``, int64, ordered
        ``0, 0, 1, 1, ..., 9, 9`` for ``per_class=2``. A class with fewer than
        ``per_class`` examples contributes what it has.
    """
    labels = numpy.asarray(to_cpu(labels))
    index = [numpy.flatnonzero(labels == k)[:per_class] for k in range(n_class)]
    return numpy.concatenate(index).astype(numpy.int64)


def reconstructions(model, x, t):
    """Inputs and their reconstructions masked with the true digit (``vis.png``).

    Args:
        model (~capsnet_chainer.CapsNet): The network.
        x (array): Images ``(B, C, H, W)``.
        t (array): Their labels ``(B,)``.

    Returns:
        numpy.ndarray: Tiles ``(2, B, H, W)`` (``(2, B, H, W, 3)`` in colour): row 0 the
        inputs, row 1 the reconstructions.
    """
    recon = decode(model, digit_capsules(model, x), t)
    return numpy.stack((image_tiles(x), recon))


def masking_grid(model, x):
    """Each input reconstructed as every digit (``vis_all.png``).

    Args:
        model (~capsnet_chainer.CapsNet): The network.
        x (array): Images ``(B, 1, H, W)``.

    Returns:
        numpy.ndarray: Tiles ``(J + 1, B, H, W)``: row 0 the inputs, row ``i + 1``
        every input decoded with the mask forced to digit ``i``.
    """
    v = digit_capsules(model, x)
    N, n_class = v.shape[:2]
    rows = [image_tiles(x)]
    for i in range(n_class):
        rows.append(decode(model, v, numpy.full(N, i, numpy.int32)))
    return numpy.stack(rows)


def perturbation_grid(model, x1, t1, steps=REFERENCE_STEPS):
    """Reconstructions of one image with each capsule dimension tweaked (Fig. 4).

    Args:
        model (~capsnet_chainer.CapsNet): The network.
        x1 (array): One image ``(1, H, W)`` (or ``(1, 1, H, W)``).
        t1 (int): Its label: the capsule that is tweaked and kept by the mask.
        steps (sequence of floats): What to add, one per row.

    Returns:
        numpy.ndarray: Tiles ``(len(steps), D, H, W)``: tile ``[r, d]`` decodes the
        image's capsules with ``steps[r]`` added to dimension ``d`` of digit ``t1``.
    """
    x1 = numpy.asarray(to_cpu(x1))
    x1 = x1.reshape((1,) * (4 - x1.ndim) + x1.shape)
    t1 = int(t1)
    steps = numpy.asarray(steps, numpy.float32)
    v = digit_capsules(model, x1)  # (1, J, D)
    D = v.shape[2]
    v = numpy.repeat(v, len(steps) * D, axis=0).reshape((len(steps), D) + v.shape[1:])
    v[:, numpy.arange(D), t1, numpy.arange(D)] += steps[:, None]  # (R, D, J, D)
    tiles = decode(model, v.reshape((-1,) + v.shape[2:]),
                   numpy.full(len(steps) * D, t1, numpy.int32))
    return tiles.reshape((len(steps), D) + tiles.shape[1:])


# Drawing


def new_axes(n_row, n_col, tile_inches=TILE_INCHES, extra_top=0.0, extra_left=0.0):
    """A new :class:`~matplotlib.figure.Figure` sized for a grid, and its one Axes, with
    ``extra_top`` and ``extra_left`` inches for labels."""
    width = n_col * tile_inches + extra_left
    fig = matplotlib.figure.Figure(
        figsize=(width, n_row * tile_inches + extra_top), dpi=DPI)
    top = n_row * tile_inches / (n_row * tile_inches + extra_top)
    if not extra_left:
        return fig.add_axes((0, 0, 1, top))
    return fig.add_axes((extra_left / width, 0, 1 - extra_left / width, top))


#: Inches for a row of column labels, for row labels, and for a title.
LABEL_INCHES, ROW_LABEL_INCHES, TITLE_INCHES = 0.3, 0.9, 0.3


def labelled_axes(n_row, n_col, columns=False, rows=False, title=False):
    """:func:`new_axes` with room for column labels, row labels and a title."""
    return new_axes(n_row, n_col, extra_top=LABEL_INCHES * columns + TITLE_INCHES * title,
                    extra_left=ROW_LABEL_INCHES * rows)


def label_grid(ax, shape, columns=None, rows=None, title=None, gap=GAP):
    """Names the columns (above them), the rows (left of them) and the figure of a grid
    that :func:`draw_grid` drew with tiles of ``shape`` ``(R, C, H, W, ...)``."""
    H, W = shape[2:4]
    for c, label in enumerate(columns or ()):
        ax.text(c * (W + gap) + W / 2, -gap, label, ha='center', va='bottom', fontsize=6,
                clip_on=False)
    for r, label in enumerate(rows or ()):
        ax.text(-gap, r * (H + gap) + H / 2, label, ha='right', va='center', fontsize=6,
                clip_on=False)
    if title:
        ax.figure.suptitle(title, fontsize=8, y=0.995, va='top')
    return ax


def _cmap_grid(cmaps, n_row, n_col):
    """Colour-map names ``(n_row, n_col)`` from one name, one per row, or a 2-D grid."""
    a = numpy.asarray(cmaps, dtype=object)
    if a.ndim == 1:
        if len(a) != n_row:
            raise ValueError('{} colour maps for {} rows'.format(len(a), n_row))
        a = a[:, None]
    return numpy.broadcast_to(a, (n_row, n_col))


def draw_grid(tiles, cmaps, ax=None, gap=GAP):
    """Draws tiles as a grid, one image per tile, grey levels 0..1, axes off.

    Args:
        tiles (array): ``(rows, cols, H, W)``, or ``(rows, cols, H, W, 3)`` for colour
            images (drawn in their colours, clipped to 0..1; the tiles whose colour map
            is :data:`GIVEN_CMAP`, the inputs and the unperturbed reconstructions, are
            framed in its green instead).
        cmaps (str or sequence): One colour-map name for all tiles, one per row
            (length ``R``), or a 2-D ``(R, C)`` grid (``(1, C)`` gives one per column).
        ax (~matplotlib.axes.Axes): Where to draw; ``None`` makes a new figure.
        gap (int): Pixels between tiles.

    Returns:
        ~matplotlib.axes.Axes: ``ax``. ``ax.images[r * C + c]`` is tile ``[r, c]``;
        its extent is ``(c * (W + gap), c * (W + gap) + W, r * (H + gap) + H,
        r * (H + gap))``.
    """
    tiles = numpy.asarray(tiles)
    R, C, H, W = tiles.shape[:4]
    names = _cmap_grid(cmaps, R, C)
    if ax is None:
        ax = new_axes(R, C)
    norm = matplotlib.colors.Normalize(vmin=0, vmax=1)
    colour = tiles.ndim == 5
    for r in range(R):
        for c in range(C):
            x0, y0 = c * (W + gap), r * (H + gap)
            extent = (x0, x0 + W, y0 + H, y0)
            if colour:
                ax.imshow(numpy.clip(tiles[r, c], 0, 1), interpolation='nearest',
                          extent=extent)
                if names[r, c] == GIVEN_CMAP:  # what grey tiles tell by their colour map
                    ax.add_patch(matplotlib.patches.Rectangle(
                        (x0 - gap / 2, y0 - gap / 2), W + gap, H + gap, fill=False,
                        edgecolor=FRAME_COLOUR, linewidth=1.5))
            else:
                ax.imshow(tiles[r, c], cmap=names[r, c], norm=norm, interpolation='nearest',
                          extent=extent)
    ax.set_xlim(-gap / 2, C * (W + gap) - gap / 2)
    ax.set_ylim(R * (H + gap) - gap / 2, -gap / 2)
    ax.set_aspect('equal')
    ax.set_axis_off()
    return ax


def plot_reconstructions(model, x, t, ax=None, class_names=None):
    """``vis.png``: the inputs (green), then their true-mask reconstructions (blue); with
    ``class_names``, each column named by its class."""
    tiles = reconstructions(model, x, t)
    if class_names is not None and ax is None:
        ax = labelled_axes(*tiles.shape[:2], columns=True)
    ax = draw_grid(tiles, [GIVEN_CMAP, RECON_CMAP], ax=ax)
    if class_names is not None:
        label_grid(ax, tiles.shape, columns=[class_names[k] for k in numpy.asarray(t)])
    return ax


def masking_cmaps(n_class=10):
    """Row colour maps of the masking grid: inputs green, then ``n_class`` blue rows."""
    return [GIVEN_CMAP] + [RECON_CMAP] * n_class


def plot_masking_grid(model, x, ax=None, class_names=None, t=None):
    """``vis_all.png``: inputs, then one row per forced digit (:func:`masking_grid`); with
    ``class_names``, each row named by the class it is decoded as (and each column by
    its label ``t``)."""
    tiles = masking_grid(model, x)
    if class_names is not None and ax is None:
        ax = labelled_axes(*tiles.shape[:2], columns=t is not None, rows=True)
    ax = draw_grid(tiles, masking_cmaps(model.config['n_class']), ax=ax)
    if class_names is not None:
        label_grid(ax, tiles.shape, None if t is None else [class_names[k] for k in t],
                   ['input'] + ['as ' + name for name in class_names])
    return ax


def perturbation_cmaps(steps):
    """One colour map per step: green where the step is 0 (unperturbed), else blue."""
    return [GIVEN_CMAP if s == 0 else RECON_CMAP for s in numpy.asarray(steps)]


def perturbation_tiles(tiles, steps, layout='steps'):
    """Arranges :func:`perturbation_grid` output for drawing.

    Args:
        tiles (array): ``(n_step, D, H, W)``.
        steps (sequence): The steps.
        layout (str): ``'steps'`` (the reference): one row per step, one column per
            dimension. ``'dims'`` (the paper's Fig. 4): one row per dimension, one
            column per step.

    Returns:
        tuple: ``(tiles, cmaps)`` for :func:`draw_grid`.
    """
    cmaps = perturbation_cmaps(steps)
    if layout == 'steps':
        return tiles, cmaps
    if layout == 'dims':
        return numpy.swapaxes(tiles, 0, 1), [cmaps]
    raise ValueError('layout must be steps or dims, got {!r}'.format(layout))


def plot_perturbation(model, x1, t1, steps=REFERENCE_STEPS, layout='steps', ax=None,
                      class_names=None):
    """``vis_tweakedK.png``: one image's capsule dimensions tweaked (unperturbed green);
    with ``class_names``, titled with the class."""
    tiles, cmaps = perturbation_tiles(perturbation_grid(model, x1, t1, steps), steps,
                                      layout)
    if class_names is not None and ax is None:
        ax = labelled_axes(*tiles.shape[:2], title=True)
    ax = draw_grid(tiles, cmaps, ax=ax)
    if class_names is not None:
        label_grid(ax, tiles.shape, title='capsule {} ({}): each dimension tweaked'.format(
            int(t1), class_names[int(t1)]))
    return ax


def save_figure(ax_or_fig, path):
    """Writes a figure as PNG, atomically, and releases it.

    Args:
        ax_or_fig: A :class:`~matplotlib.axes.Axes` or :class:`~matplotlib.figure.Figure`.
        path (str): Destination file.
    """
    fig = getattr(ax_or_fig, 'figure', ax_or_fig)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=DPI)
    write_atomic(path, lambda f: f.write(buf.getvalue()))
    fig.clear()


def write_sample_figures(model, x, t, out, steps=REFERENCE_STEPS, layout='steps',
                         class_names=None):
    """Writes ``vis.png``, ``vis_all.png`` and ``vis_tweaked0.png`` ..

    Args:
        model (~capsnet_chainer.CapsNet): The network.
        x (array): The samples ``(B, C, H, W)``, e.g. :func:`select_samples` of the
            test set.
        t (array): Their labels.
        out (str): Folder to write into (made if missing).
        steps, layout: See :func:`perturbation_tiles`.
        class_names (sequence of str): Name the classes in the figures (``None``: the
            digits' figures, unlabelled).

    Returns:
        list of str: The paths written. The perturbation figures use the first sample
        of each digit present.
    """
    os.makedirs(out, exist_ok=True)
    t = numpy.asarray(to_cpu(t))
    paths = []
    path = os.path.join(out, 'vis.png')
    save_figure(plot_reconstructions(model, x, t, class_names=class_names), path)
    paths.append(path)
    path = os.path.join(out, 'vis_all.png')
    save_figure(plot_masking_grid(model, x, class_names=class_names, t=t), path)
    paths.append(path)
    for k in range(model.config['n_class']):
        first = numpy.flatnonzero(t == k)
        if not len(first):
            continue
        path = os.path.join(out, 'vis_tweaked{}.png'.format(k))
        save_figure(plot_perturbation(model, x[first[0]], k, steps, layout,
                                      class_names=class_names), path)
        paths.append(path)
    return paths
