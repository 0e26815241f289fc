"""Trainer assembly: iterators, updater, learning-rate schedule, extensions.

:func:`build_trainer` puts together the trainer of ``train.py`` the way Chainer's
examples do. Everything here serves two promises:

* A run killed at any moment and resumed from its last snapshot ends bit for bit where
  an uninterrupted run ends (on the CPU): the updater saves every random state, and the
  extensions keep their state in the snapshot (:mod:`capsnet_chainer.snapshots`).
* Nothing is half-written: snapshots, the log, the plots and the best model go to a
  temporary file that is renamed when complete, and a non-finite loss or gradient stops
  the run before it can reach a snapshot (:mod:`capsnet_chainer.nonfinite`). The
  snapshots and the best model are written on a thread, in order, from copies taken
  at the end of the epoch, while the next epoch trains
  (:class:`~capsnet_chainer.fileio.BackgroundWriter`); the run ends once they are.
"""

import io
import json
import os
import sys
import time

import chainer
import numpy
from chainer import training
from chainer.iterators import SerialIterator
from chainer.training import extensions

from capsnet_chainer import distributed
from capsnet_chainer.fileio import BackgroundWriter
from capsnet_chainer.fileio import ImmediateWriter
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.modelfile import model_arrays
from capsnet_chainer.modelfile import model_file_writer
from capsnet_chainer.nonfinite import NonFiniteCheck
from capsnet_chainer.nonfinite import to_float
from capsnet_chainer.provenance import utc_now
from capsnet_chainer.random_state import SeededShuffleIterator
from capsnet_chainer.random_state import serialize_python_random
from capsnet_chainer.random_state import serialize_random_state
from capsnet_chainer.snapshots import Snapshot

#: The test set's accuracy in the log (Chainer's Evaluator reports as 'validation').
TEST_ACCURACY = 'validation/main/accuracy'
#: The accuracy on the images held out of training by ``--validation``.
HELDOUT_ACCURACY = 'heldout/main/accuracy'


# The updater


class ConverterStateUpdater(training.updaters.StandardUpdater):
    """A :class:`StandardUpdater` that saves every random state and refuses NaN.

    Its snapshot state adds the converter's (the shift RNG's), the training dataset's
    where it has one (the pair sampler of MultiMNIST), NumPy's global generator and
    Python's :mod:`random`. With ``check_finite`` it registers the optimizer hook
    :class:`~capsnet_chainer.nonfinite.NonFiniteCheck`, which Chainer calls between the
    backward pass and the update, and lets it watch the loss: a NaN or infinite loss or
    gradient raises :class:`~capsnet_chainer.nonfinite.NonFiniteError` before it
    reaches the weights.

    With ``check_types_once``, Chainer's type checks (each function's checks of its
    inputs' dtypes and shapes, in Python) run in its first update only: every later step
    calls the same functions on batches of the same dtypes and ranks, and on a GPU the
    checks are a third of the host's time per step (6 of 18.4 ms on an H200, README
    "GPU"), where the host, not the GPU, bounds the step. Where
    ``chainer.config.type_check`` is off they never run.

    Args:
        check_finite (bool): Check the loss and gradients (one device sync per step).
        check_types_once (bool): Type-check the first update only (else every update,
            as ``chainer.config.type_check`` says).
        Others: As :class:`~chainer.training.updaters.StandardUpdater`.
    """

    def __init__(self, iterator, optimizer, check_finite=True, loss_func=None,
                 check_types_once=True, **kwargs):
        if check_finite:
            check = NonFiniteCheck()
            loss_func = check.watch(loss_func or optimizer.target)
            optimizer.add_hook(check, timing='pre')
        super().__init__(iterator, optimizer, loss_func=loss_func, **kwargs)
        self.check_finite = check_finite
        self.check_types_once = check_types_once
        self._types_checked = False  # not in the snapshot: a resumed run checks again
        #: Seconds spent in updates so far (for :class:`EpochTimes`; not in the snapshot)
        self.update_seconds = 0.0

    def update_core(self):
        start = time.perf_counter()
        if self.check_types_once and self._types_checked:
            with chainer.using_config('type_check', False):
                super().update_core()
        else:
            super().update_core()
            self._types_checked = True
        self.update_seconds += time.perf_counter() - start

    def serialize(self, serializer):
        super().serialize(serializer)
        if hasattr(self.converter, 'serialize'):
            self.converter.serialize(serializer['converter'])
        dataset = getattr(self.get_iterator('main'), 'dataset', None)
        if hasattr(dataset, 'serialize'):
            dataset.serialize(serializer['dataset'])
        serialize_random_state(serializer['numpy_random'], numpy.random)
        serialize_python_random(serializer['python_random'])


# Extensions


class EpochLimit(object):
    """Stop trigger: ``epoch_detail >= n_epoch``. Stateless, so ``-e`` may change on resume.

    Chainer's interval trigger saves its previous position, and one restored at exactly
    ``n_epoch`` never fires again.
    """

    def __init__(self, n_epoch):
        self.n_epoch = n_epoch

    def __call__(self, trainer):
        return trainer.updater.epoch_detail >= self.n_epoch

    def get_training_length(self):
        return self.n_epoch, 'epoch'


class EpochTimes(training.Extension):
    """Reports, once an epoch, where its wall time went: ``time/updates``, the seconds in
    the updater (batches, forward, backward, the non-finite check and Adam's update; on
    a GPU up to the check's sync in each step), and ``time/rest``, every other second
    since the previous report (the evaluations of this epoch; the log, plots, model
    file and snapshot of the previous one; the progress bar). They go to the log, not
    to the snapshot: after a resume the first epoch counts from the resume.
    """

    trigger = (1, 'epoch')
    #: After the evaluators (and the ranks' mean), before the log reads the epoch
    priority = (training.PRIORITY_EDITOR + training.PRIORITY_READER) // 2

    def initialize(self, trainer):
        self._start = time.perf_counter()
        self._updates = trainer.updater.update_seconds

    def __call__(self, trainer):
        now = time.perf_counter()
        updates = trainer.updater.update_seconds - self._updates
        chainer.report({'time/updates': round(updates, 3),
                        'time/rest': round(now - self._start - updates, 3)})
        self._start, self._updates = now, trainer.updater.update_seconds


class BestModelSaver(training.Extension):
    """Tracks the best ``key`` so far and writes the model to ``path`` at each new best.

    The best score is part of the snapshot, so a resumed run keeps it. The model file's
    metadata gets ``meta``, the epoch, the time, the ``key`` value and, for each entry of
    ``sizes`` (``{reported key: examples}``), that accuracy and, where the number of
    examples is given (not ``None``), its count of correct answers (``<key>_correct``).

    Args:
        model (CapsNet): The model to write.
        path (str): Where to write it (atomically, with its configuration); ``None``
            only tracks the score.
        key (str): The reported value to maximise.
        meta (dict): Provenance written with the model.
        sizes (dict): Accuracy keys to record beside ``key``, with their example counts.
        writer (~capsnet_chainer.fileio.BackgroundWriter): Write on its thread, from a
            copy of the parameters taken at the call (``None``: write at once). Share
            it with the :class:`~capsnet_chainer.snapshots.Snapshot`: files then appear
            in the order of the calls, so a snapshot's best score never gets ahead of
            the model file.
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER

    def __init__(self, model, path, key=TEST_ACCURACY, meta=None, sizes=None,
                 writer=None):
        self.model = model
        self.path = path
        self.key = key
        self.meta = dict(meta or {})
        self.sizes = dict(sizes or {})
        self.writer = writer or ImmediateWriter()
        self.best = -numpy.inf

    def __call__(self, trainer):
        self.writer.check()
        value = trainer.observation.get(self.key)
        if value is None:
            return
        value = to_float(getattr(value, 'array', value))
        if value > self.best:
            self.best = value
            if self.path:
                meta = dict(self.meta, epoch=trainer.updater.epoch,
                            iteration=trainer.updater.iteration, saved=utc_now(),
                            **{self.key: value})
                for key, size in self.sizes.items():
                    if key in trainer.observation:
                        observed = trainer.observation[key]
                        accuracy = to_float(getattr(observed, 'array', observed))
                        meta[key] = accuracy
                        if size:
                            meta[key + '_correct'] = int(round(accuracy * size))
                self.writer.submit(self.path,
                                   model_file_writer(model_arrays(self.model, meta)),
                                   error=self._error)

    def _error(self, e):
        return OSError(e.errno, 'cannot write the best model ({}); the previous one is '
                       'intact'.format(e.strerror), self.path)

    def finalize(self):
        self.writer.wait()

    def serialize(self, serializer):
        self.best = float(serializer('best', self.best))


class AtomicLogReport(extensions.LogReport):
    """:class:`~chainer.training.extensions.LogReport` that writes with
    :func:`~capsnet_chainer.fileio.write_atomic` (flushed to disk, no stray folders).

    Register it under the name ``'LogReport'`` so that ``PrintReport`` finds it.
    """

    def __init__(self, trigger=(1, 'epoch'), filename='log'):
        super().__init__(trigger=trigger, filename=filename)
        self._file_name = filename
        self._log_name = None  # the parent writes nothing; __call__ does

    def __call__(self, trainer):
        n_entry = len(self._log)
        super().__call__(trainer)
        if len(self._log) > n_entry:
            text = json.dumps(self._log, indent=4)
            write_atomic(os.path.join(trainer.out, self._file_name),
                         lambda f: f.write(text.encode()))


class LogPlot(training.Extension):
    """Plots entries of the log against the epoch into ``trainer.out`` (atomically).

    Unlike :class:`~chainer.training.extensions.PlotReport` it draws from the
    :class:`AtomicLogReport`'s log and keeps no state of its own, so the figure after a
    resume is the figure of an uninterrupted run. A figure that cannot be written is
    reported and skipped: figures never stop training.

    Args:
        keys (list of str): Log entries to plot.
        filename (str): PNG file name in ``trainer.out``.
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER - 1  # after the log has its new entry

    def __init__(self, keys, filename, log_report='LogReport'):
        self.keys = list(keys)
        self.filename = filename
        self.log_report = log_report

    def __call__(self, trainer):
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            return
        log = trainer.get_extension(self.log_report).log
        fig, ax = plt.subplots()
        for key in self.keys:
            points = [(entry['epoch'], entry[key]) for entry in log if key in entry]
            if points:
                ax.plot(*zip(*points), marker='x', label=key)
        ax.set_xlabel('epoch')
        ax.grid(True)
        if ax.lines:
            ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), fontsize='small')
        buf = io.BytesIO()
        fig.savefig(buf, format='png', bbox_inches='tight')
        plt.close(fig)
        path = os.path.join(trainer.out, self.filename)
        try:
            write_atomic(path, lambda f: f.write(buf.getvalue()))
        except OSError as e:
            print('warning: cannot write {}: {}'.format(path, e), file=sys.stderr)


# The trainer


def selection_rule(n_heldout=0):
    """How ``--save`` picks its model: ``(reported key, description)``."""
    if n_heldout:
        return HELDOUT_ACCURACY, (
            'best accuracy on the last {} training images, held out of training '
            '(--validation {}); the test set is scored for the report only'.format(
                n_heldout, n_heldout))
    return TEST_ACCURACY, 'best test accuracy (the reference implementation\'s rule)'


def build_trainer(model, train, test, device, converter, *, batchsize=256, epoch=500,
                  alpha=1e-3, decay=0.95, decay_every=0, min_alpha=1e-5, seed=789,
                  out='result', save=None, keep=1, test_batchsize=100, snapshot_every=0,
                  settings=None, meta=None, heldout=None, pairs=False, comm=None):
    """Assembles the :class:`~chainer.training.Trainer` the way Chainer's examples do.

    The defaults are those of ``train.py``.

    Args:
        model (CapsNet): The loss chain, already on ``device``.
        train, test: Datasets of ``(x, t)``.
        device (chainer.backend.Device): Where to train.
        converter: Training batch converter (the shift augmentation).
        batchsize (int): Training batch size.
        epoch (int): Train until this epoch.
        alpha (float): Adam's initial learning rate.
        decay (float): Learning-rate factor per epoch, or per ``decay_every``.
        decay_every (int): Decay every this many iterations; 0: every epoch.
        min_alpha (float): Floor of the decayed learning rate.
        seed (int): Seed of the training iterator's order.
        out (str): Folder for snapshots, the log and plots.
        save (str): Where to write the best model, or ``None``.
        keep (int): Snapshots to keep.
        test_batchsize (int): Evaluation batch size.
        snapshot_every (int): Also snapshot every this many iterations (0: at epoch
            ends only).
        settings (dict): The run's settings, stored in every snapshot
            (:func:`~capsnet_chainer.snapshots.run_settings`).
        meta (dict): Provenance stored with the best model.
        heldout: Images held out of ``train`` (``--validation``), or ``None``. When
            given, they are evaluated every epoch (``heldout/main/...``) and choose the
            best model; the test set is then scored for the report only.
        pairs (bool): The examples are MultiMNIST pairs: the log and the plots also
            show ``accuracy/one`` (at least one of the two digits right).
        comm: A ChainerMN communicator to train data-parallel over MPI, or ``None``
            (one process). ``batchsize`` is then the global batch; each rank trains on
            its slice of every batch and evaluates its part of ``test`` and
            ``heldout``, and only rank 0 logs, plots and writes files (see
            :mod:`capsnet_chainer.distributed`).
    """
    # Triggers
    epoch_trigger = (1, 'epoch')
    decay_trigger = (decay_every, 'iteration') if decay_every else epoch_trigger

    # Set up an optimizer
    optimizer = chainer.optimizers.Adam(alpha=alpha)
    if comm is None:
        optimizer.setup(model)
    else:
        optimizer = distributed.create_multi_node_optimizer(optimizer, model, comm)

    # Iterators (under MPI, each rank's slice of every global batch, and its part of
    # the test set)
    if comm is None:
        train_iter = SeededShuffleIterator(train, batchsize, seed)
    else:
        train_iter = distributed.ScatteredBatchIterator(
            train, batchsize, seed, comm.rank, comm.size)
    n_test = len(test)
    test = distributed.shard(test, comm)
    test_iter = SerialIterator(test, test_batchsize, repeat=False, shuffle=False)

    # Set up a trainer
    updater = ConverterStateUpdater(
        train_iter, optimizer, converter=converter, device=device)
    trainer = training.Trainer(updater, EpochLimit(epoch), out=out)

    trainer.extend(distributed.evaluator(test_iter, model, device, comm))
    # The Evaluator averages batch means (and the multi-node one the ranks' means): a
    # count of correct answers follows from it only when all batches have one size.
    sizes = {TEST_ACCURACY: n_test}
    n_heldout = len(heldout) if heldout is not None else 0
    if heldout is not None:
        heldout_iter = SerialIterator(distributed.shard(heldout, comm), test_batchsize,
                                      repeat=False, shuffle=False)
        trainer.extend(distributed.evaluator(heldout_iter, model, device, comm),
                       name='heldout')
        sizes[HELDOUT_ACCURACY] = n_heldout
    bs, n_rank = test_batchsize, comm.size if comm is not None else 1
    sizes = {k: n if n % n_rank == 0 and (n // n_rank % bs == 0 or n // n_rank < bs)
             else None for k, n in sizes.items()}
    trainer.extend(extensions.ExponentialShift('alpha', decay, target=min_alpha),
                   trigger=decay_trigger)
    if comm is not None:
        trainer.extend(distributed.MeanObservations(comm))
        if comm.rank != 0:
            return trainer  # rank 0 alone logs, plots and writes
    key, rule = selection_rule(n_heldout)
    meta = dict(meta or {}, selection={'key': key, 'rule': rule})
    # The model files and snapshots are written on a thread, in order, while training
    # goes on (on a GPU, seconds of every epoch)
    writer = BackgroundWriter('capsnet-writer')
    trainer.extend(BestModelSaver(model, save, key=key, meta=meta, sizes=sizes,
                                  writer=writer))
    trainer.extend(Snapshot(snapshot_every, keep, settings, writer=writer))
    trainer.extend(EpochTimes())
    trainer.extend(extensions.observe_value('alpha', lambda t: optimizer.alpha),
                   trigger=epoch_trigger)
    trainer.extend(AtomicLogReport(trigger=epoch_trigger), name='LogReport')

    losses = ['main/loss', 'validation/main/loss']
    if model.reconstruct:
        losses += ['main/loss/margin', 'main/loss/recon',
                   'validation/main/loss/margin', 'validation/main/loss/recon']
    accuracies = ['main/accuracy', TEST_ACCURACY]
    if pairs:
        accuracies.append(TEST_ACCURACY + '/one')
    if heldout is not None:
        losses.append('heldout/main/loss')
        accuracies.append(HELDOUT_ACCURACY)
    trainer.extend(LogPlot(losses, 'loss.png'), name='LossPlot')
    trainer.extend(LogPlot(accuracies, 'accuracy.png'), name='AccuracyPlot')
    trainer.extend(extensions.PrintReport(
        ['epoch'] + losses + accuracies + ['alpha', 'elapsed_time']))
    trainer.extend(extensions.ProgressBar(update_interval=10))
    return trainer
