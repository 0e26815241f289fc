"""The baseline CNN of Sabour et al. [#]_, Sec. 5.

"The baseline is a standard CNN with three convolutional layers of 256, 256, 128
channels. Each has 5x5 kernels and stride of 1. The last convolutional layers are
followed by two fully connected layers of size 328, 192. The last fully connected layer
is connected with dropout to a 10 class softmax layer with cross entropy loss." The
paper gives 35.4M parameters. Padding and pooling are not stated; 'same' padding
(pad 2) and no pooling give 35,445,522 parameters for 28x28 inputs, which is the
paper's figure to three significant digits (most of them in the first fully connected
layer, 128 x 28 x 28 inputs to 328 units).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import chainer.functions as F
import chainer.links as L

from capsnet_chainer import metrics


class BaselineCNN(chainer.Chain):
    """conv 5x5 256, conv 5x5 256, conv 5x5 128 (stride 1, pad 2, ReLU), FC 328 ReLU,
    FC 192 ReLU, dropout, FC ``n_class``, softmax cross-entropy.

    Like :class:`chainer.links.Classifier`, ``model(x, t)`` returns the loss and
    reports ``loss`` and ``accuracy``, so ``optimizer.update(model, x, t)`` runs one
    training step. Dropout is active only when ``chainer.config.train`` is on.

    Args:
        n_class (int): Classes (10).
        in_shape (tuple of ints): Input image shape ``(C, H, W)``: ``(1, 28, 28)`` for
            MNIST, ``(1, 36, 36)`` for MultiMNIST, ``(1, 40, 40)`` for affNIST-style
            inputs. Only the first fully connected layer's size depends on it
            (``128 * H * W`` inputs).
        dropout (float): Dropout ratio before the last layer.
        pad (int): Padding of the convolutions (2 keeps the image size).
        initialW: Weight initializer of every layer (Chainer's default if ``None``).
    """

    def __init__(self, n_class=10, in_shape=(1, 28, 28), dropout=0.5, pad=2,
                 initialW=None):
        super().__init__()
        C, H, W = in_shape
        self.in_shape = tuple(int(n) for n in in_shape)
        self.dropout = float(dropout)
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

    def forward(self, x, t):
        """Args: x ``(B, C, H, W)`` float32, t ``(B,)`` int32. Returns: the scalar loss."""
        y = self.logits(x)
        loss = F.softmax_cross_entropy(y, t)
        chainer.report({'loss': loss, 'accuracy': F.accuracy(y, t)}, self)
        return loss

    def predict(self, x, batchsize=100):
        """Class scores (logits) ``(N, n_class)`` as a NumPy array, test mode.

        Args:
            x (array): Images ``(N, C, H, W)``, on any device.
        """
        return metrics.batched(self, self.logits, (x,), (self.fc3.out_size,), batchsize)

    def count_params(self):
        """Number of scalar parameters."""
        return sum(p.size for p in self.params())
