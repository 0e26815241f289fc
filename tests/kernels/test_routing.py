"""The routing kernels against the library's plain equations, the one oracle.

Every kernel of :mod:`capsnet_chainer.kernels.routing` must give the outputs and the
gradients of every input of its counterpart in :mod:`capsnet_chainer.functions`, for
every switch.
"""


import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer import functions
from capsnet_chainer.kernels import routing as routing_kernels
from conftest import assert_same_outputs_and_gradients


@pytest.fixture(autouse=True)
def seed():
    numpy.random.seed(0)


ROUTING_CASES = testing.product({'n_iteration': [1, 2, 3],
                                 'grad_all_iterations': [True, False],
                                 'none_of_the_above': [False, True]})


@pytest.mark.parametrize('case', ROUTING_CASES)
def test_routing_kernel_equals_plain_routing(case):
    u_hat = numpy.random.randn(3, 4, 6, 5)
    gv = numpy.random.randn(3, 4, 5)
    assert_same_outputs_and_gradients(
        lambda u: routing_kernels.routing(u, **case),
        lambda u: functions.routing(u, **case), (u_hat,), gv)


@pytest.mark.parametrize('none_of_the_above', [False, True])
@pytest.mark.parametrize('n_iteration', [1, 2, 3])
def test_routing_kernel_passes_gradient_check(n_iteration, none_of_the_above):
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    gv = numpy.random.randn(2, 3, 4)
    gradient_check.check_backward(
        lambda u: routing_kernels.routing(u, n_iteration,
                                          none_of_the_above=none_of_the_above),
        u_hat, gv, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def test_leaky_softmax_keeps_large_logits_finite():
    """The extra logit 0 joins the maximum that is subtracted before exp."""
    b = numpy.array([[[800.0], [-800.0]], [[-800.0], [-900.0]]])  # (B, J, 1)
    c = routing_kernels.softmax(b.copy(), 1, none_of_the_above=True)
    numpy.testing.assert_allclose(c[:, :, 0], [[1, 0], [0, 0]], atol=1e-300)
    numpy.testing.assert_allclose(routing_kernels._uniform(b, 1, True), 1 / 3)


def shared_inputs(bias=True, B=3, T=4, N=5, P=3, J=6, D=4):
    u = numpy.random.randn(B, T, N, P)
    W = numpy.random.randn(T, P, J * D) * 0.5
    b = numpy.random.randn(T, J * D) * 0.5 if bias else None
    return u, W, b


SHARED_CASES = testing.product({'n_iteration': [1, 2, 3],
                                'grad_all_iterations': [True, False],
                                'bias': [True, False],
                                'none_of_the_above': [False, True]})


@pytest.mark.parametrize('case', SHARED_CASES)
def test_shared_routing_kernel_equals_plain_shared_routing(case):
    u, W, b = shared_inputs(case['bias'])
    gv = numpy.random.randn(3, 6, 4)
    kw = {'n_iteration': case['n_iteration'],
          'grad_all_iterations': case['grad_all_iterations'],
          'none_of_the_above': case['none_of_the_above']}
    assert_same_outputs_and_gradients(
        lambda u, W, b: routing_kernels.shared_routing(u, W, b, 6, **kw),
        lambda u, W, b: functions.shared_routing(u, W, b, 6, **kw), (u, W, b), gv)


@pytest.mark.parametrize('none_of_the_above', [False, True])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('n_iteration', [1, 3])
def test_shared_routing_kernel_passes_gradient_check(n_iteration, bias, none_of_the_above):
    u, W, b = shared_inputs(bias, B=2, T=2, N=3, P=3, J=3, D=4)
    gv = numpy.random.randn(2, 3, 4)
    inputs = (u, W, b) if bias else (u, W)
    kw = {'n_iteration': n_iteration, 'none_of_the_above': none_of_the_above}

    def f(*args):
        return routing_kernels.shared_routing(*args, n_class=3, **kw) \
            if bias else routing_kernels.shared_routing(*args, None, 3, **kw)
    gradient_check.check_backward(f, inputs, gv, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def test_shared_routing_kernel_computes_only_requested_gradients():
    u, W, b = shared_inputs()
    uv = chainer.Variable(u, requires_grad=False)
    Wv, bv = chainer.Variable(W), chainer.Variable(b)
    v = routing_kernels.shared_routing(uv, Wv, bv, 6)
    F.sum(v).backward()
    assert uv.grad is None and Wv.grad is not None and bv.grad is not None


def test_shared_routing_kernel_rejects_bad_shapes():
    u, W, b = shared_inputs()
    with pytest.raises(ValueError, match='n_class'):
        routing_kernels.shared_routing(u, W, b, n_class=5)
    with pytest.raises(ValueError, match='n_iteration'):
        routing_kernels.shared_routing(u, W, b, 6, n_iteration=0)
    with pytest.raises(chainer.utils.type_check.InvalidType):
        routing_kernels.shared_routing(u[:, :2], W, b, 6)


@pytest.mark.parametrize('kernel', ['routing', 'shared_routing'])
def test_routing_kernels_double_backprop_raises(kernel):
    u, W, b = shared_inputs()
    uv = chainer.Variable(u)
    if kernel == 'routing':
        v = routing_kernels.routing(functions.prediction_vectors(
            F.reshape(uv, (3, 20, 3)), W, b, 6, 5))
    else:
        v = routing_kernels.shared_routing(uv, W, b, 6)
    gu, = chainer.grad([F.sum(v * v)], [uv], enable_double_backprop=True)
    with pytest.raises(NotImplementedError, match='double backpropagation'):
        chainer.grad([F.sum(gu)], [uv])


@pytest.mark.gpu
def test_routing_kernels_on_gpu_match_cpu():
    cupy = pytest.importorskip('cupy')
    u_hat = numpy.random.randn(2, 3, 5, 4)
    numpy.testing.assert_allclose(
        cupy.asnumpy(routing_kernels.routing(cupy.asarray(u_hat)).array),
        routing_kernels.routing(u_hat).array, rtol=1e-10)
    u, W, b = shared_inputs()
    numpy.testing.assert_allclose(
        cupy.asnumpy(routing_kernels.shared_routing(*map(cupy.asarray, (u, W, b)), 6).array),
        routing_kernels.shared_routing(u, W, b, 6).array, rtol=1e-10)
    # with the none-of-the-above category
    numpy.testing.assert_allclose(
        cupy.asnumpy(routing_kernels.routing(cupy.asarray(u_hat),
                                             none_of_the_above=True).array),
        routing_kernels.routing(u_hat, none_of_the_above=True).array, rtol=1e-10)
    numpy.testing.assert_allclose(
        cupy.asnumpy(routing_kernels.shared_routing(*map(cupy.asarray, (u, W, b)), 6,
                                                    none_of_the_above=True).array),
        routing_kernels.shared_routing(u, W, b, 6, none_of_the_above=True).array,
        rtol=1e-10)


testing.run_module(__name__, __file__)
