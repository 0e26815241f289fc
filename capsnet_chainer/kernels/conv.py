"""The convolution kernel: a valid 2-D convolution on channels-last images as a
FunctionNode whose forward and backward are a few large matrix products.

:func:`convolution_2d` has the bias and an optional leaky ReLU fused in. It forms the
im2col matrix in bounded blocks (:data:`WORKSPACE_BYTES`), each one copy in GEMM
order, and recomputes them in the backward pass instead of keeping them: Chainer's own
CPU convolution keeps a whole-batch im2col array (764 MB for the primary capsules at
batch 256) and copies it again for every product.

The backward is a second FunctionNode that computes the gradients; it supports
first-order gradients only (double backpropagation raises). The code uses the array
module of its inputs: NumPy, or CuPy, where
:class:`~capsnet_chainer.links.Convolution2D` uses it when Chainer has no cuDNN (its
tests run on both; ``tests/test_gpu.py`` on a GPU). Shape letters are those of
:mod:`capsnet_chainer`, with ``O`` output channels.
"""

from chainer import backend
from chainer import function_node
from chainer.utils import type_check
import numpy

from capsnet_chainer.kernels import conv_cuda
from capsnet_chainer.kernels.base import NoDoubleBackprop

#: Bytes of scratch memory the convolution may use at once for an im2col block.
WORKSPACE_BYTES = 64 * 2 ** 20
#: With a fused activation, the convolution works on pieces of the batch whose output
#: fits in about this many bytes, so that the elementwise work runs in cache. Smaller
#: pieces make matrix products too small to share between BLAS threads well.
CACHE_BYTES = 8 * 2 ** 20
#: On a GPU: the scratch bound, large enough that the primary capsules of a batch of 256
#: (764 MB) make one im2col block and one matrix product; no cache bound there.
GPU_WORKSPACE_BYTES = 2 ** 30


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


def _weight_matrix(W):
    """``(O, C, kh, kw)`` -> ``(O, kh * kw * C)``, the column order of :func:`_im2col`."""
    return W.transpose((0, 2, 3, 1)).reshape((W.shape[0], -1))


def _im2col(x, rows, ksize, stride, out_size, out):
    """Writes the patches of channels-last ``x`` ``(B, H, W, C)`` for the kernel rows
    ``rows = (ky0, ky1)`` into ``out`` ``(B * oh * ow, (ky1 - ky0) * kw * C)``.

    One copy from a strided view; rows of ``out`` are output pixels, its columns
    ``(ky, kx, c)``, so each patch row is a contiguous run of ``kw * C`` values. On a
    GPU, one kernel (:func:`~capsnet_chainer.kernels.conv_cuda.im2col`).
    """
    if conv_cuda.supports(x, out):
        return conv_cuda.im2col(x, rows, ksize, stride, out_size, out)
    xp = backend.get_array_module(x)
    B, _, _, C = x.shape
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    sB, sH, sW, sC = x.strides
    patches = xp.lib.stride_tricks.as_strided(
        x[:, ky0:], (B, oh, ow, ky1 - ky0, kw, C), (sB, sH * sy, sW * sx, sH, sW, sC))
    xp.copyto(out.reshape((B, oh, ow, ky1 - ky0, kw, C)), patches)
    return out


def _col2im_add(gcol, gx, rows, ksize, stride, out_size):
    """Adds patch gradients ``gcol`` (the layout of :func:`_im2col`) onto ``gx``; on a
    GPU in one kernel (:func:`~capsnet_chainer.kernels.conv_cuda.col2im_add`)."""
    if conv_cuda.supports(gcol, gx):
        return conv_cuda.col2im_add(gcol, gx, rows, ksize, stride, out_size)
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


def _plan(x_shape, w_shape, out_size, itemsize, fused, gpu=False):
    """Pieces of the batch and groups of kernel rows that bound the scratch memory.

    A piece of the batch and a group of kernel rows make one im2col block of at most
    :data:`WORKSPACE_BYTES` (:data:`GPU_WORKSPACE_BYTES` on a GPU) unless one image's
    kernel row alone is larger. With a fused activation on the CPU, a piece's output
    also stays within :data:`CACHE_BYTES`, so that the elementwise work on it runs in
    cache.
    """
    B, _, _, C = x_shape
    n_out, _, kh, kw = w_shape
    oh, ow = out_size
    workspace = GPU_WORKSPACE_BYTES if gpu else WORKSPACE_BYTES
    row_bytes = itemsize * oh * ow * kw * C  # one kernel row of one image's im2col
    n_image = workspace // row_bytes
    if fused and not gpu:
        n_image = min(n_image, CACHE_BYTES // (itemsize * oh * ow * n_out))
    pieces = _split(B, max(1, n_image))
    n_row = workspace // (row_bytes * (pieces[0][1] - pieces[0][0]))
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

    As Chainer's :func:`~chainer.functions.relu` (``slope`` 0) and
    :func:`~chainer.functions.leaky_relu`: ``gy`` where ``y > 0``, ``slope * gy``
    elsewhere, ``y == 0`` included (conv1 makes many exact zeros at initialization: an
    image's blank patches under a zero bias).
    """
    xp = backend.get_array_module(y)
    if slope == 0:
        return gy * (y > 0)
    if 0 < slope <= 1:  # a factor of 1 or slope: several times faster than where()
        return gy * xp.maximum(y > 0, gy.dtype.type(slope))
    return xp.where(y > 0, gy, gy * gy.dtype.type(slope))


class Convolution2DFunction(function_node.FunctionNode):
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
        pieces, groups = _plan(x.shape, W.shape, (oh, ow), x.itemsize,
                               self.slope is not None, xp is not numpy)
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
        grad = Convolution2DFunctionGrad(self.geometry, self.slope, indexes)
        gxs = grad.apply((x, W, gy) + ((y,) if y is not None else ()))
        return tuple(gxs[grad.indexes.index(i)] for i in indexes)


class Convolution2DFunctionGrad(NoDoubleBackprop):
    """Gradients of :class:`Convolution2DFunction` for the requested inputs, in one pass.

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
        pieces, groups = _plan(x.shape, W.shape, (oh, ow), x.itemsize, y is not None,
                               xp is not numpy)
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
    return Convolution2DFunction(stride, slope).apply(inputs)[0]
