"""The CapsNet layers as Chainer Links: primary capsules, digit capsules, decoder.

Each link that has a fast kernel chooses it in one visible place, its ``forward``:
``if self.fast:`` the kernel (:mod:`capsnet_chainer.kernels.conv`,
:mod:`capsnet_chainer.kernels.routing`), else the plain equations in
:mod:`chainer.functions` (:mod:`capsnet_chainer.functions`). Both compute the same; the
kernels are several times faster on the CPU.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017, Sec. 4.
"""

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers
import numpy

from capsnet_chainer import functions
from capsnet_chainer.functions import mask
from capsnet_chainer.functions import squash
from capsnet_chainer.kernels import conv as conv_kernel
from capsnet_chainer.kernels import prediction as prediction_kernel
from capsnet_chainer.kernels import routing as routing_kernel

#: The reference initialises every weight from Uniform(-0.05, 0.05), biases at zero.
DEFAULT_INITIALW = initializers.Uniform(scale=0.05)


class Convolution2D(L.Convolution2D):
    """:class:`chainer.links.Convolution2D` computed by the channels-last kernel.

    The parameters (``W`` ``(O, C, kh, kw)``, ``b``), their names and initialisation are
    those of the parent class, so model files are unchanged. Valid (unpadded),
    undilated, ungrouped convolutions run as
    :func:`~capsnet_chainer.kernels.conv.convolution_2d` (on a GPU only with
    :attr:`fast_on_gpu` and without cuDNN); others, and all of them when :attr:`fast`
    is ``False``, fall back to the parent's code (on a GPU without cuDNN, as with CuPy
    14: im2col and a matrix product).

    Attributes:
        fast (bool): Use the kernel where it applies (default ``True``).
        fast_on_gpu (bool): Use it on CuPy arrays too where Chainer has no cuDNN (as
            with CuPy 14), class-wide; default ``True``, the faster there
            (bench/README.md); ``False`` gives Chainer's im2col convolution.
    """

    fast = True
    fast_on_gpu = True

    def forward(self, x):
        """Args: x ``(B, C, H, W)``. Returns: ``(B, O, H', W')``, a view of channels-last
        memory."""
        if not self._fast():
            return super().forward(x)
        y = self.forward_nhwc(F.transpose(x, (0, 2, 3, 1)))
        return F.transpose(y, (0, 3, 1, 2))

    def forward_nhwc(self, x, slope=None):
        """The convolution on channels-last images, with an optional fused leaky ReLU.

        Args:
            x (~chainer.Variable or array): Images ``(B, H, W, C)``, any strides.
            slope (float or None): See
                :func:`~capsnet_chainer.kernels.conv.convolution_2d`.

        Returns:
            ~chainer.Variable: ``(B, H', W', O)``, C-contiguous.
        """
        if self.W.array is None:
            self._initialize_params(x.shape[3])
        if not self._fast():
            h = F.transpose(super().forward(F.transpose(x, (0, 3, 1, 2))), (0, 2, 3, 1))
            if slope is not None:
                h = F.relu(h) if slope == 0 else F.leaky_relu(h, slope)
            return h
        return conv_kernel.convolution_2d(x, self.W, self.b, self.stride, slope)

    @classmethod
    def kernel_on_gpu(cls):
        """Whether the kernel runs on CuPy arrays: with :attr:`fast_on_gpu`, and only
        where Chainer would not use cuDNN (none in CuPy 14); where it would, cuDNN
        convolves. :func:`~capsnet_chainer.device.describe_device` says the same."""
        return cls.fast_on_gpu and not chainer.should_use_cudnn('>=auto')

    def _fast(self):
        return (self.fast and (self.xp is numpy or self.kernel_on_gpu())
                and tuple(self.pad) == (0, 0)
                and tuple(self.dilate) == (1, 1) and self.groups == 1)


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
            self.conv = Convolution2D(in_channels, n_type * dim, ksize, stride,
                                      initialW=initialW)

    def forward(self, h):
        """Args: h ``(B, C, H, W)``. Returns: u ``(B, I, P)``, ``I = n_type * H' * W'``.

        The convolution runs on the channels-last view of ``h``, which is free when
        ``h`` is itself a view of channels-last memory, as
        :meth:`CapsNet.digit_capsules` passes it.
        """
        y = self.conv.forward_nhwc(F.transpose(h, (0, 2, 3, 1)))  # (B, 6, 6, T * P)
        B, H, W, _ = y.shape
        u = F.reshape(y, (B, H * W, self.n_type, self.dim))  # (B, N, T, P)
        u = F.reshape(F.transpose(u, (0, 2, 1, 3)), (B, self.n_type * H * W, self.dim))
        return squash(u) if self.squash else u  # (B, I, P)


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
        none_of_the_above (bool): Route with the extra "none-of-the-above" category
            (:func:`~capsnet_chainer.functions.coupling`).
        initialW: Weight initializer.

    Attributes:
        fast (bool): Compute with the routing kernels (default ``True``) or with the
            plain equations of :mod:`capsnet_chainer.functions`.
        W (~chainer.Parameter): ``(n_type, in_dim, n_class * out_dim)`` when shared,
            ``(n_type * n_cell, in_dim, n_class * out_dim)`` otherwise. Output column
            ``j * out_dim + d`` is dimension ``d`` of digit ``j``.
        b (~chainer.Parameter): ``(n_type, n_class * out_dim)``, only when shared.
    """

    def __init__(self, n_type=32, n_cell=36, in_dim=8, n_class=10, out_dim=16,
                 shared=True, n_iteration=3, grad_all_iterations=True,
                 none_of_the_above=False, initialW=DEFAULT_INITIALW):
        super().__init__()
        self.n_type = n_type
        self.n_cell = n_cell
        self.n_class = n_class
        self.out_dim = out_dim
        self.shared = shared
        self.n_iteration = n_iteration
        self.grad_all_iterations = grad_all_iterations
        self.none_of_the_above = none_of_the_above
        self.fast = True
        n_map = n_type if shared else n_type * n_cell
        with self.init_scope():
            self.W = chainer.Parameter(initialW, (n_map, in_dim, n_class * out_dim))
            if shared:
                self.b = chainer.Parameter(0, (n_type, n_class * out_dim))

    def predict_vectors(self, u):
        """Args: u ``(B, I, P)``. Returns: u_hat ``(B, J, I, D)``."""
        predict = (prediction_kernel.prediction_vectors if self.fast
                   else functions.prediction_vectors)
        if self.shared:
            return predict(u, self.W, self.b, self.n_class, self.n_cell)
        return predict(u, self.W, None, self.n_class)

    def forward(self, u):
        """Args: u ``(B, I, P)``. Returns: v ``(B, J, D)``.

        Shared maps go through :func:`~capsnet_chainer.kernels.routing.shared_routing`,
        which never forms ``u_hat``; unshared ones through :meth:`predict_vectors` and
        :func:`~capsnet_chainer.kernels.routing.routing`. With ``fast`` off, the same
        computations run as the plain equations of :mod:`capsnet_chainer.functions`.
        """
        ops = routing_kernel if self.fast else functions  # the same two functions
        if self.shared:
            B, _, P = u.shape
            u = F.reshape(u, (B, self.n_type, self.n_cell, P))  # (B, T, N, P)
            return ops.shared_routing(u, self.W, self.b, self.n_class, self.n_iteration,
                                      self.grad_all_iterations,
                                      self.none_of_the_above)  # (B, J, D)
        u_hat = self.predict_vectors(u)  # (B, J, I, D)
        return ops.routing(u_hat, self.n_iteration, self.grad_all_iterations,
                           self.none_of_the_above)  # (B, J, D)


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
