"""The extensions of train.py's trainer: the stop trigger, the epoch times, the best
model, the log and its plots, the reconstructions while training, and the early
estimate of the run's time."""

import json
import os
import types
from types import SimpleNamespace

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import chainer.links as L
import matplotlib.image
import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer.fileio import BackgroundWriter
from capsnet_chainer.io.modelfile import META_KEY
from capsnet_chainer.training import extensions
from capsnet_chainer.training.extensions import BestModelSaver
from conftest import is_green
from conftest import tile_colours


# What the run reports and keeps


def test_the_accuracies_and_the_selection_rule():
    assert extensions.TEST_ACCURACY == 'validation/main/accuracy'
    assert extensions.HELDOUT_ACCURACY == 'heldout/main/accuracy'
    key, rule = extensions.selection_rule()
    assert key == extensions.TEST_ACCURACY and 'reference' in rule
    key, rule = extensions.selection_rule(32)
    assert key == extensions.HELDOUT_ACCURACY
    assert rule.startswith('best accuracy on the last 32 training images, held out of '
                           'training (--validation 32)')


def test_log_keys():
    assert extensions.log_keys() == (['main/loss', 'validation/main/loss'],
                                     ['main/accuracy', 'validation/main/accuracy'])
    losses, accuracies = extensions.log_keys(reconstruct=True, pairs=True, heldout=True)
    assert losses == ['main/loss', 'validation/main/loss', 'main/loss/margin',
                      'main/loss/recon', 'validation/main/loss/margin',
                      'validation/main/loss/recon', 'heldout/main/loss']
    assert accuracies == ['main/accuracy', 'validation/main/accuracy',
                          'validation/main/accuracy/one', 'heldout/main/accuracy']


@pytest.mark.parametrize('n, batchsize, n_process, expected', [
    (100, 100, 1, 100),   # one full batch
    (10, 16, 1, 10),      # one partial batch: the mean is over its examples
    (32, 16, 1, 32),      # two full batches
    (100, 16, 1, None),   # 6 x 16 + 4: batches of two sizes
    (100, 25, 4, 100),    # 25 per process, one batch each
    (300, 100, 3, 300),
    (101, 100, 2, None),  # the processes' parts differ
    (10000, 100, 3, None),
])
def test_countable_where_batch_means_average_to_the_mean(n, batchsize, n_process, expected):
    assert extensions.countable(n, batchsize, n_process) == expected


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


def _meta(path):
    with numpy.load(str(path)) as npz:
        return json.loads(str(npz[META_KEY]))


def test_best_model_records_the_accuracies_and_their_counts_where_they_follow(tmp_path):
    model = _Configured()
    path = tmp_path / 'best'
    saver = BestModelSaver(model, str(path), key='heldout/main/accuracy', meta={'run': 1},
                           sizes={'heldout/main/accuracy': 32,
                                  'validation/main/accuracy': 100},
                           batchsize=16)
    trainer = SimpleNamespace(observation={'heldout/main/accuracy': numpy.float32(0.75),
                                           'validation/main/accuracy': 0.5},
                              updater=SimpleNamespace(epoch=2, iteration=8))
    saver(trainer)
    meta = _meta(path)
    assert meta['run'] == 1 and (meta['epoch'], meta['iteration']) == (2, 8)
    assert meta['heldout/main/accuracy'] == 0.75 and meta['validation/main/accuracy'] == 0.5
    assert meta['heldout/main/accuracy_correct'] == 24  # 32 = 2 x 16
    assert 'validation/main/accuracy_correct' not in meta  # 100 = 6 x 16 + 4
    assert meta['saved'].endswith('+00:00')
    # Not better: not written again; better: written
    os.remove(str(path))
    trainer.observation['heldout/main/accuracy'] = 0.75
    saver(trainer)
    assert not path.exists()
    trainer.observation['heldout/main/accuracy'] = 0.8
    trainer.updater.epoch = 3
    saver(trainer)
    assert _meta(path)['epoch'] == 3 and saver.best == pytest.approx(0.8)


def test_best_score_is_in_the_snapshot_and_no_path_only_tracks_it(tmp_path):
    saver = BestModelSaver(_Configured(), None, key='acc')
    saver(SimpleNamespace(observation={'acc': 0.6},
                          updater=SimpleNamespace(epoch=1, iteration=1)))
    saver(SimpleNamespace(observation={}, updater=None))  # not reported: nothing
    assert saver.best == pytest.approx(0.6) and os.listdir(str(tmp_path)) == []
    target = chainer.serializers.DictionarySerializer()
    saver.serialize(target)
    restored = BestModelSaver(_Configured(), None, key='acc')
    restored.serialize(chainer.serializers.NpzDeserializer(target.target))
    assert restored.best == pytest.approx(0.6)


# The trigger, the times, the log and its plots


def test_epoch_limit_is_a_stateless_trigger():
    limit = extensions.EpochLimit(3)
    assert limit.get_training_length() == (3, 'epoch')
    for detail, stop in ((0.5, False), (2.99, False), (3.0, True), (4.25, True)):
        trainer = SimpleNamespace(updater=SimpleNamespace(epoch_detail=detail))
        assert limit(trainer) is stop
    assert not hasattr(limit, 'serialize')


def test_epoch_times_report_the_updates_and_the_rest(monkeypatch):
    clock = iter([10.0, 25.0, 27.5])
    monkeypatch.setattr(extensions.time, 'perf_counter', lambda: next(clock))
    updater = SimpleNamespace(update_seconds=1.0)
    trainer = SimpleNamespace(updater=updater)
    times = extensions.EpochTimes()
    times.initialize(trainer)  # t = 10
    updater.update_seconds = 13.0  # 12 s of updates in the epoch
    observation = {}
    with chainer.Reporter().scope(observation):
        times(trainer)  # t = 25
    assert observation == {'time/updates': 12.0, 'time/rest': 3.0}
    updater.update_seconds = 15.0
    observation = {}
    with chainer.Reporter().scope(observation):
        times(trainer)  # t = 27.5: 2 s of updates, 0.5 s else
    assert observation == {'time/updates': 2.0, 'time/rest': 0.5}


def test_log_and_its_plot_are_written_atomically_every_epoch(tmp_path):
    rng = numpy.random.RandomState(0)
    data = chainer.datasets.TupleDataset(rng.rand(8, 3).astype(numpy.float32),
                                         rng.randint(0, 2, 8).astype(numpy.int32))
    model = L.Classifier(L.Linear(3, 2))
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    updater = chainer.training.updaters.StandardUpdater(
        chainer.iterators.SerialIterator(data, 4), optimizer)
    trainer = chainer.training.Trainer(updater, extensions.EpochLimit(2), out=str(tmp_path))
    trainer.extend(extensions.AtomicLogReport(), name='LogReport')
    trainer.extend(extensions.LogPlot(['main/loss', 'main/accuracy', 'absent'], 'loss.png'))
    trainer.run()
    assert sorted(os.listdir(str(tmp_path))) == ['log', 'loss.png']  # no temporary file
    with open(str(tmp_path / 'log')) as f:
        log = json.load(f)
    assert [(e['epoch'], e['iteration']) for e in log] == [(1, 2), (2, 4)]
    assert all('main/loss' in e for e in log)
    assert matplotlib.image.imread(str(tmp_path / 'loss.png')).shape[2] in (3, 4)


def test_log_plot_draws_at_most_every_min_interval_and_at_the_end(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(extensions.time, 'monotonic', lambda: clock[0])
    log = SimpleNamespace(log=[])
    trainer = SimpleNamespace(out=str(tmp_path), get_extension=lambda name: log)
    plot = extensions.LogPlot(['main/loss'], 'loss.png', min_interval=10)
    drawn = []
    monkeypatch.setattr(plot, 'draw', lambda t: drawn.append(len(log.log)))
    for epoch, seconds in enumerate([0, 3, 3, 3, 3, 12], 1):  # epochs' ends
        clock[0] += seconds
        log.log.append({'epoch': epoch, 'main/loss': 1.0 / epoch})
        plot(trainer)
    assert drawn == [1, 5, 6]  # at 100 s, 112 s (10 s on), 124 s
    plot.finalize()
    assert drawn == [1, 5, 6]  # nothing left to draw
    clock[0] += 1
    log.log.append({'epoch': 7, 'main/loss': 0.1})
    plot(trainer)
    plot.finalize()  # the last epoch, drawn at the end
    assert drawn == [1, 5, 6, 7]
    every = extensions.LogPlot(['main/loss'], 'loss.png')  # min_interval 0: every epoch
    monkeypatch.setattr(every, 'draw', lambda t: drawn.append('every'))
    every(trainer)
    every(trainer)
    assert drawn[-2:] == ['every', 'every']


def test_log_plot_that_cannot_be_written_warns_and_goes_on(tmp_path, capsys):
    log = SimpleNamespace(log=[{'epoch': 1, 'main/loss': 0.5}])
    trainer = SimpleNamespace(out=str(tmp_path / 'missing'),
                              get_extension=lambda name: log)
    extensions.LogPlot(['main/loss'], 'loss.png')(trainer)
    assert 'warning: cannot write' in capsys.readouterr().err


# The training-time view


def test_reconstruction_report_fake_trainer(model, samples, tmp_path):
    x, t = samples
    report = extensions.ReconstructionReport(model, x, t)
    trainer = types.SimpleNamespace(
        out=str(tmp_path / 'result'),
        updater=types.SimpleNamespace(epoch=3, iteration=30))
    report(trainer)
    path = tmp_path / 'result' / 'reconstruction_epoch_3.png'
    assert os.listdir(str(tmp_path / 'result')) == [path.name]
    assert matplotlib.image.imread(str(path)).shape[:2] == (100, 1000)
    colours = tile_colours(str(path), 2, 20)
    assert is_green(colours[0]).all() and not is_green(colours[1]).any()


def test_reconstruction_report_in_a_trainer(tmp_path):
    rng = numpy.random.RandomState(0)
    x = rng.rand(4, 1, 28, 28).astype(numpy.float32)
    t = numpy.array([0, 1, 0, 1], numpy.int32)
    dataset = chainer.datasets.TupleDataset(x, t)
    model = CapsNet(reconstruct=True)
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(dataset, 4, shuffle=False)
    updater = chainer.training.updaters.StandardUpdater(iterator, optimizer)
    trainer = chainer.training.Trainer(updater, (3, 'epoch'), out=str(tmp_path))
    report = extensions.ReconstructionReport.from_dataset(
        model, dataset, filename='recon_{epoch}_{iteration}.png', trigger=(2, 'epoch'))
    numpy.testing.assert_array_equal(report.t, [0, 0, 1, 1])
    numpy.testing.assert_array_equal(report.x, x[[0, 2, 1, 3]])
    trainer.extend(report)
    trainer.run()
    assert sorted(os.listdir(str(tmp_path))) == ['recon_2_2.png']
    image = matplotlib.image.imread(str(tmp_path / 'recon_2_2.png'))
    assert image.shape[:2] == (100, 200)


# The estimate of the run's time


class _Run(object):
    """A trainer's iterations, each ``pace`` seconds (the first 30 s more: it also sets
    things up), with an extension called after each."""

    def __init__(self, monkeypatch, pace, steps_per_epoch):
        self.now = 100.0
        monkeypatch.setattr(extensions.time, 'perf_counter', lambda: self.now)
        self.pace, self.steps_per_epoch = pace, steps_per_epoch
        self.updater = SimpleNamespace(iteration=0, epoch_detail=0.0)
        self.trainer = SimpleNamespace(updater=self.updater)

    def iterate(self, extension, n):
        for _ in range(n):
            self.updater.iteration += 1
            self.now += self.pace + (30.0 if self.updater.iteration == 1 else 0.0)
            self.updater.epoch_detail = self.updater.iteration / self.steps_per_epoch
            extension(self.trainer)


def test_run_time_estimate_says_once_after_n_measure_iterations(monkeypatch, capsys):
    estimate = extensions.RunTimeEstimate(500, 'Go faster', n_measure=5)
    run = _Run(monkeypatch, 2.0, 100)
    run.iterate(estimate, 5)  # the first, then 4 timed
    assert capsys.readouterr().out == '' and estimate.said is None
    run.iterate(estimate, 1)  # the 5th timed
    out = capsys.readouterr().out
    # 500 epochs of 100 steps at 2 s (the first step's set-up left out): 100,000 s
    assert out == ('# at 2.00 s per step (100 steps an epoch), 500 epochs take about '
                   '28 hours of training steps, more with the test set every epoch. Go '
                   'faster\n')
    assert estimate.said == out.strip()
    run.iterate(estimate, 20)
    assert capsys.readouterr().out == ''  # once only


def test_run_time_estimate_without_advice(monkeypatch, capsys):
    estimate = extensions.RunTimeEstimate(2, n_measure=3)
    _Run(monkeypatch, 0.5, 10).iterate(estimate, 4)
    assert capsys.readouterr().out == (
        '# at 0.50 s per step (10 steps an epoch), 2 epochs take about 10 seconds of '
        'training steps, more with the test set every epoch\n')


@pytest.mark.parametrize('seconds, words', [
    (0.4, '0 seconds'),
    (40, '40 seconds'),
    (119, '119 seconds'),
    (120, '2.0 minutes'),
    (720, '12 minutes'),
    (7199, '120 minutes'),
    (7.5 * 3600, '7.5 hours'),
    (47 * 3600, '47 hours'),
    (2.9 * 86400, '2.9 days'),
    (42 * 86400, '42 days'),
])
def test_duration_in_words(seconds, words):
    assert extensions.duration(seconds) == words


testing.run_module(__name__, __file__)
