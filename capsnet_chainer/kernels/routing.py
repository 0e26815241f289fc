"""The routing kernels: FunctionNodes whose forward and backward are a few large
matrix products, where autograd through many small Chainer ops would be the cost.

Each computes what a function of :mod:`capsnet_chainer.functions` computes, the plain
equations they are tested against (the prediction vectors alone are
:mod:`capsnet_chainer.kernels.prediction`):

* :func:`routing` is Procedure 1 of the paper on given predictions ``u_hat``, with a
  hand-written backward through every iteration (or through the last one only).
* :func:`shared_routing` fuses the predictions of maps shared by the grid cells of a
  capsule type (the reference's) with the routing. It never forms ``u_hat``: every
  product of ``u_hat`` with a coupling or an agreement is regrouped to act on the 8-D
  primary capsules, ``sum_i c_ij u_hat[j|i] = sum_k W_k^T (sum_n c_ij u_i)``, which is
  fewer operations and no ``(B, J, I, D)`` array at all.

Each FunctionNode's backward is a second FunctionNode that computes the gradients; they
support first-order gradients only (double backpropagation raises). The code uses the
array module of its inputs, NumPy or CuPy (the tests run both; ``tests/test_gpu.py`` on
a GPU); on CuPy the softmax, the squash and their gradients can each be one CUDA
kernel (:mod:`~capsnet_chainer.kernels.routing_cuda`). Shape letters are those of
:mod:`capsnet_chainer` (``T`` types on ``N`` cells, ``P`` dimensions: with a bias, plus
its column of ones, ``P0`` without), with ``Q`` terms of a gradient.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

from chainer import backend
from chainer import function_node
from chainer.utils import type_check

from capsnet_chainer.functions import EPS
from capsnet_chainer.kernels.base import check_map_inputs
from capsnet_chainer.kernels.base import NoDoubleBackprop
from capsnet_chainer.kernels.base import with_bias
from capsnet_chainer.kernels import routing_cuda


# --- Routing on given predictions ---------------------------------------------------------


def softmax(b, axis, none_of_the_above=False):
    """``softmax(b)`` along ``axis``; with ``none_of_the_above``, over ``b`` and one more
    logit fixed at 0 whose share is dropped (see
    :func:`capsnet_chainer.functions.coupling`). Also the routing of
    :func:`capsnet_chainer.evaluation.routing_diagnostics.routing_trace`."""
    if routing_cuda.takes_columns(axis, b):  # one CUDA kernel for the lines below
        return routing_cuda.softmax(b, none_of_the_above)
    xp = backend.get_array_module(b)
    m = b.max(axis=axis, keepdims=True)
    if none_of_the_above:
        xp.maximum(m, 0, out=m)  # the extra logit 0 counts too
    c = b - m
    xp.exp(c, out=c)
    total = c.sum(axis=axis, keepdims=True)
    if none_of_the_above:
        total += xp.exp(-m)  # the extra category's share of the sum
    c /= total
    return c


def _uniform(b, axis, none_of_the_above=False):
    """The softmax of all-zero logits ``b``: ``1 / n`` along ``axis``, exactly (``1 / (n +
    1)`` with the extra category of ``none_of_the_above``)."""
    xp = backend.get_array_module(b)
    n = b.shape[axis] + (1 if none_of_the_above else 0)
    return xp.full(b.shape, b.dtype.type(1) / b.dtype.type(n), b.dtype)


def _softmax_grad(c, gc, axis):
    """``c * (gc - sum(c * gc))``, the gradient of the logits of ``c = softmax(b)``.

    It holds for :func:`softmax` with ``none_of_the_above`` too, the sum running over
    the real classes only: the dropped category's coupling has no gradient."""
    if routing_cuda.takes_columns(axis, c, gc):
        return routing_cuda.softmax_grad(c, gc)
    g = c * gc
    g -= c * g.sum(axis=axis, keepdims=True)
    return g


def _squash(s):
    """``v = s |s| / (1 + |s|^2)`` on the last axis; returns ``v`` and what the backward
    needs, ``(s, |s|^2, |s|)``."""
    if routing_cuda.takes_capsules(s):
        return routing_cuda.squash(s, EPS)
    xp = backend.get_array_module(s)
    sq = (s * s).sum(axis=-1, keepdims=True)
    norm = xp.sqrt(sq + s.dtype.type(EPS))
    v = s * (norm / (1 + sq))
    return v, (s, sq, norm)


def _squash_grad(saved, gv):
    """Gradient of :func:`_squash` for ``gv``, as autograd through the formula gives it."""
    s, sq, norm = saved
    if routing_cuda.takes_capsules(s, sq, norm, gv):
        return routing_cuda.squash_grad(saved, gv)
    one_sq = 1 + sq
    s_gv = (s * gv).sum(axis=-1, keepdims=True)
    return gv * (norm / one_sq) + s * (s_gv * (1 / (norm * one_sq) - 2 * norm / one_sq ** 2))


def _check_n_iteration(n_iteration):
    if int(n_iteration) < 1:
        raise ValueError('n_iteration must be at least 1, got {}'.format(n_iteration))
    return int(n_iteration)


class Routing(function_node.FunctionNode):
    """Routing by agreement on predictions ``u_hat`` ``(B, J, I, D)``; see :func:`routing`.
    """

    def __init__(self, n_iteration=3, grad_all_iterations=True, none_of_the_above=False):
        self.n_iteration = _check_n_iteration(n_iteration)
        self.grad_all_iterations = grad_all_iterations
        self.none_of_the_above = bool(none_of_the_above)

    def check_type_forward(self, in_types):
        type_check.expect(in_types.size() == 1)
        u_type, = in_types
        type_check.expect(u_type.dtype.kind == 'f', u_type.ndim == 4)

    def forward(self, inputs):
        self.retain_inputs((0,))
        u_hat, = inputs
        xp = backend.get_array_module(u_hat)
        B, J, I, D = u_hat.shape
        logits = xp.zeros((B, J, 1, I), u_hat.dtype)
        self.saved = []
        for r in range(self.n_iteration):
            c = (softmax(logits, 1, self.none_of_the_above) if r
                 else _uniform(logits, 1, self.none_of_the_above))  # (B, J, 1, I)
            s = xp.matmul(c, u_hat)  # (B, J, 1, D)
            v, squash_saved = _squash(s)
            self.saved.append((c, v, squash_saved))
            if r < self.n_iteration - 1:
                logits += xp.matmul(u_hat, v.transpose((0, 1, 3, 2))).transpose((0, 1, 3, 2))
        return v.reshape((B, J, D)),

    def backward(self, indexes, grad_outputs):
        u_hat, = self.get_retained_inputs()
        gv, = grad_outputs
        return RoutingGrad(self.saved, self.grad_all_iterations).apply((u_hat, gv))


class RoutingGrad(NoDoubleBackprop):
    """The gradient of :class:`Routing` with respect to ``u_hat``.

    Going back through iteration ``r``: ``gs_r`` from the squash, ``gc_r = u_hat gs_r``
    through the softmax into the logits, whose gradient reaches the agreement of the
    previous iteration, ``a = u_hat . v``. The gradient of ``u_hat`` is a sum of outer
    products, ``c_r gs_r^T`` and ``ga_r v_r^T``, formed at the end as one product.
    """

    def __init__(self, saved, grad_all_iterations):
        self.saved = saved
        self.grad_all_iterations = grad_all_iterations

    def forward(self, inputs):
        u_hat, gv = inputs
        xp = backend.get_array_module(u_hat)
        B, J, I, D = u_hat.shape
        gv = gv.reshape((B, J, 1, D))
        left, right = [], []  # gu_hat = sum of left[t]^T right[t], (B, J, 1, I) (B, J, 1, D)
        g_logits = None
        R = len(self.saved)
        for r in reversed(range(R) if self.grad_all_iterations else [R - 1]):
            c, v, squash_saved = self.saved[r]
            if r < R - 1:
                left.append(g_logits)  # the agreement a_r = u_hat . v_r feeds logits r + 1
                right.append(v)
                gv = xp.matmul(g_logits, u_hat)
            gs = _squash_grad(squash_saved, gv)
            left.append(c)
            right.append(gs)
            if r > 0 and self.grad_all_iterations:
                gc = xp.matmul(u_hat, gs.transpose((0, 1, 3, 2))).transpose((0, 1, 3, 2))
                g = _softmax_grad(c, gc, axis=1)
                g_logits = g if g_logits is None else g_logits + g
        left = xp.concatenate(left, axis=2).transpose((0, 1, 3, 2))  # (B, J, I, Q)
        right = xp.concatenate(right, axis=2)  # (B, J, Q, D)
        return xp.matmul(left, right),


def routing(u_hat, n_iteration=3, grad_all_iterations=True, none_of_the_above=False):
    """Routing by agreement on predictions ``u_hat`` ``(B, J, I, D)`` -> ``v`` ``(B, J, D)``.

    The kernel of :func:`capsnet_chainer.functions.routing`.
    """
    return Routing(n_iteration, grad_all_iterations, none_of_the_above).apply((u_hat,))[0]


# --- Predictions and routing, maps shared by the cells of a capsule type ------------------


class SharedRouting(function_node.FunctionNode):
    """Predictions from maps shared within each capsule type, then routing.

    Inputs ``u`` ``(B, T, N, P)`` (T types on N cells), ``W`` ``(T, P, J * D)`` and
    optionally ``b`` ``(T, J * D)``; output ``v`` ``(B, J, D)``. With the bias, ``u`` is
    extended by a constant 1 and ``W`` by the bias row, so ``u_hat = u_e W_e``.
    """

    def __init__(self, n_class, n_iteration=3, grad_all_iterations=True,
                 none_of_the_above=False):
        self.n_class = n_class
        self.n_iteration = _check_n_iteration(n_iteration)
        self.grad_all_iterations = grad_all_iterations
        self.none_of_the_above = bool(none_of_the_above)

    def check_type_forward(self, in_types):
        check_map_inputs(in_types, 4)

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        self.ops = ops = _SharedOps(*inputs, n_class=self.n_class)  # the backward's too
        B, J, T, N = ops.logit_shape
        logits = ops.xp.zeros((B, J, T, N), ops.dtype)
        self.saved = []
        for r in range(self.n_iteration):
            c = (softmax(logits, 1, self.none_of_the_above) if r
                 else _uniform(logits, 1, self.none_of_the_above))  # (B, J, T, N)
            v, squash_saved = _squash(ops.weighted_sum(c))  # (B, J, D)
            self.saved.append((c, v, squash_saved))
            if r < self.n_iteration - 1:
                logits += ops.agreement(v)
        return v,

    def backward(self, indexes, grad_outputs):
        inputs = self.get_retained_inputs()
        gv, = grad_outputs
        grad = SharedRoutingGrad(self.saved, self.grad_all_iterations, indexes, self.ops)
        gxs = grad.apply(inputs + (gv,))
        return tuple(gxs[grad.indexes.index(i)] for i in indexes)


class _SharedOps(object):
    """The products of :class:`SharedRouting`, each regrouped onto the primary capsules.

    ``u_e`` ``(B, T, N, P)`` is ``u`` with a column of ones when there is a bias, and
    ``w_j`` ``(J, T * P, D)`` the maps (with the bias row) grouped by digit, so that
    ``u_hat[b, j, (k, n)] = u_e[b, k, n] w_j[j, k]``. Couplings and logits are laid out
    ``(B, J, T, N)``: the softmax over ``J`` then runs across contiguous rows.
    """

    def __init__(self, u, W, b=None, n_class=10):
        xp = backend.get_array_module(u)
        self.xp = xp
        self.dtype = u.dtype
        B, T, N, P = u.shape
        J = n_class
        if W.shape[2] % J:
            raise ValueError('W has {} outputs, not a multiple of n_class {}'.format(
                W.shape[2], J))
        D = W.shape[2] // J
        self.has_bias = b is not None
        u_e, w_e = with_bias(u, W, b)
        P = u_e.shape[3]
        self.u_e = u_e
        self.w_j = w_e.reshape((T * P, J, D)).transpose((1, 0, 2)).copy()  # (J, T * P, D)
        self.shape = B, T, N, P, J, D
        self.logit_shape = B, J, T, N

    def pool(self, p, out=None):
        """``sum_n p[b, m, k, n] u_e[b, k, n, e]``: ``(B, M, T, N)`` -> ``(B, T, M, P)``."""
        return self.xp.matmul(p.transpose((0, 2, 1, 3)), self.u_e, out=out)

    def weighted_sum(self, c):
        """``s[b, j] = sum_i c[b, j, i] u_hat[b, j, i]``: ``(B, J, T, N)`` -> ``(B, J, D)``.
        """
        B, T, N, P, J, D = self.shape
        x = self.xp.empty((J, B, T, P), self.dtype)
        self.pool(c, out=x.transpose((1, 2, 0, 3)))
        return self.xp.matmul(x.reshape((J, B, T * P)), self.w_j).transpose((1, 0, 2))

    def project(self, q):
        """``sum_d w_j[j, (k, e), d] q[b, t, j, d]``: ``(B, Q, J, D)`` -> ``(J, B, Q, T, P)``.
        """
        B, T, N, P, J, D = self.shape
        Q = q.shape[1]
        qj = q.transpose((2, 0, 1, 3)).reshape((J, B * Q, D))
        z = self.xp.matmul(qj, self.w_j.transpose((0, 2, 1)))  # (J, B * Q, T * P)
        return z.reshape((J, B, Q, T, P))

    def agreement(self, v):
        """``a[b, j, i] = u_hat[b, j, i] . v[b, j]``: ``(B, J, D)`` -> ``(B, J, T, N)``."""
        B, T, N, P, J, D = self.shape
        y = self.project(v[:, None])[:, :, 0].transpose((1, 2, 0, 3))  # (B, T, J, P)
        a = self.xp.empty((B, J, T, N), self.dtype)
        self.xp.matmul(y, self.u_e.transpose((0, 1, 3, 2)), out=a.transpose((0, 2, 1, 3)))
        return a


class SharedRoutingGrad(NoDoubleBackprop):
    """Gradients of :class:`SharedRouting` for the inputs in ``indexes``.

    The gradient of ``u_hat`` is a sum over terms ``t`` of outer products
    ``p_t[b, j, i] q_t[b, j, :]``: the couplings with the squash gradients, and the
    agreement gradients with the capsules. It is never formed: for ``u_hat = u_e W_e``,
    ``gu_e = sum_{j,t} p_t (W_e q_t)`` and ``gW_e = sum_{b,t} (u_e^T p_t) q_t``.
    """

    def __init__(self, saved, grad_all_iterations, indexes, ops):
        self.saved = saved
        self.grad_all_iterations = grad_all_iterations
        self.indexes = tuple(indexes)
        self.ops = ops  # the forward's _SharedOps, on the same inputs

    def forward(self, inputs):
        gv = inputs[-1]
        ops = self.ops
        xp = ops.xp
        B, T, N, P, J, D = ops.shape
        R = len(self.saved)
        iterations = list(reversed(range(R))) if self.grad_all_iterations else [R - 1]
        Q = 2 * len(iterations) - 1
        # The terms, written in place: p (B, J, Q, T, N) and q (J, Q, B, D). These
        # layouts make every product below act on views, with no transposed copies.
        p = xp.empty((B, J, Q, T, N), ops.dtype)
        q = xp.empty((J, Q, B, D), ops.dtype)
        t = 0
        g_logits = None  # the gradient of the logits of iteration r + 1
        for r in iterations:
            c, v, squash_saved = self.saved[r]
            if r < R - 1:
                p[:, :, t] = g_logits  # the agreement a_r = u_hat . v_r feeds logits r + 1
                q[:, t] = v.transpose((1, 0, 2))
                t += 1
                gv = ops.weighted_sum(g_logits)
            gs = _squash_grad(squash_saved, gv)
            p[:, :, t] = c
            q[:, t] = gs.transpose((1, 0, 2))
            t += 1
            if r > 0 and self.grad_all_iterations:
                g = _softmax_grad(c, ops.agreement(gs), axis=1)
                if g_logits is not None:
                    g += g_logits
                g_logits = g
        p = p.reshape((B, J * Q, T, N))
        q = q.reshape((J, Q * B, D))
        itemsize = ops.u_e.itemsize
        outputs = []
        P0 = P - 1 if ops.has_bias else P
        if 0 in self.indexes:
            # z[b, k, (j, t), e] = sum_d W_e[k, e, j, d] q[j, t, b, d]
            z = xp.matmul(q, ops.w_j.transpose((0, 2, 1)))  # (J, Q * B, T * P)
            # A contiguous copy: products of strided stacks are several times slower.
            z = xp.ascontiguousarray(
                z.reshape((J, Q, B, T, P)).transpose((2, 3, 0, 1, 4))).reshape((B, T, J * Q, P))
            gu_e = xp.matmul(p.transpose((0, 2, 3, 1)), z)  # (B, T, N, P)
            outputs.append(gu_e[..., :P0] if ops.has_bias else gu_e)
        if 1 in self.indexes or 2 in self.indexes:
            # m[j, t, b, (k, e)] = sum_n u_e[b, k, n, e] p[b, (j, t), k, n]
            m = xp.empty((J, Q, B, T, P), ops.dtype)
            ops.pool(p, out=xp.lib.stride_tricks.as_strided(
                m, (B, T, J * Q, P), tuple(itemsize * n for n in (T * P, P, B * T * P, 1))))
            m = m.reshape((J, Q * B, T * P))
            gw_e = xp.matmul(m.transpose((0, 2, 1)), q)  # (J, T * P, D)
            gw_e = gw_e.transpose((1, 0, 2)).reshape((T, P, J * D))
            if 1 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw_e[:, :P0]))
            if 2 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw_e[:, P0]))
        return tuple(outputs)


def shared_routing(u, W, b=None, n_class=10, n_iteration=3, grad_all_iterations=True,
                   none_of_the_above=False):
    """Predictions with maps shared by the cells of each capsule type, then routing.

    The same as :func:`routing` on ``u_hat[b, j, (k, n), :] = (u[b, k, n] W[k] + b[k])``
    read as ``J x D``, without forming ``u_hat``.

    Args:
        u (~chainer.Variable): Primary capsules ``(B, T, N, P)``: T types on N cells.
        W (~chainer.Variable): Maps ``(T, P, J * D)``; column ``j * D + d`` is dimension
            ``d`` of digit ``j``.
        b (~chainer.Variable): Biases ``(T, J * D)`` or ``None``.
        n_class (int): ``J``, the digit capsules.
        n_iteration (int): Routing iterations.
        grad_all_iterations, none_of_the_above (bool): See
            :func:`capsnet_chainer.functions.routing`.

    Returns:
        ~chainer.Variable: Digit capsules ``v`` ``(B, J, D)``.
    """
    inputs = (u, W) if b is None else (u, W, b)
    return SharedRouting(n_class, n_iteration, grad_all_iterations,
                         none_of_the_above).apply(inputs)[0]
