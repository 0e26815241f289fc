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


class _SqrtLoss(chainer.Chain):
    """A loss that is finite (0) while its gradient is not (d sqrt(x)/dx at 0)."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc = L.Linear(2, 1, initialW=0, initial_bias=0)

    def forward(self, x, t):
        return chainer.functions.sum(chainer.functions.sqrt(self.fc(x) ** 2))


def test_nan_gradient_raises_before_the_update():
    data = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * 4
    model = _SqrtLoss()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    updater = ConverterStateUpdater(
        SeededShuffleIterator(data, 2, 0), optimizer)
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite gradient of fc/W at epoch 1, iteration 1'
    assert (model.fc.W.array == 0).all() and optimizer.t == 0  # not updated


class _NanLoss(chainer.Chain):
    """A loss that becomes NaN at the second call."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc = L.Linear(2, 1)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        loss = chainer.functions.sum(self.fc(x) ** 2)
        return loss * numpy.float32('nan') if self.calls == 2 else loss


def test_nan_loss_raises_naming_epoch_and_iteration_before_the_update():
    data = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * 2
    model = _NanLoss()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    updater = ConverterStateUpdater(SeededShuffleIterator(data, 2, 0), optimizer)
    updater.update()  # iteration 1 ends epoch 1
    W = model.fc.W.array.copy()
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite loss (nan) at epoch 2, iteration 2'
    assert (model.fc.W.array == W).all() and optimizer.t == 1


class _NanConstantLoss(chainer.Chain):
    """A NaN loss whose gradients are finite (a NaN constant added)."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc = L.Linear(2, 1)

    def forward(self, x, t):
        return chainer.functions.sum(self.fc(x) ** 2) + numpy.float32('nan')


def test_nan_loss_with_finite_gradients_raises_before_the_update():
    data = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * 2
    model = _NanConstantLoss()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    updater = ConverterStateUpdater(SeededShuffleIterator(data, 2, 0), optimizer)
    W = model.fc.W.array.copy()
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite loss (nan) at epoch 1, iteration 1'
    assert numpy.isfinite(model.fc.W.grad).all()  # only the loss tells
    assert (model.fc.W.array == W).all() and optimizer.t == 0


def test_updater_without_check_finite_lets_a_nan_gradient_through():
    model = _SqrtLoss()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    data = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * 4
    updater = ConverterStateUpdater(SeededShuffleIterator(data, 2, 0), optimizer,
                                    check_finite=False)
    updater.update()
    assert optimizer.t == 1 and numpy.isnan(model.fc.W.array).all()


class _TypeCheckRecorder(chainer.Chain):
    """A loss that records, at each call, whether Chainer's type checks are on."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.fc = L.Linear(2, 1)
        self.type_checks = []

    def forward(self, x, t):
        self.type_checks.append(chainer.config.type_check)
        return chainer.functions.sum(self.fc(x) ** 2)


@pytest.mark.parametrize('once, config, want', [
    (True, True, [True, False, False]),
    (False, True, [True, True, True]),
    (True, False, [False, False, False]),
])
def test_updater_type_checks_the_first_update_only(once, config, want):
    data = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * 4
    model = _TypeCheckRecorder()
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    updater = ConverterStateUpdater(SeededShuffleIterator(data, 2, 0), optimizer,
                                    check_types_once=once)
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
