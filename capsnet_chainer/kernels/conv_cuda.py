"""The convolution kernel's im2col and col2im on a GPU, each one CUDA kernel.

:mod:`capsnet_chainer.kernels.conv` forms its im2col blocks with one strided copy and
adds their gradients back with ``kh * ow`` slice additions (54 launches for the primary
capsules); on CuPy arrays it calls these instead (:data:`ENABLED`): :func:`im2col`
copies each patch row of ``kw * C`` values, and :func:`col2im_add` gathers, for each
input pixel, the patch gradients that cover it, adding them in the order the slice
additions do (kernel row by kernel row, then output column by column) onto the pixel's
own value. So both give the NumPy path's values bit for bit: a copy, and the same
float additions in the same order. Channels move 16 bytes at a time where the layout
allows (``C`` a multiple of 4 floats or 2 doubles, aligned), else one at a time with
any strides.

The NumPy path stays as it is; ``tests/kernels/test_conv_cuda.py`` checks the kernels'
index arithmetic against it on the CPU, compiles the sources with nvcc, and on a GPU
compares them with CuPy's own copy and slice additions.
"""

import numpy

from capsnet_chainer.kernels.base import cuda_source
from capsnet_chainer.kernels.base import element_strides
from capsnet_chainer.kernels.base import launch
from capsnet_chainer.kernels.base import on_cuda

#: Use the kernels on CuPy arrays (``False``: CuPy's strided copy and slice additions).
#: Off until their gpu tests have passed on a GPU and their speed is measured there
#: (bench/README.md, "Prepared, not yet measured").
ENABLED = False
#: Threads per block, and the most blocks of one launch (a grid-stride loop does the
#: rest).
THREADS = 256
MAX_BLOCKS = 2 ** 18

#: The im2col kernel: unit ``i`` of the block (``VEC`` channels) is channel group ``c``
#: of kernel column ``kx``, kernel row ``ky0 + r``, output pixel ``(oy, ox)`` of image
#: ``b``; strides in elements.
IM2COL_SOURCE = r'''
extern "C" __global__ void capsnet_im2col_{T}_{VEC}(
        const {T}* __restrict__ x, {T}* __restrict__ col, long long n, int oh, int ow,
        int n_ky, int ky0, int kw, int cu, int sy, int sx,
        long long sb, long long sh, long long sw, long long sc) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        int c = (int)(i % cu);
        long long r = i / cu;
        int kx = (int)(r % kw);
        r /= kw;
        int ky = (int)(r % n_ky) + ky0;
        r /= n_ky;
        int ox = (int)(r % ow);
        r /= ow;
        int oy = (int)(r % oh);
        long long b = r / oh;
        long long src = b * sb + (long long)(oy * sy + ky) * sh
                        + (long long)(ox * sx + kx) * sw + (long long)c * {VEC} * sc;
        reinterpret_cast<{V}*>(col)[i] = *reinterpret_cast<const {V}*>(x + src);
    }
}
'''
#: The col2im kernel: unit ``i`` of ``gx`` (``VEC`` channels of pixel ``(y, xx)`` of
#: image ``b``) adds the patch gradients that cover it, kernel row by kernel row, then
#: output column by column, onto its own value.
COL2IM_SOURCE = r'''
extern "C" __global__ void capsnet_col2im_{T}_{VEC}(
        const {T}* __restrict__ col, {T}* __restrict__ gx, long long n, int H, int W,
        int cu, int oh, int ow, int n_ky, int ky0, int kw, int sy, int sx,
        long long sb, long long sh, long long sw, long long sc) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        int c = (int)(i % cu);
        long long r = i / cu;
        int xx = (int)(r % W);
        r /= W;
        int y = (int)(r % H);
        long long b = r / H;
        {T}* dst = gx + b * sb + (long long)y * sh + (long long)xx * sw
                   + (long long)c * {VEC} * sc;
        {V} acc = *reinterpret_cast<{V}*>(dst);
        const {V}* g = reinterpret_cast<const {V}*>(col);
        int ox_lo = xx - kw + 1 > 0 ? (xx - kw + sx) / sx : 0;
        int ox_hi = xx / sx < ow - 1 ? xx / sx : ow - 1;
        for (int ky = ky0; ky < ky0 + n_ky; ++ky) {
            int dy = y - ky;
            if (dy < 0 || dy % sy != 0 || dy / sy >= oh) {
                continue;
            }
            long long row = (b * oh + dy / sy) * ow;
            for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                {V} v = g[(((row + ox) * n_ky + (ky - ky0)) * kw + (xx - sx * ox)) * cu + c];
                {ADD}
            }
        }
        *reinterpret_cast<{V}*>(dst) = acc;
    }
}
'''
#: dtype -> (its 16-byte vector type, elements in one).
VECTORS = {numpy.dtype(numpy.float32): ('float4', 4),
           numpy.dtype(numpy.float64): ('double2', 2)}
_ADD = {1: 'acc += v;', 2: 'acc.x += v.x; acc.y += v.y;',
        4: 'acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;'}


def kernel_source(which, dtype, vec):
    """``(source, name)`` of ``which`` (``'im2col'`` or ``'col2im'``) for ``dtype``,
    moving ``vec`` elements at once (1, or the dtype's vector of :data:`VECTORS`)."""
    vtype, width = VECTORS[numpy.dtype(dtype)]
    if vec not in (1, width):
        raise ValueError('vec must be 1 or {} for {}'.format(width, numpy.dtype(dtype)))
    source = IM2COL_SOURCE if which == 'im2col' else COL2IM_SOURCE
    for key, value in (('{V}', vtype if vec > 1 else '{T}'), ('{VEC}', str(vec)),
                       ('{ADD}', _ADD[vec])):
        source = source.replace(key, value)
    source, name = cuda_source(source, 'capsnet_' + which, dtype)
    return source, '{}_{}'.format(name, vec)


def supports(*arrays):
    """Whether the kernels take these arrays: CuPy arrays of one dtype of
    :data:`~capsnet_chainer.kernels.base.C_TYPES`, with :data:`ENABLED`."""
    return on_cuda(ENABLED, *arrays)


def _vec(a, *others):
    """The elements the kernels may move at once for ``a`` (channels last) and
    ``others``: the dtype's vector where every stride but the channels' is a multiple of
    it, the channels are contiguous and every array starts on 16 bytes; else 1."""
    width = VECTORS[a.dtype][1]
    C = a.shape[-1]
    for array in (a,) + others:
        strides = element_strides(array)
        if (array.data.ptr % 16 or strides[-1] != 1
                or any(s % width for s in strides[:-1])):
            return 1
    return width if C % width == 0 else 1


def _launch(which, dtype, vec, n, args):
    launch(*kernel_source(which, dtype, vec), n, args, THREADS, MAX_BLOCKS)


def im2col(x, rows, ksize, stride, out_size, out):
    """:func:`~capsnet_chainer.kernels.conv._im2col` in one kernel (same arguments)."""
    B, _, _, C = x.shape
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    vec = _vec(x, out)
    n = B * oh * ow * (ky1 - ky0) * kw * C // vec
    sb, sh, sw, sc = element_strides(x)
    i32 = numpy.int32
    _launch('im2col', x.dtype, vec, n, (
        x, out, numpy.int64(n), i32(oh), i32(ow), i32(ky1 - ky0), i32(ky0), i32(kw),
        i32(C // vec), i32(sy), i32(sx), numpy.int64(sb), numpy.int64(sh), numpy.int64(sw),
        numpy.int64(sc)))
    return out


def col2im_add(gcol, gx, rows, ksize, stride, out_size):
    """:func:`~capsnet_chainer.kernels.conv._col2im_add` in one kernel (same
    arguments; ``gcol`` C-contiguous)."""
    B, H, W, C = gx.shape
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    vec = _vec(gx, gcol)
    n = B * H * W * C // vec
    sb, sh, sw, sc = element_strides(gx)
    i32 = numpy.int32
    _launch('col2im', gx.dtype, vec, n, (
        gcol, gx, numpy.int64(n), i32(H), i32(W), i32(C // vec), i32(oh), i32(ow),
        i32(ky1 - ky0), i32(ky0), i32(kw), i32(sy), i32(sx), numpy.int64(sb),
        numpy.int64(sh), numpy.int64(sw), numpy.int64(sc)))
