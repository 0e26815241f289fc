"""The figures of a CapsNet's capsules: the reconstructions (vis.png), the masking grid
and the perturbations of the paper's Figs. 3 and 4, computed as NumPy tiles that the
tests check, and drawn as grids of images."""

import os

from capsnet_chainer.evaluation import figures  # before chainer: restores numpy.sctypes

import chainer
import matplotlib.axes
import matplotlib.colors
import matplotlib.figure
import matplotlib.image
import matplotlib.patches
import numpy
import pytest
from chainer import testing

from capsnet_chainer import load_model
from capsnet_chainer.datasets.mnist import get_mnist
from conftest import independent_decode
from conftest import is_green
from conftest import row_cmaps
from conftest import tile_colours

# MNIST test labels 0..19: 7 2 1 0 4 1 4 9 5 9 0 6 9 0 1 5 9 7 3 4.
FIRST_ZEROS = [3, 10]


def assert_images(ax, tiles, cmaps):
    """``ax`` holds one image per tile, row-major, with the given (R, C) colour maps."""
    R, C = tiles.shape[:2]
    assert isinstance(ax, matplotlib.axes.Axes)
    assert not ax.axison
    assert len(ax.images) == R * C
    for k, image in enumerate(ax.images):
        r, c = divmod(k, C)
        numpy.testing.assert_array_equal(image.get_array(), tiles[r, c])
        assert image.get_cmap().name == cmaps[r][c], (r, c)
        assert (image.norm.vmin, image.norm.vmax) == (0, 1)
        left, right, bottom, top = image.get_extent()
        assert (left, top) == (c * (28 + figures.GAP), r * (28 + figures.GAP))
        assert (right - left, bottom - top) == (28, 28)


# Samples and steps


def test_select_samples_order():
    t = numpy.array([5, 0, 3, 0, 0, 1, 2, 9, 1, 8, 7, 6, 4, 3, 5, 2, 9, 8, 6, 7, 4, 1])
    index = figures.select_samples(t)
    expected = []
    for k in range(10):
        expected += [i for i in range(len(t)) if t[i] == k][:2]
    assert index.tolist() == expected
    assert t[index].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]


def test_select_samples_missing_class():
    t = numpy.array([1, 0, 1, 1, 2])
    assert figures.select_samples(t).tolist() == [1, 0, 2, 4]
    assert figures.select_samples(t, per_class=1).tolist() == [1, 0, 4]


def test_select_samples_mnist_test_set(mnist_dir):
    _, test = get_mnist(data_dir=mnist_dir, n_test=200)
    t = chainer.dataset.concat_examples(test[:])[1]
    index = figures.select_samples(t)
    assert len(index) == 20
    assert index[:2].tolist() == FIRST_ZEROS
    for k in range(10):
        assert index[2 * k:2 * k + 2].tolist() == numpy.flatnonzero(t == k)[:2].tolist()


def test_perturbation_steps_are_the_reference_and_paper_ranges():
    numpy.testing.assert_allclose(figures.REFERENCE_STEPS, numpy.linspace(-0.3, 0.3, 9))
    numpy.testing.assert_allclose(figures.PAPER_STEPS, numpy.linspace(-0.25, 0.25, 11))
    assert figures.REFERENCE_STEPS[4] == 0 and figures.PAPER_STEPS[5] == 0
    assert figures.perturbation_cmaps(figures.REFERENCE_STEPS) == (
        [figures.RECON_CMAP] * 4 + [figures.GIVEN_CMAP] + [figures.RECON_CMAP] * 4)


# Computation


def test_reconstructions(model, samples):
    x, t = samples
    tiles = figures.reconstructions(model, x, t)
    assert tiles.shape == (2, 20, 28, 28)
    numpy.testing.assert_array_equal(tiles[0], x[:, 0])
    numpy.testing.assert_allclose(tiles[1], independent_decode(model, x, t), atol=1e-6)


def test_masking_grid_rows(model, samples):
    x, t = samples
    grid = figures.masking_grid(model, x[:6])
    assert grid.shape == (11, 6, 28, 28)
    numpy.testing.assert_array_equal(grid[0], x[:6, 0])
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x[:6])
        for i in range(10):
            expected = model.decode(v, numpy.full(6, i, numpy.int32)).array[:, 0]
            numpy.testing.assert_allclose(grid[i + 1], expected, atol=1e-6)
    # The rows differ, so a wrong order would not pass unnoticed.
    assert numpy.abs(grid[1] - grid[2]).max() > 0.1
    # The tile of the true digit is the vis.png reconstruction.
    recon = figures.reconstructions(model, x[:6], t[:6])[1]
    for c in range(6):
        numpy.testing.assert_allclose(grid[t[c] + 1, c], recon[c], atol=1e-6)


@pytest.mark.parametrize('steps', [figures.REFERENCE_STEPS, figures.PAPER_STEPS])
def test_perturbation_grid(model, samples, steps):
    x, t = samples
    c = 7  # the second 3
    grid = figures.perturbation_grid(model, x[c], t[c], steps)
    assert grid.shape == (len(steps), 16, 28, 28)
    # The unperturbed row equals the true-mask reconstruction, in every column.
    middle = len(steps) // 2
    assert steps[middle] == 0
    recon = figures.reconstructions(model, x, t)[1, c]
    for d in range(16):
        numpy.testing.assert_allclose(grid[middle, d], recon, atol=1e-5)
    # Tile [r, d] adds steps[r] to dimension d of the true digit's capsule.
    for r, d in [(0, 0), (0, 15), (len(steps) - 1, 3), (1, 8)]:
        def edit(v, r=r, d=d):
            v[0, t[c], d] += steps[r]
        expected = independent_decode(model, x[c:c + 1], t[c:c + 1], edit)[0]
        numpy.testing.assert_allclose(grid[r, d], expected, atol=1e-5)
    assert numpy.abs(grid[0, 0] - grid[-1, 0]).max() > 0.1
    assert numpy.abs(grid[0, 0] - grid[0, 1]).max() > 0.1


def test_perturbation_grid_touches_only_the_true_digit(model, samples):
    x, t = samples
    # Perturbing the capsule of a digit the mask removes would change nothing.
    grid = figures.perturbation_grid(model, x[0], 0, [0.0, 0.3])
    assert numpy.abs(grid[1] - grid[0]).max() > 0.1


# Drawing


def test_draw_grid_order_cmaps_and_norm():
    tiles = numpy.random.RandomState(1).rand(3, 4, 28, 28).astype(numpy.float32)
    ax = figures.draw_grid(tiles, ['Greens', 'Blues', 'Blues'])
    assert_images(ax, tiles, row_cmaps(['Greens', 'Blues', 'Blues'], 4))
    # One name for all, one per column, or a full grid.
    assert_images(figures.draw_grid(tiles, 'Blues'), tiles, row_cmaps(['Blues'] * 3, 4))
    per_column = [['Blues', 'Greens', 'Blues', 'Blues']]
    assert_images(figures.draw_grid(tiles, per_column), tiles, per_column * 3)
    with pytest.raises(ValueError):
        figures.draw_grid(tiles, ['Greens', 'Blues'])


def test_draw_grid_into_given_axes():
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot(1, 2, 2)
    tiles = numpy.zeros((1, 2, 28, 28), numpy.float32)
    assert figures.draw_grid(tiles, 'Greens', ax=ax) is ax
    assert len(fig.axes) == 1 and len(ax.images) == 2


def test_colour_tiles_of_the_given_colour_map_are_framed_in_green(tmp_path):
    """Colour images keep their colours: the inputs and the unperturbed row, green in
    grey grids, get a green frame instead; the reconstructions none."""
    rng = numpy.random.RandomState(0)
    tiles = rng.uniform(0, 1, (3, 4, 28, 28, 3))
    names = [figures.RECON_CMAP, figures.GIVEN_CMAP, figures.RECON_CMAP]
    ax = figures.draw_grid(tiles, names)
    assert len(ax.images) == 12
    frames = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(frames) == 4
    step = 28 + figures.GAP
    assert sorted(p.get_x() for p in frames) == [c * step - figures.GAP / 2 for c in range(4)]
    assert all(p.get_y() == step - figures.GAP / 2 and not p.get_fill() for p in frames)
    path = str(tmp_path / 'grid.png')
    figures.save_figure(ax, path)
    image = matplotlib.image.imread(path)[..., :3]
    H, W = image.shape[:2]
    green = matplotlib.colors.to_rgb(figures.FRAME_COLOUR)
    # the frame's colour runs along the gaps around the middle row only
    near = numpy.abs(image - green).max(axis=-1) < 0.15
    rows = near.sum(axis=1)
    assert rows[H // 3 - 3:H // 3 + 3].max() > W // 2  # the top edge of row 1
    assert rows[:H // 3 - 4].max() < W // 10 and rows[2 * H // 3 + 4:].max() < W // 10
    # grey tiles need no frame: their colour map says it
    grey = figures.draw_grid(tiles[..., 0], names)
    assert not grey.patches


def test_colour_maps_are_green_and_blue():
    assert figures.GIVEN_CMAP == 'Greens' and figures.RECON_CMAP == 'Blues'


def test_plot_reconstructions(model, samples):
    x, t = samples
    ax = figures.plot_reconstructions(model, x, t)
    tiles = figures.reconstructions(model, x, t)
    assert_images(ax, tiles, row_cmaps([figures.GIVEN_CMAP, figures.RECON_CMAP], 20))


def test_plot_masking_grid(model, samples):
    x, _ = samples
    ax = figures.plot_masking_grid(model, x)
    tiles = figures.masking_grid(model, x)
    assert tiles.shape == (11, 20, 28, 28)
    assert_images(ax, tiles, row_cmaps([figures.GIVEN_CMAP] + [figures.RECON_CMAP] * 10, 20))


def test_plot_perturbation_reference(model, samples):
    x, t = samples
    ax = figures.plot_perturbation(model, x[4], t[4])
    tiles = figures.perturbation_grid(model, x[4], t[4], figures.REFERENCE_STEPS)
    names = [figures.RECON_CMAP] * 9
    names[4] = figures.GIVEN_CMAP
    assert_images(ax, tiles, row_cmaps(names, 16))


def test_plot_perturbation_paper_layout(model, samples):
    x, t = samples
    steps = figures.PAPER_STEPS
    ax = figures.plot_perturbation(model, x[4], t[4], steps, layout='dims')
    grid = figures.perturbation_grid(model, x[4], t[4], steps)
    # The paper's Fig. 4: one row per dimension, one column per step, r = 0 in green.
    tiles = numpy.swapaxes(grid, 0, 1)
    assert tiles.shape == (16, 11, 28, 28)
    column = [figures.GIVEN_CMAP if s == 5 else figures.RECON_CMAP for s in range(11)]
    assert_images(ax, tiles, [column] * 16)
    with pytest.raises(ValueError):
        figures.perturbation_tiles(grid, steps, layout='columns')


def test_saved_grid_colours(model, samples, tmp_path):
    x, t = samples
    path = str(tmp_path / 'vis.png')
    figures.save_figure(figures.plot_reconstructions(model, x, t), path)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (2 * 50, 20 * 50)  # 0.5 inch per tile at 100 dpi
    colours = tile_colours(path, 2, 20)
    assert is_green(colours[0]).all() and not is_green(colours[1]).any()
    assert os.listdir(str(tmp_path)) == ['vis.png']  # no temporary file left


def test_write_sample_figures(model, samples, tmp_path):
    x, t = samples
    paths = figures.write_sample_figures(model, x[:4], t[:4], str(tmp_path))
    names = ['vis.png', 'vis_all.png', 'vis_tweaked0.png', 'vis_tweaked1.png']
    assert paths == [str(tmp_path / n) for n in names]
    assert sorted(os.listdir(str(tmp_path))) == sorted(names)
    assert matplotlib.image.imread(paths[1]).shape[:2] == (11 * 50, 4 * 50)
    colours = tile_colours(paths[3], 9, 16)
    assert is_green(colours[4]).all()
    assert not is_green(numpy.delete(colours, 4, axis=0)).any()


def test_image_tiles_are_the_grey_images():
    x = numpy.random.RandomState(2).rand(3, 1, 5, 4).astype(numpy.float32)
    tiles = figures.image_tiles(x)
    assert tiles.shape == (3, 5, 4)
    numpy.testing.assert_array_equal(tiles, x[:, 0])


def test_new_axes_size_a_grid_of_tiles():
    ax = figures.new_axes(2, 5, extra_top=0.5)
    width, height = ax.figure.get_size_inches()
    assert (width, height) == pytest.approx((5 * figures.TILE_INCHES,
                                             2 * figures.TILE_INCHES + 0.5))
    assert ax.figure.dpi == figures.DPI


def test_perturbations_are_the_reference_and_the_papers_layouts():
    assert figures.PERTURBATIONS['reference'][1] == 'steps'
    assert figures.PERTURBATIONS['paper'][1] == 'dims'
    assert figures.PERTURBATIONS['reference'][0] is figures.REFERENCE_STEPS
    assert figures.PERTURBATIONS['paper'][0] is figures.PAPER_STEPS


# A model trained briefly on real digits


def test_masking_grid_true_digit_row_closest(trained_run, mnist_dir):
    """After 3 short epochs the decoder draws little more than an average digit, but
    the row of the true digit is already measurably closer to the inputs."""
    model, _ = load_model(trained_run['model'])
    _, test = get_mnist(data_dir=mnist_dir, n_test=200)
    x, t = chainer.dataset.concat_examples(test[:])
    index = figures.select_samples(t)
    x, t = x[index], t[index]
    grid = figures.masking_grid(model, x)
    # mse[i, c]: the mean squared error of sample c reconstructed as digit i.
    mse = ((grid[1:] - x[None, :, 0]) ** 2).mean(axis=(2, 3))  # (10, 20)
    true = mse[t, numpy.arange(20)]
    wrong = numpy.arange(10)[:, None] != t[None, :]  # (10, 20)
    # Closer on average than the other rows ...
    assert true.mean() < mse[wrong].mean()
    # ... for most (sample, wrong digit) pairs (chance: half of them) ...
    assert (true[None, :] < mse)[wrong].mean() > 0.55
    # ... and the closest of the 10 rows for several samples (chance: 2 of 20).
    assert ((mse < true[None, :]).sum(axis=0) == 0).sum() >= 4


testing.run_module(__name__, __file__)
