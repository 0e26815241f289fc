"""routing.png: the routing statistics drawn, and the primary capsules' grid layout."""

import matplotlib.figure
import numpy

from capsnet_chainer.evaluation import routing_figures  # before chainer: restores sctypes

from chainer import testing

from capsnet_chainer.evaluation import routing_diagnostics as routing
from capsnet_chainer.model import CapsNet


def test_type_grid_lays_types_out_in_rows_with_gaps():
    maps = numpy.arange(3 * 2 * 2, dtype=numpy.float64).reshape((3, 2, 2))  # T=3, 2x2
    out = routing_figures.type_grid(maps, types_per_row=2, gap=1)
    assert out.shape == (5, 5)
    numpy.testing.assert_array_equal(out[0:2, 0:2], maps[0])
    numpy.testing.assert_array_equal(out[0:2, 3:5], maps[1])
    numpy.testing.assert_array_equal(out[3:5, 0:2], maps[2])
    assert numpy.isnan(out[2]).all() and numpy.isnan(out[:, 2]).all()
    assert numpy.isnan(out[3:5, 3:5]).all()  # no fourth type


def test_plot_routing_draws_four_panels():
    model = CapsNet()
    x = numpy.random.RandomState(0).uniform(0, 1, (4, 1, 28, 28)).astype(numpy.float32)
    stats, _, shares = routing.diagnose(model, x, numpy.array([0, 1, 1, 9], numpy.int32))
    fig = routing_figures.plot_routing(stats, shares.reshape(-1),
                                       ['c{}'.format(k) for k in range(10)])
    assert isinstance(fig, matplotlib.figure.Figure)
    entropy, largest, top, maps = fig.axes[:4]
    numpy.testing.assert_allclose(entropy.lines[0].get_ydata(),
                                  stats['entropy']['mean_per_iteration'])
    assert len(largest.lines) == 3 + 1  # one per iteration, and the uniform's
    assert sum(p.get_height() for p in top.patches) == 4  # one image each
    image = numpy.ma.getdata(maps.images[0].get_array())
    assert numpy.isnan(image).any()  # gaps and the classes without images
    assert 'c9' in [t.get_text() for t in maps.texts]
    assert len(fig.axes) == 5  # and the class maps' colour bar


testing.run_module(__name__, __file__)
