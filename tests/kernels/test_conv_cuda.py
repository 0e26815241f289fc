"""The convolution's im2col and col2im kernels: their index arithmetic, rewritten in
NumPy, gives the NumPy path's values bit for bit (the same copies, the same additions
in the same order); their sources compile for sm_90; the NumPy path never calls them;
on a GPU they equal CuPy's strided copy and slice additions, and the whole convolution
is the same with them or without."""

import numpy
import pytest
from chainer import testing

from capsnet_chainer.kernels import conv as conv_kernel
from capsnet_chainer.kernels import conv_cuda
from conftest import nvcc_compile

#: (x shape (B, H, W, C), ksize, stride, kernel rows)
GEOMETRIES = [
    ((2, 10, 9, 4), (3, 4), (1, 1), (0, 3)),
    ((2, 11, 11, 8), (3, 3), (2, 2), (0, 3)),
    ((3, 12, 9, 3), (5, 3), (2, 1), (1, 4)),   # a group of kernel rows, not all
    ((2, 20, 20, 4), (9, 9), (2, 2), (0, 9)),  # the primary capsules' geometry
    ((1, 28, 28, 1), (9, 9), (1, 1), (3, 9)),
]


def geometry(shape, ksize, stride):
    _, H, W, _ = shape
    return ksize, stride, ((H - ksize[0]) // stride[0] + 1, (W - ksize[1]) // stride[1] + 1)


def im2col_twin(x, rows, ksize, stride, out_size, vec):
    """The im2col kernel for every unit ``i`` at once."""
    B, _, _, C = x.shape
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    cu, n_ky = C // vec, ky1 - ky0
    b, oy, ox, ky, kx, c = numpy.unravel_index(
        numpy.arange(B * oh * ow * n_ky * kw * cu), (B, oh, ow, n_ky, kw, cu))
    ky = ky + ky0
    sb, sh, sw, sc = (s // x.itemsize for s in x.strides)
    src = b * sb + (oy * sy + ky) * sh + (ox * sx + kx) * sw + c * vec * sc
    flat = x.reshape((-1,))  # x is C-contiguous here: its element strides index it
    units = numpy.stack([flat[src + k * sc] for k in range(vec)], axis=1)
    return units.reshape((-1,))


def col2im_twin(gcol, gx, rows, ksize, stride, out_size, vec):
    """The col2im kernel for every unit at once, each unit's additions in the kernel's
    order (kernel rows, then output columns, ascending)."""
    B, H, W, C = gx.shape
    (ky0, ky1), (_, kw), (sy, sx), (oh, ow) = rows, ksize, stride, out_size
    cu, n_ky = C // vec, ky1 - ky0
    b, y, xx, c = numpy.unravel_index(numpy.arange(B * H * W * cu), (B, H, W, cu))
    g = gcol.reshape((-1, vec))
    acc = gx.reshape((-1, vec)).copy()
    ox_lo = numpy.where(xx - kw + 1 > 0, (xx - kw + sx) // sx, 0)
    ox_hi = numpy.minimum(ow - 1, xx // sx)
    for ky in range(ky0, ky1):
        dy = y - ky
        ok = (dy >= 0) & (dy % sy == 0) & (dy // sy < oh)
        row = (b * oh + dy // sy) * ow
        for ox in range(ow):
            take = ok & (ox >= ox_lo) & (ox <= ox_hi)
            index = (((row + ox) * n_ky + (ky - ky0)) * kw + (xx - sx * ox)) * cu + c
            acc[take] += g[index[take]]
    return acc.reshape(gx.shape)


@pytest.mark.parametrize('vec', [1, 'vector'])
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
@pytest.mark.parametrize('shape, ksize, stride, rows', GEOMETRIES)
def test_the_kernels_arithmetic_is_the_numpy_paths(shape, ksize, stride, rows, dtype, vec):
    vec = conv_cuda.VECTORS[numpy.dtype(dtype)][1] if vec == 'vector' else 1
    if shape[3] % vec:
        pytest.skip('the vector kernel takes C a multiple of {}'.format(vec))
    rs = numpy.random.RandomState(0)
    x = rs.randn(*shape).astype(dtype)
    ksize_, stride_, out_size = geometry(shape, ksize, stride)
    B, (oh, ow), width = shape[0], out_size, (rows[1] - rows[0]) * ksize[1] * shape[3]
    out = numpy.empty((B * oh * ow, width), dtype)
    conv_kernel._im2col(x, rows, ksize_, stride_, out_size, out)
    numpy.testing.assert_array_equal(
        im2col_twin(x, rows, ksize_, stride_, out_size, vec), out.reshape((-1,)))
    # col2im onto a gradient that already holds values, as a second group of kernel
    # rows finds it
    gcol = rs.randn(B * oh * ow, width).astype(dtype)
    gx = rs.randn(*shape).astype(dtype)
    want = gx.copy()
    conv_kernel._col2im_add(gcol, want, rows, ksize_, stride_, out_size)
    got = col2im_twin(gcol, gx, rows, ksize_, stride_, out_size, vec)
    assert got.tobytes() == want.tobytes()  # bit for bit


@pytest.mark.parametrize('which', ['im2col', 'col2im'])
@pytest.mark.parametrize('dtype, vec', [(numpy.float32, 1), (numpy.float32, 4),
                                        (numpy.float64, 1), (numpy.float64, 2)])
def test_the_kernels_compile_for_hopper(tmp_path, which, dtype, vec):
    source, name = conv_cuda.kernel_source(which, dtype, vec)
    assert name in source and '{' + 'T}' not in source
    nvcc_compile(source, tmp_path)


def test_kernel_source_refuses_another_vector_width():
    with pytest.raises(ValueError):
        conv_cuda.kernel_source('im2col', numpy.float32, 2)


def test_the_numpy_path_never_calls_the_kernels(monkeypatch):
    def fail(*args):
        raise AssertionError('a CUDA kernel on NumPy arrays')
    monkeypatch.setattr(conv_cuda, 'im2col', fail)
    monkeypatch.setattr(conv_cuda, 'col2im_add', fail)
    x = numpy.random.rand(2, 11, 11, 4).astype(numpy.float32)
    W = numpy.random.rand(3, 4, 3, 3).astype(numpy.float32)
    assert not conv_cuda.supports(x, W)
    import chainer
    xv = chainer.Variable(x)
    y = conv_kernel.convolution_2d(xv, W, None, 2, 0.05)
    y.grad = numpy.ones_like(y.array)
    y.backward()
    assert xv.grad is not None


# On a GPU: the kernels against CuPy's own copy and slice additions


def both_paths(monkeypatch, fn):
    """``fn()`` with the kernels, then with CuPy's copy and slice additions."""
    monkeypatch.setattr(conv_cuda, 'ENABLED', True)
    got = fn()
    monkeypatch.setattr(conv_cuda, 'ENABLED', False)
    want = fn()
    return got, want


@pytest.mark.gpu
@pytest.mark.parametrize('layout', ['contiguous', 'offset', 'transposed'])
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
@pytest.mark.parametrize('shape, ksize, stride, rows', GEOMETRIES)
def test_the_kernels_on_gpu_equal_cupys_copy_and_additions(
        cupy, monkeypatch, shape, ksize, stride, rows, dtype, layout):
    rs = numpy.random.RandomState(1)
    B, H, W, C = shape
    if layout == 'contiguous':
        x = cupy.asarray(rs.randn(*shape).astype(dtype))
    elif layout == 'offset':  # a view one image in: vectors only where aligned
        x = cupy.asarray(rs.randn(B + 1, H, W, C).astype(dtype))[1:]
    else:  # channels last seen through a transpose, as conv1's input
        x = cupy.asarray(rs.randn(B, C, H, W).astype(dtype)).transpose((0, 2, 3, 1))
    ksize_, stride_, out_size = geometry(shape, ksize, stride)
    (oh, ow), width = out_size, (rows[1] - rows[0]) * ksize[1] * C
    assert conv_cuda.supports(x)

    def im2col():
        out = cupy.full((B * oh * ow, width), numpy.nan, dtype)  # every value written
        return conv_kernel._im2col(x, rows, ksize_, stride_, out_size, out).get()
    got, want = both_paths(monkeypatch, im2col)
    assert got.tobytes() == want.tobytes()
    gcol = cupy.asarray(rs.randn(B * oh * ow, width).astype(dtype))
    gx0 = cupy.asarray(rs.randn(*shape).astype(dtype))

    def col2im():
        gx = gx0.copy()
        conv_kernel._col2im_add(gcol, gx, rows, ksize_, stride_, out_size)
        return gx.get()
    got, want = both_paths(monkeypatch, col2im)
    assert got.tobytes() == want.tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize('slope', [None, 0.05])
def test_the_convolution_on_gpu_is_the_same_with_the_kernels(cupy, monkeypatch, slope):
    import chainer
    rs = numpy.random.RandomState(2)
    x = cupy.asarray(rs.rand(8, 20, 20, 16).astype(numpy.float32))
    W = cupy.asarray(rs.uniform(-0.05, 0.05, (12, 16, 9, 9)).astype(numpy.float32))
    b = cupy.asarray(rs.randn(12).astype(numpy.float32))
    gy = cupy.asarray(rs.randn(8, 6, 6, 12).astype(numpy.float32))

    def run():
        vs = [chainer.Variable(a.copy()) for a in (x, W, b)]
        y = conv_kernel.convolution_2d(*vs, stride=2, slope=slope)
        y.grad = gy
        y.backward()
        return [a.get() for a in (y.array,) + tuple(v.grad for v in vs)]
    got, want = both_paths(monkeypatch, run)
    for a, b_ in zip(got, want):
        assert a.tobytes() == b_.tobytes()


testing.run_module(__name__, __file__)
