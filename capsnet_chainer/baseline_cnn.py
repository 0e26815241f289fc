"""The baseline CNN of Sabour et al. [#]_, Sec. 5.

"The baseline is a standard CNN with three convolutional layers of 256, 256, 128
channels. Each has 5x5 kernels and stride of 1. The last convolutional layers are
followed by two fully connected layers of size 328, 192. The last fully connected layer
is connected with dropout to a 10 class softmax layer with cross entropy loss." The
paper gives 35.4M parameters. Padding and pooling are not stated; 'same' padding
(pad 2) and no pooling give 35,445,522 parameters for 28x28 inputs, which is the
paper's figure to three significant digits (most of them in the first fully connected
layer, 128 x 28 x 28 inputs to 328 units).

The network adapts to its input size: only the first fully connected layer grows, to
``128 * H * W`` inputs. For MultiMNIST (36x36) the same layout has 56,941,330
parameters and for 40x40 inputs 69,704,466. The paper's Table 1 gives its MultiMNIST
baseline 24.56M parameters, so that one had another layout, which the paper does not
describe; this project uses the Sec. 5 layout at every input size.

Two digits per image (MultiMNIST): the paper does not state the loss of its baseline
there. A softmax cannot put probability near 1 on two classes, so this network is
trained with a sigmoid cross-entropy against the two-hot target (one independent
"is this digit present" per class, summed over the classes and averaged over the
batch); the prediction is the two highest logits, as the two longest capsules of
CapsNet (:func:`~capsnet_chainer.functions.top_two`).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from capsnet_chainer.functions import pair_hits
from capsnet_chainer import inference

#: The value of ``config['model']`` that marks a model file of this network (a
#: configuration without ``'model'`` is a CapsNet's).
MODEL_KIND = 'cnn'


class BaselineCNN(chainer.Chain):
    """conv 5x5 256, conv 5x5 256, conv 5x5 128 (stride 1, pad 2, ReLU), FC 328 ReLU,
    FC 192 ReLU, dropout, FC ``n_class``, softmax cross-entropy.

    Like :class:`chainer.links.Classifier` and :class:`~capsnet_chainer.CapsNet`,
    ``model(x, t)`` returns the loss and reports ``loss`` and ``accuracy``, so
    ``optimizer.update(model, x, t)`` runs one training step; two labels per image
    ``(B, 2)`` give the MultiMNIST loss (see :meth:`forward`). Dropout is active only
    when ``chainer.config.train`` is on.

    Args:
        n_class (int): Classes (10).
        in_shape (tuple of ints): Input image shape ``(C, H, W)``: ``(1, 28, 28)`` for
            MNIST, ``(1, 36, 36)`` for MultiMNIST, ``(1, 40, 40)`` for affNIST-style
            inputs. Only the first fully connected layer's size depends on it
            (``128 * H * W`` inputs).
        dropout (float): Dropout ratio before the last layer.
        pad (int): Padding of the convolutions (2 keeps the image size).
        initialW: Weight initializer of every layer (Chainer's default if ``None``).
            Not part of :attr:`config`.

    Attributes:
        config (dict): The arguments that define the network, as model files store it,
            with ``'model': 'cnn'`` (:data:`MODEL_KIND`), which tells
            :func:`~capsnet_chainer.io.modelfile.load_model` to rebuild this class.
    """

    #: There is no decoder: nothing to reconstruct (``train.py`` and the trainer ask).
    reconstruct = False
    #: What :meth:`scores` returns, for reports.
    score_name = 'logit'

    def __init__(self, n_class=10, in_shape=(1, 28, 28), dropout=0.5, pad=2,
                 initialW=None):
        super().__init__()
        C, H, W = in_shape
        self.in_shape = tuple(int(n) for n in in_shape)
        self.dropout = float(dropout)
        self.config = {'model': MODEL_KIND, 'n_class': int(n_class),
                       'in_shape': [int(n) for n in in_shape], 'dropout': self.dropout,
                       'pad': int(pad)}
        # Each 5x5 convolution of stride 1 adds 2 * pad - 4 rows and columns.
        h, w = H + 3 * (2 * pad - 4), W + 3 * (2 * pad - 4)
        if h < 1 or w < 1:
            raise ValueError('inputs of {}x{} are too small for three 5x5 convolutions '
                             'with pad {}'.format(H, W, pad))
        with self.init_scope():
            self.conv1 = L.Convolution2D(C, 256, 5, pad=pad, initialW=initialW)
            self.conv2 = L.Convolution2D(256, 256, 5, pad=pad, initialW=initialW)
            self.conv3 = L.Convolution2D(256, 128, 5, pad=pad, initialW=initialW)
            self.fc1 = L.Linear(128 * h * w, 328, initialW=initialW)
            self.fc2 = L.Linear(328, 192, initialW=initialW)
            self.fc3 = L.Linear(192, n_class, initialW=initialW)

    def logits(self, x):
        """Args: x ``(B, C, H, W)``. Returns: class logits ``(B, n_class)``."""
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))  # (B, 128, H', W')
        h = F.relu(self.fc1(h))
        h = F.relu(self.fc2(h))
        return self.fc3(F.dropout(h, self.dropout))

    def scores(self, x):
        """Class scores of a batch: the logits ``(B, n_class)`` (what
        :func:`capsnet_chainer.inference.predict` computes, batch by batch)."""
        return self.logits(x)

    def forward(self, x, t, digits=None):
        """The loss of a batch: one digit per image, or two (MultiMNIST).

        Args:
            x: Images ``(B, C, H, W)``, float32.
            t: Labels ``(B,)`` int32: softmax cross-entropy, reporting ``loss`` and
                ``accuracy``. Or two labels ``(B, 2)``: the sigmoid cross-entropy of
                the logits against the two-hot target, summed over the classes and
                averaged over the batch, reporting ``loss``, ``accuracy`` (both digits
                are the two highest logits) and ``accuracy/one`` (at least one is), as
                :class:`~capsnet_chainer.CapsNet` does.
            digits: Ignored (the two digits alone, which only a decoder would use).

        Returns:
            ~chainer.Variable: The scalar loss.
        """
        y = self.logits(x)
        if t.ndim == 2:
            return self._pair_loss(y, t)
        loss = F.softmax_cross_entropy(y, t)
        chainer.report({'loss': loss, 'accuracy': F.accuracy(y, t)}, self)
        return loss

    def _pair_loss(self, y, t2):
        xp = chainer.backend.get_array_module(y)
        B, J = y.shape
        target = xp.zeros((B, J), numpy.int32)
        target[xp.arange(B)[:, None], t2] = 1  # two-hot
        # normalize=False: the sum over the elements divided by the batch size
        loss = F.sigmoid_cross_entropy(y, target, normalize=False)
        hits = pair_hits(y.array, t2)  # (B, 2)
        chainer.report({'loss': loss,
                        'accuracy': xp.mean(hits.all(axis=1), dtype=numpy.float32),
                        'accuracy/one': xp.mean(hits.any(axis=1), dtype=numpy.float32)},
                       self)
        return loss

    def predict(self, x, batchsize=100):
        """Class scores (logits) ``(N, n_class)`` as a NumPy array, test mode.

        Batch by batch (:func:`capsnet_chainer.inference.predict`).

        Args:
            x (array): Images ``(N, C, H, W)``, on any device.
        """
        return inference.predict(self, x, batchsize)

    def count_params(self):
        """Number of scalar parameters."""
        return sum(p.size for p in self.params())
