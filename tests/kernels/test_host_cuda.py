"""The CUDA kernels' real source on the CPU: each source string, compiled with g++ as C++
and launched through its module's own launch code on NumPy arrays (``host_cuda.py``),
gives what the NumPy path gives. im2col, col2im and the resident set's gather-and-shift
bit for bit, in every layout they take; the routing's element-wise kernels, the whole
routing forward and backward, and the margin loss to rounding (their sums run in
another order).

The kernels' own test files check NumPy rewrites ("twins") of the index arithmetic and
compile the sources with nvcc; this runs the C itself (its indices, strides, vector
moves, and the launch code's arguments against the kernel's parameters) on every
machine with g++, before a GPU session."""

import numpy
import pytest

from capsnet_chainer.datasets import resident  # before chainer: restores numpy.sctypes

import chainer

from capsnet_chainer.kernels import conv as conv_kernel
from capsnet_chainer.kernels import conv_cuda
from capsnet_chainer.kernels import margin_loss as margin_kernel
from capsnet_chainer.kernels import routing as routing_kernel
from capsnet_chainer.kernels.base import C_TYPES
from host_cuda import host_cuda_fixture  # noqa: F401 (the fixture host_cuda)
from test_conv_cuda import GEOMETRIES
from test_conv_cuda import geometry
from test_margin_loss import capsules
from test_routing_cuda import transposed

DTYPES = [numpy.float32, numpy.float64]
#: (rtol, atol) where the sums run in another order.
TOLERANCE = {numpy.float32: (1e-6, 1e-7), numpy.float64: (1e-13, 1e-15)}


def kernel_and_numpy(host_cuda, fn):
    """``fn()`` through the CUDA kernels (on the host), then through the NumPy path."""
    with host_cuda.device():
        got = fn()
    return got, fn()


def names(dtype, *kernels):
    return ['capsnet_{}_{}'.format(k, C_TYPES[numpy.dtype(dtype)]) for k in kernels]


def assert_bitwise(got, want):
    """The same values bit for bit (the sign of 0 and NaN included)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    bits = numpy.dtype('u{}'.format(got.itemsize))
    numpy.testing.assert_array_equal(numpy.ascontiguousarray(got).view(bits),
                                     numpy.ascontiguousarray(want).view(bits))


def assert_close(got, want, dtype, scale=1):
    rtol, atol = TOLERANCE[dtype]
    assert got.shape == want.shape
    numpy.testing.assert_allclose(got, want, rtol=rtol * scale, atol=atol * scale)


# im2col and col2im


def aligned(shape, dtype):
    """An empty C-contiguous array that starts on 16 bytes, as CuPy's do."""
    size = int(numpy.prod(shape)) * numpy.dtype(dtype).itemsize
    buffer = numpy.empty(size + 16, numpy.uint8)
    start = -buffer.ctypes.data % 16
    return buffer[start:start + size].view(dtype).reshape(shape)


def laid_out(values, layout):
    """A copy of ``values`` ``(B, H, W, C)`` as the kernels may find it: C-contiguous, a
    view one image into a larger array, or channels first seen through a transpose."""
    B, H, W, C = values.shape
    if layout == 'contiguous':
        x = aligned(values.shape, values.dtype)
    elif layout == 'offset':
        x = aligned((B + 1, H, W, C), values.dtype)[1:]
    else:
        x = aligned((B, C, H, W), values.dtype).transpose((0, 2, 3, 1))
    x[...] = values
    return x


@pytest.mark.parametrize('layout', ['contiguous', 'offset', 'transposed'])
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape, ksize, stride, rows', GEOMETRIES)
def test_im2col_and_col2im_are_the_numpy_paths_bit_for_bit(
        host_cuda, shape, ksize, stride, rows, dtype, layout):
    rs = numpy.random.RandomState(0)
    B, H, W, C = shape
    ksize_, stride_, out_size = geometry(shape, ksize, stride)
    (oh, ow), width = out_size, (rows[1] - rows[0]) * ksize[1] * C
    x = laid_out(rs.randn(*shape).astype(dtype), layout)
    gcol = laid_out(rs.randn(1, 1, B * oh * ow, width).astype(dtype), 'contiguous')[0, 0]
    gx0 = rs.randn(*shape).astype(dtype)  # col2im adds onto values already there

    def im2col():
        out = aligned((B * oh * ow, width), dtype)
        out.fill(numpy.nan)  # every value written
        return conv_kernel._im2col(x, rows, ksize_, stride_, out_size, out)

    def col2im():
        gx = laid_out(gx0, layout)
        conv_kernel._col2im_add(gcol, gx, rows, ksize_, stride_, out_size)
        return gx
    for fn in (im2col, col2im):
        assert_bitwise(*kernel_and_numpy(host_cuda, fn))
    # The 16-byte moves where every array starts on 16 bytes and the channels allow
    vec = conv_cuda.VECTORS[numpy.dtype(dtype)][1]
    if layout == 'transposed' or C % vec or x.ctypes.data % 16:
        vec = 1
    assert host_cuda.launched == ['{}_{}'.format(name, vec)
                                  for name in names(dtype, 'im2col', 'col2im')]


# The routing


@pytest.mark.parametrize('nota', [False, True])
@pytest.mark.parametrize('dtype', DTYPES)
def test_the_routing_kernels_are_the_numpy_paths(host_cuda, dtype, nota):
    rs = numpy.random.RandomState(1)
    b = rs.uniform(-3, 3, (3, 10, 4, 5)).astype(dtype)
    gc = rs.uniform(-1, 1, b.shape).astype(dtype)
    s = transposed(rs, (4, 10, 16), dtype)  # strided, as the shared routing's
    # strided otherwise on every axis, so that no stride of s stands in for one of gv
    gv = rs.uniform(-1, 1, (16, 4, 10)).astype(dtype).transpose((1, 2, 0))
    s4 = rs.uniform(-1, 1, (4, 10, 1, 16)).astype(dtype)  # C-contiguous, 4 axes
    gv4 = rs.uniform(-1, 1, s4.shape).astype(dtype)

    def run():
        c = routing_kernel.softmax(b, 1, nota)
        out = [c, routing_kernel._softmax_grad(c, gc, 1)]
        for s_, gv_ in ((s, gv), (s4, gv4)):
            v, saved = routing_kernel._squash(s_)
            out += [v, saved[1], saved[2], routing_kernel._squash_grad(saved, gv_)]
        return out
    got, want = kernel_and_numpy(host_cuda, run)
    for got_, want_ in zip(got, want):
        assert_close(got_, want_, dtype)
    assert host_cuda.launched == names(dtype, 'softmax', 'softmax_grad',
                                       *['squash', 'squash_grad'] * 2)


@pytest.mark.parametrize('shared', [True, False], ids=['shared', 'unshared'])
@pytest.mark.parametrize('nota', [False, True])
@pytest.mark.parametrize('dtype', DTYPES)
def test_the_routing_is_the_same_with_the_kernels(host_cuda, dtype, nota, shared):
    rs = numpy.random.RandomState(2)
    if shared:
        inputs = (rs.uniform(-1, 1, (3, 4, 5, 3)).astype(dtype),
                  rs.uniform(-1, 1, (4, 3, 6 * 4)).astype(dtype),
                  rs.uniform(-1, 1, (4, 24)).astype(dtype))
    else:
        inputs = rs.uniform(-1, 1, (3, 6, 7, 4)).astype(dtype),
    gy = rs.uniform(-1, 1, (3, 6, 4)).astype(dtype)

    def run():
        xs = [chainer.Variable(a.copy()) for a in inputs]
        if shared:
            y = routing_kernel.shared_routing(*xs, n_class=6, none_of_the_above=nota)
        else:
            y = routing_kernel.routing(*xs, none_of_the_above=nota)
        y.grad = gy.copy()
        y.backward()
        return [y.array] + [x.grad for x in xs]
    got, want = kernel_and_numpy(host_cuda, run)
    for got_, want_ in zip(got, want):
        assert_close(got_, want_, dtype, scale=100)  # three iterations' rounding
    assert set(host_cuda.launched) == set(names(dtype, 'softmax', 'softmax_grad', 'squash',
                                                'squash_grad'))


# The margin loss


@pytest.mark.parametrize('gradient', ['loss', 'lengths', 'both'])
@pytest.mark.parametrize('transposed_v', [False, True], ids=['contiguous', 'transposed'])
@pytest.mark.parametrize('dtype', DTYPES)
def test_the_margin_loss_kernels_are_the_numpy_node(host_cuda, dtype, transposed_v,
                                                    gradient):
    v, t = capsules(B=7, dtype=dtype, transposed=transposed_v, seed=3)
    gl = numpy.random.RandomState(4).uniform(-1, 1, (7, 10)).astype(dtype)

    def run():
        x = chainer.Variable(v)  # in its own layout
        loss, lengths = margin_kernel.margin_loss(x, t)
        terms = {'loss': loss * 1.7, 'lengths': chainer.functions.sum(lengths * gl)}
        y = sum(terms.values()) if gradient == 'both' else terms[gradient]
        y.backward()
        return loss.array, lengths.array, x.grad
    got, want = kernel_and_numpy(host_cuda, run)
    for got_, want_ in zip(got, want):
        assert_close(got_, want_, dtype, scale=10)
    assert host_cuda.launched == names(dtype, 'margin_loss', 'margin_loss_grad')


# The resident training set


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('per_image', [False, True])
@pytest.mark.parametrize('dtype', DTYPES)
def test_gather_shift_is_the_numpy_paths_bit_for_bit(host_cuda, dtype, per_image,
                                                     channels):
    rs = numpy.random.RandomState(5)
    x = rs.rand(20, channels, 6, 5).astype(dtype)
    n = 9
    index = rs.randint(0, 20, n).astype(numpy.int32)
    shifts = rs.randint(-3, 4, (n if per_image else 1, 2)).astype(numpy.int32)
    shifts[0] = (5, -6)  # past the image's height or width
    plan = numpy.concatenate((index, shifts.reshape((-1,))))
    assert_bitwise(*kernel_and_numpy(
        host_cuda, lambda: resident.gather_shift(x, plan, n, per_image)))
    assert host_cuda.launched == names(dtype, 'gather_shift')


# The host launch itself


def test_a_launch_must_pass_what_the_kernels_parameters_say(host_cuda):
    # What CuPy would hand over wrongly: an array of another dtype, 8 bytes for an int
    source, name = resident.kernel_source(numpy.float32)
    kernel = host_cuda.raw(source, name)
    x, y = numpy.zeros((2, 1, 3, 3), numpy.float32), numpy.ones((1, 1, 3, 3), numpy.float32)
    plan = numpy.array([1, 0, 0], numpy.int32)
    i32 = numpy.int32
    shape = i32(1), i32(1), i32(3), i32(3), i32(0)
    kernel((1,), (1,), (x, plan, y, numpy.int64(9)) + shape)
    assert not y.any()
    with pytest.raises(AssertionError, match='argument 1'):
        kernel((1,), (1,), (x, plan.astype(numpy.float32), y, numpy.int64(9)) + shape)
    with pytest.raises(AssertionError, match='argument 3'):
        kernel((1,), (1,), (x, plan, y, i32(9)) + shape)
    with pytest.raises(AssertionError):
        kernel((1,), (1,), (x, plan, y, numpy.int64(9)) + shape[:-1])
