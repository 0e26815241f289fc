"""The prediction-vector kernel: ``u_hat[j|i] = W_i u_i (+ b_i)`` (Eq. 2 of the paper),
a FunctionNode whose forward and backward are one batched matrix product each.

:func:`prediction_vectors` computes what
:func:`capsnet_chainer.functions.prediction_vectors` computes (the plain equation it is
tested against), writing straight into the ``(B, J, I, D)`` layout of the routing. Its
backward is a second FunctionNode; it supports first-order gradients only. Inside the
kernel ``E`` counts the (bias-extended) primary capsule dimensions (``P`` of
:mod:`capsnet_chainer`) and ``M`` the prediction maps.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

from chainer import backend
from chainer import function_node
from chainer.utils import type_check

from capsnet_chainer.conv_kernel import NoDoubleBackprop


def with_bias(u, W, b):
    """``u`` ``(..., E)`` with a last column of ones and ``W`` ``(M, E, F)`` with the bias
    ``b`` ``(M, F)`` as an extra input row, so that ``u W + b = u_e W_e``."""
    if b is None:
        return u, W
    xp = backend.get_array_module(u)
    u_e = xp.empty(u.shape[:-1] + (u.shape[-1] + 1,), u.dtype)
    u_e[..., :-1] = u
    u_e[..., -1] = 1
    return u_e, xp.concatenate((W, b[:, None, :]), axis=1)


def check_map_inputs(in_types, u_ndim, n_cell=1):
    """Type checks of ``(u, W)`` or ``(u, W, b)`` for maps ``W`` ``(M, E, F)``: ``u`` has
    ``u_ndim`` axes, ``M * n_cell`` capsules on axis 1 and ``E`` dimensions last; ``b``
    is ``(M, F)``."""
    n_in = in_types.size()
    type_check.expect(2 <= n_in, n_in <= 3)
    u_type, w_type = in_types[:2]
    type_check.expect(
        u_type.dtype.kind == 'f',
        w_type.dtype == u_type.dtype,
        u_type.ndim == u_ndim,
        w_type.ndim == 3,
        w_type.shape[0] * n_cell == u_type.shape[1],
        w_type.shape[1] == u_type.shape[u_ndim - 1],
    )
    if type_check.eval(n_in) == 3:
        b_type = in_types[2]
        type_check.expect(b_type.dtype == u_type.dtype, b_type.ndim == 2,
                          b_type.shape[0] == w_type.shape[0],
                          b_type.shape[1] == w_type.shape[2])


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
        B, I, E = u_e.shape
        M, N, J = w_e.shape[0], self.n_cell, self.n_class
        D = w_e.shape[2] // J
        u_hat = xp.empty((B, J, I, D), u.dtype)
        us = u_e.reshape((B, M, N, E)).transpose((1, 2, 0, 3))[:, :, None]  # (M, N, 1, B, E)
        ws = w_e.reshape((M, E, J, D)).transpose((0, 2, 1, 3))[:, None]  # (M, 1, J, E, D)
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
        B, I, E = u_e.shape
        E0 = u.shape[2]
        M, N, J = w_e.shape[0], self.n_cell, self.n_class
        D = w_e.shape[2] // J
        g = g_hat.reshape((B, J, M, N, D)).transpose((2, 3, 1, 0, 4))  # (M, N, J, B, D)
        outputs = []
        if 0 in self.indexes:
            ws = w_e[:, :E0].reshape((M, E0, J, D)).transpose((2, 0, 3, 1))[:, :, None]
            gu = xp.matmul(g[:, :, 0], ws[0])  # (M, N, B, E0), a sum over the digits
            for j in range(1, J):
                gu += xp.matmul(g[:, :, j], ws[j])
            outputs.append(gu.transpose((2, 0, 1, 3)).reshape((B, I, E0)))
        if 1 in self.indexes or 2 in self.indexes:
            us = u_e.reshape((B, M, N, E)).transpose((1, 2, 3, 0))[:, :, None]  # (M, N, 1, E, B)
            gw = xp.matmul(us, g).sum(axis=1)  # (M, J, E, D)
            gw = gw.transpose((0, 2, 1, 3)).reshape((M, E, J * D))
            if 1 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw[:, :E0]))
            if 2 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw[:, E0]))
        return tuple(outputs)


def prediction_vectors(u, W, b=None, n_class=10, n_cell=1):
    """Prediction vectors ``u_hat[j|i] = W_i u_i (+ b_i)`` as ``(B, J, I, D)``.

    Args:
        u (~chainer.Variable): Primary capsules ``(B, I, E)``.
        W (~chainer.Variable): Maps ``(I // n_cell, E, J * D)``; capsule ``i`` uses map
            ``i // n_cell``; column ``j * D + d`` is dimension ``d`` of digit ``j``.
        b (~chainer.Variable): Biases ``(I // n_cell, J * D)`` or ``None``.
        n_class (int): ``J``.
        n_cell (int): Consecutive capsules that share a map.

    Returns:
        ~chainer.Variable: ``u_hat`` ``(B, J, I, D)``.
    """
    inputs = (u, W) if b is None else (u, W, b)
    return PredictionVectors(n_class, n_cell).apply(inputs)[0]
