"""The prediction-vector kernel against the library's plain equation (Eq. 2)."""

import numpy
import pytest
from chainer import gradient_check

from capsnet_chainer import functions
from capsnet_chainer.kernels import prediction as prediction_kernel
from conftest import assert_same_outputs_and_gradients


@pytest.fixture(autouse=True)
def seed():
    numpy.random.seed(0)


def shared_inputs(bias=True, B=3, T=4, N=5, P=3, J=6, D=4):
    u = numpy.random.randn(B, T, N, P)
    W = numpy.random.randn(T, P, J * D) * 0.5
    b = numpy.random.randn(T, J * D) * 0.5 if bias else None
    return u, W, b


@pytest.mark.parametrize('n_cell, bias', [(5, True), (5, False), (1, True), (1, False)])
def test_prediction_vectors_kernel_equals_plain_predictions(n_cell, bias):
    """Maps shared by ``n_cell`` consecutive capsules (1: a map per capsule)."""
    u, W, b = shared_inputs(bias, T=4 if n_cell > 1 else 20, N=n_cell)
    B, T, N, P = u.shape
    u_flat = u.reshape((B, T * N, P))
    gy = numpy.random.randn(B, 6, T * N, 4)
    assert_same_outputs_and_gradients(
        lambda *a: prediction_kernel.prediction_vectors(*a, n_class=6, n_cell=n_cell),
        lambda *a: functions.prediction_vectors(*a, n_class=6, n_cell=n_cell),
        (u_flat, W, b), gy)

    def f(*args):
        return prediction_kernel.prediction_vectors(*(args if bias else args + (None,)),
                                                    n_class=6, n_cell=n_cell)
    inputs = (u_flat, W, b) if bias else (u_flat, W)
    gradient_check.check_backward(f, inputs, gy, dtype=numpy.float64, atol=1e-5, rtol=1e-4)
