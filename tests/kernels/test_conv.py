import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer.kernels import conv as conv_kernel


@pytest.fixture(autouse=True)
def seed():
    numpy.random.seed(0)


@pytest.fixture
def small_pieces(monkeypatch):
    """Makes the convolution work one image and one kernel row at a time."""
    monkeypatch.setattr(conv_kernel, 'WORKSPACE_BYTES', 1)
    monkeypatch.setattr(conv_kernel, 'CACHE_BYTES', 1)


def conv_ref(x_nhwc, W, b, stride, slope):
    """Chainer's own convolution and activation, channels moved last."""
    y = F.convolution_2d(x_nhwc.transpose((0, 3, 1, 2)), W, b, stride)
    if slope is not None:
        y = F.relu(y) if slope == 0 else F.leaky_relu(y, slope)
    return y.array.transpose((0, 2, 3, 1))


CONV_CASES = testing.product({
    'slope': [None, 0.0, 0.05, 1.5],
    'stride': [1, 2, (2, 1)],
    'bias': [True, False],
})


def conv_inputs(dtype=numpy.float64, shape=(3, 10, 9, 4), n_out=5, ksize=(3, 4)):
    x = numpy.random.randn(*shape).astype(dtype)
    W = numpy.random.randn(n_out, shape[3], *ksize).astype(dtype)
    b = numpy.random.randn(n_out).astype(dtype)
    return x, W, b


@pytest.mark.parametrize('pieces', ['whole', 'small'])
@pytest.mark.parametrize('case', CONV_CASES)
def test_convolution_forward_equals_chainer_convolution(case, pieces, request):
    if pieces == 'small':
        request.getfixturevalue('small_pieces')
    x, W, b = conv_inputs()
    b = b if case['bias'] else None
    y = conv_kernel.convolution_2d(x, W, b, case['stride'], case['slope'])
    assert y.array.flags.c_contiguous and y.dtype == x.dtype
    numpy.testing.assert_allclose(
        y.array, conv_ref(x, W, b, case['stride'], case['slope']), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('pieces', ['whole', 'small'])
@pytest.mark.parametrize('case', CONV_CASES)
def test_convolution_gradients_pass_gradient_check(case, pieces, request):
    if pieces == 'small':
        request.getfixturevalue('small_pieces')
    x, W, b = conv_inputs()
    gy = numpy.random.randn(*conv_ref(x, W, b, case['stride'], None).shape)

    def f(*inputs):
        return conv_kernel.convolution_2d(*inputs, stride=case['stride'], slope=case['slope'])
    inputs = (x, W, b) if case['bias'] else (x, W)
    # A small step, so that no pre-activation crosses the kink of the (leaky) ReLU.
    gradient_check.check_backward(f, inputs, gy, dtype=numpy.float64, eps=1e-6,
                                  atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('blank', [False, True], ids=['random', 'blank'])
@pytest.mark.parametrize('slope', [None, 0.0, 0.05, 1.5])
def test_convolution_matches_chainer_gradients(slope, blank, small_pieces):
    """Gradients of x, W, b equal those of Chainer's convolution, and requesting only
    some of them (as for conv1, whose input is data) gives the same values. ``blank``:
    the top of each image is zero and the bias too, as for conv1 on an MNIST digit at
    initialization, so that many outputs are exactly 0, where (leaky) ReLU's gradient
    is ``slope * gy``."""
    x, W, b = conv_inputs(shape=(4, 11, 11, 3), ksize=(3, 3))
    if blank:
        x[:, :5] = 0  # output rows 0 and 1 see only zeros
        b[:] = 0
    gy = numpy.random.randn(4, 5, 5, 5)
    grads = {}
    for name, fn in [('fast', lambda x, W, b: conv_kernel.convolution_2d(x, W, b, 2, slope)),
                     ('ref', lambda x, W, b: F.transpose(
                         _act(F.convolution_2d(F.transpose(x, (0, 3, 1, 2)), W, b, 2),
                              slope), (0, 2, 3, 1)))]:
        vs = [chainer.Variable(a.copy()) for a in (x, W, b)]
        y = fn(*vs)
        y.grad = gy
        y.backward()
        grads[name] = [v.grad for v in vs]
        # Only W and b, as for conv1.
        vs = [chainer.Variable(x.copy(), requires_grad=False),
              chainer.Variable(W.copy()), chainer.Variable(b.copy())]
        y = fn(*vs)
        y.grad = gy
        y.backward()
        assert vs[0].grad is None
        grads[name + '/wb'] = [vs[1].grad, vs[2].grad]
    for got, want in zip(grads['fast'], grads['ref']):
        numpy.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads['fast/wb'], grads['fast'][1:]):
        numpy.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def _act(h, slope):
    if slope is None:
        return h
    return F.relu(h) if slope == 0 else F.leaky_relu(h, slope)


def test_convolution_accepts_any_strides():
    """An NCHW array seen through a transpose gives the same result as a copy."""
    x, W, b = conv_inputs(numpy.float32)
    x_nchw = numpy.ascontiguousarray(x.transpose((0, 3, 1, 2)))
    view = x_nchw.transpose((0, 2, 3, 1))
    assert not view.flags.c_contiguous
    numpy.testing.assert_array_equal(conv_kernel.convolution_2d(view, W, b, 2, 0.05).array,
                                     conv_kernel.convolution_2d(x, W, b, 2, 0.05).array)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_convolution_keeps_the_dtype(dtype):
    x, W, b = conv_inputs(dtype)
    y = conv_kernel.convolution_2d(x, W, b)
    assert y.dtype == dtype
    tol = {'rtol': 1e-5, 'atol': 1e-4} if dtype == numpy.float32 else {'rtol': 1e-12}
    numpy.testing.assert_allclose(y.array, conv_ref(x, W, b, 1, None), **tol)


def test_convolution_bounds_its_scratch_memory(monkeypatch):
    """The im2col block never exceeds WORKSPACE_BYTES (one image's kernel row aside)."""
    sizes = []
    im2col = conv_kernel._im2col

    def spy(x, rows, ksize, stride, out_size, out):
        sizes.append(out.nbytes)
        return im2col(x, rows, ksize, stride, out_size, out)
    monkeypatch.setattr(conv_kernel, '_im2col', spy)
    monkeypatch.setattr(conv_kernel, 'WORKSPACE_BYTES', 4 * 12 * 36 * 9 * 256)
    x = chainer.Variable(numpy.random.rand(16, 20, 20, 256).astype(numpy.float32))
    W = chainer.Variable(numpy.random.rand(16, 256, 9, 9).astype(numpy.float32))
    y = conv_kernel.convolution_2d(x, W, None, 2)
    y.grad = numpy.ones_like(y.array)
    y.backward()
    assert sizes and max(sizes) <= conv_kernel.WORKSPACE_BYTES


def test_convolution_double_backprop_raises():
    x, W, b = conv_inputs()
    xv = chainer.Variable(x)
    y = conv_kernel.convolution_2d(xv, W, b)
    gx, = chainer.grad([F.sum(y * y)], [xv], enable_double_backprop=True)
    with pytest.raises(NotImplementedError, match='double backpropagation'):
        gx2, = chainer.grad([F.sum(gx)], [xv])


@pytest.mark.gpu
def test_convolution_on_gpu_matches_cpu():
    cupy = pytest.importorskip('cupy')
    x, W, b = conv_inputs()
    numpy.testing.assert_allclose(
        cupy.asnumpy(conv_kernel.convolution_2d(*map(cupy.asarray, (x, W, b)), 2, 0.05).array),
        conv_kernel.convolution_2d(x, W, b, 2, 0.05).array, rtol=1e-10)


testing.run_module(__name__, __file__)
