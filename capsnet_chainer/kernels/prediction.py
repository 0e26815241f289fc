"""The prediction-vector kernel: ``u_hat[j|i] = W_i u_i (+ b_i)`` (Eq. 2 of the paper),
a FunctionNode whose forward and backward are one batched matrix product each.

:func:`prediction_vectors` computes what
:func:`capsnet_chainer.functions.prediction_vectors` computes (the plain equation it is
tested against), writing straight into the ``(B, J, I, D)`` layout of the routing. Its
backward is a second FunctionNode; it supports first-order gradients only. Shape
letters are those of :mod:`capsnet_chainer`, with ``M`` prediction maps; with a bias,
``P`` counts the primary capsule dimensions plus the bias's column of ones
(:func:`~capsnet_chainer.kernels.base.with_bias`), ``P0`` them alone.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

from chainer import backend
from chainer import function_node

from capsnet_chainer.kernels.base import check_map_inputs
from capsnet_chainer.kernels.base import NoDoubleBackprop
from capsnet_chainer.kernels.base import with_bias


class PredictionVectors(function_node.FunctionNode):
    """``u_hat[b, j, i] = u[b, i] W[i // n_cell] (+ b[i // n_cell])`` read as ``J x D``.

    One small product per (map, cell, digit), written straight into the ``(B, J, I, D)``
    layout of the routing: no transposed copies, forward or backward.

    Args:
        n_class (int): ``J``.
        n_cell (int): Consecutive capsules that share a map (1: one map per capsule).
    """

    def __init__(self, n_class, n_cell=1):
        self.n_class = n_class
        self.n_cell = n_cell

    def check_type_forward(self, in_types):
        check_map_inputs(in_types, 3, self.n_cell)

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        u, W = inputs[:2]
        if W.shape[2] % self.n_class:
            raise ValueError('W has {} outputs, not a multiple of n_class {}'.format(
                W.shape[2], self.n_class))
        u_e, w_e = with_bias(u, W, inputs[2] if len(inputs) == 3 else None)
        xp = backend.get_array_module(u)
        B, I, P = u_e.shape
        M, N, J = w_e.shape[0], self.n_cell, self.n_class
        D = w_e.shape[2] // J
        u_hat = xp.empty((B, J, I, D), u.dtype)
        us = u_e.reshape((B, M, N, P)).transpose((1, 2, 0, 3))[:, :, None]  # (M, N, 1, B, P)
        ws = w_e.reshape((M, P, J, D)).transpose((0, 2, 1, 3))[:, None]  # (M, 1, J, P, D)
        xp.matmul(us, ws, out=u_hat.reshape((B, J, M, N, D)).transpose((2, 3, 1, 0, 4)))
        return u_hat,

    def backward(self, indexes, grad_outputs):
        grad = PredictionVectorsGrad(self.n_class, self.n_cell, indexes)
        gxs = grad.apply(self.get_retained_inputs() + tuple(grad_outputs))
        return tuple(gxs[grad.indexes.index(i)] for i in indexes)


class PredictionVectorsGrad(NoDoubleBackprop):
    """Gradients of :class:`PredictionVectors` for the inputs in ``indexes``."""

    def __init__(self, n_class, n_cell, indexes):
        self.n_class = n_class
        self.n_cell = n_cell
        self.indexes = tuple(indexes)

    def forward(self, inputs):
        u, W = inputs[:2]
        g_hat = inputs[-1]
        u_e, w_e = with_bias(u, W, inputs[2] if len(inputs) == 4 else None)
        xp = backend.get_array_module(u)
        B, I, P = u_e.shape
        P0 = u.shape[2]
        M, N, J = w_e.shape[0], self.n_cell, self.n_class
        D = w_e.shape[2] // J
        g = g_hat.reshape((B, J, M, N, D)).transpose((2, 3, 1, 0, 4))  # (M, N, J, B, D)
        outputs = []
        if 0 in self.indexes:
            ws = w_e[:, :P0].reshape((M, P0, J, D)).transpose((2, 0, 3, 1))[:, :, None]
            gu = xp.matmul(g[:, :, 0], ws[0])  # (M, N, B, P0), a sum over the digits
            for j in range(1, J):
                gu += xp.matmul(g[:, :, j], ws[j])
            outputs.append(gu.transpose((2, 0, 1, 3)).reshape((B, I, P0)))
        if 1 in self.indexes or 2 in self.indexes:
            us = u_e.reshape((B, M, N, P)).transpose((1, 2, 3, 0))[:, :, None]  # (M, N, 1, P, B)
            gw = xp.matmul(us, g).sum(axis=1)  # (M, J, P, D)
            gw = gw.transpose((0, 2, 1, 3)).reshape((M, P, J * D))
            if 1 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw[:, :P0]))
            if 2 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw[:, P0]))
        return tuple(outputs)


def prediction_vectors(u, W, b=None, n_class=10, n_cell=1):
    """Prediction vectors ``u_hat[j|i] = W_i u_i (+ b_i)`` as ``(B, J, I, D)``.

    Args:
        u (~chainer.Variable): Primary capsules ``(B, I, P)``.
        W (~chainer.Variable): Maps ``(I // n_cell, P, J * D)``; capsule ``i`` uses map
            ``i // n_cell``; column ``j * D + d`` is dimension ``d`` of digit ``j``.
        b (~chainer.Variable): Biases ``(I // n_cell, J * D)`` or ``None``.
        n_class (int): ``J``.
        n_cell (int): Consecutive capsules that share a map.

    Returns:
        ~chainer.Variable: ``u_hat`` ``(B, J, I, D)``.
    """
    inputs = (u, W) if b is None else (u, W, b)
    return PredictionVectors(n_class, n_cell).apply(inputs)[0]
