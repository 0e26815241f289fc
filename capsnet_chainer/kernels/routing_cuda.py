"""The routing kernels' element-wise steps on a GPU, each one CUDA kernel.

:mod:`capsnet_chainer.kernels.routing` computes the softmax of the logits, the squash and
their gradients with NumPy-style array operations: on CuPy arrays each of these is 4 to
12 launches (a max, a subtraction, an exp, a sum, a division, ...), about 70 of a
training step's routing launches, each costing the host more time than the GPU. On CuPy
arrays it calls these instead (:data:`ENABLED`), one launch each, one thread per
softmax column or capsule, with the same formulas in the same order as the array
operations (the sums run in another order, so the values agree to rounding, not bit for
bit):

* :func:`softmax` of logits ``(B, J, R)`` over ``J`` (with the extra logit 0 of
  ``none_of_the_above``), :func:`softmax_grad` ``c * (gc - sum_j c gc)``;
* :func:`squash` of capsules ``(A, J, D)`` over ``D``, returning what the backward
  needs as :func:`~capsnet_chainer.kernels.routing._squash` does, and
  :func:`squash_grad`; the capsules and their gradients may be strided views (the
  shared routing's ``s`` is a transposed product).

The NumPy path stays as it is; ``tests/kernels/test_routing_cuda.py`` checks the
kernels' index arithmetic against it on the CPU, compiles the sources with nvcc, and on
a GPU compares them with CuPy's array operations, alone and inside the routing.
"""

import numpy
from chainer.backends import cuda

from capsnet_chainer.kernels.base import cuda_source
from capsnet_chainer.kernels.base import element_strides
from capsnet_chainer.kernels.base import launch
from capsnet_chainer.kernels.base import on_cuda

#: Use the kernels on CuPy arrays (``False``: CuPy's array operations). Off until their
#: gpu tests have passed on a GPU and their speed is measured there (bench/README.md,
#: "Prepared, not yet measured").
ENABLED = False

#: Thread ``i`` is column ``r`` of image ``a`` of contiguous logits ``(A, J, R)``: the
#: ``J`` values ``x[(a * J + j) * R + r]``.
SOFTMAX_SOURCE = r'''
extern "C" __global__ void capsnet_softmax_{T}(
        const {T}* __restrict__ x, {T}* __restrict__ c, long long n, int J, long long R,
        int nota) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        long long base = (i / R) * J * R + i % R;
        {T} m = x[base];
        for (int j = 1; j < J; ++j) {
            {T} e = x[base + j * R];
            m = e > m ? e : m;
        }
        if (nota) m = m > 0 ? m : 0;  // the extra category's logit 0 counts too
        {T} total = 0;
        for (int j = 0; j < J; ++j) {
            {T} e = exp(x[base + j * R] - m);
            c[base + j * R] = e;
            total += e;
        }
        if (nota) total += exp(-m);  // its share of the sum, then dropped
        for (int j = 0; j < J; ++j) c[base + j * R] /= total;
    }
}
'''
#: The same columns: ``g = c * gc - c * sum_j(c * gc)``.
SOFTMAX_GRAD_SOURCE = r'''
extern "C" __global__ void capsnet_softmax_grad_{T}(
        const {T}* __restrict__ c, const {T}* __restrict__ gc, {T}* __restrict__ g,
        long long n, int J, long long R) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        long long base = (i / R) * J * R + i % R;
        {T} total = 0;
        for (int j = 0; j < J; ++j) {
            {T} p = c[base + j * R] * gc[base + j * R];
            g[base + j * R] = p;
            total += p;
        }
        for (int j = 0; j < J; ++j) g[base + j * R] -= c[base + j * R] * total;
    }
}
'''
#: Thread ``i`` is capsule ``(a, j)`` of ``s`` ``(A, J, D)`` with element strides
#: ``(sa, sj, sd)``: ``sq = |s|^2``, ``norm = sqrt(sq + eps)``, ``v = s * (norm / (1 +
#: sq))``; ``v`` ``(A, J, D)``, ``sq`` and ``norm`` ``(A, J)`` contiguous.
SQUASH_SOURCE = r'''
extern "C" __global__ void capsnet_squash_{T}(
        const {T}* __restrict__ s, {T}* __restrict__ v, {T}* __restrict__ sq,
        {T}* __restrict__ norm, long long n, int J, int D, long long sa, long long sj,
        long long sd, {T} eps) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const {T}* x = s + (i / J) * sa + (i % J) * sj;
        {T} q = 0;
        for (int d = 0; d < D; ++d) q += x[d * sd] * x[d * sd];
        {T} r = sqrt(q + eps);
        {T} scale = r / (1 + q);
        for (int d = 0; d < D; ++d) v[i * D + d] = x[d * sd] * scale;
        sq[i] = q;
        norm[i] = r;
    }
}
'''
#: The same capsules, and ``gv`` with strides ``(ga, gj, gd)``: ``gs = gv * (norm /
#: (1 + sq)) + s * ((s . gv) * (1 / (norm * (1 + sq)) - 2 * norm / (1 + sq)^2))``.
SQUASH_GRAD_SOURCE = r'''
extern "C" __global__ void capsnet_squash_grad_{T}(
        const {T}* __restrict__ s, const {T}* __restrict__ sq,
        const {T}* __restrict__ norm, const {T}* __restrict__ gv, {T}* __restrict__ gs,
        long long n, int J, int D, long long sa, long long sj, long long sd,
        long long ga, long long gj, long long gd) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const {T}* x = s + (i / J) * sa + (i % J) * sj;
        const {T}* g = gv + (i / J) * ga + (i % J) * gj;
        {T} one_sq = 1 + sq[i];
        {T} r = norm[i];
        {T} s_gv = 0;
        for (int d = 0; d < D; ++d) s_gv += x[d * sd] * g[d * gd];
        {T} a = r / one_sq;
        {T} k = s_gv * (1 / (r * one_sq) - 2 * r / (one_sq * one_sq));
        for (int d = 0; d < D; ++d) gs[i * D + d] = g[d * gd] * a + x[d * sd] * k;
    }
}
'''
SOURCES = {'softmax': SOFTMAX_SOURCE, 'softmax_grad': SOFTMAX_GRAD_SOURCE,
           'squash': SQUASH_SOURCE, 'squash_grad': SQUASH_GRAD_SOURCE}


def kernel_source(which, dtype):
    """``(source, name)`` of kernel ``which`` (a key of :data:`SOURCES`) for ``dtype``."""
    return cuda_source(SOURCES[which], 'capsnet_' + which, dtype)


def supports(*arrays):
    """Whether the kernels take these arrays: CuPy arrays of one dtype of
    :data:`~capsnet_chainer.kernels.base.C_TYPES`, with :data:`ENABLED`."""
    return on_cuda(ENABLED, *arrays)


def columns(b):
    """``(A, J, R)`` of C-contiguous logits ``b`` ``(A, J, ...)``, whose softmax runs
    over axis 1; ``None`` where they are not C-contiguous or have fewer than 2 axes."""
    if b.ndim < 2 or not b.flags.c_contiguous:
        return None
    return b.shape[0], b.shape[1], b.size // max(b.shape[0] * b.shape[1], 1)


def capsules(s):
    """``(A, J, D)`` and the element strides ``(sa, sj, sd)`` of capsules ``s``
    ``(..., J, D)``: any strides with 3 axes, C-contiguous with more; ``None`` else."""
    if s.ndim == 3:
        return s.shape, element_strides(s)
    if s.ndim > 3 and s.flags.c_contiguous:
        J, D = s.shape[-2:]
        return (s.size // max(J * D, 1), J, D), (J * D, D, 1)
    return None


def takes_columns(axis, *arrays):
    """Whether :func:`softmax` and :func:`softmax_grad` take ``arrays`` (one shape,
    C-contiguous) for a softmax over ``axis``."""
    return (axis == 1 and supports(*arrays) and columns(arrays[0]) is not None
            and all(a.shape == arrays[0].shape and a.flags.c_contiguous for a in arrays))


def takes_capsules(s, *others):
    """Whether :func:`squash` and :func:`squash_grad` take capsules ``s`` (and the
    arrays of its backward: ``sq``, ``norm``, C-contiguous, and ``gv``, of ``s``'s
    shape)."""
    if not supports(s, *others) or capsules(s) is None:
        return False
    if not others:
        return True
    sq, norm, gv = others
    return (sq.flags.c_contiguous and norm.flags.c_contiguous
            and sq.size * s.shape[-1] == s.size == norm.size * s.shape[-1]
            and gv.shape == s.shape and capsules(gv) is not None)


def _launch(which, dtype, n, args):
    launch(*kernel_source(which, dtype), n, args)


def softmax(b, none_of_the_above=False):
    """:func:`~capsnet_chainer.kernels.routing.softmax` over axis 1 of C-contiguous
    logits (:func:`columns`), in one kernel."""
    A, J, R = columns(b)
    c = cuda.cupy.empty_like(b)
    _launch('softmax', b.dtype, A * R, (b, c, numpy.int64(A * R), numpy.int32(J),
                                        numpy.int64(R), numpy.int32(none_of_the_above)))
    return c


def softmax_grad(c, gc):
    """:func:`~capsnet_chainer.kernels.routing._softmax_grad` over axis 1, in one kernel
    (``c`` and ``gc`` C-contiguous, of one shape)."""
    A, J, R = columns(c)
    g = cuda.cupy.empty_like(c)
    _launch('softmax_grad', c.dtype, A * R, (c, gc, g, numpy.int64(A * R), numpy.int32(J),
                                             numpy.int64(R)))
    return g


def squash(s, eps):
    """:func:`~capsnet_chainer.kernels.routing._squash` in one kernel: ``v`` and
    ``(s, sq, norm)`` (``sq`` and ``norm`` shaped ``s.shape[:-1] + (1,)``)."""
    (A, J, D), (sa, sj, sd) = capsules(s)
    cupy = cuda.cupy
    v = cupy.empty(s.shape, s.dtype)
    sq = cupy.empty(s.shape[:-1] + (1,), s.dtype)
    norm = cupy.empty_like(sq)
    i64 = numpy.int64
    _launch('squash', s.dtype, A * J, (
        s, v, sq, norm, i64(A * J), numpy.int32(J), numpy.int32(D), i64(sa), i64(sj),
        i64(sd), s.dtype.type(eps)))
    return v, (s, sq, norm)


def squash_grad(saved, gv):
    """:func:`~capsnet_chainer.kernels.routing._squash_grad` in one kernel (``saved``
    from :func:`squash`; ``gv`` of ``s``'s shape, any strides :func:`capsules` takes)."""
    s, sq, norm = saved
    (A, J, D), (sa, sj, sd) = capsules(s)
    _, (ga, gj, gd) = capsules(gv)
    gs = cuda.cupy.empty(s.shape, s.dtype)
    i64 = numpy.int64
    _launch('squash_grad', s.dtype, A * J, (
        s, sq, norm, gv, gs, i64(A * J), numpy.int32(J), numpy.int32(D), i64(sa), i64(sj),
        i64(sd), i64(ga), i64(gj), i64(gd)))
    return gs
