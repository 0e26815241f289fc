"""The baseline CNN of the paper's Sec. 5: parameter count, shapes, training, test mode."""

import chainer
import numpy
import pytest

from capsnet_chainer.baseline_cnn import BaselineCNN


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def fc_params(n_in, n_out):
    return n_in * n_out + n_out


def test_parameter_count_28x28_is_the_papers_35_4m():
    # conv 5x5 1->256, 256->256, 256->128 with 'same' padding: 128 x 28 x 28 features,
    # then FC 328, FC 192, FC 10.
    expected = (conv_params(1, 256, 5) + conv_params(256, 256, 5) + conv_params(256, 128, 5)
                + fc_params(128 * 28 * 28, 328) + fc_params(328, 192) + fc_params(192, 10))
    assert expected == 35445522
    assert float('{:.3g}'.format(expected / 1e6)) == 35.4
    model = BaselineCNN(initialW=chainer.initializers.Zero())  # zeros: quicker to make
    assert model.count_params() == expected
    assert model.fc1.W.shape == (328, 128 * 28 * 28)


@pytest.mark.parametrize('size', [36, 40])
def test_shapes_for_larger_inputs(size):
    model = BaselineCNN(in_shape=(1, size, size), initialW=chainer.initializers.Zero())
    assert model.fc1.W.shape == (328, 128 * size * size)
    assert model.count_params() == (
        conv_params(1, 256, 5) + conv_params(256, 256, 5) + conv_params(256, 128, 5)
        + fc_params(128 * size * size, 328) + fc_params(328, 192) + fc_params(192, 10))
    if size == 36:  # one forward pass (a few GFLOP on the CPU)
        x = numpy.random.RandomState(0).uniform(size=(1, 1, size, size)).astype('f')
        assert model.predict(x).shape == (1, 10)
        assert model.predict(x[:0]).shape == (0, 10)


def test_too_small_inputs_are_refused():
    with pytest.raises(ValueError):
        BaselineCNN(in_shape=(1, 12, 12), pad=0)


def tiny_batch():
    rng = numpy.random.RandomState(1)
    x = rng.uniform(size=(4, 1, 8, 8)).astype(numpy.float32)
    t = numpy.array([0, 3, 7, 9], numpy.int32)
    return x, t


def test_one_adam_step_decreases_the_loss():
    x, t = tiny_batch()
    # A fixed initialisation and no dropout: the step and the losses are deterministic.
    # (Over 12 random initialisations, alpha 1e-4 lowered the loss by 8-13% each time.)
    initialW = chainer.initializers.LeCunNormal(rng=numpy.random.RandomState(0))
    model = BaselineCNN(in_shape=(1, 8, 8), dropout=0.0, initialW=initialW)
    optimizer = chainer.optimizers.Adam(alpha=1e-4)
    optimizer.setup(model)
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation), chainer.using_config('train', False):
        before = float(model(x, t).array)
    assert set(observation) == {'main/loss', 'main/accuracy'}
    assert float(observation['main/loss'].array) == before
    optimizer.update(model, x, t)
    with chainer.using_config('train', False):
        assert float(model(x, t).array) < before


def test_dropout_only_in_training():
    x, _ = tiny_batch()
    model = BaselineCNN(in_shape=(1, 8, 8), dropout=0.5)
    with chainer.using_config('train', False):
        a, b = model.logits(x).array, model.logits(x).array
    numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(model.predict(x), a)
    with chainer.using_config('train', True):
        c = model.logits(x).array
    assert not numpy.array_equal(a, c)
