import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer import kernels


@pytest.fixture(autouse=True)
def seed():
    numpy.random.seed(0)


@pytest.fixture
def small_pieces(monkeypatch):
    """Makes the convolution work one image and one kernel row at a time."""
    monkeypatch.setattr(kernels, 'WORKSPACE_BYTES', 1)
    monkeypatch.setattr(kernels, 'CACHE_BYTES', 1)


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
def test_convolution_forward(case, pieces, request):
    if pieces == 'small':
        request.getfixturevalue('small_pieces')
    x, W, b = conv_inputs()
    b = b if case['bias'] else None
    y = kernels.convolution_2d(x, W, b, case['stride'], case['slope'])
    assert y.array.flags.c_contiguous and y.dtype == x.dtype
    numpy.testing.assert_allclose(
        y.array, conv_ref(x, W, b, case['stride'], case['slope']), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('pieces', ['whole', 'small'])
@pytest.mark.parametrize('case', CONV_CASES)
def test_convolution_backward(case, pieces, request):
    if pieces == 'small':
        request.getfixturevalue('small_pieces')
    x, W, b = conv_inputs()
    gy = numpy.random.randn(*conv_ref(x, W, b, case['stride'], None).shape)

    def f(*inputs):
        return kernels.convolution_2d(*inputs, stride=case['stride'], slope=case['slope'])
    inputs = (x, W, b) if case['bias'] else (x, W)
    # A small step, so that no pre-activation crosses the kink of the (leaky) ReLU.
    gradient_check.check_backward(f, inputs, gy, dtype=numpy.float64, eps=1e-6,
                                  atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('slope', [None, 0.05])
def test_convolution_matches_chainer_gradients(slope, small_pieces):
    """Gradients of x, W, b equal those of Chainer's convolution, and requesting only
    some of them (as for conv1, whose input is data) gives the same values."""
    x, W, b = conv_inputs(shape=(4, 11, 11, 3), ksize=(3, 3))
    gy = numpy.random.randn(4, 5, 5, 5)
    grads = {}
    for name, fn in [('fast', lambda x, W, b: kernels.convolution_2d(x, W, b, 2, slope)),
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
    numpy.testing.assert_array_equal(kernels.convolution_2d(view, W, b, 2, 0.05).array,
                                     kernels.convolution_2d(x, W, b, 2, 0.05).array)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_convolution_dtype(dtype):
    x, W, b = conv_inputs(dtype)
    y = kernels.convolution_2d(x, W, b)
    assert y.dtype == dtype
    tol = {'rtol': 1e-5, 'atol': 1e-4} if dtype == numpy.float32 else {'rtol': 1e-12}
    numpy.testing.assert_allclose(y.array, conv_ref(x, W, b, 1, None), **tol)


def test_convolution_bounds_its_scratch_memory(monkeypatch):
    """The im2col block never exceeds WORKSPACE_BYTES (one image's kernel row aside)."""
    sizes = []
    im2col = kernels._im2col

    def spy(x, rows, ksize, stride, out_size, out):
        sizes.append(out.nbytes)
        return im2col(x, rows, ksize, stride, out_size, out)
    monkeypatch.setattr(kernels, '_im2col', spy)
    monkeypatch.setattr(kernels, 'WORKSPACE_BYTES', 4 * 12 * 36 * 9 * 256)
    x = chainer.Variable(numpy.random.rand(16, 20, 20, 256).astype(numpy.float32))
    W = chainer.Variable(numpy.random.rand(16, 256, 9, 9).astype(numpy.float32))
    y = kernels.convolution_2d(x, W, None, 2)
    y.grad = numpy.ones_like(y.array)
    y.backward()
    assert sizes and max(sizes) <= kernels.WORKSPACE_BYTES


def test_convolution_has_no_double_backprop():
    x, W, b = conv_inputs()
    xv = chainer.Variable(x)
    y = kernels.convolution_2d(xv, W, b)
    gx, = chainer.grad([F.sum(y * y)], [xv], enable_double_backprop=True)
    with pytest.raises(NotImplementedError, match='double backpropagation'):
        gx2, = chainer.grad([F.sum(gx)], [xv])


# --- Routing ---------------------------------------------------------------------------


def routing_chainer(u_hat, n_iteration, grad_all_iterations):
    """Procedure 1 in chainer.functions, the coefficients detached if asked."""
    B, J, I, D = u_hat.shape
    u_hat = F.reshape(chainer.as_variable(u_hat), (B * J, I, D))
    u_const = u_hat if grad_all_iterations else chainer.Variable(u_hat.array)
    b = numpy.zeros((B, J, I), u_hat.dtype)
    for r in range(n_iteration):
        last = r == n_iteration - 1
        c = F.softmax(b, axis=1)
        s = F.reshape(F.matmul(F.reshape(c, (B * J, 1, I)), u_hat if last else u_const),
                      (B, J, D))
        sq = F.sum(s * s, axis=2, keepdims=True)
        v = s * F.broadcast_to(F.sqrt(sq + kernels.EPS) / (1 + sq), s.shape)
        if not last:
            v_agree = v if grad_all_iterations else v.array
            b = b + F.reshape(F.matmul(u_const, F.reshape(v_agree, (B * J, D, 1))),
                              (B, J, I))
    return v


ROUTING_CASES = testing.product({'n_iteration': [1, 2, 3],
                                 'grad_all_iterations': [True, False]})


@pytest.mark.parametrize('case', ROUTING_CASES)
def test_routing_matches_chainer_functions(case):
    u_hat = numpy.random.randn(3, 4, 6, 5)
    gv = numpy.random.randn(3, 4, 5)
    u_fast, u_ref = chainer.Variable(u_hat.copy()), chainer.Variable(u_hat.copy())
    v = kernels.routing(u_fast, **case)
    v_ref = routing_chainer(u_ref, **case)
    numpy.testing.assert_allclose(v.array, v_ref.array, rtol=1e-12, atol=1e-14)
    for y, g in ((v, gv), (v_ref, gv)):
        y.grad = g
        y.backward()
    numpy.testing.assert_allclose(u_fast.grad, u_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('n_iteration', [1, 2, 3])
def test_routing_check_backward(n_iteration):
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    gv = numpy.random.randn(2, 3, 4)
    gradient_check.check_backward(lambda u: kernels.routing(u, n_iteration), u_hat, gv,
                                  dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def shared_inputs(bias=True, B=3, K=4, N=5, E=3, J=6, D=4):
    u = numpy.random.randn(B, K, N, E)
    W = numpy.random.randn(K, E, J * D) * 0.5
    b = numpy.random.randn(K, J * D) * 0.5 if bias else None
    return u, W, b


def u_hat_of(u, W, b, J):
    """``u_hat[b, j, (k, n), d]`` formed explicitly, in chainer.functions."""
    u, W = chainer.as_variable(u), chainer.as_variable(W)
    B, K, N, E = u.shape
    h = F.matmul(F.reshape(u, (B, K, N, E)).transpose((1, 0, 2, 3)).reshape((K, B * N, E)),
                 W)  # (K, B * N, J * D)
    if b is not None:
        h = h + F.broadcast_to(chainer.as_variable(b)[:, None, :], h.shape)
    D = W.shape[2] // J
    h = F.reshape(h, (K, B, N, J, D)).transpose((1, 3, 0, 2, 4))
    return F.reshape(h, (B, J, K * N, D))


@pytest.mark.parametrize('n_cell, bias', [(5, True), (5, False), (1, True), (1, False)])
def test_prediction_vectors(n_cell, bias):
    """Maps shared by ``n_cell`` consecutive capsules (1: a map per capsule)."""
    u, W, b = shared_inputs(bias, K=4, N=n_cell)
    if n_cell == 1:  # one map per capsule: as many maps as capsules
        u, W, b = shared_inputs(bias, K=20, N=1)
    B, K, N, E = u.shape
    u_flat = u.reshape((B, K * N, E))
    u_hat = kernels.prediction_vectors(u_flat, W, b, n_class=6, n_cell=n_cell)
    numpy.testing.assert_allclose(u_hat.array, u_hat_of(u, W, b, 6).array, rtol=1e-12)
    gy = numpy.random.randn(*u_hat.shape)

    def f(*args):
        return kernels.prediction_vectors(*(args if bias else args + (None,)), n_class=6,
                                          n_cell=n_cell)
    inputs = (u_flat, W, b) if bias else (u_flat, W)
    gradient_check.check_backward(f, inputs, gy, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


SHARED_CASES = testing.product({'n_iteration': [1, 2, 3],
                                'grad_all_iterations': [True, False],
                                'bias': [True, False]})


@pytest.mark.parametrize('case', SHARED_CASES)
def test_shared_routing_matches_routing_on_u_hat(case):
    u, W, b = shared_inputs(case['bias'])
    gv = numpy.random.randn(3, 6, 4)
    kw = {'n_iteration': case['n_iteration'],
          'grad_all_iterations': case['grad_all_iterations']}
    fast = [chainer.Variable(a.copy()) for a in (u, W, b) if a is not None]
    ref = [chainer.Variable(a.copy()) for a in (u, W, b) if a is not None]
    v = kernels.shared_routing(*fast[:2], fast[2] if case['bias'] else None, 6, **kw)
    v_ref = routing_chainer(u_hat_of(*ref[:2], ref[2] if case['bias'] else None, 6), **kw)
    numpy.testing.assert_allclose(v.array, v_ref.array, rtol=1e-12, atol=1e-14)
    for y in (v, v_ref):
        y.grad = gv
        y.backward()
    for a, r in zip(fast, ref):
        numpy.testing.assert_allclose(a.grad, r.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('n_iteration', [1, 3])
def test_shared_routing_check_backward(n_iteration, bias):
    u, W, b = shared_inputs(bias, B=2, K=2, N=3, E=3, J=3, D=4)
    gv = numpy.random.randn(2, 3, 4)
    inputs = (u, W, b) if bias else (u, W)

    def f(*args):
        return kernels.shared_routing(*args, n_class=3, n_iteration=n_iteration) \
            if bias else kernels.shared_routing(*args, None, 3, n_iteration)
    gradient_check.check_backward(f, inputs, gv, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def test_shared_routing_only_requested_gradients():
    u, W, b = shared_inputs()
    uv = chainer.Variable(u, requires_grad=False)
    Wv, bv = chainer.Variable(W), chainer.Variable(b)
    v = kernels.shared_routing(uv, Wv, bv, 6)
    F.sum(v).backward()
    assert uv.grad is None and Wv.grad is not None and bv.grad is not None


def test_shared_routing_rejects_bad_shapes():
    u, W, b = shared_inputs()
    with pytest.raises(ValueError, match='n_class'):
        kernels.shared_routing(u, W, b, n_class=5)
    with pytest.raises(ValueError, match='n_iteration'):
        kernels.shared_routing(u, W, b, 6, n_iteration=0)
    with pytest.raises(chainer.utils.type_check.InvalidType):
        kernels.shared_routing(u[:, :2], W, b, 6)


@pytest.mark.gpu
def test_kernels_on_gpu_match_cpu():
    cupy = pytest.importorskip('cupy')
    x, W, b = conv_inputs()
    numpy.testing.assert_allclose(
        cupy.asnumpy(kernels.convolution_2d(*map(cupy.asarray, (x, W, b)), 2, 0.05).array),
        kernels.convolution_2d(x, W, b, 2, 0.05).array, rtol=1e-10)
    u_hat = numpy.random.randn(2, 3, 5, 4)
    numpy.testing.assert_allclose(cupy.asnumpy(kernels.routing(cupy.asarray(u_hat)).array),
                                  kernels.routing(u_hat).array, rtol=1e-10)
    u, W, b = shared_inputs()
    numpy.testing.assert_allclose(
        cupy.asnumpy(kernels.shared_routing(*map(cupy.asarray, (u, W, b)), 6).array),
        kernels.shared_routing(u, W, b, 6).array, rtol=1e-10)


testing.run_module(__name__, __file__)
