"""The paper's Figure 5 for MultiMNIST: each pair's two reconstructions overlaid in red
and green, by its labels and by its two longest capsules."""

import numpy
import pytest

from capsnet_chainer.evaluation import pair_figures  # before chainer: restores sctypes

from chainer import testing

from capsnet_chainer.datasets import multimnist
from capsnet_chainer.evaluation.metrics import decode
from capsnet_chainer.evaluation.metrics import digit_capsules
from capsnet_chainer.functions import top_two
from capsnet_chainer.model import CapsNet


def test_overlay_rgb_puts_the_first_in_red_and_the_second_in_green():
    first = numpy.array([[0.2, 1.5]], numpy.float32)
    second = numpy.array([[0.7, -1.0]], numpy.float32)
    rgb = pair_figures.overlay_rgb(first, second)
    assert rgb.shape == (1, 2, 3) and rgb.dtype == numpy.float32
    numpy.testing.assert_allclose(rgb[0, 0], [0.2, 0.7, 0])
    numpy.testing.assert_allclose(rgb[0, 1], [1, 0, 0])  # clipped to [0, 1]


def test_pair_tiles_overlay_the_two_reconstructions():
    rng = numpy.random.RandomState(3)
    x, t2, _ = multimnist.make_test_set(rng.uniform(0, 1, (30, 28, 28)),
                                        numpy.arange(30) % 10, 4, seed=5)
    model = CapsNet(in_shape=(1, 36, 36), reconstruct=True)
    tiles, pred = pair_figures.pair_tiles(model, x, t2)
    assert tiles.shape == (3, 4, 36, 36, 3)
    numpy.testing.assert_array_equal(tiles[0, :, :, :, 0], x[:, 0])  # grey input
    v = digit_capsules(model, x)
    numpy.testing.assert_allclose(tiles[1, ..., 0], decode(model, v, t2[:, 0]), atol=1e-6)
    numpy.testing.assert_allclose(tiles[1, ..., 1], decode(model, v, t2[:, 1]), atol=1e-6)
    numpy.testing.assert_allclose(tiles[2, ..., 0], decode(model, v, pred[:, 0]), atol=1e-6)
    assert (tiles[1:, ..., 2] == 0).all()
    numpy.testing.assert_array_equal(pred, top_two(
        numpy.sqrt((v ** 2).sum(axis=2))))


@pytest.fixture(scope='module')
def pairs():
    rng = numpy.random.RandomState(3)
    x, t2, _ = multimnist.make_test_set(rng.uniform(0, 1, (30, 28, 28)),
                                        numpy.arange(30) % 10, 4, seed=5)
    return CapsNet(in_shape=(1, 36, 36), reconstruct=True), x, t2


def test_plot_pairs_draws_the_tiles_titled_with_labels_and_prediction(pairs):
    model, x, t2 = pairs
    ax = pair_figures.plot_pairs(model, x, t2, title='four pairs')
    tiles, pred = pair_figures.pair_tiles(model, x, t2)
    assert len(ax.images) == 3 * 4
    for k, image in enumerate(ax.images):
        r, c = divmod(k, 4)
        numpy.testing.assert_array_equal(image.get_array(), tiles[r, c])
    titles = [text.get_text() for text in ax.texts]
    assert titles == ['L {},{}\nR {},{}'.format(*t2[c], *pred[c]) for c in range(4)]
    assert ax.get_title() == 'four pairs' and not ax.axison


def test_plot_pairs_of_no_examples_says_so(pairs):
    model, x, t2 = pairs
    ax = pair_figures.plot_pairs(model, x[:0], t2[:0])
    assert len(ax.images) == 0 and ax.texts[0].get_text() == 'no examples'


testing.run_module(__name__, __file__)
