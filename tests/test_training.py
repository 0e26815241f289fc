from types import SimpleNamespace

import chainer
import chainer.links as L
import numpy
import pytest
from chainer import testing

from capsnet_chainer.fileio import BackgroundWriter
from capsnet_chainer.nonfinite import NonFiniteError
from capsnet_chainer.random_state import SeededShuffleIterator
from capsnet_chainer.training import BestModelSaver
from capsnet_chainer.training import ConverterStateUpdater


def _updater(model, n_data, **kwargs):
    """Adam on ``model`` and an updater over ``n_data`` copies of one 2-vector, batch 2."""
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    data = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * n_data
    return optimizer, ConverterStateUpdater(SeededShuffleIterator(data, 2, 0), optimizer,
                                            **kwargs)


class _Loss(chainer.Chain):
    """``sum(fc(x) ** 2)``, or a variant of it:

    * ``sqrt``: ``sum(sqrt(fc(x) ** 2))`` from zero weights, a loss that is finite (0)
      while its gradient is not (d sqrt(x)/dx at 0);
    * ``nan_times`` at the second call: the loss times NaN (NaN gradients too);
    * ``nan_plus``: the loss plus NaN, whose gradients are finite.

    Records at each call whether Chainer's type checks are on.
    """

    def __init__(self, variant=None):
        super().__init__()
        with self.init_scope():
            if variant == 'sqrt':
                self.fc = L.Linear(2, 1, initialW=0, initial_bias=0)
            else:
                self.fc = L.Linear(2, 1)
        self.variant = variant
        self.type_checks = []

    def forward(self, x, t):
        self.type_checks.append(chainer.config.type_check)
        h = self.fc(x) ** 2
        if self.variant == 'sqrt':
            return chainer.functions.sum(chainer.functions.sqrt(h))
        loss = chainer.functions.sum(h)
        if self.variant == 'nan_times' and len(self.type_checks) == 2:
            return loss * numpy.float32('nan')
        if self.variant == 'nan_plus':
            return loss + numpy.float32('nan')
        return loss


def test_nan_gradient_raises_before_the_update():
    model = _Loss('sqrt')
    optimizer, updater = _updater(model, 4)
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite gradient of fc/W at epoch 1, iteration 1'
    assert (model.fc.W.array == 0).all() and optimizer.t == 0  # not updated


def test_nan_loss_raises_naming_epoch_and_iteration_before_the_update():
    model = _Loss('nan_times')
    optimizer, updater = _updater(model, 2)
    updater.update()  # iteration 1 ends epoch 1
    W = model.fc.W.array.copy()
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite loss (nan) at epoch 2, iteration 2'
    assert (model.fc.W.array == W).all() and optimizer.t == 1


def test_nan_loss_with_finite_gradients_raises_before_the_update():
    model = _Loss('nan_plus')
    optimizer, updater = _updater(model, 2)
    W = model.fc.W.array.copy()
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite loss (nan) at epoch 1, iteration 1'
    assert numpy.isfinite(model.fc.W.grad).all()  # only the loss tells
    assert (model.fc.W.array == W).all() and optimizer.t == 0


def test_updater_without_check_finite_lets_a_nan_gradient_through():
    model = _Loss('sqrt')
    optimizer, updater = _updater(model, 4, check_finite=False)
    updater.update()
    assert optimizer.t == 1 and numpy.isnan(model.fc.W.array).all()


@pytest.mark.parametrize('once, config, want', [
    (True, True, [True, False, False]),
    (False, True, [True, True, True]),
    (True, False, [False, False, False]),
])
def test_updater_type_checks_the_first_update_only(once, config, want):
    model = _Loss()
    _, updater = _updater(model, 4, check_types_once=once)
    with chainer.using_config('type_check', config):
        for _ in range(3):
            updater.update()
        assert chainer.config.type_check is config  # restored after each update
    assert model.type_checks == want


class _Configured(chainer.Chain):
    config = {'model': 'test'}

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc = L.Linear(2, 3)


def test_best_model_written_in_the_background_is_the_model_of_the_call(tmp_path):
    """The writer's copy is taken at the call: training that goes on while the file is
    written does not reach it."""
    model = _Configured()
    W = model.fc.W.array.copy()
    writer = BackgroundWriter()
    saver = BestModelSaver(model, str(tmp_path / 'best'), key='acc', writer=writer)
    trainer = SimpleNamespace(observation={'acc': 0.5},
                              updater=SimpleNamespace(epoch=1, iteration=4))
    saver(trainer)
    model.fc.W.array[...] = 7  # the next updates
    saver.finalize()
    with numpy.load(str(tmp_path / 'best')) as f:
        numpy.testing.assert_array_equal(f['fc/W'], W)


def test_best_model_write_error_is_raised_at_the_next_epoch(tmp_path):
    model = _Configured()
    path = tmp_path / 'missing' / 'best'
    saver = BestModelSaver(model, str(path), key='acc', writer=BackgroundWriter())
    trainer = SimpleNamespace(observation={'acc': 0.5},
                              updater=SimpleNamespace(epoch=1, iteration=4))
    saver(trainer)
    saver.writer._thread.join()
    trainer.observation = {'acc': 0.4}  # no new best: the error is raised all the same
    with pytest.raises(OSError, match='cannot write the best model .*the previous one is '
                       'intact') as e:
        saver(trainer)
    assert e.value.filename == str(path)


testing.run_module(__name__, __file__)
