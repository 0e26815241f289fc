"""``routing.png``: the routing statistics of
:func:`capsnet_chainer.evaluation.routing_diagnostics.diagnose` as a figure (the entropy of the
couplings, the largest coupling per primary capsule, the top share and the class maps on
the primary capsules' grid), drawn on :class:`matplotlib.figure.Figure` as
:mod:`capsnet_chainer.evaluation.figures` draws.
"""

import math

import matplotlib.figure
import numpy

from capsnet_chainer.evaluation.routing_diagnostics import TYPES_PER_ROW


def type_grid(maps, types_per_row=TYPES_PER_ROW, gap=1):
    """Lays maps ``(..., T, rows, cols)`` out as images ``(..., H, W)``: the types in
    rows of ``types_per_row`` tiles, NaN between tiles."""
    maps = numpy.asarray(maps, numpy.float64)
    T, rows, cols = maps.shape[-3:]
    per_row = min(T, types_per_row)
    n_rows = -(-T // per_row)
    H, W = n_rows * (rows + gap) - gap, per_row * (cols + gap) - gap
    out = numpy.full(maps.shape[:-3] + (H, W), numpy.nan)
    for k in range(T):
        r, c = divmod(k, per_row)
        out[..., r * (rows + gap):r * (rows + gap) + rows,
            c * (cols + gap):c * (cols + gap) + cols] = maps[..., k, :, :]
    return out


def plot_entropy(stats, ax):
    """The mean entropy of the couplings per iteration, and the uniform's."""
    e = stats['entropy']
    R = len(e['mean_per_iteration'])
    ax.plot(range(1, R + 1), e['mean_per_iteration'], 'o-', label='mean over capsules')
    ax.axhline(e['uniform'], color='grey', ls='--', label='uniform, ln {}'.format(
        round(math.exp(e['uniform']))))
    ax.set_xticks(range(1, R + 1))
    ax.set_xlabel('routing iteration')
    ax.set_ylabel('entropy of c_i (nats)')
    ax.set_title('entropy of each primary capsule\'s couplings', fontsize=9)
    ax.legend(fontsize=7)
    return ax


def plot_largest(stats, ax):
    """Histograms of the largest coupling per primary capsule, one line per
    iteration."""
    lc = stats['largest_coupling']
    edges = numpy.asarray(lc['bins'])
    for r, counts in enumerate(lc['counts_per_iteration']):
        counts = numpy.asarray(counts, numpy.float64)
        share = counts / max(counts.sum(), 1)
        ax.step(edges, numpy.append(share, share[-1]), where='post',
                label='iteration {}'.format(r + 1))
    ax.axvline(lc['uniform'], color='grey', ls='--', label='uniform, 1/{}'.format(
        round(1 / lc['uniform'])))
    ax.set_yscale('log')
    ax.set_xlim(0, 1)
    ax.set_xlabel('largest coupling max_j c_ij')
    ax.set_ylabel('share of primary capsules')
    ax.set_title('largest coupling per primary capsule', fontsize=9)
    ax.legend(fontsize=7)
    return ax


def plot_class_maps(stats, ax, class_names=None):
    """The class maps on the primary capsules' grid, one tile per class."""
    maps = numpy.asarray(stats['class_maps'])
    J = len(maps)
    tiles = type_grid(maps)  # (J, h, w)
    h, w = tiles.shape[1:]
    per_row = min(J, 5)
    n_rows = -(-J // per_row)
    top, gap = max(4, h // 4), max(3, w // 15)  # room for the names, between classes
    canvas = numpy.full((n_rows * (h + top), per_row * (w + gap)), numpy.nan)
    for j in range(J):
        r, c = divmod(j, per_row)
        y, x = r * (h + top) + top, c * (w + gap)
        canvas[y:y + h, x:x + w] = tiles[j]
        name = class_names[j] if class_names else str(j)
        ax.text(x + w / 2, y - 1, str(name), ha='center', va='bottom', fontsize=8)
    image = ax.imshow(canvas, cmap='viridis', interpolation='nearest')
    ax.figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label='mean c_ij')
    ax.set_axis_off()
    ax.set_title('mean couplings of each class over the primary capsules '
                 '(last iteration, images of that class)', fontsize=9)
    return ax


def plot_top_share(stats, shares, ax):
    """Histogram of the top share over the images."""
    ts = stats['top_share']
    ax.hist(numpy.asarray(shares), bins=30, color='tab:purple')
    ax.axvline(1, color='grey', ls='--')
    ax.set_xlabel('top {:.0%} ({}) contributions / |s_j|'.format(
        ts['fraction_of_primary_capsules'], ts['top']))
    ax.set_ylabel('images')
    ax.set_title('share of the class capsule from the top primary capsules', fontsize=9)
    return ax


def plot_routing(stats, shares=(), class_names=None, fig=None):
    """``routing.png``: entropy, largest couplings, top share and class maps.

    Args:
        stats (dict): :func:`diagnose`'s statistics.
        shares (array): The top shares per image, for their histogram.
        class_names (list of str): Class titles; ``None``: the class numbers.
        fig (~matplotlib.figure.Figure): Where to draw; ``None`` makes one.

    Returns:
        ~matplotlib.figure.Figure: ``fig``, whose axes are, in order, the entropy, the
        largest couplings, the top share and the class maps.
    """
    if fig is None:
        fig = matplotlib.figure.Figure(figsize=(12, 7.5), dpi=100)
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.2), hspace=0.3, wspace=0.3,
                            left=0.08, right=0.94, top=0.95, bottom=0.03)
    plot_entropy(stats, fig.add_subplot(grid[0, 0]))
    plot_largest(stats, fig.add_subplot(grid[0, 1]))
    plot_top_share(stats, shares, fig.add_subplot(grid[0, 2]))
    plot_class_maps(stats, fig.add_subplot(grid[1, :]), class_names)
    return fig
