"""Model files: the npz format that carries the configuration, and reading the three
layouts (a saved model, a trainer snapshot, the reference implementation's model).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import json
import os
import zipfile
import zlib

import chainer
import numpy

from capsnet_chainer.baseline_cnn import BaselineCNN
from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.io import reference
from capsnet_chainer.model import CapsNet

#: The key under which a model file stores its configuration (a JSON string).
CONFIG_KEY = 'capsnet_chainer/config'
#: The key under which a model file stores free-form metadata (a JSON string).
META_KEY = 'capsnet_chainer/meta'
#: Where a trainer snapshot keeps the model's arrays.
SNAPSHOT_MODEL_PATH = 'updater/model:main/'


#: The networks a model file can hold, by ``config['model']``; a configuration without
#: that key is a CapsNet's (every file written before the baseline CNN existed).
MODELS = {'capsnet': CapsNet, 'cnn': BaselineCNN}
#: The kind of a configuration without ``'model'``.
DEFAULT_MODEL = 'capsnet'


class ModelFileError(CapsNetError, ValueError):
    """A model or snapshot file is missing, truncated, corrupt, or not one at all."""


def model_kind(config):
    """``'capsnet'`` or ``'cnn'``: the network a stored configuration describes."""
    return config.get('model', DEFAULT_MODEL)


def build_model(config):
    """Builds the network of a stored configuration (``model.config``), untrained.

    Raises:
        ValueError: An unknown ``config['model']`` or arguments its class refuses.
    """
    if not isinstance(config, dict):
        raise ValueError('the configuration is a JSON {}, not an object'.format(
            type(config).__name__))
    kind = model_kind(config)
    if kind not in MODELS:
        raise ValueError('unknown model {!r}; this version knows {}'.format(
            kind, ', '.join(sorted(MODELS))))
    args = {k: v for k, v in config.items() if k != 'model'}
    try:
        return MODELS[kind](**args)
    except TypeError as e:  # an argument this version does not know
        raise ValueError(str(e)) from None


def save_model(model, path, meta=None):
    """Writes ``model``'s parameters and configuration to ``path`` (npz, atomic).

    The file is a :func:`chainer.serializers.save_npz` archive plus two JSON strings:
    the configuration that rebuilds the network, and ``meta`` (provenance). A crash
    mid-write leaves any previous file at ``path`` intact.
    """
    write_atomic(path, model_file_writer(model_arrays(model, meta)))


def serialized_arrays(obj):
    """``obj`` (a link, a trainer) through Chainer's ``DictionarySerializer``, as copies
    on the CPU: the serializer keeps NumPy arrays themselves, which training changes."""
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(obj)
    return {key: numpy.array(value) for key, value in serializer.target.items()}


def model_arrays(model, meta=None):
    """The arrays of :func:`save_model`'s file (copies: see :func:`serialized_arrays`)."""
    arrays = serialized_arrays(model)
    arrays[CONFIG_KEY] = numpy.array(json.dumps(model.config))
    arrays[META_KEY] = numpy.array(json.dumps(meta or {}))
    return arrays


def model_file_writer(arrays):
    """``write(file)`` of a model file of :func:`model_arrays`' ``arrays``."""
    return lambda f: numpy.savez_compressed(f, **arrays)


#: The configuration assumed for a reference model file: the reference's own network.
REFERENCE_CONFIG = {'leaky_slope': 0.05, 'n_iteration': 3, 'shared_weights': True,
                    'squash_primary': False, 'grad_all_iterations': True,
                    'mask_test': 'label'}

_NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def open_npz(path, what='model file'):
    """Opens an npz archive, or raises :class:`ModelFileError` saying what is wrong.

    Args:
        path (str): The file.
        what (str): How to name the expected file in error messages.

    Returns:
        numpy.lib.npyio.NpzFile: The open archive (use it as a context manager).
    """
    if not os.path.exists(path):
        raise ModelFileError('{}: no such file'.format(path))
    if os.path.isdir(path):
        raise ModelFileError('{} is a folder, not a {}'.format(path, what))
    size = os.path.getsize(path)
    if size == 0:
        raise ModelFileError('{} is empty (0 bytes), not a {}'.format(path, what))
    with open(path, 'rb') as f:
        head = f.read(4)
    try:
        npz = numpy.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        if head == b'PK\x03\x04':
            raise ModelFileError(
                '{} is truncated or corrupt: an incomplete npz archive of {} bytes ({})'
                .format(path, size, e)) from None
        raise ModelFileError('{} is not a {}: not an npz archive'.format(path, what)) \
            from None
    if not isinstance(npz, numpy.lib.npyio.NpzFile):
        raise ModelFileError('{} is not a {}: a single .npy array, not an npz archive'
                             .format(path, what))
    return npz


def read_array(npz, path, key):
    """``npz[key]``, or :class:`ModelFileError` when the member cannot be read."""
    try:
        return npz[key]
    except _NPZ_ERRORS as e:
        raise ModelFileError('{} is truncated or corrupt: cannot read {} ({}: {})'.format(
            path, key, type(e).__name__, e)) from None


def non_finite_error(path, key, array, what='model'):
    """A :class:`ModelFileError` for ``array`` (``key`` in ``path``) if it holds NaN or
    inf, else ``None``."""
    array = numpy.asarray(array)
    if array.dtype.kind not in 'fc':
        return None
    bad = array.size - int(numpy.isfinite(array).sum())
    if not bad:
        return None
    return ModelFileError(
        '{}: array {} holds {} NaN or infinite value{} (of {}); a {} with non-finite '
        'weights gives meaningless results (it diverged, or the file is damaged): use '
        'an earlier file'.format(path, key, bad, '' if bad == 1 else 's', array.size,
                                 what))


def _read_json(npz, path, key):
    try:
        return json.loads(str(read_array(npz, path, key)))
    except ValueError as e:
        raise ModelFileError('{} is corrupt: {} is not valid JSON ({})'.format(
            path, key, e)) from None


def inspect_model_file(path, what='model file'):
    """Recognises a model file without loading its weights.

    Three layouts are recognised: a model written by :func:`save_model` (``train.py
    --save``), a trainer snapshot written by ``train.py`` (``snapshot_*`` in ``--out``;
    its model sits under :data:`SNAPSHOT_MODEL_PATH`), and a model saved by the
    reference implementation, which stores no configuration and orders some arrays
    differently (see :mod:`capsnet_chainer.io.reference`).

    Args:
        path (str): The file.
        what (str): How to name the expected file in error messages.

    Returns:
        dict: ``kind`` (``'model'``, ``'snapshot'``, ``'reference'`` or ``None`` for an
        npz archive of none of these), ``config`` (``None`` when unknown), ``meta``
        and ``names`` (the archive's array names).

    Raises:
        ModelFileError: The file is missing, empty, not an npz archive, or truncated.
    """
    with open_npz(path, what) as npz:
        names = list(npz.files)
        info = {'kind': None, 'config': None, 'meta': {}, 'names': names}
        if reference.is_reference_layout(names):
            arrays = {name: read_array(npz, path, name) for name in names}
            wrong = reference.check_shapes(arrays)
            if wrong:
                raise ModelFileError('{} has the reference layout but wrong shapes: {}'
                                     .format(path, '; '.join(wrong)))
            trained = reference.decoder_was_trained(arrays)
            info.update(kind='reference', config=dict(
                REFERENCE_CONFIG, reconstruct=trained), meta={
                    'source': 'reference implementation layout (converted on loading)',
                    'note': 'the file stores no configuration: the reference network is '
                            'assumed (leaky ReLU 0.05, one prediction map per capsule '
                            'type, 3 routing iterations); whether it was trained with '
                            'reconstruction is not recorded: the decoder biases are {}, '
                            'so it was {}'.format(
                                'non-zero' if trained else 'all zero',
                                'trained' if trained else 'never trained')})
            return info
        if CONFIG_KEY in names:
            info['config'] = _read_json(npz, path, CONFIG_KEY)
        if META_KEY in names:
            info['meta'] = _read_json(npz, path, META_KEY)
        if 'updater/iteration' in names and any(
                n.startswith(SNAPSHOT_MODEL_PATH) for n in names):
            info['kind'] = 'snapshot'
            info['meta'] = dict(info['meta'], source='trainer snapshot',
                                iteration=int(read_array(npz, path, 'updater/iteration')))
            key = 'updater/iterator:main/epoch'
            if key in names:
                info['meta']['epoch'] = int(read_array(npz, path, key))
        elif info['config'] is not None:
            info['kind'] = 'model'
    return info


def read_model_file(path):
    """Returns ``(config, meta)`` of a model file, ``config`` None if unknown.

    Works on the three layouts of :func:`inspect_model_file`; for a reference model the
    configuration is the reference network's. Raises :class:`ModelFileError` for a file
    that is missing, truncated or not an npz archive.
    """
    info = inspect_model_file(path)
    return info['config'], info['meta']


def load_model(path):
    """Rebuilds the network stored at ``path``: a :class:`~capsnet_chainer.CapsNet` or,
    when its configuration says ``'model': 'cnn'``, the baseline CNN
    (:class:`~capsnet_chainer.baseline_cnn.BaselineCNN`).

    ``path`` may be a model written by :func:`save_model` (``train.py --save``), a
    trainer snapshot (``snapshot_*`` in ``train.py --out``), or a model saved by the
    reference implementation (converted; see :mod:`capsnet_chainer.io.reference`).

    Returns:
        tuple: ``(model, meta)``, the model on the CPU.

    Raises:
        ModelFileError: The file is missing, truncated, not a model, its arrays do not
            fit its configuration, or one holds NaN or inf. The message is one readable
            sentence naming the file (and the first bad array).
    """
    info = inspect_model_file(path)
    if info['config'] is None:
        shown = ', '.join(sorted(info['names'])[:8])
        raise ModelFileError(
            '{} is an npz archive but not a CapsNet model: it has no capsnet_chainer '
            'configuration and not the reference implementation\'s layout (its arrays: '
            '{}{})'.format(path, shown, ', ...' if len(info['names']) > 8 else ''))
    try:
        model = build_model(info['config'])
    except ValueError as e:
        raise ModelFileError('{} holds a configuration this version cannot build ({})'
                             .format(path, e)) from None
    prefix = SNAPSHOT_MODEL_PATH if info['kind'] == 'snapshot' else ''
    with open_npz(path, 'model file') as npz:
        converted = reference.from_reference(npz) if info['kind'] == 'reference' else None
        for name, param in model.namedparams():
            key = prefix + name.lstrip('/')
            if converted is not None:
                array = converted[key]
            elif key in info['names']:
                array = read_array(npz, path, key)
            else:
                raise ModelFileError('{} lacks the array {} that its configuration needs'
                                     .format(path, key))
            if array.shape != param.shape:
                raise ModelFileError('{}: array {} has shape {}, its configuration needs {}'
                                     .format(path, key, array.shape, param.shape))
            error = non_finite_error(path, key, array)
            if error is not None:
                raise error
            param.array[...] = array
    return model, info['meta']
