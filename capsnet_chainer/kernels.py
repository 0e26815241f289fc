"""Fused CapsNet kernels: FunctionNodes whose forward and backward are a few large
matrix products, where autograd through many small Chainer ops would be the cost.

* :func:`convolution_2d` is a valid (unpadded) convolution on channels-last images,
  with the bias and an optional leaky ReLU fused in. It forms the im2col matrix in
  bounded blocks (:data:`WORKSPACE_BYTES`), each one copy in GEMM order, and recomputes
  them in the backward pass instead of keeping them: Chainer's own CPU convolution
  keeps a whole-batch im2col array (764 MB for the primary capsules at batch 256) and
  copies it again for every product.
* :func:`prediction_vectors` writes ``u_hat[j|i] = W_i u_i (+ b_i)`` straight into the
  ``(B, J, I, D)`` layout of the routing.
* :func:`routing` is Procedure 1 of the paper on given predictions ``u_hat``, with a
  hand-written backward through every iteration (or through the last one only).
* :func:`shared_routing` fuses the predictions of maps shared by the grid cells of a
  capsule type (the reference's) with the routing. It never forms ``u_hat``: every
  product of ``u_hat`` with a coupling or an agreement is regrouped to act on the 8-D
  primary capsules, ``sum_i c_ij u_hat[j|i] = sum_k W_k^T (sum_n c_ij u_i)``, which is
  fewer operations and no ``(B, J, I, D)`` array at all.

Each FunctionNode's backward is a second FunctionNode that computes the gradients; they
support first-order gradients only (double backpropagation raises). The code uses the
array module of its inputs (NumPy or CuPy), but it has been tested on NumPy only, and
:class:`~capsnet_chainer.links.Convolution2D` uses the convolution kernel on the CPU
only.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

from chainer import backend
from chainer import function_node
from chainer.utils import type_check

#: Added inside the square root of every norm, so that the norm and its gradient stay
#: finite at zero length (the exact norm has an infinite derivative there).
EPS = 1e-8

#: Bytes of scratch memory the convolution may use at once for an im2col block.
WORKSPACE_BYTES = 64 * 2 ** 20
#: With a fused activation, the convolution works on pieces of the batch whose output
#: fits in about this many bytes, so that the elementwise work runs in cache. Smaller
#: pieces make matrix products too small to share between BLAS threads well.
CACHE_BYTES = 8 * 2 ** 20


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class _NoDoubleBackprop(function_node.FunctionNode):
    """A gradient node: its own backward (double backpropagation) is not provided."""

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            '{} does not support double backpropagation'.format(self.label))


# --- Convolution ------------------------------------------------------------------------


def _weight_matrix(W):
    """``(O, C, kh, kw)`` -> ``(O, kh * kw * C)``, the column order of :func:`_im2col`."""
    return W.transpose((0, 2, 3, 1)).reshape((W.shape[0], -1))


def _im2col(x, rows, ksize, stride, out_size, out):
    """Writes the patches of channels-last ``x`` ``(B, H, W, C)`` for the kernel rows
    ``rows = (ky0, ky1)`` into ``out`` ``(B * oh * ow, (ky1 - ky0) * kw * C)``.

    One copy from a strided view; rows of ``out`` are output pixels, its columns
    ``(ky, kx, c)``, so each patch row is a contiguous run of ``kw * C`` values.
    """
    xp = backend.get_array_module(x)
    B, _, _, C = x.shape
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    sB, sH, sW, sC = x.strides
    patches = xp.lib.stride_tricks.as_strided(
        x[:, ky0:], (B, oh, ow, ky1 - ky0, kw, C), (sB, sH * sy, sW * sx, sH, sW, sC))
    xp.copyto(out.reshape((B, oh, ow, ky1 - ky0, kw, C)), patches)
    return out


def _col2im_add(gcol, gx, rows, ksize, stride, out_size):
    """Adds patch gradients ``gcol`` (the layout of :func:`_im2col`) onto ``gx``."""
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    B, _, _, C = gx.shape
    gcol = gcol.reshape((B, oh, ow, ky1 - ky0, kw, C))
    for ky in range(ky0, ky1):
        for ox in range(ow):  # the kw * C values of a patch row are contiguous in gx
            gx[:, ky:ky + sy * (oh - 1) + 1:sy, sx * ox:sx * ox + kw, :] += \
                gcol[:, :, ox, ky - ky0]


def _split(n, size):
    """``range(n)`` as ``(start, stop)`` pieces of at most ``size``, balanced."""
    n_piece = -(-n // max(1, size))
    size = -(-n // n_piece)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _plan(x_shape, w_shape, out_size, itemsize, fused):
    """Pieces of the batch and groups of kernel rows that bound the scratch memory.

    A piece of the batch and a group of kernel rows make one im2col block of at most
    :data:`WORKSPACE_BYTES` (unless one image's kernel row alone is larger). With a
    fused activation, a piece's output also stays within :data:`CACHE_BYTES`, so that
    the elementwise work on it runs in cache.
    """
    B, _, _, C = x_shape
    n_out, _, kh, kw = w_shape
    oh, ow = out_size
    row_bytes = itemsize * oh * ow * kw * C  # one kernel row of one image's im2col
    n_image = WORKSPACE_BYTES // row_bytes
    if fused:
        n_image = min(n_image, CACHE_BYTES // (itemsize * oh * ow * n_out))
    pieces = _split(B, max(1, n_image))
    n_row = WORKSPACE_BYTES // (row_bytes * (pieces[0][1] - pieces[0][0]))
    return pieces, _split(kh, max(1, min(kh, n_row)))


def _activate(y, slope):
    """Leaky ReLU in place, ``y[y < 0] *= slope`` (``slope`` 0: ReLU)."""
    xp = backend.get_array_module(y)
    if slope == 0:
        xp.maximum(y, 0, out=y)
    elif 0 < slope <= 1:
        xp.maximum(y, y * y.dtype.type(slope), out=y)
    else:
        y[...] = xp.where(y < 0, y * y.dtype.type(slope), y)


def _activation_grad(gy, y, slope):
    """Gradient through :func:`_activate`, given its output ``y``.

    Like :func:`chainer.functions.relu` (zero where ``y == 0``) for ``slope`` 0 and
    :func:`chainer.functions.leaky_relu` (``gy`` where ``y == 0``) otherwise.
    """
    xp = backend.get_array_module(y)
    if slope == 0:
        return gy * (y > 0)
    if 0 < slope <= 1:  # a factor of 1 or slope: several times faster than where()
        return gy * xp.maximum(y >= 0, gy.dtype.type(slope))
    return xp.where(y < 0, gy * gy.dtype.type(slope), gy)


class Convolution2D(function_node.FunctionNode):
    """Valid 2-D convolution on channels-last images, bias and activation fused.

    Args:
        stride (int or pair of ints): Stride.
        slope (float or None): ``None``: no activation. Otherwise a leaky ReLU with this
            negative slope follows (``0``: ReLU).
    """

    def __init__(self, stride=1, slope=None):
        if slope is not None and not slope >= 0:
            raise ValueError('slope must be >= 0 or None, got {!r}'.format(slope))
        self.stride = _pair(stride)
        self.slope = slope

    def check_type_forward(self, in_types):
        n_in = in_types.size()
        type_check.expect(2 <= n_in, n_in <= 3)
        x_type, w_type = in_types[:2]
        type_check.expect(
            x_type.dtype.kind == 'f',
            w_type.dtype == x_type.dtype,
            x_type.ndim == 4,
            w_type.ndim == 4,
            x_type.shape[3] == w_type.shape[1],
            x_type.shape[1] >= w_type.shape[2],
            x_type.shape[2] >= w_type.shape[3],
        )
        if type_check.eval(n_in) == 3:
            b_type = in_types[2]
            type_check.expect(b_type.dtype == x_type.dtype, b_type.ndim == 1,
                              b_type.shape[0] == w_type.shape[0])

    def forward(self, inputs):
        self.retain_inputs((0, 1))
        x, W = inputs[:2]
        b = inputs[2] if len(inputs) == 3 else None
        xp = backend.get_array_module(x)
        B, H, Wd, C = x.shape
        n_out, _, kh, kw = W.shape
        sy, sx = self.stride
        oh, ow = (H - kh) // sy + 1, (Wd - kw) // sx + 1
        geometry = self.geometry = (kh, kw), self.stride, (oh, ow)
        w_mat_t = _weight_matrix(W).T  # (kh * kw * C, O)
        y = xp.empty((B, oh * ow, n_out), x.dtype)
        pieces, groups = _plan(x.shape, W.shape, (oh, ow), x.itemsize, self.slope is not None)
        col = part = None
        for i0, i1 in pieces:
            n = (i1 - i0) * oh * ow
            y_piece = y[i0:i1].reshape((n, n_out))
            for ky0, ky1 in groups:
                width = (ky1 - ky0) * kw * C
                if col is None or col.size < n * width:
                    col = xp.empty((n * width,), x.dtype)
                block = col[:n * width].reshape((n, width))
                _im2col(x[i0:i1], (ky0, ky1), *geometry, block)
                w_rows = w_mat_t[ky0 * kw * C:ky1 * kw * C]
                if ky0 == 0:
                    xp.matmul(block, w_rows, out=y_piece)
                else:
                    if part is None or part.shape[0] != n:
                        part = xp.empty((n, n_out), x.dtype)
                    y_piece += xp.matmul(block, w_rows, out=part)
            # Bias and activation while the piece is in cache.
            if b is not None:
                y_piece += b
            if self.slope is not None:
                _activate(y_piece, self.slope)
        if self.slope is not None:
            self.retain_outputs((0,))
        return y.reshape((B, oh, ow, n_out)),

    def backward(self, indexes, grad_outputs):
        x, W = self.get_retained_inputs()
        gy, = grad_outputs
        y = self.get_retained_outputs()[0] if self.slope is not None else None
        grad = Convolution2DGrad(self.geometry, self.slope, indexes)
        gxs = grad.apply((x, W, gy) + ((y,) if y is not None else ()))
        return tuple(gxs[grad.indexes.index(i)] for i in indexes)


class Convolution2DGrad(_NoDoubleBackprop):
    """Gradients of :class:`Convolution2D` for the requested inputs, in one pass.

    Inputs ``(x, W, gy[, y])``; outputs the gradients of the inputs in ``indexes`` (0:
    ``x``, 1: ``W``, 2: ``b``), in that order. The im2col blocks are recomputed piece by
    piece; each block's buffer then receives the patch gradients for ``x``.
    """

    def __init__(self, geometry, slope, indexes):
        self.geometry = geometry
        self.slope = slope
        self.indexes = tuple(indexes)

    def forward(self, inputs):
        x, W, gy = inputs[:3]
        y = inputs[3] if len(inputs) == 4 else None
        xp = backend.get_array_module(x)
        geometry = (kh, kw), _, (oh, ow) = self.geometry
        B, H, Wd, C = x.shape
        n_out = W.shape[0]
        want_x, want_w, want_b = (i in self.indexes for i in range(3))
        w_mat = _weight_matrix(W) if want_x else None  # (O, kh * kw * C)
        gx = xp.zeros_like(x) if want_x else None
        gw_mat = xp.empty((n_out, kh * kw * C), x.dtype) if want_w else None
        gb = xp.zeros((n_out,), x.dtype) if want_b else None
        pieces, groups = _plan(x.shape, W.shape, (oh, ow), x.itemsize, y is not None)
        col = None
        for i0, i1 in pieces:
            n = (i1 - i0) * oh * ow
            g = gy[i0:i1].reshape((n, n_out))
            if y is not None:
                g = _activation_grad(g, y[i0:i1].reshape((n, n_out)), self.slope)
            if want_b:
                gb += g.sum(axis=0)
            for ky0, ky1 in groups:
                width = (ky1 - ky0) * kw * C
                cols = slice(ky0 * kw * C, ky1 * kw * C)
                if col is None or col.size < n * width:
                    col = xp.empty((n * width,), x.dtype)
                block = col[:n * width].reshape((n, width))
                if want_w:
                    _im2col(x[i0:i1], (ky0, ky1), *geometry, block)
                    if i0 == 0:
                        xp.matmul(g.T, block, out=gw_mat[:, cols])
                    else:
                        gw_mat[:, cols] += xp.matmul(g.T, block)
                if want_x:
                    xp.matmul(g, w_mat[:, cols], out=block)
                    _col2im_add(block, gx[i0:i1], (ky0, ky1), *geometry)
        outputs = []
        if want_x:
            outputs.append(gx)
        if want_w:
            outputs.append(xp.ascontiguousarray(
                gw_mat.reshape((n_out, kh, kw, C)).transpose((0, 3, 1, 2))))
        if want_b:
            outputs.append(gb)
        return tuple(outputs)


def convolution_2d(x, W, b=None, stride=1, slope=None):
    """Valid convolution of channels-last images, with an optional fused leaky ReLU.

    The same as ``F.leaky_relu(F.convolution_2d(x_nchw, W, b, stride), slope)`` with
    the channels moved last, computed as one large matrix product per piece of the
    batch.

    Args:
        x (~chainer.Variable or array): Images ``(B, H, W, C)``, any strides.
        W (~chainer.Variable or array): Filters ``(O, C, kh, kw)``, Chainer's layout.
        b (~chainer.Variable or array): Bias ``(O,)`` or ``None``.
        stride (int or pair of ints): Stride.
        slope (float or None): Negative slope of the fused leaky ReLU (``0``: ReLU);
            ``None``: no activation.

    Returns:
        ~chainer.Variable: ``(B, oh, ow, O)``, C-contiguous.
    """
    inputs = (x, W) if b is None else (x, W, b)
    return Convolution2D(stride, slope).apply(inputs)[0]


# --- Prediction vectors -------------------------------------------------------------------


def _with_bias(u, W, b):
    """``u`` ``(..., E)`` with a last column of ones and ``W`` ``(M, E, F)`` with the bias
    ``b`` ``(M, F)`` as an extra input row, so that ``u W + b = u_e W_e``."""
    if b is None:
        return u, W
    xp = backend.get_array_module(u)
    u_e = xp.empty(u.shape[:-1] + (u.shape[-1] + 1,), u.dtype)
    u_e[..., :-1] = u
    u_e[..., -1] = 1
    return u_e, xp.concatenate((W, b[:, None, :]), axis=1)


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
        n_in = in_types.size()
        type_check.expect(2 <= n_in, n_in <= 3)
        u_type, w_type = in_types[:2]
        type_check.expect(
            u_type.dtype.kind == 'f',
            w_type.dtype == u_type.dtype,
            u_type.ndim == 3,
            w_type.ndim == 3,
            w_type.shape[0] * self.n_cell == u_type.shape[1],
            w_type.shape[1] == u_type.shape[2],
        )
        if type_check.eval(n_in) == 3:
            b_type = in_types[2]
            type_check.expect(b_type.dtype == u_type.dtype, b_type.ndim == 2,
                              b_type.shape[0] == w_type.shape[0],
                              b_type.shape[1] == w_type.shape[2])

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        u, W = inputs[:2]
        if W.shape[2] % self.n_class:
            raise ValueError('W has {} outputs, not a multiple of n_class {}'.format(
                W.shape[2], self.n_class))
        u_e, w_e = _with_bias(u, W, inputs[2] if len(inputs) == 3 else None)
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


class PredictionVectorsGrad(_NoDoubleBackprop):
    """Gradients of :class:`PredictionVectors` for the inputs in ``indexes``."""

    def __init__(self, n_class, n_cell, indexes):
        self.n_class = n_class
        self.n_cell = n_cell
        self.indexes = tuple(indexes)

    def forward(self, inputs):
        u, W = inputs[:2]
        g_hat = inputs[-1]
        u_e, w_e = _with_bias(u, W, inputs[2] if len(inputs) == 4 else None)
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


# --- Routing on given predictions ---------------------------------------------------------


def _softmax(b, axis):
    xp = backend.get_array_module(b)
    c = b - b.max(axis=axis, keepdims=True)
    xp.exp(c, out=c)
    c /= c.sum(axis=axis, keepdims=True)
    return c


def _uniform(b, axis):
    """The softmax of all-zero logits ``b``: ``1 / n`` along ``axis``, exactly."""
    xp = backend.get_array_module(b)
    return xp.full(b.shape, b.dtype.type(1) / b.dtype.type(b.shape[axis]), b.dtype)


def _softmax_grad(c, gc, axis):
    """``c * (gc - sum(c * gc))``, the gradient of the logits of ``c = softmax(b)``."""
    g = c * gc
    g -= c * g.sum(axis=axis, keepdims=True)
    return g


def _squash(s):
    """``v = s |s| / (1 + |s|^2)`` on the last axis; returns ``v`` and what the backward
    needs, ``(s, |s|^2, |s|)``."""
    xp = backend.get_array_module(s)
    sq = (s * s).sum(axis=-1, keepdims=True)
    norm = xp.sqrt(sq + s.dtype.type(EPS))
    v = s * (norm / (1 + sq))
    return v, (s, sq, norm)


def _squash_grad(saved, gv):
    """Gradient of :func:`_squash` for ``gv``, as autograd through the formula gives it."""
    s, sq, norm = saved
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

    def __init__(self, n_iteration=3, grad_all_iterations=True):
        self.n_iteration = _check_n_iteration(n_iteration)
        self.grad_all_iterations = grad_all_iterations

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
            c = _softmax(logits, axis=1) if r else _uniform(logits, axis=1)  # (B, J, 1, I)
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


class RoutingGrad(_NoDoubleBackprop):
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
        left = xp.concatenate(left, axis=2).transpose((0, 1, 3, 2))  # (B, J, I, T)
        right = xp.concatenate(right, axis=2)  # (B, J, T, D)
        return xp.matmul(left, right),


def routing(u_hat, n_iteration=3, grad_all_iterations=True):
    """Routing by agreement on predictions ``u_hat`` ``(B, J, I, D)`` -> ``v`` ``(B, J, D)``.

    See :func:`capsnet_chainer.functions.routing`, which calls this.
    """
    return Routing(n_iteration, grad_all_iterations).apply((u_hat,))[0]


# --- Predictions and routing, maps shared by the cells of a capsule type ------------------


class SharedRouting(function_node.FunctionNode):
    """Predictions from maps shared within each capsule type, then routing.

    Inputs ``u`` ``(B, K, N, E)`` (K types on N cells), ``W`` ``(K, E, J * D)`` and
    optionally ``b`` ``(K, J * D)``; output ``v`` ``(B, J, D)``. With the bias, ``u`` is
    extended by a constant 1 and ``W`` by the bias row, so ``u_hat = u_e W_e``.
    """

    def __init__(self, n_class, n_iteration=3, grad_all_iterations=True):
        self.n_class = n_class
        self.n_iteration = _check_n_iteration(n_iteration)
        self.grad_all_iterations = grad_all_iterations

    def check_type_forward(self, in_types):
        n_in = in_types.size()
        type_check.expect(2 <= n_in, n_in <= 3)
        u_type, w_type = in_types[:2]
        type_check.expect(
            u_type.dtype.kind == 'f',
            w_type.dtype == u_type.dtype,
            u_type.ndim == 4,
            w_type.ndim == 3,
            w_type.shape[0] == u_type.shape[1],
            w_type.shape[1] == u_type.shape[3],
        )
        if type_check.eval(n_in) == 3:
            b_type = in_types[2]
            type_check.expect(b_type.dtype == u_type.dtype, b_type.ndim == 2,
                              b_type.shape[0] == w_type.shape[0],
                              b_type.shape[1] == w_type.shape[2])

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        ops = _SharedOps(*inputs, n_class=self.n_class)
        B, J, K, N = ops.logit_shape
        logits = ops.xp.zeros((B, J, K, N), ops.dtype)
        self.saved = []
        for r in range(self.n_iteration):
            c = _softmax(logits, axis=1) if r else _uniform(logits, axis=1)  # (B, J, K, N)
            v, squash_saved = _squash(ops.weighted_sum(c))  # (B, J, D)
            self.saved.append((c, v, squash_saved))
            if r < self.n_iteration - 1:
                logits += ops.agreement(v)
        return v,

    def backward(self, indexes, grad_outputs):
        inputs = self.get_retained_inputs()
        gv, = grad_outputs
        grad = SharedRoutingGrad(self.n_class, self.saved, self.grad_all_iterations,
                                 indexes)
        gxs = grad.apply(inputs + (gv,))
        return tuple(gxs[grad.indexes.index(i)] for i in indexes)


class _SharedOps(object):
    """The products of :class:`SharedRouting`, each regrouped onto the primary capsules.

    ``u_e`` ``(B, K, N, E)`` is ``u`` with a column of ones when there is a bias, and
    ``w_j`` ``(J, K * E, D)`` the maps (with the bias row) grouped by digit, so that
    ``u_hat[b, j, (k, n)] = u_e[b, k, n] w_j[j, k]``. Couplings and logits are laid out
    ``(B, J, K, N)``: the softmax over ``J`` then runs across contiguous rows.
    """

    def __init__(self, u, W, b=None, n_class=10):
        xp = backend.get_array_module(u)
        self.xp = xp
        self.dtype = u.dtype
        B, K, N, E = u.shape
        J = n_class
        if W.shape[2] % J:
            raise ValueError('W has {} outputs, not a multiple of n_class {}'.format(
                W.shape[2], J))
        D = W.shape[2] // J
        self.has_bias = b is not None
        u_e, w_e = _with_bias(u, W, b)
        E = u_e.shape[3]
        self.u_e = u_e
        self.w_j = w_e.reshape((K * E, J, D)).transpose((1, 0, 2)).copy()  # (J, K * E, D)
        self.shape = B, K, N, E, J, D
        self.logit_shape = B, J, K, N

    def pool(self, p, out=None):
        """``sum_n p[b, m, k, n] u_e[b, k, n, e]``: ``(B, M, K, N)`` -> ``(B, K, M, E)``."""
        return self.xp.matmul(p.transpose((0, 2, 1, 3)), self.u_e, out=out)

    def weighted_sum(self, c):
        """``s[b, j] = sum_i c[b, j, i] u_hat[b, j, i]``: ``(B, J, K, N)`` -> ``(B, J, D)``.
        """
        B, K, N, E, J, D = self.shape
        x = self.xp.empty((J, B, K, E), self.dtype)
        self.pool(c, out=x.transpose((1, 2, 0, 3)))
        return self.xp.matmul(x.reshape((J, B, K * E)), self.w_j).transpose((1, 0, 2))

    def project(self, q):
        """``sum_d w_j[j, (k, e), d] q[b, t, j, d]``: ``(B, T, J, D)`` -> ``(J, B, T, K, E)``.
        """
        B, K, N, E, J, D = self.shape
        T = q.shape[1]
        qj = q.transpose((2, 0, 1, 3)).reshape((J, B * T, D))
        z = self.xp.matmul(qj, self.w_j.transpose((0, 2, 1)))  # (J, B * T, K * E)
        return z.reshape((J, B, T, K, E))

    def agreement(self, v):
        """``a[b, j, i] = u_hat[b, j, i] . v[b, j]``: ``(B, J, D)`` -> ``(B, J, K, N)``."""
        B, K, N, E, J, D = self.shape
        y = self.project(v[:, None])[:, :, 0].transpose((1, 2, 0, 3))  # (B, K, J, E)
        a = self.xp.empty((B, J, K, N), self.dtype)
        self.xp.matmul(y, self.u_e.transpose((0, 1, 3, 2)), out=a.transpose((0, 2, 1, 3)))
        return a


class SharedRoutingGrad(_NoDoubleBackprop):
    """Gradients of :class:`SharedRouting` for the inputs in ``indexes``.

    The gradient of ``u_hat`` is a sum over terms ``t`` of outer products
    ``p_t[b, j, i] q_t[b, j, :]``: the couplings with the squash gradients, and the
    agreement gradients with the capsules. It is never formed: for ``u_hat = u_e W_e``,
    ``gu_e = sum_{j,t} p_t (W_e q_t)`` and ``gW_e = sum_{b,t} (u_e^T p_t) q_t``.
    """

    def __init__(self, n_class, saved, grad_all_iterations, indexes):
        self.n_class = n_class
        self.saved = saved
        self.grad_all_iterations = grad_all_iterations
        self.indexes = tuple(indexes)

    def forward(self, inputs):
        gv = inputs[-1]
        ops = _SharedOps(*inputs[:-1], n_class=self.n_class)
        xp = ops.xp
        B, K, N, E, J, D = ops.shape
        R = len(self.saved)
        iterations = list(reversed(range(R))) if self.grad_all_iterations else [R - 1]
        T = 2 * len(iterations) - 1
        # The terms, written in place: p (B, J, T, K, N) and q (J, T, B, D). These
        # layouts make every product below act on views, with no transposed copies.
        p = xp.empty((B, J, T, K, N), ops.dtype)
        q = xp.empty((J, T, B, D), ops.dtype)
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
        p = p.reshape((B, J * T, K, N))
        q = q.reshape((J, T * B, D))
        itemsize = ops.u_e.itemsize
        outputs = []
        E0 = E - 1 if ops.has_bias else E
        if 0 in self.indexes:
            # z[b, k, (j, t), e] = sum_d W_e[k, e, j, d] q[j, t, b, d]
            z = xp.matmul(q, ops.w_j.transpose((0, 2, 1)))  # (J, T * B, K * E)
            # A contiguous copy: products of strided stacks are several times slower.
            z = xp.ascontiguousarray(
                z.reshape((J, T, B, K, E)).transpose((2, 3, 0, 1, 4))).reshape((B, K, J * T, E))
            gu_e = xp.matmul(p.transpose((0, 2, 3, 1)), z)  # (B, K, N, E)
            outputs.append(gu_e[..., :E0] if ops.has_bias else gu_e)
        if 1 in self.indexes or 2 in self.indexes:
            # m[j, t, b, (k, e)] = sum_n u_e[b, k, n, e] p[b, (j, t), k, n]
            m = xp.empty((J, T, B, K, E), ops.dtype)
            ops.pool(p, out=xp.lib.stride_tricks.as_strided(
                m, (B, K, J * T, E), tuple(itemsize * n for n in (K * E, E, B * K * E, 1))))
            m = m.reshape((J, T * B, K * E))
            gw_e = xp.matmul(m.transpose((0, 2, 1)), q)  # (J, K * E, D)
            gw_e = gw_e.transpose((1, 0, 2)).reshape((K, E, J * D))
            if 1 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw_e[:, :E0]))
            if 2 in self.indexes:
                outputs.append(xp.ascontiguousarray(gw_e[:, E0]))
        return tuple(outputs)


def shared_routing(u, W, b=None, n_class=10, n_iteration=3, grad_all_iterations=True):
    """Predictions with maps shared by the cells of each capsule type, then routing.

    The same as :func:`routing` on ``u_hat[b, j, (k, n), :] = (u[b, k, n] W[k] + b[k])``
    read as ``J x D``, without forming ``u_hat``.

    Args:
        u (~chainer.Variable): Primary capsules ``(B, K, N, E)``: K types on N cells.
        W (~chainer.Variable): Maps ``(K, E, J * D)``; column ``j * D + d`` is dimension
            ``d`` of digit ``j``.
        b (~chainer.Variable): Biases ``(K, J * D)`` or ``None``.
        n_class (int): ``J``, the digit capsules.
        n_iteration (int): Routing iterations.
        grad_all_iterations (bool): See :func:`capsnet_chainer.functions.routing`.

    Returns:
        ~chainer.Variable: Digit capsules ``v`` ``(B, J, D)``.
    """
    inputs = (u, W) if b is None else (u, W, b)
    return SharedRouting(n_class, n_iteration, grad_all_iterations).apply(inputs)[0]
