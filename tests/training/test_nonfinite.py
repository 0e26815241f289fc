"""The non-finite check: one float64 sum tells a finite step; a NaN or infinite loss,
gradient or weight is named, with the epoch and iteration of the update."""

import chainer
import chainer.links as L
import numpy
import pytest
from chainer import testing

from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.training import nonfinite
from capsnet_chainer.training.gated_adam import GatedAdam


class _Two(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.a = L.Linear(2, 3)
            self.b = L.Linear(3, 1)


def _nan_gradient_loss(model):
    """sqrt(u^2) at u = 0: a loss of the :class:`_Two` ``model`` on ``x``, ``u = W x``;
    where ``x`` is 0 it is 0, finite, but its gradient of a/W is NaN (inf x 0)."""

    def loss_func(x):
        u = model.a(x) - model.a.b
        return chainer.functions.sum(chainer.functions.sqrt(u * u))
    return loss_func


def test_error_names_what_and_where_and_is_a_capsnet_error():
    e = nonfinite.NonFiniteError('loss (nan)', 2, 17)
    assert str(e) == 'non-finite loss (nan) at epoch 2, iteration 17'
    assert (e.epoch, e.iteration) == (2, 17)
    assert isinstance(e, CapsNetError)


def test_to_float_and_float64_sum():
    assert nonfinite.to_float(numpy.float32(1.5)) == 1.5
    assert type(nonfinite.to_float(numpy.array(2, numpy.int32))) is float
    arrays = [numpy.full(3, 1e38, numpy.float32), numpy.full(2, 1e38, numpy.float32)]
    total = nonfinite.float64_sum(arrays)
    assert total.dtype == numpy.float64 and total == pytest.approx(5e38, rel=1e-6)
    assert numpy.isnan(nonfinite.float64_sum([numpy.ones(2), numpy.array([numpy.nan])]))
    assert numpy.isinf(nonfinite.float64_sum([numpy.array([-numpy.inf]), numpy.ones(1)]))


def test_first_non_finite_names_the_first_bad_parameter():
    model = _Two()
    assert nonfinite.first_non_finite(model) is None
    model.cleargrads()
    assert nonfinite.first_non_finite(model, 'grad') is None  # no gradients
    model.b.W.array[0, 1] = numpy.inf
    assert nonfinite.first_non_finite(model) == 'b/W'
    model.a.b.array[2] = numpy.nan
    assert nonfinite.first_non_finite(model) == 'a/b'  # the order of namedparams
    model.cleargrads()
    model.a.W.grad = numpy.zeros_like(model.a.W.array)
    model.b.b.grad = numpy.array([numpy.nan], numpy.float32)
    assert nonfinite.first_non_finite(model, 'grad') == 'b/b'


def test_first_non_finite_of_finite_values_whose_sum_overflows():
    model = _Two()
    for p in model.params():
        p.array[...] = numpy.finfo(numpy.float32).max
    model.a.W.array[...] = 0
    with chainer.using_config('dtype', numpy.float64):
        big = L.Linear(1, 1, initialW=1e308, initial_bias=1e308)
    assert nonfinite.first_non_finite(model) is None  # float64 holds the float32 sum
    assert nonfinite.first_non_finite(big) == 'the parameters'


def _optimizer(model):
    """SGD on ``model`` with the check as its pre-update hook; the check's watch."""
    check = nonfinite.NonFiniteCheck()
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    optimizer.add_hook(check, timing='pre')
    return optimizer, check.watch


def test_check_raises_for_a_non_finite_loss_before_the_update():
    model = _Two()
    W = model.a.W.array.copy()
    optimizer, watch = _optimizer(model)

    def loss_func(x):
        return chainer.functions.sum(model.b(model.a(x))) * numpy.float32(numpy.inf)
    with pytest.raises(nonfinite.NonFiniteError) as e:
        optimizer.update(watch(loss_func), numpy.ones((1, 2), numpy.float32))
    assert str(e.value).startswith('non-finite loss (')
    assert str(e.value).endswith(') at epoch 1, iteration 1')
    numpy.testing.assert_array_equal(model.a.W.array, W)
    assert optimizer.t == 0


def test_check_raises_for_a_non_finite_gradient_of_a_finite_loss_naming_it():
    model = _Two()
    optimizer, watch = _optimizer(model)
    loss_func = _nan_gradient_loss(model)
    optimizer.update(watch(loss_func), numpy.ones((1, 2), numpy.float32))  # finite
    assert optimizer.t == 1
    optimizer.new_epoch()
    W, b = model.a.W.array.copy(), model.b.b.array.copy()
    with pytest.raises(nonfinite.NonFiniteError) as e:
        optimizer.update(watch(loss_func), numpy.zeros((1, 2), numpy.float32))
    assert str(e.value) == 'non-finite gradient of a/W at epoch 2, iteration 2'
    numpy.testing.assert_array_equal(model.a.W.array, W)
    numpy.testing.assert_array_equal(model.b.b.array, b)


def test_check_of_an_update_without_a_watched_loss_checks_the_gradients():
    model = _Two()
    check = nonfinite.NonFiniteCheck()
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    optimizer.add_hook(check, timing='pre')
    model.cleargrads()
    for p in model.params():
        p.grad = numpy.zeros_like(p.array)
    optimizer.update()  # finite: no error
    model.b.W.grad[0, 0] = numpy.nan
    with pytest.raises(nonfinite.NonFiniteError, match='gradient of b/W'):
        optimizer.update()


# The deferred check: no sync, the update skipped on the device, the error a step late


def _deferred(model):
    """GatedAdam on ``model``, gated by a deferred check; the check."""
    check = nonfinite.NonFiniteCheck(defer=True)
    optimizer = GatedAdam()
    optimizer.setup(model)
    optimizer.set_gate(check)
    optimizer.add_hook(check, timing='pre')
    return optimizer, check


def _weights(model):
    return [p.array.copy() for p in model.params()]


def test_deferred_check_skips_a_nan_loss_and_raises_in_the_next_step():
    model = _Two()
    optimizer, check = _deferred(model)
    x = numpy.ones((1, 2), numpy.float32)
    scale = [numpy.float32(1), numpy.float32('nan'), numpy.float32(1)]

    def loss_func():
        return chainer.functions.sum(model.b(model.a(x))) * scale[optimizer.t]
    optimizer.update(check.watch(loss_func))  # finite
    assert bool(check.ok) and optimizer.t == 1
    assert check.ok.shape == (1,)  # as the gated kernel reads it
    after_first = _weights(model)
    optimizer.update(check.watch(loss_func))  # NaN: skipped, no error yet
    assert not bool(check.ok) and optimizer.t == 2
    for got, want in zip(_weights(model), after_first):
        numpy.testing.assert_array_equal(got, want)
    with pytest.raises(nonfinite.NonFiniteError) as e:
        optimizer.update(check.watch(loss_func))  # raises before its own update
    assert str(e.value) == 'non-finite loss (nan) at epoch 1, iteration 2'
    assert optimizer.t == 2
    for got, want in zip(_weights(model), after_first):
        numpy.testing.assert_array_equal(got, want)


def test_deferred_check_names_the_gradient_and_settle_raises_once():
    model = _Two()
    optimizer, check = _deferred(model)
    optimizer.update(check.watch(_nan_gradient_loss(model)), numpy.zeros((1, 2), numpy.float32))
    with pytest.raises(nonfinite.NonFiniteError) as e:
        check.settle()
    assert str(e.value) == 'non-finite gradient of a/W at epoch 1, iteration 1'
    check.settle()  # the verdict is taken: nothing more to raise
    assert all((p.update_rule.state['m'] == 0).all() for p in model.params())


def test_deferred_check_of_finite_steps_raises_nothing_and_settles_quietly():
    model = _Two()
    optimizer, check = _deferred(model)
    check.settle()  # before any step
    for _ in range(3):
        optimizer.update(check.watch(lambda: chainer.functions.sum(
            model.b(model.a(numpy.ones((2, 2), numpy.float32))))))
    check.settle()
    assert optimizer.t == 3


testing.run_module(__name__, __file__)
