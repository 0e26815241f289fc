"""What the kernels share: a gradient node that refuses double backpropagation, the bias
folded into the maps, the type checks of ``(u, W[, b])``, and the CUDA kernels' source,
strides and launch."""

import chainer
import numpy
import pytest
from chainer import function_node
from chainer import gradient_check
from chainer import testing
from chainer.utils import type_check

from capsnet_chainer.kernels import base


class _TwiceGrad(base.NoDoubleBackprop):
    def forward(self, inputs):
        return 2 * inputs[0],


class _Twice(function_node.FunctionNode):
    """``y = 2 x``, whose backward is a :class:`NoDoubleBackprop` node."""

    def forward(self, inputs):
        return 2 * inputs[0],

    def backward(self, indexes, grad_outputs):
        return _TwiceGrad().apply(grad_outputs)


def test_no_double_backprop_gives_first_order_gradients_only():
    x = chainer.Variable(numpy.array([1.0, -2.0]))
    gradient_check.check_backward(lambda x: _Twice().apply((x,))[0], x.array,
                                  numpy.array([0.5, 3.0]), dtype=numpy.float64)
    y, = _Twice().apply((x,))
    gx, = chainer.grad([chainer.functions.sum(y * y)], [x], enable_double_backprop=True)
    numpy.testing.assert_allclose(gx.array, 8 * x.array)
    with pytest.raises(NotImplementedError,
                       match='^_TwiceGrad does not support double backpropagation$'):
        chainer.grad([chainer.functions.sum(gx)], [x])


def test_with_bias_folds_the_bias_into_the_maps():
    rng = numpy.random.RandomState(0)
    B, M, P, F = 3, 4, 5, 6
    u = rng.randn(B, M, P)
    W = rng.randn(M, P, F)
    b = rng.randn(M, F)
    u_e, W_e = base.with_bias(u, W, b)
    assert u_e.shape == (B, M, P + 1) and W_e.shape == (M, P + 1, F)
    numpy.testing.assert_array_equal(u_e[..., :P], u)
    assert (u_e[..., P] == 1).all()
    numpy.testing.assert_array_equal(W_e[:, :P], W)
    numpy.testing.assert_array_equal(W_e[:, P], b)
    for n in range(B):
        for m in range(M):  # u W + b = u_e W_e, map by map
            numpy.testing.assert_allclose(u_e[n, m] @ W_e[m], u[n, m] @ W[m] + b[m],
                                          rtol=1e-12)
    assert u_e.dtype == u.dtype and W_e.dtype == W.dtype


def test_with_bias_without_a_bias_is_the_inputs_themselves():
    u, W = numpy.zeros((2, 3, 4)), numpy.zeros((3, 4, 5))
    u_e, W_e = base.with_bias(u, W, None)
    assert u_e is u and W_e is W


class _Maps(function_node.FunctionNode):
    """A node that only type-checks its inputs as maps."""

    def __init__(self, u_ndim, n_cell=1):
        self.u_ndim = u_ndim
        self.n_cell = n_cell

    def check_type_forward(self, in_types):
        base.check_map_inputs(in_types, self.u_ndim, self.n_cell)

    def forward(self, inputs):
        return inputs[0],


def maps(B=2, M=3, P=4, F=6):
    """``u`` ``(B, M, P)``, ``W`` ``(M, P, F)`` and ``b`` ``(M, F)``, float32."""
    return (numpy.zeros((B, M, P), numpy.float32), numpy.zeros((M, P, F), numpy.float32),
            numpy.zeros((M, F), numpy.float32))


def test_check_map_inputs_accepts_maps_that_fit():
    u, W, b = maps()
    _Maps(3).apply((u, W))
    _Maps(3).apply((u, W, b))
    _Maps(3, n_cell=5).apply((numpy.zeros((2, 15, 4), numpy.float32), W, b))  # shared
    _Maps(4).apply((numpy.zeros((2, 3, 5, 4), numpy.float32), W, b))  # (B, T, N, P)


@pytest.mark.parametrize('change', [
    pytest.param(lambda u, W, b: (u.astype(numpy.int32), W, b), id='int'),
    pytest.param(lambda u, W, b: (u, W.astype(numpy.float64), b), id='dtype'),
    pytest.param(lambda u, W, b: (u[0], W, b), id='rank'),  # u of another rank
    pytest.param(lambda u, W, b: (u[:, :2], W, b), id='capsules'),
    pytest.param(lambda u, W, b: (u[..., :3], W, b), id='dims'),
    pytest.param(lambda u, W, b: (u, W[None], b), id='W-rank'),
    pytest.param(lambda u, W, b: (u, W, b[:, :5]), id='b-outputs'),
    pytest.param(lambda u, W, b: (u, W, b[:2]), id='b-maps'),
    pytest.param(lambda u, W, b: (u, W, b.astype(numpy.float64)), id='b-dtype'),
    pytest.param(lambda u, W, b: (u, W, b, b), id='four'),
    pytest.param(lambda u, W, b: (u,), id='one'),
])
def test_check_map_inputs_refuses_what_does_not_fit(change):
    inputs = change(*maps())
    with pytest.raises(type_check.InvalidType):
        _Maps(3).apply(inputs)


def test_cuda_source_names_the_kernel_after_its_type():
    template = 'extern "C" __global__ void k_{T}({T}* x) { x[0] = ({T})1; }'
    source, name = base.cuda_source(template, 'k', numpy.float32)
    assert name == 'k_float' and source == (
        'extern "C" __global__ void k_float(float* x) { x[0] = (float)1; }')
    assert base.cuda_source(template, 'k', numpy.float64)[1] == 'k_double'
    with pytest.raises(KeyError):
        base.cuda_source(template, 'k', numpy.float16)


def test_cuda_takes_no_numpy_arrays_and_launches_nothing_for_no_units(monkeypatch):
    a = numpy.zeros((2, 3), numpy.float32)
    assert not base.on_cuda(True, a) and not base.on_cuda(False, a)
    assert base.element_strides(a.T) == (1, 3)
    assert base.element_strides(numpy.zeros((4, 5), numpy.float64)[:, ::2]) == (5, 2)
    monkeypatch.setattr(base.cuda, 'raw', lambda *args: pytest.fail('launched'))
    base.launch('source', 'name', 0, ())  # nothing to do: no kernel built or run


testing.run_module(__name__, __file__)
