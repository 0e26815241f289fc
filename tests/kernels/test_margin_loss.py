"""The margin loss on the capsules in one node: the plain equations' loss, lengths and
gradients (capsule_length, then margin_loss); Chainer's gradient check; the CUDA
kernels' index arithmetic rewritten in NumPy; their sources compile for sm_90; the CPU
model never uses the node; on a GPU the kernels equal the NumPy node and the model's
loss and gradients are the same with it or without."""

import chainer
import numpy
import pytest
from chainer import gradient_check
from chainer import testing
from chainer.backends.cuda import to_cpu

from capsnet_chainer import CapsNet
from capsnet_chainer import functions
from capsnet_chainer.kernels import margin_loss as margin_kernel
from capsnet_chainer.kernels.base import C_TYPES
from conftest import buffer_view
from conftest import nvcc_compile


def capsules(B=6, J=10, D=16, dtype=numpy.float32, seed=0, transposed=False, low=0.0):
    """Capsules whose lengths spread over both margins (from ``low``: a numerical
    gradient needs them well above 0, where ``|v|`` bends sharply), and labels;
    ``transposed``: a ``(J, B, D)`` array's view, as the routing may hand them over."""
    rng = numpy.random.RandomState(seed)
    length = rng.uniform(low, 1.0, (B, J, 1))
    # keep the lengths off the kinks at m+ and m-, where the gradient jumps
    length = numpy.where(numpy.abs(length - 0.9) < 0.02, 0.95, length)
    length = numpy.where(numpy.abs(length - 0.1) < 0.02, 0.05, length)
    direction = rng.normal(size=(B, J, D))
    v = (length * direction / numpy.linalg.norm(direction, axis=2, keepdims=True)).astype(
        dtype)
    if transposed:
        v = numpy.ascontiguousarray(v.transpose((1, 0, 2))).transpose((1, 0, 2))
    return v, rng.randint(0, J, B).astype(numpy.int32)


def plain(v, t):
    """The plain equations: their loss, lengths and the gradient of ``loss + sum(lengths
    * gl)`` for a fixed ``gl``."""
    v = chainer.Variable(v)
    lengths = functions.capsule_length(v)
    loss = functions.margin_loss(lengths, t)
    gl = numpy.linspace(-1, 1, lengths.size).reshape(lengths.shape).astype(v.dtype)
    (loss + chainer.functions.sum(lengths * gl)).backward()
    return loss.array, lengths.array, v.grad, gl


@pytest.mark.parametrize('transposed', [False, True])
def test_the_node_is_the_plain_equations(transposed):
    v, t = capsules(transposed=transposed)
    want_loss, want_lengths, want_grad, gl = plain(v, t)
    x = chainer.Variable(v)
    loss, lengths = margin_kernel.margin_loss(x, t)
    (loss + chainer.functions.sum(lengths * gl)).backward()
    numpy.testing.assert_allclose(loss.array, want_loss, rtol=1e-6)
    numpy.testing.assert_allclose(lengths.array, want_lengths, rtol=1e-6)
    numpy.testing.assert_allclose(x.grad, want_grad, rtol=1e-5, atol=1e-7)
    assert loss.shape == () and lengths.shape == (6, 10)


@pytest.mark.parametrize('which', ['loss', 'lengths', 'both'])
def test_gradient_check(which):
    v, t = capsules(B=3, J=4, D=5, dtype=numpy.float64, seed=1, low=0.2)
    rng = numpy.random.RandomState(2)
    g_loss = numpy.asarray(rng.uniform(0.5, 2.0), numpy.float64)
    g_lengths = rng.uniform(-1, 1, (3, 4))
    if which == 'loss':
        g_lengths = None
    elif which == 'lengths':
        g_loss = None
    gradient_check.check_backward(
        lambda v: margin_kernel.margin_loss(v, t), (v,), (g_loss, g_lengths),
        dtype=numpy.float64, atol=1e-6, rtol=1e-5)


def test_double_backprop_is_refused():
    v, t = capsules(B=2)
    x = chainer.Variable(v)
    loss, _ = margin_kernel.margin_loss(x, t)
    gv, = chainer.grad([loss], [x], enable_double_backprop=True)
    with pytest.raises(NotImplementedError, match='double backpropagation'):
        chainer.grad([chainer.functions.sum(gv)], [x])


# The CUDA kernels, rewritten in NumPy: thread b's (forward) or i's (backward) loops


def forward_twin(v, t, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    B, J, D = v.shape
    flat, offset, (sb, sj, sd) = buffer_view(v)
    b = numpy.arange(B)
    lengths = numpy.empty((B, J), v.dtype)
    total = numpy.zeros(B, v.dtype)
    for j in range(J):
        x = flat[(offset + b * sb + j * sj)[:, None] + numpy.arange(D) * sd]
        q = numpy.zeros(B, v.dtype)
        for d in range(D):
            q += x[:, d] * x[:, d]
        length = numpy.sqrt(q + v.dtype.type(functions.EPS))
        lengths[:, j] = length
        r_plus = numpy.maximum(v.dtype.type(m_plus) - length, 0)
        r_minus = numpy.maximum(length - v.dtype.type(m_minus), 0)
        total += numpy.where(t == j, r_plus * r_plus,
                             v.dtype.type(lambda_) * (r_minus * r_minus))
    return total.sum() / v.dtype.type(B), lengths


def backward_twin(v, t, lengths, g_loss, g_lengths, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    B, J, D = v.shape
    flat, offset, (sb, sj, sd) = buffer_view(v)
    i = numpy.arange(B * J)
    b, j = i // J, i % J
    length = lengths.reshape(-1)
    r_plus = v.dtype.type(m_plus) - length
    r_minus = length - v.dtype.type(m_minus)
    g = numpy.where(j == t[b], numpy.where(r_plus > 0, -2 * r_plus, 0),
                    numpy.where(r_minus > 0, v.dtype.type(lambda_) * (2 * r_minus), 0))
    g = g * (g_loss * (v.dtype.type(1) / v.dtype.type(B))) + g_lengths.reshape(-1)
    x = flat[(offset + b * sb + j * sj)[:, None] + numpy.arange(D) * sd]
    return (x * (g / length)[:, None]).reshape(B, J, D)


@pytest.mark.parametrize('transposed', [False, True])
def test_the_kernels_arithmetic_is_the_nodes(transposed):
    v, t = capsules(transposed=transposed, seed=3)
    loss, lengths = margin_kernel.margin_loss(v, t)
    got_loss, got_lengths = forward_twin(v, t)
    numpy.testing.assert_allclose(got_loss, loss.array, rtol=1e-6)
    numpy.testing.assert_allclose(got_lengths, lengths.array, rtol=1e-6)
    g_loss = numpy.float32(1.7)
    g_lengths = numpy.random.RandomState(4).uniform(-1, 1, lengths.shape).astype('f')
    want, = margin_kernel.MarginLossGrad(t, (0.9, 0.1, 0.5)).forward(
        (v, lengths.array, numpy.asarray(g_loss), g_lengths))
    numpy.testing.assert_allclose(backward_twin(v, t, lengths.array, g_loss, g_lengths),
                                  want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('which', ['forward', 'backward'])
@pytest.mark.parametrize('dtype', sorted(C_TYPES, key=str))
def test_the_kernels_compile_for_hopper(tmp_path, which, dtype):
    source, name = margin_kernel.kernel_source(which, dtype)
    assert name in source and '{T}' not in source
    nvcc_compile(source, tmp_path)


def test_the_cpu_model_keeps_the_plain_equations(monkeypatch):
    monkeypatch.setattr(margin_kernel, 'ENABLED', True)

    def refuse(*args, **kwargs):
        raise AssertionError('the margin-loss node was used on the CPU')
    monkeypatch.setattr(margin_kernel, 'margin_loss', refuse)
    numpy.random.seed(0)
    model = CapsNet(in_shape=(1, 17, 17), n_class=3, reconstruct=True)
    x = numpy.random.rand(2, 1, 17, 17).astype(numpy.float32)
    model(x, numpy.array([0, 2], numpy.int32)).backward()


# On a GPU


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
@pytest.mark.parametrize('transposed', [False, True])
def test_the_kernels_on_gpu_equal_the_numpy_node(cupy, dtype, transposed):
    v, t = capsules(B=300, dtype=dtype, transposed=transposed, seed=5)
    gl = numpy.random.RandomState(6).uniform(-1, 1, (300, 10)).astype(dtype)
    out = []
    for xp_v, xp_t, xp_gl in ((v, t, gl), (cupy.asarray(v), cupy.asarray(t), cupy.asarray(gl))):
        if xp_v is not v and transposed:  # the same strides on the GPU
            xp_v = cupy.ascontiguousarray(xp_v.transpose((1, 0, 2))).transpose((1, 0, 2))
        x = chainer.Variable(xp_v)
        loss, lengths = margin_kernel.margin_loss(x, xp_t)
        (loss * 1.3 + chainer.functions.sum(lengths * xp_gl)).backward()
        out.append([to_cpu(a) for a in (loss.array, lengths.array, x.grad)])
    for want, got in zip(*out):
        numpy.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
def test_gradient_check_on_gpu(cupy):
    v, t = capsules(B=3, J=4, D=5, dtype=numpy.float64, seed=7, low=0.2)
    gl = numpy.random.RandomState(8).uniform(-1, 1, (3, 4))
    gradient_check.check_backward(
        lambda v: margin_kernel.margin_loss(v, cupy.asarray(t)), (cupy.asarray(v),),
        (cupy.asarray(1.5), cupy.asarray(gl)), dtype=numpy.float64, atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
def test_the_model_on_gpu_is_the_same_with_the_node(cupy, monkeypatch):
    numpy.random.seed(9)
    model = CapsNet(reconstruct=True)
    model.to_device('@cupy:0')
    x = cupy.asarray(numpy.random.rand(8, 1, 28, 28).astype(numpy.float32))
    t = cupy.asarray(numpy.arange(8, dtype=numpy.int32))
    runs = []
    for enabled in (False, True):
        monkeypatch.setattr(margin_kernel, 'ENABLED', enabled)
        model.cleargrads()
        loss = model(x, t)
        loss.backward()
        runs.append([to_cpu(loss.array)] + [to_cpu(p.grad) for p in model.params()])
    for want, got in zip(*runs):
        numpy.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


testing.run_module(__name__, __file__)
