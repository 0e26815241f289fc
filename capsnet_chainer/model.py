"""CapsNet: the network and its loss.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import chainer.functions as F
import numpy

from capsnet_chainer.errors import SettingError
from capsnet_chainer.functions import capsule_length
from capsnet_chainer.functions import margin_loss
from capsnet_chainer.functions import pair_hits
from capsnet_chainer.functions import per_image_standardization
from capsnet_chainer.functions import reconstruction_loss
from capsnet_chainer.functions import two_digit_margin_loss
from capsnet_chainer.functions import two_digit_reconstruction_loss
from capsnet_chainer import inference
from capsnet_chainer.kernels import margin_loss as margin_kernel
from capsnet_chainer.links import Convolution2D
from capsnet_chainer.links import DEFAULT_INITIALW
from capsnet_chainer.links import Decoder
from capsnet_chainer.links import DigitCapsules
from capsnet_chainer.links import PrimaryCapsules

MASK_CHOICES = ('label', 'prediction')
#: The arguments that adapt the network to other data (Sec. 7 of the paper), with the
#: MNIST network's values. :attr:`CapsNet.config` holds one only where it differs, so
#: that an MNIST network's configuration is the one it always was.
ADAPTATIONS = (('conv1_channels', 256), ('n_primary_type', 32), ('primary_dim', 8),
               ('capsule_dim', 16), ('none_of_the_above', False), ('standardize', False))
#: conv1's kernel, then the primary capsules' kernel and stride.
CONV1_KSIZE, PRIMARY_KSIZE, PRIMARY_STRIDE = 9, 9, 2
#: The smallest image side: conv1 leaves ``side - 8``, which the primary capsules' 9x9
#: kernel must cover.
MIN_SIDE = CONV1_KSIZE - 1 + PRIMARY_KSIZE


def primary_grid(H, W):
    """The primary capsules' grid ``(H', W')`` on ``H x W`` images (6 x 6 for 28 x 28).

    Raises:
        SettingError: An image smaller than :data:`MIN_SIDE` on a side (``image_size``).
    """
    if min(H, W) < MIN_SIDE:
        raise SettingError(
            'image_size', 'images of {}x{} are too small for CapsNet: conv1 (9x9) leaves '
            '{}x{}, and the primary capsules (9x9, stride 2) need at least 9x9 there; the '
            'smallest input is {}x{} (--image-size resizes the images)'.format(
                H, W, H - CONV1_KSIZE + 1, W - CONV1_KSIZE + 1, MIN_SIDE, MIN_SIDE),
            '{}x{}'.format(H, W))
    return tuple((n - CONV1_KSIZE + 1 - PRIMARY_KSIZE) // PRIMARY_STRIDE + 1 for n in (H, W))


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
        n_class (int): Digit capsules, one per class.
        in_shape (tuple of ints): Input image shape ``(C, H, W)``: conv1 takes ``C``
            channels, the primary capsules' grid follows ``H x W`` (at least
            :data:`MIN_SIDE` each), the decoder draws ``C x H x W``.
        conv1_channels (int): conv1's output channels (256; SVHN in Sec. 7: 64).
        n_primary_type (int): Primary capsule types (32; CIFAR-10: 64, SVHN: 16).
        primary_dim (int): Dimensions of a primary capsule (8; SVHN: 6).
        capsule_dim (int): Dimensions of a class capsule (16; SVHN: 8).
        none_of_the_above (bool): Route with an extra "none-of-the-above" category
            (CIFAR-10; :func:`~capsnet_chainer.functions.coupling`).
        standardize (bool): Scale each image to zero mean and unit variance first
            (:func:`~capsnet_chainer.functions.per_image_standardization`; the official
            code's CIFAR-10 and smallNORB). The decoder still draws the image as given.
        fast_kernels (bool): Compute with the fast kernels (the default) or with the
            plain equations of :mod:`capsnet_chainer.functions`; see
            :attr:`fast_kernels`. Not part of :attr:`config`: it changes the speed, not
            the network, and model files do not record it.

    Attributes:
        config (dict): The arguments that define the network, as model files store it.
    """

    #: What :meth:`scores` returns, for reports.
    score_name = 'capsule length'

    def __init__(self, reconstruct=False, leaky_slope=0.05, n_iteration=3,
                 shared_weights=True, squash_primary=False, grad_all_iterations=True,
                 mask_test='label', recon_weight=0.0005, n_class=10, in_shape=(1, 28, 28),
                 fast_kernels=True, conv1_channels=256, n_primary_type=32, primary_dim=8,
                 capsule_dim=16, none_of_the_above=False, standardize=False):
        super().__init__()
        if mask_test not in MASK_CHOICES:
            raise ValueError('mask_test must be one of {}, got {!r}'.format(
                MASK_CHOICES, mask_test))
        if not leaky_slope >= 0:  # also refuses NaN
            raise ValueError('leaky_slope must be >= 0, got {!r}'.format(leaky_slope))
        if int(n_iteration) < 1:
            raise ValueError('n_iteration must be >= 1, got {!r}'.format(n_iteration))
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError('in_shape must be (C, H, W), got {!r}'.format(in_shape))
        C, H, W = (int(n) for n in in_shape)
        grid = primary_grid(H, W)  # (6, 6) for 28 x 28
        self.config = {
            'reconstruct': bool(reconstruct), 'leaky_slope': float(leaky_slope),
            'n_iteration': int(n_iteration), 'shared_weights': bool(shared_weights),
            'squash_primary': bool(squash_primary),
            'grad_all_iterations': bool(grad_all_iterations), 'mask_test': mask_test,
            'recon_weight': float(recon_weight), 'n_class': int(n_class),
            'in_shape': [C, H, W],
        }
        channels, n_type, P, D = (int(n) for n in (
            conv1_channels, n_primary_type, primary_dim, capsule_dim))
        if min(channels, n_type, P, D) < 1:
            raise ValueError('conv1_channels, n_primary_type, primary_dim and capsule_dim '
                             'must be >= 1')
        values = {'conv1_channels': channels, 'n_primary_type': n_type, 'primary_dim': P,
                  'capsule_dim': D, 'none_of_the_above': bool(none_of_the_above),
                  'standardize': bool(standardize)}
        self.config.update((name, values[name]) for name, default in ADAPTATIONS
                           if values[name] != default)
        with self.init_scope():
            self.conv1 = Convolution2D(C, channels, CONV1_KSIZE, initialW=DEFAULT_INITIALW)
            self.primary = PrimaryCapsules(channels, n_type, P, PRIMARY_KSIZE, PRIMARY_STRIDE,
                                           squash=squash_primary)
            self.digits = DigitCapsules(n_type, grid[0] * grid[1], P, n_class, D,
                                        shared=shared_weights, n_iteration=n_iteration,
                                        grad_all_iterations=grad_all_iterations,
                                        none_of_the_above=bool(none_of_the_above))
            self.decoder = Decoder(n_class * D, (C, H, W))
        self.fast_kernels = fast_kernels

    @property
    def reconstruct(self):
        return self.config['reconstruct']

    @property
    def fast_kernels(self):
        """Whether the layers compute with the fast kernels (settable).

        ``False`` runs the plain equations (:mod:`capsnet_chainer.functions` and
        Chainer's convolution): the same results to rounding, several times slower on
        the CPU.
        """
        return self.digits.fast

    @fast_kernels.setter
    def fast_kernels(self, fast):
        for link in (self.conv1, self.primary.conv, self.digits):
            link.fast = bool(fast)

    def digit_capsules(self, x):
        """Args: x ``(B, C, H, W)`` in [0, 1]. Returns: v ``(B, J, D)``.

        conv1 and its (leaky) ReLU run as one channels-last kernel; the primary
        capsules get an NCHW view of its output, so no copy is made between them.
        """
        if self.config.get('standardize'):
            x = per_image_standardization(x)
        # h (B, H - 8, W - 8, conv1_channels): (B, 20, 20, 256) on MNIST
        h = self.conv1.forward_nhwc(F.transpose(x, (0, 2, 3, 1)),
                                    slope=self.config['leaky_slope'])
        return self.digits(self.primary(F.transpose(h, (0, 3, 1, 2))))

    def scores(self, x):
        """Class scores of a batch: the capsule lengths ``(B, J)`` (what
        :func:`capsnet_chainer.inference.predict` computes, batch by batch)."""
        return capsule_length(self.digit_capsules(x))

    def decode(self, v, labels):
        """Reconstructs ``(B, C, H, W)`` images from ``v`` masked by ``labels``."""
        return self.decoder(v, labels)

    def forward(self, x, t, digits=None):
        """The loss of a batch: one digit per image, or two (MultiMNIST).

        Args:
            x: Images ``(B, C, H, W)``, float32.
            t: Labels ``(B,)`` int32; or ``(B, 2)`` for two overlaid digits, which gives
                the two-digit loss (both capsules present; each digit reconstructed
                from its own capsule).
            digits: With ``(B, 2)`` labels, the two digits alone ``(B, 2, C, H, W)``,
                the targets of their reconstructions.

        Returns:
            ~chainer.Variable: The scalar loss.
        """
        if t.ndim == 2:
            return self._pair_loss(x, t, digits)
        v = self.digit_capsules(x)  # (B, J, D)
        if self.fast_kernels and margin_kernel.supports(v.array):  # one node, on a GPU
            loss, lengths = margin_kernel.margin_loss(v, t)
        else:
            lengths = capsule_length(v)  # (B, J)
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

    def _pair_loss(self, x, t2, digits):
        """The MultiMNIST loss (Sec. 6 of the paper): both capsules present, each digit
        reconstructed from its own label's capsule, at test time too (with either
        mask_test: which predicted capsule goes with which digit is not defined).
        Reports ``accuracy`` (both digits are the two longest capsules) and
        ``accuracy/one`` (at least one is)."""
        v = self.digit_capsules(x)  # (B, J, D)
        lengths = capsule_length(v)  # (B, J)
        loss = two_digit_margin_loss(lengths, t2)
        report = {'loss/margin': loss}
        if self.reconstruct:
            if digits is None:
                raise ValueError('digits are needed to compute the reconstruction loss')
            x_rec = F.stack([self.decode(v, t2[:, k]) for k in range(2)], axis=1)
            recon = self.config['recon_weight'] * two_digit_reconstruction_loss(
                x_rec, digits)  # x_rec (B, 2, C, H, W): digit k from capsule t2[:, k]
            report['loss/recon'] = recon
            loss = loss + recon
        hits = pair_hits(lengths.array, t2)  # (B, 2)
        xp = chainer.backend.get_array_module(hits)
        report.update(loss=loss, accuracy=xp.mean(hits.all(axis=1), dtype=numpy.float32),
                      **{'accuracy/one': xp.mean(hits.any(axis=1), dtype=numpy.float32)})
        chainer.report(report, self)
        return loss

    def predict(self, x, batchsize=100):
        """Class scores (capsule lengths) ``(B, J)`` as a NumPy array, at test time,
        batch by batch (:func:`capsnet_chainer.inference.predict`).

        Args:
            x (array): Images ``(B, C, H, W)``, on any device.
            batchsize (int): Images per forward pass.
        """
        return inference.predict(self, x, batchsize)

    def count_params(self):
        """Number of scalar parameters."""
        return sum(p.size for p in self.params())
