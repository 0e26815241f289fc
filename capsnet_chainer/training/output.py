"""The folders a run writes into: ``--out`` locked while it trains and cleared of what
interrupted writes left, and the file that ``--save`` would replace checked first."""

import json
import os

import filelock

from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError
from capsnet_chainer.fileio import remove_stale_temp_files
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.io.modelfile import inspect_model_file
from capsnet_chainer.io.modelfile import ModelFileError

#: The lock file of a run in its output folder.
LOCK_NAME = '.train.lock'


def check_save_target(path):
    """Refuses a model path that holds something other than a model (a ``SettingError``
    of ``save``)."""
    if not path or not os.path.isfile(path):
        return
    try:
        kind = inspect_model_file(path)['kind']
    except ModelFileError:
        kind = None
    if kind not in ('model', 'reference'):
        raise SettingError('save', 'exists and is not a model file; refusing to overwrite '
                           'it', path)


def open_output(out, save=None, settings=None):
    """Locks ``out`` for this run, removes what interrupted writes left there (and beside
    ``save``), and writes ``settings`` to ``out/args.json``.

    Args:
        out (str): The run's output folder (made if missing).
        save (str): Where the best model goes, or ``None``.
        settings (dict): The run's arguments, for ``args.json``.

    Returns:
        filelock.FileLock: The acquired lock; release it when the run ends.

    Raises:
        CapsNetError: Another run holds the lock.
    """
    os.makedirs(out, exist_ok=True)
    lock = filelock.FileLock(os.path.join(out, LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise CapsNetError('another train.py is writing to --out {}; wait for it or '
                           'choose another --out'.format(out)) from None
    try:
        for path in remove_stale_temp_files(out):
            print('Removed {}, left by an interrupted write'.format(path))
        if save:
            save_dir = os.path.dirname(os.path.abspath(save))
            os.makedirs(save_dir, exist_ok=True)
            remove_stale_temp_files(save_dir, os.path.basename(save))
        text = json.dumps(settings or {}, indent=2).encode()
        write_atomic(os.path.join(out, 'args.json'), lambda f: f.write(text))
    except BaseException:
        lock.release()
        raise
    return lock
