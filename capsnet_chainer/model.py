"""CapsNet: the network, its loss, and model files that carry their configuration.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import json
import os
import zipfile
import zlib

import chainer
import chainer.functions as F
import numpy

from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.functions import capsule_length
from capsnet_chainer.functions import margin_loss
from capsnet_chainer.functions import reconstruction_loss
from capsnet_chainer.links import Convolution2D
from capsnet_chainer.links import DEFAULT_INITIALW
from capsnet_chainer.links import Decoder
from capsnet_chainer.links import DigitCapsules
from capsnet_chainer.links import PrimaryCapsules
from capsnet_chainer import reference

#: The key under which a model file stores its configuration (a JSON string).
CONFIG_KEY = 'capsnet_chainer/config'
#: The key under which a model file stores free-form metadata (a JSON string).
META_KEY = 'capsnet_chainer/meta'
MASK_CHOICES = ('label', 'prediction')
#: Where a trainer snapshot keeps the model's arrays.
SNAPSHOT_MODEL_PATH = 'updater/model:main/'


class ModelFileError(ValueError):
    """A model or snapshot file is missing, truncated, corrupt, or not one at all."""


class CapsNet(chainer.Chain):
    """The MNIST CapsNet of Sabour et al. [#]_ with its loss, like :class:`L.Classifier`.

    ``CapsNet()`` is the reference network: leaky ReLU (slope 0.05) after conv1,
    unsquashed primary capsules, one prediction map per capsule type, 3 routing
    iterations with gradients through all of them. ``model(x, t)`` returns the loss and
    reports ``loss``, ``loss/margin``, ``loss/recon`` (with ``reconstruct``) and
    ``accuracy``, so ``optimizer.update(model, x, t)`` runs one training step.

    Args:
        reconstruct (bool): Add ``recon_weight`` x the decoder's summed squared error to
            the loss. The decoder exists either way (the reference's parameter count).
        leaky_slope (float): Slope of conv1's leaky ReLU; 0 gives plain ReLU (the paper).
        n_iteration (int): Routing iterations.
        shared_weights (bool): One prediction map per capsule type (the reference) or
            one per primary capsule (the paper, ``False``).
        squash_primary (bool): Squash the primary capsules (the paper).
        grad_all_iterations (bool): Backpropagate through every routing iteration (the
            reference) or treat the coupling coefficients as constants.
        mask_test (str): At test time, mask the decoder input with the true ``'label'``
            (the reference) or the ``'prediction'`` (the paper).
        recon_weight (float): Weight of the reconstruction loss (0.0005).
        n_class (int): Digit capsules.
        in_shape (tuple of ints): Input image shape ``(C, H, W)``.
    """

    def __init__(self, reconstruct=False, leaky_slope=0.05, n_iteration=3,
                 shared_weights=True, squash_primary=False, grad_all_iterations=True,
                 mask_test='label', recon_weight=0.0005, n_class=10, in_shape=(1, 28, 28)):
        super().__init__()
        if mask_test not in MASK_CHOICES:
            raise ValueError('mask_test must be one of {}, got {!r}'.format(
                MASK_CHOICES, mask_test))
        if not leaky_slope >= 0:  # also refuses NaN
            raise ValueError('leaky_slope must be >= 0, got {!r}'.format(leaky_slope))
        if int(n_iteration) < 1:
            raise ValueError('n_iteration must be >= 1, got {!r}'.format(n_iteration))
        self.config = {
            'reconstruct': bool(reconstruct), 'leaky_slope': float(leaky_slope),
            'n_iteration': int(n_iteration), 'shared_weights': bool(shared_weights),
            'squash_primary': bool(squash_primary),
            'grad_all_iterations': bool(grad_all_iterations), 'mask_test': mask_test,
            'recon_weight': float(recon_weight), 'n_class': int(n_class),
            'in_shape': [int(n) for n in in_shape],
        }
        C, H, W = in_shape
        grid = ((H - 8) - 9) // 2 + 1  # conv1 9x9 stride 1, then 9x9 stride 2: 6 for 28
        with self.init_scope():
            self.conv1 = Convolution2D(C, 256, 9, initialW=DEFAULT_INITIALW)
            self.primary = PrimaryCapsules(256, 32, 8, squash=squash_primary)
            self.digits = DigitCapsules(32, grid * grid, 8, n_class, 16,
                                        shared=shared_weights, n_iteration=n_iteration,
                                        grad_all_iterations=grad_all_iterations)
            self.decoder = Decoder(n_class * 16, in_shape)

    @property
    def reconstruct(self):
        return self.config['reconstruct']

    def capsules(self, x):
        """Args: x ``(B, C, H, W)`` in [0, 1]. Returns: v ``(B, n_class, 16)``.

        conv1 and its (leaky) ReLU run as one channels-last kernel; the primary
        capsules get an NCHW view of its output, so no copy is made between them.
        """
        h = self.conv1.forward_nhwc(F.transpose(x, (0, 2, 3, 1)),
                                    slope=self.config['leaky_slope'])  # (B, 20, 20, 256)
        return self.digits(self.primary(F.transpose(h, (0, 3, 1, 2))))

    def decode(self, v, labels):
        """Reconstructs ``(B, C, H, W)`` images from ``v`` masked by ``labels``."""
        return self.decoder(v, labels)

    def forward(self, x, t):
        """Args: x ``(B, C, H, W)`` float32, t ``(B,)`` int32. Returns: the scalar loss."""
        v = self.capsules(x)  # (B, 10, 16)
        lengths = capsule_length(v)  # (B, 10)
        loss = margin_loss(lengths, t)
        report = {'loss/margin': loss, 'accuracy': F.accuracy(lengths, t)}
        if self.reconstruct:
            labels = t
            if not chainer.config.train and self.config['mask_test'] == 'prediction':
                labels = lengths.array.argmax(axis=1).astype(t.dtype)
            recon = self.config['recon_weight'] * reconstruction_loss(
                self.decode(v, labels), x)
            report['loss/recon'] = recon
            loss = loss + recon
        report['loss'] = loss
        chainer.report(report, self)
        return loss

    def predict(self, x, batchsize=100):
        """Class scores (capsule lengths) ``(N, n_class)`` as a NumPy array.

        Args:
            x (array): Images ``(N, C, H, W)``, on any device.
        """
        scores = []
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            for i in range(0, len(x), batchsize):
                xb = self.device.send(x[i:i + batchsize])
                scores.append(chainer.backend.CpuDevice().send(
                    capsule_length(self.capsules(xb)).array))
        if not scores:
            return numpy.zeros((0, self.config['n_class']), numpy.float32)
        return numpy.concatenate(scores)

    def count_params(self):
        """Number of scalar parameters."""
        return sum(p.size for p in self.params())


def save_model(model, path, meta=None):
    """Writes ``model``'s parameters and configuration to ``path`` (npz, atomic).

    The file is a :func:`chainer.serializers.save_npz` archive plus two JSON strings:
    the configuration that rebuilds the network, and ``meta`` (provenance). A crash
    mid-write leaves any previous file at ``path`` intact.
    """
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(model)
    arrays = dict(serializer.target)
    arrays[CONFIG_KEY] = numpy.array(json.dumps(model.config))
    arrays[META_KEY] = numpy.array(json.dumps(meta or {}))
    write_atomic(path, lambda f: numpy.savez_compressed(f, **arrays))


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
    differently (see :mod:`capsnet_chainer.reference`).

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
    """Rebuilds the network stored at ``path``.

    ``path`` may be a model written by :func:`save_model` (``train.py --save``), a
    trainer snapshot (``snapshot_*`` in ``train.py --out``), or a model saved by the
    reference implementation (converted; see :mod:`capsnet_chainer.reference`).

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
        model = CapsNet(**info['config'])
    except (TypeError, ValueError) as e:
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
