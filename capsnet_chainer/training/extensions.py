"""The extensions of ``train.py``'s trainer: the stop trigger, the time each epoch
took, the best model, the log and its plots, the reconstructions while training, and an
early estimate of the whole run's time.

Each keeps its state in the snapshot or has none, so that a run resumed from its last
snapshot ends where an uninterrupted run ends; each writes its files atomically
(:func:`~capsnet_chainer.fileio.write_atomic`), the best model on the snapshots' thread
(:class:`~capsnet_chainer.fileio.BackgroundWriter`).
"""

import io
import json
import os
import sys
import time

import chainer
import numpy
from chainer import training
from chainer.training import extensions

from capsnet_chainer.evaluation.figures import plot_reconstructions
from capsnet_chainer.evaluation.figures import save_figure
from capsnet_chainer.evaluation.figures import select_samples
from capsnet_chainer.evaluation.pair_figures import plot_pairs
from capsnet_chainer.fileio import ImmediateWriter
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.inference import to_cpu
from capsnet_chainer.io.modelfile import model_arrays
from capsnet_chainer.io.modelfile import model_file_writer
from capsnet_chainer.io.provenance import utc_now
from capsnet_chainer.training.nonfinite import to_float

#: The test set's accuracy in the log (Chainer's Evaluator reports as 'validation').
TEST_ACCURACY = 'validation/main/accuracy'
#: The accuracy on the images held out of training by ``--validation``.
HELDOUT_ACCURACY = 'heldout/main/accuracy'


def selection_rule(n_heldout=0):
    """How ``--save`` picks its model: ``(reported key, description)``."""
    if n_heldout:
        return HELDOUT_ACCURACY, (
            'best accuracy on the last {} training images, held out of training '
            '(--validation {}); the test set is scored for the report only'.format(
                n_heldout, n_heldout))
    return TEST_ACCURACY, 'best test accuracy (the reference implementation\'s rule)'


def countable(n, batchsize, n_process=1):
    """``n``, the examples behind a reported accuracy, where a count of right answers
    follows from it; else ``None``.

    The Evaluator averages batch means (and the multi-node one the processes' means):
    that is the mean over the examples only when every batch has one size.
    """
    per_process, rest = divmod(n, n_process)
    if rest or (per_process % batchsize and per_process > batchsize):
        return None
    return n


def log_keys(reconstruct=False, pairs=False, heldout=False):
    """The losses and the accuracies of the log that ``train.py`` plots and prints.

    Args:
        reconstruct (bool): The loss has a reconstruction part.
        pairs (bool): Two digits per image: also the accuracy of at least one.
        heldout (bool): Images held out of training are evaluated (``--validation``).

    Returns:
        tuple: ``(losses, accuracies)``, lists of keys.
    """
    losses = ['main/loss', 'validation/main/loss']
    if reconstruct:
        losses += ['main/loss/margin', 'main/loss/recon',
                   'validation/main/loss/margin', 'validation/main/loss/recon']
    accuracies = ['main/accuracy', TEST_ACCURACY]
    if pairs:
        accuracies.append(TEST_ACCURACY + '/one')
    if heldout:
        losses.append('heldout/main/loss')
        accuracies.append(HELDOUT_ACCURACY)
    return losses, accuracies


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
    ``sizes`` (``{reported key: examples}``), that accuracy and, where a count follows
    from it (:func:`countable`), its count of correct answers (``<key>_correct``).

    Args:
        model (CapsNet): The model to write.
        path (str): Where to write it (atomically, with its configuration); ``None``
            only tracks the score.
        key (str): The reported value to maximise.
        meta (dict): Provenance written with the model.
        sizes (dict): Accuracy keys to record beside ``key``, with their example counts.
        batchsize (int): The evaluation's batch size (per process).
        n_process (int): The processes that evaluate (data-parallel training).
        writer (~capsnet_chainer.fileio.BackgroundWriter): Write on its thread, from a
            copy of the parameters taken at the call (``None``: write at once). Share
            it with the :class:`~capsnet_chainer.training.snapshots.Snapshot`: files then appear
            in the order of the calls, so a snapshot's best score never gets ahead of
            the model file.
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER

    def __init__(self, model, path, key=TEST_ACCURACY, meta=None, sizes=None,
                 writer=None, batchsize=1, n_process=1):
        self.model = model
        self.path = path
        self.key = key
        self.meta = dict(meta or {})
        self.sizes = {k: countable(n, batchsize, n_process)
                      for k, n in (sizes or {}).items()}
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
        min_interval (float): Seconds between two drawings at least: epochs that end
            sooner are drawn with a later one, and the last at the end of training (on
            a GPU, drawing every epoch would take a share of each short epoch).
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER - 1  # after the log has its new entry

    def __init__(self, keys, filename, log_report='LogReport', min_interval=0.0):
        self.keys = list(keys)
        self.filename = filename
        self.log_report = log_report
        self.min_interval = min_interval
        self._drawn = None  # when it last drew (time.monotonic())
        self._pending = None  # the trainer of an epoch not drawn yet

    def __call__(self, trainer):
        now = time.monotonic()
        if self._drawn is not None and now - self._drawn < self.min_interval:
            self._pending = trainer
            return
        self._drawn, self._pending = now, None
        self.draw(trainer)

    def finalize(self):
        if self._pending is not None:
            trainer, self._pending = self._pending, None
            self.draw(trainer)

    def draw(self, trainer):
        """Writes the figure of the log so far."""
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


class ReconstructionReport(training.Extension):
    """Trainer extension that writes the reconstruction figure (``vis.png``'s layout).

    Every trigger it reconstructs ``x`` masked with ``t`` and writes the figure into
    ``trainer.out``, atomically, so a user watching a long run sees the decoder learn.
    For MultiMNIST pairs (``t`` of shape ``(B, 2)``) the figure is that of
    :func:`~capsnet_chainer.evaluation.pair_figures.plot_pairs` (the paper's Fig. 5).

    Args:
        model (~capsnet_chainer.CapsNet): The network being trained (any device).
        x (array): Images to show ``(B, 1, H, W)``, e.g. 20 test images chosen by
            :func:`select_samples`.
        t (array): Their labels ``(B,)``, or ``(B, 2)`` for pairs.
        filename (str): Formatted with ``epoch`` and ``iteration``.
        trigger: When to write (default: every epoch).
    """

    priority = training.PRIORITY_READER

    def __init__(self, model, x, t, filename='reconstruction_epoch_{epoch}.png',
                 trigger=(1, 'epoch')):
        self.model = model
        self.x = numpy.asarray(to_cpu(x))
        self.t = numpy.asarray(to_cpu(t))
        self.filename = filename
        self.trigger = trigger

    @classmethod
    def from_dataset(cls, model, dataset, per_class=2, **kwargs):
        """Shows the first ``per_class`` examples of each digit of ``dataset`` (pairs:
        its first ``per_class`` x 5 pairs)."""
        n_class = model.config['n_class']
        if numpy.ndim(dataset[0][1]) == 1:  # pairs
            x, t = chainer.dataset.concat_examples(dataset[:per_class * n_class // 2])[:2]
            return cls(model, x, t, **kwargs)
        x, t = chainer.dataset.concat_examples(dataset[:])
        index = select_samples(t, per_class, n_class)
        return cls(model, x[index], t[index], **kwargs)

    def __call__(self, trainer):
        updater = trainer.updater
        path = os.path.join(trainer.out, self.filename.format(
            epoch=updater.epoch, iteration=updater.iteration))
        try:
            os.makedirs(trainer.out, exist_ok=True)
            if self.t.ndim == 2:
                save_figure(plot_pairs(self.model, self.x, self.t), path)
            else:
                save_figure(plot_reconstructions(self.model, self.x, self.t), path)
        except OSError as e:  # a full disk should not stop the training
            print('warning: ReconstructionReport: cannot write {}: {}'.format(path, e),
                  file=sys.stderr)


class RunTimeEstimate(training.Extension):
    """Says once, early in the first epoch, how long the whole run will take at the pace
    of its first steps, and how to go faster.

    It times the iterations after the first (which also sets things up) and speaks
    after ``n_measure`` of them: on a CPU that is seconds into an epoch of minutes. The
    estimate counts the training steps alone; the test set's evaluation every epoch
    adds to it. Nothing goes to the snapshot: a resumed run estimates anew.

    Args:
        n_epoch (int): The epoch the run trains until (``--epoch``).
        advice (str): What to say about going faster, after the estimate.
        n_measure (int): Iterations to time.
    """

    trigger = (1, 'iteration')
    priority = training.PRIORITY_READER

    def __init__(self, n_epoch, advice='', n_measure=5):
        self.n_epoch = n_epoch
        self.advice = advice
        self.n_measure = n_measure
        self._start = None
        self.said = None

    def __call__(self, trainer):
        if self.said is not None:
            return
        updater = trainer.updater
        if self._start is None:
            self._start = time.perf_counter(), updater.iteration
            return
        start, first = self._start
        n = updater.iteration - first
        if n < self.n_measure:
            return
        per_step = (time.perf_counter() - start) / n
        steps_per_epoch = updater.iteration / updater.epoch_detail
        left = max(self.n_epoch - updater.epoch_detail, 0) * steps_per_epoch * per_step
        self.said = ('# at {:.2f} s per step ({} steps an epoch), {} epochs take about {} '
                     'of training steps, more with the test set every epoch{}'.format(
                         per_step, int(round(steps_per_epoch)), self.n_epoch,
                         duration(left + updater.iteration * per_step),
                         '. ' + self.advice if self.advice else ''))
        print(self.said, flush=True)


def duration(seconds):
    """``seconds`` in words, rounded: ``'40 seconds'``, ``'12 minutes'``, ``'7.5 hours'``,
    ``'2.9 days'``."""
    for unit, size in (('days', 86400), ('hours', 3600), ('minutes', 60)):
        if seconds >= 2 * size:
            value = seconds / size
            return '{:.{}f} {}'.format(value, 1 if value < 10 else 0, unit)
    return '{:.0f} seconds'.format(seconds)
