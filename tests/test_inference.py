"""Test-time inference in batches: any function of a batch, or a network's scores,
batch by batch on the network's device, gathered on the CPU."""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import testing

from capsnet_chainer import inference


class _Scorer(chainer.Chain):
    """A network with ``scores(x)`` and ``config['n_class']``, that records how it was
    called."""

    def __init__(self, n_class=3):
        super().__init__()
        with self.init_scope():
            self.fc = L.Linear(4, n_class)
        self.config = {'n_class': n_class}
        self.calls = []

    def scores(self, x):
        self.calls.append((len(x), chainer.config.train, chainer.config.enable_backprop))
        return F.dropout(self.fc(x), 0.5)  # dropout only while training


def test_to_cpu_takes_arrays_and_variables():
    a = numpy.arange(3, dtype=numpy.float32)
    numpy.testing.assert_array_equal(inference.to_cpu(a), a)
    numpy.testing.assert_array_equal(inference.to_cpu(chainer.Variable(a)), a)
    assert isinstance(inference.to_cpu(chainer.Variable(a)), numpy.ndarray)


@pytest.mark.parametrize('batchsize', [1, 2, 7, 100])
def test_predict_is_the_scores_at_test_time_batch_by_batch(batchsize):
    model = _Scorer()
    x = numpy.random.RandomState(0).rand(7, 4).astype(numpy.float32)
    with chainer.using_config('train', False):
        expected = model.fc(x).array
    model.calls.clear()
    scores = inference.predict(model, x, batchsize)
    assert isinstance(scores, numpy.ndarray) and scores.shape == (7, 3)
    numpy.testing.assert_allclose(scores, expected, rtol=1e-6)
    sizes = [n for n, _, _ in model.calls]
    assert sizes == [min(batchsize, 7 - i) for i in range(0, 7, batchsize)]
    assert all(not train and not backprop for _, train, backprop in model.calls)


def test_batched_gathers_any_function_of_several_arrays_and_reports_progress():
    model = _Scorer()
    x = numpy.arange(10, dtype=numpy.float32)
    y = numpy.arange(10, dtype=numpy.float32) * 10
    calls = []
    out = inference.batched(model, lambda a, b: a + b, (x, y), (), batchsize=4,
                            progress=lambda done, total: calls.append((done, total)))
    numpy.testing.assert_array_equal(out, x + y)
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_no_input_gives_an_empty_result_of_the_given_shape():
    model = _Scorer(n_class=5)
    assert inference.predict(model, numpy.zeros((0, 4), numpy.float32)).shape == (0, 5)
    empty = inference.batched(model, lambda a: a, (numpy.zeros((0, 2)),), (2, 3))
    assert empty.shape == (0, 2, 3) and empty.dtype == numpy.float32
    assert inference.BATCHSIZE == 100


testing.run_module(__name__, __file__)
