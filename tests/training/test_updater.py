"""The updater of train.py: a non-finite step stops before it reaches the weights, the
type checks run once, the snapshot holds every random state, and the time of the
updates is counted."""

import random

import chainer
import chainer.links as L
import numpy
import pytest
from chainer import serializers
from chainer import testing
from chainer.backends.cuda import to_cpu

from capsnet_chainer.training.gated_adam import GatedAdam
from capsnet_chainer.training.iterators import SeededShuffleIterator
from capsnet_chainer.training.nonfinite import NonFiniteError
from capsnet_chainer.training.updater import ConverterStateUpdater
from conftest import get_device


#: The devices of the deferred check's tests
DEVICES = ['@numpy', pytest.param('@cupy:0', marks=pytest.mark.gpu)]


def _updater(model, n_data, optimizer_class=chainer.optimizers.Adam, device=None,
             **kwargs):
    """Adam on ``model`` and an updater over ``n_data`` copies of one 2-vector, batch 2
    (on ``device``, a name, where given)."""
    if device is not None:
        device = get_device(device)
        model.to_device(device)
        kwargs['device'] = device
    optimizer = optimizer_class()
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


def test_a_deferred_check_needs_a_gated_optimizer():
    with pytest.raises(ValueError, match='GatedAdam'):
        _updater(_Loss(), 4, defer_check=True)


@pytest.mark.parametrize('device', DEVICES)
def test_a_deferred_check_raises_in_the_next_step_of_the_epoch(device):
    model = _Loss('nan_times')  # NaN at the second step
    optimizer, updater = _updater(model, 8, GatedAdam, device, defer_check=True)  # 4 an epoch
    updater.update()
    W = to_cpu(model.fc.W.array).copy()
    updater.update()  # skipped on the device; no error yet
    numpy.testing.assert_array_equal(to_cpu(model.fc.W.array), W)
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite loss (nan) at epoch 1, iteration 2'
    numpy.testing.assert_array_equal(to_cpu(model.fc.W.array), W)


@pytest.mark.parametrize('device', DEVICES)
def test_a_deferred_check_raises_in_the_step_that_ends_the_epoch(device):
    """The epoch's extensions (snapshots, the best model, the log) never see a
    diverged step."""
    model = _Loss('nan_times')
    optimizer, updater = _updater(model, 4, GatedAdam, device, defer_check=True)  # 2 an epoch
    updater.update()
    W = to_cpu(model.fc.W.array).copy()
    with pytest.raises(NonFiniteError) as e:
        updater.update()
    assert str(e.value) == 'non-finite loss (nan) at epoch 1, iteration 2'
    assert updater.is_new_epoch
    numpy.testing.assert_array_equal(to_cpu(model.fc.W.array), W)
    updater.settle()  # raised once


@pytest.mark.parametrize('device', DEVICES)
def test_a_deferred_check_trains_as_the_synchronous_one(device):
    runs = []
    for defer in (False, True):
        numpy.random.seed(3)
        model = _Loss()
        _, updater = _updater(model, 6, GatedAdam, device, defer_check=defer)
        for _ in range(5):
            updater.update()
        runs.append([to_cpu(p.array).copy() for p in model.params()])
    for a, b in zip(*runs):
        numpy.testing.assert_array_equal(a, b)


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


def test_updates_count_their_seconds():
    _, updater = _updater(_Loss(), 4)
    assert updater.update_seconds == 0.0
    updater.update()
    first = updater.update_seconds
    updater.update()
    assert 0 < first < updater.update_seconds


class _Drawing(object):
    """A converter and a dataset that draw from their own RandomState, saved in
    snapshots (as RandomShift and PairSampler)."""

    def __init__(self, n=4):
        self.rng = numpy.random.RandomState(0)
        self.examples = [(numpy.ones(2, numpy.float32), numpy.int32(0))] * n

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def __call__(self, batch, device=None):
        x, t = chainer.dataset.concat_examples(batch, device)
        return x * numpy.float32(self.rng.uniform()), t

    def serialize(self, serializer):
        self.rng.set_state(('MT19937', serializer('keys', self.rng.get_state()[1]),
                            int(serializer('pos', self.rng.get_state()[2])), 0, 0.0))


def _draws(updater):
    """What the updater's next step would draw from every random state."""
    return (updater.converter.rng.uniform(), updater.get_iterator('main').dataset.rng.uniform(),
            numpy.random.uniform(), random.random())


def test_snapshot_holds_the_converters_datasets_numpys_and_pythons_random_states(tmp_path):
    def make():
        model = _Loss()
        optimizer = chainer.optimizers.Adam()
        optimizer.setup(model)
        data = _Drawing()
        return ConverterStateUpdater(SeededShuffleIterator(data, 2, 0), optimizer,
                                     converter=_Drawing())

    updater = make()
    for _ in range(3):
        updater.update()
    numpy.random.seed(11)
    random.seed(12)
    path = str(tmp_path / 'updater.npz')
    serializers.save_npz(path, updater)
    with numpy.load(path) as npz:
        for part in ('converter', 'dataset', 'numpy_random', 'python_random'):
            assert any(k.startswith(part + '/') for k in npz.files), part
    expected = _draws(updater)
    numpy.random.seed(0)
    random.seed(0)
    restored = make()
    serializers.load_npz(path, restored)
    assert _draws(restored) == expected
    assert restored.iteration == 3


testing.run_module(__name__, __file__)
