"""The CapsNet layers as Chainer Links: primary capsules, digit capsules, decoder.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017, Sec. 4.
"""

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers

from capsnet_chainer.functions import mask
from capsnet_chainer.functions import routing
from capsnet_chainer.functions import squash

#: The reference initialises every weight from Uniform(-0.05, 0.05), biases at zero.
DEFAULT_INITIALW = initializers.Uniform(scale=0.05)


class PrimaryCapsules(chainer.Chain):
    """A convolution whose output channels form capsule vectors.

    Capsule type ``k`` at a grid cell is made of channels ``8k .. 8k+7`` there: each
    vector runs across filters, never within one filter's map.

    Args:
        in_channels (int): Input channels (256).
        n_type (int): Capsule types (32).
        dim (int): Dimensions of a primary capsule (8).
        ksize (int): Kernel size (9).
        stride (int): Stride (2).
        squash (bool): Squash the capsules (the paper) or leave them linear (the
            reference).
        initialW: Weight initializer.
    """

    def __init__(self, in_channels=256, n_type=32, dim=8, ksize=9, stride=2,
                 squash=False, initialW=DEFAULT_INITIALW):
        super().__init__()
        self.n_type = n_type
        self.dim = dim
        self.squash = squash
        with self.init_scope():
            self.conv = L.Convolution2D(in_channels, n_type * dim, ksize, stride,
                                        initialW=initialW)

    def forward(self, h):
        """Args: h ``(B, C, H, W)``. Returns: u ``(B, n_type * H' * W', dim)``."""
        h = self.conv(h)  # (B, n_type * dim, 6, 6)
        B, _, H, W = h.shape
        u = F.reshape(h, (B, self.n_type, self.dim, H * W))
        u = F.reshape(F.transpose(u, (0, 1, 3, 2)), (B, self.n_type * H * W, self.dim))
        return squash(u) if self.squash else u  # (B, 1152, 8)


class DigitCapsules(chainer.Link):
    """Prediction vectors ``u_hat[j|i] = W_ij u_i`` and routing to the digit capsules.

    With ``shared=True`` (the reference) each capsule type has one ``in_dim`` to
    ``n_class * out_dim`` map with a bias, shared by its ``n_cell`` grid cells. With
    ``shared=False`` (the paper) every primary capsule has its own map, no bias.

    Args:
        n_type (int): Primary capsule types (32).
        n_cell (int): Grid cells per type (36).
        in_dim (int): Primary capsule dimensions (8).
        n_class (int): Digit capsules (10).
        out_dim (int): Digit capsule dimensions (16).
        shared (bool): One map per type (``True``) or per capsule (``False``).
        n_iteration (int): Routing iterations.
        grad_all_iterations (bool): See :func:`~capsnet_chainer.functions.routing`.
        initialW: Weight initializer.

    Attributes:
        W (~chainer.Parameter): ``(n_type, in_dim, n_class * out_dim)`` when shared,
            ``(n_type * n_cell, in_dim, n_class * out_dim)`` otherwise. Output column
            ``j * out_dim + d`` is dimension ``d`` of digit ``j``.
        b (~chainer.Parameter): ``(n_type, n_class * out_dim)``, only when shared.
    """

    def __init__(self, n_type=32, n_cell=36, in_dim=8, n_class=10, out_dim=16,
                 shared=True, n_iteration=3, grad_all_iterations=True,
                 initialW=DEFAULT_INITIALW):
        super().__init__()
        self.n_type = n_type
        self.n_cell = n_cell
        self.n_class = n_class
        self.out_dim = out_dim
        self.shared = shared
        self.n_iteration = n_iteration
        self.grad_all_iterations = grad_all_iterations
        n_map = n_type if shared else n_type * n_cell
        with self.init_scope():
            self.W = chainer.Parameter(initialW, (n_map, in_dim, n_class * out_dim))
            if shared:
                self.b = chainer.Parameter(0, (n_type, n_class * out_dim))

    def predict_vectors(self, u):
        """Args: u ``(B, I, in_dim)``. Returns: u_hat ``(B, n_class, I, out_dim)``."""
        B, I, in_dim = u.shape
        J, D = self.n_class, self.out_dim
        if self.shared:
            u = F.reshape(u, (B, self.n_type, self.n_cell, in_dim))
            u = F.reshape(F.transpose(u, (1, 0, 2, 3)), (self.n_type, B * self.n_cell, in_dim))
            u_hat = F.matmul(u, self.W)  # (n_type, B * n_cell, J * D)
            u_hat = u_hat + F.broadcast_to(self.b[:, None, :], u_hat.shape)
            u_hat = F.reshape(u_hat, (self.n_type, B, self.n_cell, J, D))
            u_hat = F.transpose(u_hat, (1, 3, 0, 2, 4))  # (B, J, n_type, n_cell, D)
        else:
            u = F.transpose(u, (1, 0, 2))  # (I, B, in_dim)
            u_hat = F.reshape(F.matmul(u, self.W), (I, B, J, D))
            u_hat = F.transpose(u_hat, (1, 2, 0, 3))  # (B, J, I, D)
        return F.reshape(u_hat, (B, J, I, D))

    def forward(self, u):
        """Args: u ``(B, I, in_dim)``. Returns: v ``(B, n_class, out_dim)``."""
        return routing(self.predict_vectors(u), self.n_iteration, self.grad_all_iterations)


class Decoder(chainer.Chain):
    """Reconstructs the image from the digit capsules, masked to one digit.

    FC 512 ReLU, FC 1024 ReLU, FC ``out_shape`` sigmoid (Sec. 4.1, Fig. 2 of [#]_).

    Args:
        in_size (int): ``n_class * out_dim`` (160).
        out_shape (tuple of ints): Image shape ``(C, H, W)``.
        initialW: Weight initializer.
    """

    def __init__(self, in_size=160, out_shape=(1, 28, 28), initialW=DEFAULT_INITIALW):
        super().__init__()
        self.out_shape = tuple(out_shape)
        n_out = 1
        for n in self.out_shape:
            n_out *= n
        with self.init_scope():
            self.fc1 = L.Linear(in_size, 512, initialW=initialW)
            self.fc2 = L.Linear(512, 1024, initialW=initialW)
            self.fc3 = L.Linear(1024, n_out, initialW=initialW)

    def forward(self, v, labels):
        """Args: v ``(B, J, D)``, labels ``(B,)``. Returns: images ``(B, C, H, W)``."""
        h = F.reshape(mask(v, labels), (v.shape[0], -1))
        h = F.relu(self.fc1(h))
        h = F.relu(self.fc2(h))
        return F.reshape(F.sigmoid(self.fc3(h)), (v.shape[0],) + self.out_shape)
