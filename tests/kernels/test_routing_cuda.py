"""The routing's element-wise CUDA kernels: their index arithmetic, rewritten in NumPy,
gives the NumPy path's values (to rounding: the sums run in another order); their
sources compile for sm_90; the NumPy path never calls them; on a GPU they equal CuPy's
array operations, alone and inside the routing, forward and backward."""

import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer.functions import EPS
from capsnet_chainer.kernels import routing as routing_kernel
from capsnet_chainer.kernels import routing_cuda
from capsnet_chainer.kernels.base import C_TYPES
from conftest import buffer_view
from conftest import nvcc_compile

RTOL, ATOL = 1e-6, 1e-7


# The kernels, rewritten in NumPy: thread i's loops, for every i at once


def softmax_twin(x, J, R, nota):
    n = x.size // J
    i = numpy.arange(n)
    idx = ((i // R) * J * R + i % R)[:, None] + numpy.arange(J) * R  # (n, J)
    m = x[idx].max(axis=1)
    if nota:
        m = numpy.maximum(m, 0)
    e = numpy.exp(x[idx] - m[:, None])
    total = numpy.zeros(n, x.dtype)
    for j in range(J):
        total += e[:, j]
    if nota:
        total += numpy.exp(-m)
    c = numpy.empty_like(x)
    c[idx] = e / total[:, None]
    return c


def softmax_grad_twin(c, gc, J, R):
    n = c.size // J
    i = numpy.arange(n)
    idx = ((i // R) * J * R + i % R)[:, None] + numpy.arange(J) * R
    p = c[idx] * gc[idx]
    total = numpy.zeros(n, c.dtype)
    for j in range(J):
        total += p[:, j]
    g = numpy.empty_like(c)
    g[idx] = p - c[idx] * total[:, None]
    return g


def row_index(view, n, J, D):
    flat, offset, (sa, sj, sd) = buffer_view(view)
    i = numpy.arange(n)
    return flat, (offset + (i // J) * sa + (i % J) * sj)[:, None] + numpy.arange(D) * sd


def squash_twin(s, eps):
    A, J, D = s.shape
    n = A * J
    flat, idx = row_index(s, n, J, D)
    x = flat[idx]  # (n, D)
    q = numpy.zeros(n, s.dtype)
    for d in range(D):
        q += x[:, d] * x[:, d]
    r = numpy.sqrt(q + s.dtype.type(eps))
    v = x * (r / (1 + q))[:, None]
    return v.reshape(A, J, D), q.reshape(A, J, 1), r.reshape(A, J, 1)


def squash_grad_twin(s, sq, norm, gv):
    A, J, D = s.shape
    n = A * J
    sflat, sidx = row_index(s, n, J, D)
    gflat, gidx = row_index(gv, n, J, D)
    x, g = sflat[sidx], gflat[gidx]
    one_sq, r = 1 + sq.reshape(n), norm.reshape(n)
    s_gv = numpy.zeros(n, s.dtype)
    for d in range(D):
        s_gv += x[:, d] * g[:, d]
    a = r / one_sq
    k = s_gv * (1 / (r * one_sq) - 2 * r / (one_sq * one_sq))
    return (g * a[:, None] + x * k[:, None]).reshape(A, J, D)


def transposed(rng, shape, dtype):
    """Random ``shape`` ``(A, J, D)`` as the shared routing's ``s``: a transposed view of
    a ``(J, A, D)`` array."""
    A, J, D = shape
    return rng.uniform(-1, 1, (J, A, D)).astype(dtype).transpose((1, 0, 2))


@testing.parameterize(*testing.product({
    'dtype': [numpy.float32, numpy.float64],
    'nota': [False, True],
}))
class TestTwins(object):
    """The kernels' arithmetic against the NumPy path of the routing."""

    def test_softmax(self):
        rng = numpy.random.RandomState(0)
        b = rng.uniform(-3, 3, (3, 10, 4, 5)).astype(self.dtype)
        got = softmax_twin(b.reshape(-1), 10, 20, self.nota).reshape(b.shape)
        want = routing_kernel.softmax(b, 1, self.nota)
        numpy.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)

    def test_softmax_grad(self):
        rng = numpy.random.RandomState(1)
        c = routing_kernel.softmax(rng.uniform(-3, 3, (2, 10, 1, 7)).astype(self.dtype), 1,
                                   self.nota)
        gc = rng.uniform(-1, 1, c.shape).astype(self.dtype)
        got = softmax_grad_twin(c.reshape(-1), gc.reshape(-1), 10, 7).reshape(c.shape)
        numpy.testing.assert_allclose(got, routing_kernel._softmax_grad(c, gc, 1),
                                      rtol=RTOL, atol=ATOL)

    def test_squash_and_its_gradient_on_transposed_views(self):
        rng = numpy.random.RandomState(2)
        s = transposed(rng, (4, 10, 16), self.dtype)
        assert not s.flags.c_contiguous
        v, sq, norm = squash_twin(s, EPS)
        want_v, (_, want_sq, want_norm) = routing_kernel._squash(s)
        for got, want in ((v, want_v), (sq, want_sq), (norm, want_norm)):
            numpy.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        gv = transposed(rng, s.shape, self.dtype)
        numpy.testing.assert_allclose(
            squash_grad_twin(s, sq, norm, gv),
            routing_kernel._squash_grad((s, want_sq, want_norm), gv), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('which', sorted(routing_cuda.SOURCES))
@pytest.mark.parametrize('dtype', sorted(C_TYPES, key=str))
def test_the_kernels_compile_for_hopper(tmp_path, which, dtype):
    source, name = routing_cuda.kernel_source(which, dtype)
    assert name in source and '{T}' not in source
    nvcc_compile(source, tmp_path)


def test_the_layouts_the_kernels_take():
    a = numpy.zeros((2, 10, 4, 5), numpy.float32)
    assert routing_cuda.columns(a) == (2, 10, 20)
    assert routing_cuda.columns(a.transpose((0, 1, 3, 2))) is None  # not contiguous
    s = transposed(numpy.random.RandomState(0), (3, 10, 16), numpy.float32)
    assert routing_cuda.capsules(s) == ((3, 10, 16), (16, 48, 1))
    s4 = numpy.zeros((2, 10, 1, 16), numpy.float32)
    assert routing_cuda.capsules(s4) == ((20, 1, 16), (16, 16, 1))
    assert routing_cuda.capsules(s4.transpose((1, 0, 2, 3))) is None


def test_the_numpy_path_never_calls_the_kernels(monkeypatch):
    monkeypatch.setattr(routing_cuda, 'ENABLED', True)

    def refuse(*args, **kwargs):
        raise AssertionError('a CUDA kernel was called on NumPy arrays')
    for name in ('softmax', 'softmax_grad', 'squash', 'squash_grad'):
        monkeypatch.setattr(routing_cuda, name, refuse)
    u = numpy.random.RandomState(0).uniform(-1, 1, (2, 3, 4, 8)).astype(numpy.float32)
    W = numpy.random.RandomState(1).uniform(-1, 1, (3, 8, 20)).astype(numpy.float32)
    v = routing_kernel.shared_routing(u, W, n_class=2)
    v.grad = numpy.ones(v.shape, numpy.float32)
    v.backward()


# On a GPU: the kernels against CuPy's array operations


def both_paths(monkeypatch, fn):
    """``fn()`` with the kernels off, then on: the two results, on the host."""
    out = []
    for enabled in (False, True):
        monkeypatch.setattr(routing_cuda, 'ENABLED', enabled)
        out.append(fn())
    return out


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
@pytest.mark.parametrize('nota', [False, True])
def test_the_kernels_on_gpu_equal_cupys_operations(cupy, monkeypatch, dtype, nota):
    rng = numpy.random.RandomState(3)
    b = cupy.asarray(rng.uniform(-3, 3, (4, 10, 32, 36)).astype(dtype))
    gc = cupy.asarray(rng.uniform(-1, 1, b.shape).astype(dtype))
    s = cupy.asarray(transposed(rng, (4, 10, 16), dtype))
    gv = cupy.asarray(transposed(rng, (4, 10, 16), dtype))

    def run():
        c = routing_kernel.softmax(b, 1, nota)
        v, saved = routing_kernel._squash(s)
        return [a.get() for a in (c, routing_kernel._softmax_grad(c, gc, 1), v, saved[1],
                                  saved[2], routing_kernel._squash_grad(saved, gv))]
    for want, got in zip(*both_paths(monkeypatch, run)):
        numpy.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize('shared', [True, False], ids=['shared', 'unshared'])
def test_the_routing_on_gpu_is_the_same_with_the_kernels(cupy, monkeypatch, shared):
    rng = numpy.random.RandomState(4)
    u = cupy.asarray(rng.uniform(-1, 1, (8, 32, 36, 8)).astype(numpy.float32))
    W = cupy.asarray(rng.uniform(-0.3, 0.3, (32, 8, 160)).astype(numpy.float32))
    u_hat = cupy.asarray(rng.uniform(-0.1, 0.1, (8, 10, 64, 16)).astype(numpy.float32))
    gy = cupy.asarray(rng.uniform(-1, 1, (8, 10, 16)).astype(numpy.float32))

    def run():
        import chainer
        inputs = [chainer.Variable(a) for a in ((u, W) if shared else (u_hat,))]
        v = (routing_kernel.shared_routing(*inputs) if shared
             else routing_kernel.routing(*inputs))
        v.grad = gy
        v.backward()
        return [v.array.get()] + [x.grad.get() for x in inputs]
    for want, got in zip(*both_paths(monkeypatch, run)):
        numpy.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_the_routing_kernels_gradient_check_on_gpu_with_the_kernels(cupy, monkeypatch):
    monkeypatch.setattr(routing_cuda, 'ENABLED', True)
    rng = numpy.random.RandomState(5)
    u = cupy.asarray(rng.uniform(-1, 1, (2, 3, 4, 8)))
    W = cupy.asarray(rng.uniform(-1, 1, (3, 8, 20)))
    b = cupy.asarray(rng.uniform(-1, 1, (3, 20)))
    gy = cupy.asarray(rng.uniform(-1, 1, (2, 2, 10)))
    gradient_check.check_backward(
        lambda u, W, b: routing_kernel.shared_routing(u, W, b, n_class=2,
                                                      none_of_the_above=True),
        (u, W, b), gy, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


testing.run_module(__name__, __file__)
