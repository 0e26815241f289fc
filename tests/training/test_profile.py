"""StepProfile: a profiled step is the updater's own step (the same weights, optimizer
state, batches and errors), its phases and the extensions between steps are timed, and
the Trainer runs and snapshots as it does without it."""

import chainer
import chainer.links as L
import numpy
import pytest
from chainer import testing
from chainer import training

from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.resident import index_dataset
from capsnet_chainer.datasets.resident import ResidentShift
from capsnet_chainer.training import profile as profile_mod
from capsnet_chainer.training.iterators import SeededShuffleIterator
from capsnet_chainer.training.nonfinite import NonFiniteError
from capsnet_chainer.training.profile import StepProfile
from capsnet_chainer.training.updater import ConverterStateUpdater

NUMPY = chainer.get_device('@numpy')


def images(n=40, seed=0):
    rs = numpy.random.RandomState(seed)
    x = rs.rand(n, 1, 6, 6).astype(numpy.float32)
    t = rs.randint(0, 3, n).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


def make_updater(profile=None, resident=False, seed=0, **kwargs):
    numpy.random.seed(seed)
    model = L.Classifier(L.Linear(36, 3))
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    dataset = images()
    shift = RandomShift(2, per_image=True, seed=3)
    if resident:
        iterator = SeededShuffleIterator(index_dataset(len(dataset)), 16, 1)
        converter = ResidentShift(shift, dataset, NUMPY)
    else:
        iterator, converter = SeededShuffleIterator(dataset, 16, 1), shift
    updater = ConverterStateUpdater(iterator, optimizer, converter=converter, device=NUMPY,
                                    profile=profile, **kwargs)
    return model, optimizer, updater


def state(updater, tmp_path, name):
    path = str(tmp_path / name)
    chainer.serializers.save_npz(path, updater)
    with numpy.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize('resident', [False, True])
def test_a_profiled_step_is_the_updaters_own_step(tmp_path, resident):
    _, _, plain = make_updater()
    profile = StepProfile(NUMPY, device_steps=(3,))
    _, _, profiled = make_updater(profile, resident=resident)
    for _ in range(7):  # past the end of epoch 1 (3 batches of 16 from 40)
        numpy.random.seed(11)  # the global generator is in the snapshot too
        plain.update()
        numpy.random.seed(11)
        profiled.update()
    want, got = state(plain, tmp_path, 'a.npz'), state(profiled, tmp_path, 'b.npz')
    assert want.keys() == got.keys()
    for k in want:
        numpy.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert profiled.epoch == plain.epoch == 2
    assert profiled.get_optimizer('main').epoch == 2  # new_epoch as Chainer's step
    records = profile.records()
    assert [r['iteration'] for r in records] == list(range(1, 8))
    assert [r['device'] for r in records] == [i == 3 for i in range(1, 8)]
    assert [r['epoch'] for r in records] == [1, 1, 1, 2, 2, 3, 3]  # 40 = 16 + 16 + 8
    for r in records:
        for phase in profile_mod.PHASES:
            wall, cpu, gpu = r[phase]
            assert wall >= 0 and cpu >= 0 and gpu is None
        assert (profile_mod.BETWEEN in r) == (r['iteration'] < 7)


def test_a_profiled_step_refuses_a_non_finite_step_alike():
    model, optimizer, updater = make_updater(StepProfile())
    model.predictor.W.array[0, 0] = numpy.nan
    with pytest.raises(NonFiniteError, match='non-finite loss'):
        updater.update()
    assert optimizer.t == 0


def test_a_profiled_step_keeps_the_type_checks_once(monkeypatch):
    _, _, updater = make_updater(StepProfile())
    seen = []
    step = StepProfile.step

    def spy(self, u):
        seen.append(chainer.config.type_check)
        return step(self, u)
    monkeypatch.setattr(StepProfile, 'step', spy)
    for _ in range(3):
        updater.update()
    assert seen == [True, False, False]
    assert updater.update_seconds > 0


def test_profile_refuses_an_optimizer_it_cannot_split():
    _, optimizer, updater = make_updater(StepProfile())
    optimizer._use_cleargrads = False  # use_cleargrads(False), without its warning
    with pytest.raises(ValueError, match='GradientMethod'):
        updater.update()


def run_trainer(tmp_path, profile, epochs=3):
    model, optimizer, updater = make_updater(profile)
    trainer = training.Trainer(updater, (epochs, 'epoch'), out=str(tmp_path / 'out'))
    trainer.extend(training.extensions.Evaluator(
        chainer.iterators.SerialIterator(images(12, 1), 6, repeat=False, shuffle=False),
        model, device=NUMPY))
    trainer.extend(training.extensions.LogReport())
    trainer.extend(training.extensions.PrintReport(['epoch', 'main/loss']))
    trainer.extend(training.extensions.snapshot(), trigger=(1, 'epoch'))
    if profile is not None:
        profile.wrap_extensions(trainer)
    trainer.run()
    if profile is not None:
        profile.finish()
    return trainer, model


def test_the_trainer_runs_and_snapshots_alike_with_a_profile(tmp_path, capsys):
    plain, plain_model = run_trainer(tmp_path / 'a', None)
    profile = StepProfile(NUMPY, device_steps=(4,))
    profiled, model = run_trainer(tmp_path / 'b', profile)
    numpy.testing.assert_array_equal(model.predictor.W.array, plain_model.predictor.W.array)
    assert [e['main/loss'] for e in profiled.get_extension('LogReport').log] == \
        [e['main/loss'] for e in plain.get_extension('LogReport').log]
    assert sorted(p.name for p in (tmp_path / 'b' / 'out').glob('snapshot_*')) == [
        'snapshot_iter_3', 'snapshot_iter_5', 'snapshot_iter_8']
    summary = profile.summary(skip_epochs=1)
    assert summary['natural_steps'] == 4 and summary['device_steps'] == 1
    assert set(summary['phases']) == set(profile_mod.PHASES + (profile_mod.BETWEEN,))
    for figures in summary['phases'].values():
        assert figures['wall_ms'] >= 0 and 'gpu_busy_ms' not in figures
    assert [e['epoch'] for e in summary['epochs']] == [1, 2, 3]
    assert [e['steps'] for e in summary['epochs']] == [3, 2, 3]  # 40 = 16 + 16 + 8 ...
    assert [e['device_steps'] for e in summary['epochs']] == [0, 1, 0]
    for e in summary['epochs']:
        assert e['wall_s'] >= e['steps_s'] + e['extensions_s'] - 1e-6
    calls = summary['extensions']
    assert calls['validation']['calls'] == 3  # once per epoch, the last one too
    assert calls['LogReport']['calls'] == 8
    assert calls['validation']['seconds'] >= calls['validation']['seconds_after_skip']


class FakeCupy(object):
    """NumPy with CUDA events that say each of the 10 measured products took 2 ms."""

    class cuda(object):
        class Event(object):
            def record(self):
                pass

            def synchronize(self):
                pass

        @staticmethod
        def get_elapsed_time(start, stop):
            return 20.0

    def __init__(self):
        self.products = 0

    ones, empty_like = staticmethod(numpy.ones), staticmethod(numpy.empty_like)

    def matmul(self, a, b, out):
        assert a.shape == (2048, 2048) and out.dtype == numpy.float32
        self.products += 1


def test_busy_work_queues_more_than_the_host_takes_to_issue_what_follows():
    xp = FakeCupy()
    busy = profile_mod.BusyWork(xp)
    busy.ahead_of(1.0, floor_ms=20.0)  # 20 ms: the set-up, 10 measured, then 11
    assert xp.products == 1 + 10 + 11
    busy.ahead_of(10.0, floor_ms=20.0)  # three times the host's 10 ms: 16
    assert xp.products == 22 + 16
    busy.queue(0.0)
    assert xp.products == 22 + 16 + 1


testing.run_module(__name__, __file__)
