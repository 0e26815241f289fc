"""Trainer assembly: iterators, updater, learning-rate schedule, extensions, snapshots.

Everything here serves two promises of ``train.py``:

* A run killed at any moment and resumed from its last snapshot ends bit for bit where
  an uninterrupted run ends (on the CPU). A snapshot holds the model, the optimizer
  state, the learning-rate schedule, the iterator's position and order, every random
  state, the log so far and the best score so far, plus the settings of the run.
* Nothing is half-written: snapshots, the log, the plots and the best model go to a
  temporary file that is renamed when complete, and a non-finite loss or gradient stops
  the run before it can reach a snapshot.
"""

import io
import json
import os
import random
import re
import sys

import chainer
import numpy
from chainer import training
from chainer.dataset import convert
from chainer.iterators import SerialIterator
from chainer.iterators import ShuffleOrderSampler
from chainer.training import extensions

from capsnet_chainer.modelfile import CONFIG_KEY
from capsnet_chainer.modelfile import inspect_model_file
from capsnet_chainer.modelfile import ModelFileError
from capsnet_chainer.modelfile import non_finite_error
from capsnet_chainer.modelfile import open_npz
from capsnet_chainer.modelfile import read_array
from capsnet_chainer.modelfile import save_model
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.provenance import utc_now
from capsnet_chainer.random_state import serialize_python_random
from capsnet_chainer.random_state import serialize_random_state

SNAPSHOT_PREFIX = 'snapshot_'
#: The test set's accuracy in the log (Chainer's Evaluator reports as 'validation').
TEST_ACCURACY = 'validation/main/accuracy'
#: The accuracy on the images held out of training by ``--validation``.
HELDOUT_ACCURACY = 'heldout/main/accuracy'
#: Snapshot names: at the end of an epoch, and every ``--snapshot-every`` iterations.
EPOCH_SNAPSHOT = 'snapshot_epoch_{}'
ITERATION_SNAPSHOT = 'snapshot_iter_{}'
_SNAPSHOT_NAME = re.compile(r'^snapshot_(epoch|iter)_(\d+)$')
#: The key under which a snapshot stores the settings of its run (a JSON string).
SETTINGS_KEY = 'capsnet_chainer/train_settings'
#: The temporary files of :func:`~capsnet_chainer.fileio.write_atomic`.
_TEMP_NAME = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')

#: ``train.py`` flags that may change when a run is resumed: where, how long and how
#: often it runs, not what it computes. Every other flag must match the snapshot.
RESUMABLE_CHANGES = ('epoch', 'gpu', 'device', 'out', 'save', 'resume', 'keep',
                     'snapshot_every', 'data_dir', 'debug', 'vis_every')


class NonFiniteError(Exception):
    """The loss, a gradient or a weight became NaN or infinite.

    Attributes:
        epoch (int): The epoch in progress (1-based).
        iteration (int): The iteration that produced it (1-based).
    """

    def __init__(self, what, epoch, iteration):
        super().__init__('non-finite {} at epoch {}, iteration {}'.format(
            what, epoch, iteration))
        self.epoch = epoch
        self.iteration = iteration


class SnapshotError(ModelFileError):
    """A file given to ``--resume`` is not a snapshot this run can continue from."""


# Random states


def set_random_seed(seed, device=None):
    """Seeds ``random``, ``numpy.random`` and, on a GPU, the device's ``xp.random``."""
    random.seed(seed)
    numpy.random.seed(seed)
    if device is not None and device.xp is not numpy:
        device.xp.random.seed(seed)


class SeededShuffleIterator(SerialIterator):
    """A shuffling :class:`SerialIterator` with its own RNG, saved in snapshots.

    Chainer's iterator saves the current epoch's order but not the generator that draws
    the next ones; this one saves both, so a resumed run sees the same batches.
    """

    def __init__(self, dataset, batch_size, seed):
        self._rng = numpy.random.RandomState(seed)
        super().__init__(dataset, batch_size, repeat=True,
                         order_sampler=ShuffleOrderSampler(self._rng))

    def serialize(self, serializer):
        super().serialize(serializer)
        serialize_random_state(serializer['rng'], self._rng)


# The updater


class ConverterStateUpdater(training.updaters.StandardUpdater):
    """A :class:`StandardUpdater` that saves every random state and refuses NaN.

    Its snapshot state adds the converter's (the shift RNG's), NumPy's global generator
    and Python's :mod:`random`. Before each optimizer step it checks that the loss and
    the gradients are finite and raises :class:`NonFiniteError` otherwise, so a
    diverged step never reaches the weights, a snapshot or the best model. The gradient
    check is one float64 sum over all gradients (NaN and infinities propagate).

    Args:
        check_finite (bool): Check the loss and gradients (one device sync per step).
        Others: As :class:`~chainer.training.updaters.StandardUpdater`.
    """

    def __init__(self, iterator, optimizer, check_finite=True, **kwargs):
        super().__init__(iterator, optimizer, **kwargs)
        self.check_finite = check_finite

    def update_core(self):
        iterator = self._iterators['main']
        optimizer = self._optimizers['main']
        model = optimizer.target
        epoch, iteration = iterator.epoch + 1, self.iteration + 1
        batch = iterator.next()
        in_arrays = convert._call_converter(self.converter, batch, self.input_device)
        loss_func = self.loss_func or model
        if isinstance(in_arrays, tuple):
            loss = loss_func(*in_arrays)
        elif isinstance(in_arrays, dict):
            loss = loss_func(**in_arrays)
        else:
            loss = loss_func(in_arrays)
        if self.check_finite and not numpy.isfinite(_to_float(loss.array)):
            raise NonFiniteError('loss ({})'.format(_to_float(loss.array)), epoch, iteration)
        model.cleargrads()
        loss.backward(loss_scale=optimizer._loss_scale)
        del loss
        if self.check_finite:
            bad = _first_non_finite(model, 'grad')
            if bad is not None:
                raise NonFiniteError('gradient of {}'.format(bad), epoch, iteration)
        optimizer.update()
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)

    def serialize(self, serializer):
        super().serialize(serializer)
        if hasattr(self.converter, 'serialize'):
            self.converter.serialize(serializer['converter'])
        serialize_random_state(serializer['numpy_random'], numpy.random)
        serialize_python_random(serializer['python_random'])


def _to_float(array):
    return float(chainer.backend.CpuDevice().send(array))


def _first_non_finite(link, attr='array'):
    """The name of the first parameter whose ``attr`` holds NaN or inf, else ``None``."""
    params = [(name, getattr(p, attr)) for name, p in link.namedparams()
              if getattr(p, attr) is not None]
    if not params:
        return None
    total = sum(a.sum(dtype=numpy.float64) for _, a in params)
    if numpy.isfinite(_to_float(total)):
        return None
    for name, a in params:
        if not numpy.isfinite(_to_float(a.sum(dtype=numpy.float64))):
            return name.lstrip('/')
    return 'the parameters'  # finite one by one, but the sum overflowed float64


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
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER

    def __init__(self, model, path, key=TEST_ACCURACY, meta=None, sizes=None):
        self.model = model
        self.path = path
        self.key = key
        self.meta = dict(meta or {})
        self.sizes = dict(sizes or {})
        self.best = -numpy.inf

    def __call__(self, trainer):
        value = trainer.observation.get(self.key)
        if value is None:
            return
        value = _to_float(getattr(value, 'array', value))
        if value > self.best:
            self.best = value
            if self.path:
                meta = dict(self.meta, epoch=trainer.updater.epoch,
                            iteration=trainer.updater.iteration, saved=utc_now(),
                            **{self.key: value})
                for key, size in self.sizes.items():
                    if key in trainer.observation:
                        observed = trainer.observation[key]
                        accuracy = _to_float(getattr(observed, 'array', observed))
                        meta[key] = accuracy
                        if size:
                            meta[key + '_correct'] = int(round(accuracy * size))
                try:
                    save_model(self.model, self.path, meta)
                except OSError as e:
                    raise OSError(e.errno, 'cannot write the best model ({}); the previous '
                                  'one is intact'.format(e.strerror), self.path) from None

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


class Snapshot(training.Extension):
    """Writes the whole trainer at the end of every epoch and every ``every`` iterations.

    Files are ``snapshot_epoch_E`` at the end of epoch ``E`` and ``snapshot_iter_I``
    after iteration ``I`` (mid-epoch), npz archives as
    :func:`chainer.serializers.save_npz` writes them plus the model's configuration and
    the run's settings (JSON). Each is written to a temporary file that is renamed when
    complete; only then are the snapshots older than the ``keep`` newest removed. A
    snapshot is never written of non-finite weights.

    Args:
        every (int): Also snapshot every ``every`` iterations; 0 only at epoch ends.
        keep (int): Snapshots to keep.
        settings (dict): The run's settings (:func:`run_settings`).
    """

    trigger = (1, 'iteration')
    priority = -100  # after every other extension, as Chainer's snapshot

    def __init__(self, every=0, keep=1, settings=None):
        self.every = every
        self.keep = keep
        self.settings = dict(settings or {})

    def __call__(self, trainer):
        updater = trainer.updater
        if updater.is_new_epoch:
            name = EPOCH_SNAPSHOT.format(updater.epoch)
        elif self.every and updater.iteration % self.every == 0:
            name = ITERATION_SNAPSHOT.format(updater.iteration)
        else:
            return
        self.write(trainer, name)

    def write(self, trainer, name):
        updater = trainer.updater
        model = updater.get_optimizer('main').target
        bad = _first_non_finite(model)
        if bad is not None:
            raise NonFiniteError('weights in {}'.format(bad), updater.epoch,
                                 updater.iteration)
        serializer = chainer.serializers.DictionarySerializer()
        serializer.save(trainer)
        arrays = dict(serializer.target)
        arrays[CONFIG_KEY] = numpy.array(json.dumps(getattr(model, 'config', {})))
        arrays[SETTINGS_KEY] = numpy.array(json.dumps(self.settings, sort_keys=True))
        path = os.path.join(trainer.out, name)
        try:
            write_atomic(path, lambda f: numpy.savez(f, **arrays))
        except OSError as e:
            raise OSError(e.errno, 'cannot write this snapshot ({}); the earlier snapshots '
                          'are intact'.format(e.strerror), path) from None
        remove_old_snapshots(trainer.out, self.keep, updater.iteration)
        return path


# Snapshot files


def snapshot_iteration(path):
    """The iteration a snapshot was taken at, or ``None`` if ``path`` is not readable."""
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            return int(npz['updater/iteration'])
    except Exception:  # missing, truncated, not an npz, not a snapshot: all 'no'
        return None


def list_snapshots(out):
    """The snapshots in ``out``, ordered by training progress.

    Only complete files named ``snapshot_epoch_E`` or ``snapshot_iter_I`` count; the
    temporary files of an interrupted write are not snapshots.

    Returns:
        tuple: ``(snapshots, unreadable)``: a list of ``(iteration, path)``, oldest
        first, and a list of paths named like snapshots that cannot be read.
    """
    snapshots, unreadable = [], []
    if not os.path.isdir(out):
        return snapshots, unreadable
    for name in sorted(os.listdir(out)):
        match = _SNAPSHOT_NAME.match(name)
        path = os.path.join(out, name)
        if not match or not os.path.isfile(path):
            continue
        iteration = snapshot_iteration(path)
        if iteration is None:
            unreadable.append(path)
        else:
            # At equal progress prefer the epoch snapshot (sorted last: 'epoch' < 'iter').
            snapshots.append((iteration, match.group(1) == 'epoch', path))
    snapshots.sort()
    return [(it, path) for it, _, path in snapshots], unreadable


def latest_snapshot(out):
    """The path of the most advanced complete snapshot in ``out``, or ``None``."""
    snapshots, _ = list_snapshots(out)
    return snapshots[-1][1] if snapshots else None


def remove_old_snapshots(out, keep, iteration):
    """Removes the snapshots at or before ``iteration`` beyond the ``keep`` newest."""
    snapshots, _ = list_snapshots(out)
    older = [path for it, path in snapshots if it <= iteration]
    for path in older[:max(len(older) - keep, 0)]:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def remove_stale_temp_files(folder, basename=None):
    """Removes the temporary files that a killed write left in ``folder``.

    Args:
        folder (str): A folder this program writes into.
        basename (str): Only remove the temporary files of this file name (for a
            folder shared with other files, such as that of ``--save``).

    Returns:
        list of str: The paths removed.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if not _TEMP_NAME.match(name):
            continue
        if basename is not None and not name.startswith('.' + basename + '.'):
            continue
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


# Settings: what must match for a resume


def run_settings(args):
    """The settings of a run that a resumed run must share (a JSON-able dict).

    Every ``train.py`` flag except :data:`RESUMABLE_CHANGES`.
    """
    settings = {k: v for k, v in vars(args).items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps(settings, sort_keys=True))


def _flag(name, value):
    flag = '--' + name.replace('_', '-')
    if isinstance(value, bool):
        return '{} {}'.format(flag, 'on' if value else 'off')
    if value is None:
        return '{} (not given)'.format(flag)
    return '{} {}'.format(flag, value)


def check_snapshot(path, settings):
    """Checks that ``path`` is a snapshot a run with ``settings`` can resume from.

    Reads only the small entries of the file, not the weights.

    Returns:
        dict: What :func:`~capsnet_chainer.model.inspect_model_file` found.

    Raises:
        SnapshotError: The file is missing, truncated, not a snapshot (a model file, or
            another npz archive), or from a run with other settings; the message names
            every setting that differs.
    """
    try:
        info = inspect_model_file(path, what='snapshot')
    except SnapshotError:
        raise
    except ModelFileError as e:
        raise SnapshotError(str(e)) from None
    if info['kind'] in ('model', 'reference'):
        raise SnapshotError(
            '{} is a model file (as written by --save), not a snapshot; --resume needs '
            'a snapshot_* file from the --out folder of a run'.format(path))
    if info['kind'] != 'snapshot':
        raise SnapshotError('{} is an npz archive but not a snapshot written by train.py'
                            .format(path))
    if SETTINGS_KEY not in info['names']:
        raise SnapshotError(
            '{} does not record the settings of its run (written by an older version of '
            'train.py?), so it cannot be checked and is not resumed; start a new run'
            .format(path))
    with open_npz(path, 'snapshot') as npz:
        try:
            stored = json.loads(str(read_array(npz, path, SETTINGS_KEY)))
        except ValueError as e:
            raise SnapshotError('{} is corrupt: {}'.format(path, e)) from None
    missing = object()
    differ = []
    for name in sorted(set(stored) | set(settings)):
        old, new = stored.get(name, missing), settings.get(name, missing)
        if old == new:
            continue
        if old is missing:
            differ.append('{} (not recorded in the snapshot)'.format(_flag(name, new)))
        elif new is missing:
            differ.append('{} (unknown to this version)'.format(_flag(name, old)))
        else:
            differ.append('{} (this run: {})'.format(_flag(name, old), _flag(name, new)))
    if differ:
        raise SnapshotError(
            '{} comes from a run with different settings: {}. Resume with the same '
            'settings, or start a new run in another --out'.format(
                path, '; '.join(differ)))
    return info


def load_snapshot(path, trainer):
    """Restores ``trainer`` from the snapshot at ``path``.

    Raises:
        SnapshotError: The file lacks a part of this trainer, cannot be read, or holds
            NaN or inf (the first such array is named).
    """
    with open_npz(path, 'snapshot') as npz:
        # The weights and the optimizer's moments (not the best score: -inf before the
        # first evaluation)
        for key in npz.files:
            if not key.startswith(('updater/model:', 'updater/optimizer:')):
                continue
            error = non_finite_error(path, key, read_array(npz, path, key), 'snapshot')
            if error is not None:
                raise SnapshotError(str(error))
        try:
            chainer.serializers.NpzDeserializer(npz).load(trainer)
        except KeyError as e:
            raise SnapshotError('{} lacks {} that this trainer needs (written by another '
                                'version of train.py?)'.format(path, e)) from None
        except ModelFileError:
            raise
        except Exception as e:  # truncated members, wrong shapes or types
            raise SnapshotError('{} cannot be restored ({}: {})'.format(
                path, type(e).__name__, e)) from None


# The trainer


def selection_rule(n_heldout=0):
    """How ``--save`` picks its model: ``(reported key, description)``."""
    if n_heldout:
        return HELDOUT_ACCURACY, (
            'best accuracy on the last {} training images, held out of training '
            '(--validation {}); the test set is scored for the report only'.format(
                n_heldout, n_heldout))
    return TEST_ACCURACY, 'best test accuracy (the reference implementation\'s rule)'


def build_trainer(model, train, test, device, args, converter, meta=None, heldout=None):
    """Assembles the :class:`~chainer.training.Trainer` the way Chainer's examples do.

    Args:
        model (CapsNet): The loss chain, already on ``device``.
        train, test: Datasets of ``(x, t)``.
        device (chainer.backend.Device): Where to train.
        args (argparse.Namespace): ``batchsize``, ``epoch``, ``alpha``, ``decay``,
            ``decay_every``, ``min_alpha``, ``seed``, ``out``, ``save``, ``keep``,
            ``test_batchsize`` and optionally ``snapshot_every``.
        converter: Training batch converter (the shift augmentation).
        meta (dict): Provenance stored with the best model.
        heldout: Images held out of ``train`` (``--validation``), or ``None``. When
            given, they are evaluated every epoch (``heldout/main/...``) and choose the
            best model; the test set is then scored for the report only.
    """
    # Triggers
    epoch_trigger = (1, 'epoch')
    decay_trigger = (args.decay_every, 'iteration') if args.decay_every else epoch_trigger

    # Set up an optimizer
    optimizer = chainer.optimizers.Adam(alpha=args.alpha)
    optimizer.setup(model)

    # Iterators
    train_iter = SeededShuffleIterator(train, args.batchsize, args.seed)
    test_iter = SerialIterator(test, args.test_batchsize, repeat=False, shuffle=False)

    # Set up a trainer
    updater = ConverterStateUpdater(
        train_iter, optimizer, converter=converter, device=device)
    trainer = training.Trainer(updater, EpochLimit(args.epoch), out=args.out)

    trainer.extend(extensions.Evaluator(test_iter, model, device=device))
    # The Evaluator averages batch means: a count of correct answers follows from it
    # only when all batches have one size.
    sizes = {TEST_ACCURACY: len(test)}
    if heldout is not None:
        heldout_iter = SerialIterator(heldout, args.test_batchsize, repeat=False,
                                      shuffle=False)
        trainer.extend(extensions.Evaluator(heldout_iter, model, device=device),
                       name='heldout')
        sizes[HELDOUT_ACCURACY] = len(heldout)
    bs = args.test_batchsize
    sizes = {k: n if n % bs == 0 or n < bs else None for k, n in sizes.items()}
    trainer.extend(extensions.ExponentialShift('alpha', args.decay, target=args.min_alpha),
                   trigger=decay_trigger)
    key, rule = selection_rule(len(heldout) if heldout is not None else 0)
    meta = dict(meta or {}, selection={'key': key, 'rule': rule})
    trainer.extend(BestModelSaver(model, args.save, key=key, meta=meta, sizes=sizes))
    trainer.extend(Snapshot(getattr(args, 'snapshot_every', 0), args.keep,
                            run_settings(args)))
    trainer.extend(extensions.observe_value('alpha', lambda t: optimizer.alpha),
                   trigger=epoch_trigger)
    trainer.extend(AtomicLogReport(trigger=epoch_trigger), name='LogReport')

    losses = ['main/loss', 'validation/main/loss']
    if model.reconstruct:
        losses += ['main/loss/margin', 'main/loss/recon',
                   'validation/main/loss/margin', 'validation/main/loss/recon']
    accuracies = ['main/accuracy', TEST_ACCURACY]
    if heldout is not None:
        losses.append('heldout/main/loss')
        accuracies.append(HELDOUT_ACCURACY)
    trainer.extend(LogPlot(losses, 'loss.png'), name='LossPlot')
    trainer.extend(LogPlot(accuracies, 'accuracy.png'), name='AccuracyPlot')
    trainer.extend(extensions.PrintReport(
        ['epoch'] + losses + accuracies + ['alpha', 'elapsed_time']))
    trainer.extend(extensions.ProgressBar(update_interval=10))
    return trainer
