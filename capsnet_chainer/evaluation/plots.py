"""Plots of an analysis: the confusion matrix, the error per epoch of a training log,
and the most confident mistakes beside their reconstructions.

Like :mod:`capsnet_chainer.evaluation.figures`, each takes ``ax=None`` (a new figure)
and returns the :class:`~matplotlib.axes.Axes` it drew into.
"""

import matplotlib.colors
import matplotlib.figure
import matplotlib.ticker
import numpy

from capsnet_chainer.evaluation.figures import DPI
from capsnet_chainer.evaluation.figures import draw_grid
from capsnet_chainer.evaluation.figures import GAP
from capsnet_chainer.evaluation.figures import GIVEN_CMAP
from capsnet_chainer.evaluation.figures import image_tiles
from capsnet_chainer.evaluation.figures import new_axes
from capsnet_chainer.evaluation.figures import RECON_CMAP
from capsnet_chainer.evaluation.metrics import decode
from capsnet_chainer.evaluation.metrics import digit_capsules
from capsnet_chainer.inference import to_cpu


def plot_confusion(matrix, ax=None, class_names=None):
    """The confusion matrix: counts written in the cells, shaded by row fraction.

    Args:
        matrix (array): Counts ``(n_class, n_class)``, rows true, columns predicted.
        ax (~matplotlib.axes.Axes): Where to draw; ``None`` makes a new figure.
        class_names (sequence of str): Name the rows and columns by class (``None``: by
            digit).

    Returns:
        ~matplotlib.axes.Axes: ``ax``; ``ax.images[0]`` holds the row fractions.
    """
    matrix = numpy.asarray(matrix)
    n = len(matrix)
    if ax is None:
        ax = matplotlib.figure.Figure(figsize=(6.4, 5.6), dpi=DPI).add_subplot(1, 1, 1)
    rows = matrix.sum(axis=1, keepdims=True)
    fraction = matrix / numpy.maximum(rows, 1)
    # A square-root scale keeps the rare confusions visible beside a ~99% diagonal.
    image = ax.imshow(fraction, cmap=RECON_CMAP, norm=matplotlib.colors.PowerNorm(
        0.5, vmin=0, vmax=1), interpolation='nearest')
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=8,
                        color='white' if fraction[i, j] > 0.5 else 'black')
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    what = 'digit' if class_names is None else 'class'
    if class_names is not None:
        ax.set_xticklabels(class_names, rotation=90, fontsize=7)
        ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel('predicted ' + what)
    ax.set_ylabel('true ' + what)
    n_total = int(matrix.sum())
    accuracy = numpy.trace(matrix) / n_total if n_total else float('nan')
    ax.set_title('{} test images, accuracy {:.2%}'.format(n_total, accuracy))
    ax.figure.colorbar(image, ax=ax, label='fraction of the true ' + what)
    return ax


#: MNIST test errors to compare a run with, in percent: the paper's Table 1 (3 routing
#: iterations, with reconstruction) and the reference implementation's (500 epochs).
MNIST_ERRORS = (('paper (Table 1)', 0.25), ('reference implementation', 0.34))

#: The accuracies of a ``train.py`` log that :func:`plot_error_curves` draws, with labels.
ERROR_CURVES = (('main/accuracy', 'training (shifted images, mean over the epoch)'),
                ('heldout/main/accuracy', 'held-out training images (--validation)'),
                ('validation/main/accuracy', 'test'))


def error_curves(log):
    """The error per epoch, in percent, of each accuracy of a ``train.py`` log.

    Args:
        log (list of dict): The entries of ``train.py``'s ``OUT/log``.

    Returns:
        dict: ``{key: (epochs, errors)}`` for each key of :data:`ERROR_CURVES` that the
        log has, in that order; ``errors`` is ``100 * (1 - accuracy)``.
    """
    curves = {}
    for key, _ in ERROR_CURVES:
        points = [(entry['epoch'], 100.0 * (1.0 - entry[key]))
                  for entry in log if key in entry]
        if points:
            epochs, errors = zip(*points)
            curves[key] = (numpy.array(epochs), numpy.array(errors))
    return curves


def plot_error_curves(log, kept=None, targets=(), ax=None):
    """The training and test error per epoch of a ``train.py`` log, on a log scale.

    Near 99% accuracy the accuracy curve is flat; the error on a log scale shows the
    last tenths of a percent, and how far a run is from the paper's.

    Args:
        log (list of dict): The entries of ``train.py``'s ``OUT/log``.
        kept (tuple): ``(key, epoch)`` of the model that ``--save`` kept, marked on
            that curve; ``None``: no mark.
        targets: ``(label, error in percent)`` pairs drawn as horizontal lines, e.g.
            :data:`MNIST_ERRORS`.
        ax (~matplotlib.axes.Axes): Where to draw; ``None`` makes a new figure.

    Returns:
        ~matplotlib.axes.Axes: ``ax``. Its ``lines`` are the curves of
        :func:`error_curves` in order, then the mark, then the targets.
    """
    if ax is None:
        ax = matplotlib.figure.Figure(figsize=(7.5, 4.5), dpi=DPI).add_subplot(1, 1, 1)
    labels = dict(ERROR_CURVES)
    curves = error_curves(log)
    for key, (epochs, errors) in curves.items():
        ax.plot(epochs, errors, label=labels[key], linewidth=1,
                linestyle='--' if key == 'main/accuracy' else '-')
    if kept is not None and kept[0] in curves:
        epochs, errors = curves[kept[0]]
        hit = numpy.flatnonzero(epochs == kept[1])
        if len(hit):
            error = errors[hit[0]]
            ax.plot([kept[1]], [error], 'o', color='black',
                    label='the kept model: epoch {}, {:.2f}%'.format(kept[1], error))
    for (label, error), color in zip(targets, ('tab:red', 'tab:purple', 'tab:brown')):
        ax.axhline(error, color=color, linestyle=':', linewidth=1.5,
                   label='{}: {:.2f}%'.format(label, error))
    ax.set_yscale('log')
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    ax.set_xlabel('epoch')
    ax.set_ylabel('error (%)')
    ax.grid(True, which='both', alpha=0.4)
    if ax.lines:
        ax.legend(fontsize='small')
    return ax


def misclassified_tiles(model, x, t, scores, index):
    """Tiles of misclassified examples: input, recon as predicted, recon as true.

    Args:
        model (~capsnet_chainer.CapsNet): The network.
        x (array): Images ``(B, C, H, W)``; t (array): labels ``(B,)``;
        scores (array): ``(B, n_class)``.
        index (array): The examples to show, e.g. :func:`most_confident_errors`.

    Returns:
        numpy.ndarray: ``(3, K, H, W)`` (``(3, K, H, W, 3)`` in colour): the inputs, their
        reconstructions masked with the predicted digit, then masked with the true digit.
    """
    index = numpy.asarray(index, numpy.int64)
    xs = numpy.asarray(to_cpu(x))[index]
    ts = numpy.asarray(to_cpu(t))[index]
    pred = numpy.asarray(scores)[index].argmax(axis=1)
    v = digit_capsules(model, xs)
    return numpy.stack((image_tiles(xs), decode(model, v, pred), decode(model, v, ts)))


def plot_misclassified(model, x, t, scores, index, ax=None, reconstructions=True,
                       class_names=None):
    """The given misclassified examples beside their two reconstructions.

    Columns are examples; rows: the input (green), the reconstruction as the predicted
    digit, then as the true digit (blue). Each column is titled with the true digit,
    the prediction and its score (capsule length; a logit for the baseline CNN).

    Args:
        reconstructions (bool): Draw the two reconstruction rows; ``False`` (a network
            without a decoder) draws the inputs alone. ``model`` is then not used.
        class_names (sequence of str): Name the classes in the titles (``None``: by
            number).

    Returns:
        ~matplotlib.axes.Axes: ``ax``.
    """
    index = numpy.asarray(index, numpy.int64)
    title_inches = 0.45
    n_row = 3 if reconstructions else 1
    if ax is None:
        ax = new_axes(n_row, max(len(index), 4), extra_top=title_inches)
    if len(index) == 0:
        ax.set_axis_off()
        ax.text(0.5, 0.5, 'no misclassified test images', ha='center', va='center',
                transform=ax.transAxes)
        return ax
    if reconstructions:
        tiles = misclassified_tiles(model, x, t, scores, index)
    else:
        tiles = image_tiles(numpy.asarray(to_cpu(x))[index])[None]  # (1, K, H, W)
    draw_grid(tiles, [GIVEN_CMAP, RECON_CMAP, RECON_CMAP][:n_row], ax=ax)
    t = numpy.asarray(to_cpu(t))
    scores = numpy.asarray(scores)
    W = tiles.shape[3]
    name = (lambda k: k) if class_names is None else (lambda k: class_names[k])
    for c, i in enumerate(index):
        pred = int(scores[i].argmax())
        ax.text(c * (W + GAP) + W / 2, -GAP, 'true {}\npred {}\n{:.2f}'.format(
            name(int(t[i])), name(pred), scores[i, pred]), ha='center', va='bottom',
            fontsize=7, clip_on=False)
    return ax
