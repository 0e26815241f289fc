"""Snapshot files: writing, listing and cleaning them up, and the checks before a
resume.

A snapshot holds the whole trainer (the model, the optimizer state, the learning-rate
schedule, the iterator's position and order, every random state, the log so far and
the best score so far), plus the model's configuration and the settings of the run. A
run killed at any moment and resumed from its last snapshot ends bit for bit where an
uninterrupted run ends (on the CPU). Which settings may change on a resume is
``train.py``'s to say: the snapshot records the others, and :func:`check_snapshot`
compares them.
"""

import json
import os
import re

import chainer
import numpy
from chainer import training

from capsnet_chainer.fileio import ImmediateWriter
from capsnet_chainer.io.modelfile import CONFIG_KEY
from capsnet_chainer.io.modelfile import inspect_model_file
from capsnet_chainer.io.modelfile import ModelFileError
from capsnet_chainer.io.modelfile import non_finite_error
from capsnet_chainer.io.modelfile import open_npz
from capsnet_chainer.io.modelfile import read_array
from capsnet_chainer.io.modelfile import serialized_arrays
from capsnet_chainer.training.nonfinite import first_non_finite
from capsnet_chainer.training.nonfinite import NonFiniteError

#: Snapshot names: at the end of an epoch, and every ``--snapshot-every`` iterations.
EPOCH_SNAPSHOT = 'snapshot_epoch_{}'
ITERATION_SNAPSHOT = 'snapshot_iter_{}'
_SNAPSHOT_NAME = re.compile(r'^snapshot_(epoch|iter)_(\d+)$')
#: The key under which a snapshot stores the settings of its run (a JSON string).
SETTINGS_KEY = 'capsnet_chainer/train_settings'


class SnapshotError(ModelFileError):
    """A file given to ``--resume`` is not a snapshot this run can continue from."""


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
        writer (~capsnet_chainer.fileio.BackgroundWriter): Write on its thread, from a
            copy of the trainer's state taken at the call (``None``: write at once);
            the older snapshots are removed once the new one is in place.
    """

    trigger = (1, 'iteration')
    priority = -100  # after every other extension, as Chainer's snapshot

    def __init__(self, every=0, keep=1, settings=None, writer=None):
        self.every = every
        self.keep = keep
        self.settings = dict(settings or {})
        self.writer = writer or ImmediateWriter()

    def __call__(self, trainer):
        self.writer.check()
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
        if hasattr(updater, 'settle'):
            updater.settle()  # a deferred check's last verdict, before the weights go out
        model = updater.get_optimizer('main').target
        bad = first_non_finite(model)
        if bad is not None:
            raise NonFiniteError('weights in {}'.format(bad), updater.epoch,
                                 updater.iteration)
        arrays = serialized_arrays(trainer)
        arrays[CONFIG_KEY] = numpy.array(json.dumps(getattr(model, 'config', {})))
        arrays[SETTINGS_KEY] = numpy.array(json.dumps(self.settings, sort_keys=True))
        path = os.path.join(trainer.out, name)
        out, keep, iteration = trainer.out, self.keep, updater.iteration

        def write(f):
            numpy.savez(f, **arrays)

        def error(e):
            return OSError(e.errno, 'cannot write this snapshot ({}); the earlier '
                           'snapshots are intact'.format(e.strerror), path)

        def clean_up():
            remove_old_snapshots(out, keep, iteration)

        self.writer.submit(path, write, then=clean_up, error=error)
        return path

    def finalize(self):
        self.writer.wait()


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


# Settings: what must match for a resume


#: Settings added after snapshots were first written: a snapshot that lacks one was
#: taken with this value.
SETTING_DEFAULTS = {'dataset': 'mnist', 'model': 'capsnet'}


def describe_setting(name, value):
    """How :func:`check_snapshot` names a setting and its value: ``name=value``."""
    return '{}={!r}'.format(name, value)


def read_settings(path):
    """The settings a snapshot's run recorded, with :data:`SETTING_DEFAULTS` for the
    flags it predates; ``None`` when it records none.

    Raises:
        SnapshotError: The settings entry cannot be read.
    """
    with open_npz(path, 'snapshot') as npz:
        if SETTINGS_KEY not in npz.files:
            return None
        try:
            stored = json.loads(str(read_array(npz, path, SETTINGS_KEY)))
        except ValueError as e:
            raise SnapshotError('{} is corrupt: {}'.format(path, e)) from None
    return dict(SETTING_DEFAULTS, **stored)


def check_snapshot(path, settings, describe=describe_setting):
    """Checks that ``path`` is a snapshot a run with ``settings`` can resume from.

    Reads only the small entries of the file, not the weights. A setting the snapshot
    does not record and ``settings`` holds as ``None`` matches: a flag newer than the
    snapshot, not given in this run.

    Args:
        path (str): The snapshot.
        settings (dict): The settings of the run that would resume.
        describe (callable): ``describe(name, value)``, how the message names a setting
            (``train.py`` names its flags).

    Returns:
        dict: What :func:`~capsnet_chainer.io.modelfile.inspect_model_file` found.

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
    stored = read_settings(path)
    missing = object()
    differ = []
    for name in sorted(set(stored) | set(settings)):
        old = stored.get(name, missing)
        new = settings.get(name, missing)
        if old == new or (old is missing and new is None):
            continue
        if old is missing:
            differ.append('{} (not recorded in the snapshot)'.format(describe(name, new)))
        elif new is missing:
            differ.append('{} (unknown to this version)'.format(describe(name, old)))
        else:
            differ.append('{} (this run: {})'.format(describe(name, old),
                                                     describe(name, new)))
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
