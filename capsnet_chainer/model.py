"""CapsNet: the network, its loss, and model files that carry their configuration.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import json
import os
import tempfile

import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from capsnet_chainer.functions import capsule_length
from capsnet_chainer.functions import margin_loss
from capsnet_chainer.functions import reconstruction_loss
from capsnet_chainer.links import DEFAULT_INITIALW
from capsnet_chainer.links import Decoder
from capsnet_chainer.links import DigitCapsules
from capsnet_chainer.links import PrimaryCapsules

#: The key under which a model file stores its configuration (a JSON string).
CONFIG_KEY = 'capsnet_chainer/config'
#: The key under which a model file stores free-form metadata (a JSON string).
META_KEY = 'capsnet_chainer/meta'
MASK_CHOICES = ('label', 'prediction')


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
            self.conv1 = L.Convolution2D(C, 256, 9, initialW=DEFAULT_INITIALW)
            self.primary = PrimaryCapsules(256, 32, 8, squash=squash_primary)
            self.digits = DigitCapsules(32, grid * grid, 8, n_class, 16,
                                        shared=shared_weights, n_iteration=n_iteration,
                                        grad_all_iterations=grad_all_iterations)
            self.decoder = Decoder(n_class * 16, in_shape)

    @property
    def reconstruct(self):
        return self.config['reconstruct']

    def capsules(self, x):
        """Args: x ``(B, C, H, W)`` in [0, 1]. Returns: v ``(B, n_class, 16)``."""
        h = self.conv1(x)
        slope = self.config['leaky_slope']
        h = F.leaky_relu(h, slope) if slope > 0 else F.relu(h)
        return self.digits(self.primary(h))

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


def read_model_file(path):
    """Returns ``(config, meta)`` stored in a model file, ``config`` None if absent."""
    with numpy.load(path, allow_pickle=False) as npz:
        config = json.loads(str(npz[CONFIG_KEY])) if CONFIG_KEY in npz.files else None
        meta = json.loads(str(npz[META_KEY])) if META_KEY in npz.files else {}
    return config, meta


def load_model(path):
    """Rebuilds the network stored at ``path`` by :func:`save_model`.

    Returns:
        tuple: ``(model, meta)``, the model on the CPU.
    """
    config, meta = read_model_file(path)
    if config is None:
        raise ValueError('{}: no capsnet_chainer configuration in this model file'.format(
            path))
    model = CapsNet(**config)
    chainer.serializers.load_npz(path, model)
    return model, meta


def write_atomic(path, write):
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it.

    The temporary file is removed when ``write`` fails, so ``path`` is either the old
    file or the complete new one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
