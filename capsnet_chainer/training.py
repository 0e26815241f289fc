"""Trainer assembly: iterators, updater, learning-rate schedule and extensions."""

import glob
import os
import random
import re

import chainer
import numpy
from chainer import training
from chainer.iterators import SerialIterator
from chainer.iterators import ShuffleOrderSampler
from chainer.training import extensions

from capsnet_chainer.model import save_model

SNAPSHOT_PREFIX = 'snapshot_epoch_'


def set_random_seed(seed, device=None):
    """Seeds ``random``, ``numpy.random`` and, on a GPU, the device's ``xp.random``."""
    random.seed(seed)
    numpy.random.seed(seed)
    if device is not None and device.xp is not numpy:
        device.xp.random.seed(seed)


def serialize_random_state(serializer, rng):
    """Saves or restores the full state of ``rng`` (a :class:`numpy.random.RandomState`)."""
    kind, keys, pos, has_gauss, gauss = rng.get_state()
    keys = serializer('keys', keys)
    pos = serializer('pos', pos)
    has_gauss = serializer('has_gauss', has_gauss)
    gauss = serializer('gauss', gauss)
    rng.set_state((kind, numpy.asarray(keys, numpy.uint32), int(pos), int(has_gauss),
                   float(gauss)))


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


class ConverterStateUpdater(training.updaters.StandardUpdater):
    """A :class:`StandardUpdater` that also saves its converter's state (the shift RNG)."""

    def serialize(self, serializer):
        super().serialize(serializer)
        if hasattr(self.converter, 'serialize'):
            self.converter.serialize(serializer['converter'])


class BestModelSaver(training.Extension):
    """Writes the model to ``path`` whenever ``key`` reaches a new maximum.

    Args:
        model (CapsNet): The model to write.
        path (str): Where to write it (atomically, with its configuration).
        key (str): The reported value to maximise.
        meta (dict): Provenance written with the model.
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER

    def __init__(self, model, path, key='validation/main/accuracy', meta=None):
        self.model = model
        self.path = path
        self.key = key
        self.meta = dict(meta or {})
        self.best = -numpy.inf

    def __call__(self, trainer):
        value = trainer.observation.get(self.key)
        if value is None:
            return
        value = float(chainer.backend.CpuDevice().send(getattr(value, 'array', value)))
        if value > self.best:
            self.best = value
            meta = dict(self.meta, epoch=trainer.updater.epoch,
                        iteration=trainer.updater.iteration, **{self.key: value})
            save_model(self.model, self.path, meta)

    def serialize(self, serializer):
        self.best = float(serializer('best', self.best))


def latest_snapshot(out):
    """The snapshot with the highest epoch in ``out``, or ``None``."""
    def epoch(path):
        return int(re.search(r'(\d+)$', path).group(1))
    paths = [p for p in glob.glob(os.path.join(out, SNAPSHOT_PREFIX + '*'))
             if re.search(r'\d+$', p)]
    return max(paths, key=epoch) if paths else None


def build_trainer(model, train, test, device, args, converter, meta=None):
    """Assembles the :class:`~chainer.training.Trainer` the way Chainer's examples do.

    Args:
        model (CapsNet): The loss chain, already on ``device``.
        train, test: Datasets of ``(x, t)``.
        device (chainer.backend.Device): Where to train.
        args (argparse.Namespace): ``batchsize``, ``epoch``, ``alpha``, ``decay``,
            ``decay_every``, ``min_alpha``, ``seed``, ``out``, ``save``, ``keep``,
            ``test_batchsize``.
        converter: Training batch converter (the shift augmentation).
        meta (dict): Provenance stored with the best model.
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
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=args.out)

    trainer.extend(extensions.Evaluator(test_iter, model, device=device))
    trainer.extend(extensions.ExponentialShift('alpha', args.decay, target=args.min_alpha),
                   trigger=decay_trigger)
    if args.save:
        trainer.extend(BestModelSaver(model, args.save, meta=meta))
    trainer.extend(extensions.snapshot(filename=SNAPSHOT_PREFIX + '{.updater.epoch}',
                                       n_retains=args.keep), trigger=epoch_trigger)
    trainer.extend(extensions.observe_value('alpha', lambda t: optimizer.alpha),
                   trigger=epoch_trigger)
    trainer.extend(extensions.LogReport(trigger=epoch_trigger))

    losses = ['main/loss', 'validation/main/loss']
    if model.reconstruct:
        losses += ['main/loss/margin', 'main/loss/recon',
                   'validation/main/loss/margin', 'validation/main/loss/recon']
    if extensions.PlotReport.available():
        trainer.extend(extensions.PlotReport(losses, 'epoch', file_name='loss.png'))
        trainer.extend(extensions.PlotReport(
            ['main/accuracy', 'validation/main/accuracy'], 'epoch',
            file_name='accuracy.png'))
    trainer.extend(extensions.PrintReport(
        ['epoch'] + losses
        + ['main/accuracy', 'validation/main/accuracy', 'alpha', 'elapsed_time']))
    trainer.extend(extensions.ProgressBar(update_interval=10))
    return trainer
