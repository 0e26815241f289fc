import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer import functions
from conftest import random_pairs
from conftest import two_digit_margin_loss_ref
from conftest import two_digit_recon_loss_ref


def squash_ref(s):
    """SPEC's squash, v = s |s| / (1 + |s|^2), in NumPy."""
    norm = numpy.sqrt((s * s).sum(axis=-1, keepdims=True))
    return s * norm / (1 + norm ** 2)


def softmax_ref(b, axis):
    e = numpy.exp(b - b.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def leaky_softmax_ref(b, axis):
    """The official code's leaky routing: a zero logit joins, its share is dropped."""
    leak = numpy.zeros_like(numpy.take(b, [0], axis=axis))
    return numpy.delete(softmax_ref(numpy.concatenate((leak, b), axis=axis), axis), 0,
                        axis=axis)


def procedure_1_numpy(u_hat, n_iteration, none_of_the_above=False):
    """Procedure 1 of the paper in NumPy, one example, digit and capsule at a time:
    the independent check of :func:`functions.routing`. Returns ``(v, c)``."""
    B, J, I, D = u_hat.shape
    b = numpy.zeros((B, J, I))
    for r in range(n_iteration):
        c = (leaky_softmax_ref if none_of_the_above else softmax_ref)(b, axis=1)
        v = numpy.zeros((B, J, D))
        for n in range(B):
            for j in range(J):
                s = sum(c[n, j, i] * u_hat[n, j, i] for i in range(I))
                v[n, j] = squash_ref(s)
        if r < n_iteration - 1:
            for n in range(B):
                for j in range(J):
                    for i in range(I):
                        b[n, j, i] += u_hat[n, j, i] @ v[n, j]
    return v, c


def margin_loss_ref(lengths, t):
    total = 0.0
    for n in range(lengths.shape[0]):
        for k in range(lengths.shape[1]):
            if k == t[n]:
                total += max(0.0, 0.9 - lengths[n, k]) ** 2
            else:
                total += 0.5 * max(0.0, lengths[n, k] - 0.1) ** 2
    return total / lengths.shape[0]


@pytest.mark.parametrize('shape', [(5, 16), (2, 10, 16), (3, 4, 8)])
def test_squash_forward(shape):
    s = numpy.random.randn(*shape).astype(numpy.float32)
    v = functions.squash(s).array
    numpy.testing.assert_allclose(v, squash_ref(s), rtol=1e-5, atol=1e-6)
    assert (numpy.linalg.norm(v, axis=-1) < 1).all()


def test_squash_backward():
    s = numpy.random.randn(3, 4, 16)
    gy = numpy.random.randn(3, 4, 16)
    gradient_check.check_backward(functions.squash, s, gy, dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)


def test_squash_double_backward():
    s = numpy.random.randn(3, 8)
    gy = numpy.random.randn(3, 8)
    ggs = numpy.random.randn(3, 8)
    gradient_check.check_double_backward(functions.squash, s, gy, ggs,
                                         dtype=numpy.float64, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_squash_and_length_finite_at_zero(dtype):
    s = chainer.Variable(numpy.zeros((2, 3, 16), dtype=dtype))
    v = functions.squash(s)
    length = functions.capsule_length(v)
    F.sum(length).backward()
    assert numpy.isfinite(v.array).all() and (v.array == 0).all()
    assert numpy.isfinite(length.array).all()
    assert numpy.isfinite(s.grad).all()


def test_capsule_length_backward():
    v = numpy.random.randn(4, 10, 16)
    gy = numpy.random.randn(4, 10)
    gradient_check.check_backward(functions.capsule_length, v, gy, dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('n_iteration', [1, 2, 3])
def test_routing_forward_equals_procedure_1(n_iteration):
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    v = functions.routing(u_hat, n_iteration).array
    v_ref, _ = procedure_1_numpy(u_hat, n_iteration)
    numpy.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('n_iteration', [1, 2, 3])
def test_routing_with_none_of_the_above_equals_procedure_1_with_a_leak(n_iteration):
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    v = functions.routing(u_hat, n_iteration, none_of_the_above=True).array
    v_ref, _ = procedure_1_numpy(u_hat, n_iteration, none_of_the_above=True)
    numpy.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-7)
    # the couplings of each primary capsule to the classes sum to less than 1
    steps = functions.routing_iterations(u_hat, n_iteration, none_of_the_above=True)
    c = [c.array for c, _ in steps]
    assert (c[-1].sum(axis=1) < 1).all() and c[0].sum(axis=1) == pytest.approx(3 / 4)


def test_coupling_without_the_extra_category_is_the_softmax():
    b = numpy.random.randn(2, 5, 7).astype(numpy.float32)
    numpy.testing.assert_array_equal(functions.coupling(b).array,
                                     F.softmax(b, axis=1).array)
    numpy.testing.assert_allclose(functions.coupling(b, True).array,
                                  leaky_softmax_ref(b, 1), rtol=1e-6)


@pytest.mark.parametrize('n_iteration', [1, 3])
def test_routing_with_none_of_the_above_passes_gradient_check(n_iteration):
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    gy = numpy.random.randn(2, 3, 4)

    def f(u):
        return functions.routing(u, n_iteration, none_of_the_above=True)
    gradient_check.check_backward(f, u_hat, gy, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def test_shared_routing_with_none_of_the_above_passes_gradient_check():
    u, W, b = (numpy.random.randn(2, 2, 3, 3), numpy.random.randn(2, 3, 12) * 0.5,
               numpy.random.randn(2, 12) * 0.5)

    def f(u, W, b):
        return functions.shared_routing(u, W, b, 3, none_of_the_above=True)
    gradient_check.check_backward(f, (u, W, b), numpy.random.randn(2, 3, 4),
                                  dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def standardization_ref(x):
    """TensorFlow's per_image_standardization, image by image."""
    out = numpy.empty_like(x)
    for n, image in enumerate(x):
        out[n] = (image - image.mean()) / max(image.std(), 1 / numpy.sqrt(image.size))
    return out


def test_per_image_standardization_forward():
    x = numpy.random.rand(4, 3, 5, 6)
    x[1] = 0.25  # a flat image: divided by 1 / sqrt(C * H * W), not by 0
    y = functions.per_image_standardization(x).array
    numpy.testing.assert_allclose(y, standardization_ref(x), rtol=1e-10, atol=1e-12)
    assert (y[1] == 0).all()
    numpy.testing.assert_allclose(y[0].mean(), 0, atol=1e-12)
    numpy.testing.assert_allclose(y[0].std(), 1, rtol=1e-10)


def test_per_image_standardization_backward():
    x = numpy.random.rand(3, 2, 4, 5)
    gradient_check.check_backward(functions.per_image_standardization, x,
                                  numpy.random.randn(*x.shape), dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)
    flat = chainer.Variable(numpy.full((1, 1, 4, 4), 0.5))
    F.sum(functions.per_image_standardization(flat) * numpy.arange(16.).reshape(
        flat.shape)).backward()
    assert numpy.isfinite(flat.grad).all()


@pytest.mark.parametrize('n_iteration', [1, 2, 3])
def test_routing_passes_gradient_check(n_iteration):
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    gy = numpy.random.randn(2, 3, 4)

    def f(u):
        return functions.routing(u, n_iteration)
    gradient_check.check_backward(f, u_hat, gy, dtype=numpy.float64, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('n_iteration', [2, 3])
def test_routing_gradient_through_last_iteration_only(n_iteration):
    """With coefficients treated as constants the gradient is that of
    ``squash(sum_i c_ij u_hat[j|i])`` for the final, fixed ``c``."""
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    gy = numpy.random.randn(2, 3, 4)
    u = chainer.Variable(u_hat.copy())
    v = functions.routing(u, n_iteration, grad_all_iterations=False)
    v.grad = gy
    v.backward()
    v_ref, c = procedure_1_numpy(u_hat, n_iteration)
    numpy.testing.assert_allclose(v.array, v_ref, rtol=1e-6, atol=1e-7)

    def last_sum(x):
        s = F.sum(F.broadcast_to(c[..., None], x.shape) * x, axis=2)
        return functions.squash(s)
    gradient_check.check_backward(last_sum, u_hat, gy, dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)
    u_fixed = chainer.Variable(u_hat.copy())
    y = last_sum(u_fixed)
    y.grad = gy
    y.backward()
    numpy.testing.assert_allclose(u.grad, u_fixed.grad, rtol=1e-6, atol=1e-8)
    # ...which differs from the full gradient, so the switch does something.
    u_all = chainer.Variable(u_hat.copy())
    v_all = functions.routing(u_all, n_iteration)
    v_all.grad = gy
    v_all.backward()
    assert not numpy.allclose(u_all.grad, u.grad, rtol=1e-3)


def test_routing_rejects_zero_iterations():
    with pytest.raises(ValueError, match='n_iteration'):
        functions.routing(numpy.zeros((1, 2, 3, 4), numpy.float32), 0)


def test_routing_passes_double_backward_check():
    u_hat = numpy.random.randn(2, 3, 4, 3) * 0.5
    gv = numpy.random.randn(2, 3, 3)
    ggu = numpy.random.randn(*u_hat.shape)

    def f(u):
        return functions.routing(u, 3)
    gradient_check.check_double_backward(f, u_hat, gv, ggu, dtype=numpy.float64,
                                         atol=1e-4, rtol=1e-3)


def test_routing_with_constant_coefficients_has_the_second_derivative_of_the_last_sum():
    """With ``grad_all_iterations=False`` double backpropagation goes through
    ``squash(sum_i c_ij u_hat[j|i])`` for the final, fixed ``c``, like the first."""
    u_hat = numpy.random.randn(2, 3, 4, 3) * 0.5
    gv = numpy.random.randn(2, 3, 3)
    _, c = procedure_1_numpy(u_hat, 3)
    second = []
    for fn in (lambda u: functions.routing(u, 3, grad_all_iterations=False),
               lambda u: functions.squash(F.sum(F.broadcast_to(c[..., None], u.shape) * u,
                                                axis=2))):
        u = chainer.Variable(u_hat.copy())
        gu, = chainer.grad([F.sum(fn(u) * gv)], [u], enable_double_backprop=True)
        ggu, = chainer.grad([F.sum(gu * gu)], [u])
        second.append(ggu.array)
    numpy.testing.assert_allclose(second[0], second[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('n_cell, bias', [(3, True), (3, False), (1, False)])
def test_prediction_vectors_are_each_capsules_map_applied(n_cell, bias):
    """``u_hat[b, j, i, d] = (u[b, i] W[i // n_cell] + b[i // n_cell])[j * D + d]``."""
    B, I, P, J, D = 2, 6, 3, 4, 5
    u = numpy.random.randn(B, I, P)
    W = numpy.random.randn(I // n_cell, P, J * D)
    b = numpy.random.randn(I // n_cell, J * D) if bias else None
    u_hat = functions.prediction_vectors(u, W, b, J, n_cell).array
    assert u_hat.shape == (B, J, I, D)
    for n in range(B):
        for i in range(I):
            row = u[n, i] @ W[i // n_cell] + (b[i // n_cell] if bias else 0)
            numpy.testing.assert_allclose(u_hat[n, :, i], row.reshape((J, D)), rtol=1e-12)


def test_prediction_vectors_reject_maps_that_do_not_fit():
    with pytest.raises(ValueError, match='does not fit'):
        functions.prediction_vectors(numpy.zeros((1, 6, 3)), numpy.zeros((4, 3, 20)),
                                     None, 4, 2)


@pytest.mark.parametrize('bias', [True, False])
def test_shared_routing_passes_double_backward_check(bias):
    u = numpy.random.randn(2, 2, 3, 3)
    W = numpy.random.randn(2, 3, 3 * 4) * 0.5
    b = numpy.random.randn(2, 3 * 4) * 0.5
    inputs = (u, W, b) if bias else (u, W)
    gv = numpy.random.randn(2, 3, 4)
    ggs = tuple(numpy.random.randn(*a.shape) for a in inputs)

    def f(*args):
        return functions.shared_routing(*(args if bias else args + (None,)), n_class=3)
    gradient_check.check_double_backward(f, inputs, gv, ggs, dtype=numpy.float64,
                                         atol=1e-4, rtol=1e-3)


def test_margin_loss_forward():
    lengths = numpy.random.rand(6, 10).astype(numpy.float32)
    t = numpy.random.randint(0, 10, 6).astype(numpy.int32)
    loss = functions.margin_loss(lengths, t).array
    assert loss.shape == ()
    numpy.testing.assert_allclose(loss, margin_loss_ref(lengths, t), rtol=1e-5)


def test_margin_loss_backward():
    # Keep lengths away from the hinges at 0.1 and 0.9, where the loss has kinks.
    lengths = numpy.random.choice([0.05, 0.3, 0.5, 0.7, 0.95], size=(4, 10))
    lengths += numpy.random.uniform(-0.02, 0.02, size=lengths.shape)
    t = numpy.random.randint(0, 10, 4).astype(numpy.int32)

    def f(x):
        return functions.margin_loss(x, t)
    gradient_check.check_backward(f, lengths, numpy.array(1.0), dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)


def test_reconstruction_loss_forward_and_backward():
    x_rec = numpy.random.rand(3, 1, 28, 28)
    x = numpy.random.rand(3, 1, 28, 28)
    expected = sum(((x_rec[n] - x[n]) ** 2).sum() for n in range(3)) / 3
    numpy.testing.assert_allclose(
        functions.reconstruction_loss(x_rec, x).array, expected, rtol=1e-12)

    def f(y):
        return functions.reconstruction_loss(y, x)
    gradient_check.check_backward(f, x_rec, numpy.array(1.0), dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)


def test_mask_keeps_one_capsule():
    v = numpy.random.randn(4, 10, 16).astype(numpy.float32)
    labels = numpy.array([0, 3, 9, 3], numpy.int32)
    masked = functions.mask(v, labels).array
    for n, j in enumerate(labels):
        numpy.testing.assert_array_equal(masked[n, j], v[n, j])
        others = numpy.delete(masked[n], j, axis=0)
        assert (others == 0).all()


# Two digits per image (MultiMNIST, Sec. 6 of the paper)


def test_two_digit_margin_loss_against_loops():
    rng = numpy.random.RandomState(3)
    lengths = rng.uniform(0, 1, size=(8, 10)).astype(numpy.float32)
    labels2 = random_pairs(8)
    loss = functions.two_digit_margin_loss(lengths, labels2)
    assert loss.shape == ()
    numpy.testing.assert_allclose(loss.array, two_digit_margin_loss_ref(lengths, labels2),
                                  rtol=1e-5)
    # Hand-made: both present classes at 0.9 and the others at 0.1 cost nothing.
    perfect = numpy.full((1, 10), 0.1, numpy.float32)
    perfect[0, [2, 7]] = 0.9
    assert functions.two_digit_margin_loss(perfect, numpy.array([[7, 2]])).array == 0
    # Swapping the two labels changes nothing.
    numpy.testing.assert_allclose(
        functions.two_digit_margin_loss(lengths, labels2[:, ::-1].copy()).array,
        loss.array, rtol=1e-6)


def test_two_digit_margin_loss_with_equal_labels_counts_the_class_once():
    lengths = numpy.random.RandomState(7).uniform(size=(3, 10)).astype(numpy.float32)
    t = numpy.array([3, 0, 9], numpy.int32)
    numpy.testing.assert_allclose(
        functions.two_digit_margin_loss(lengths, numpy.stack([t, t], axis=1)).array,
        functions.margin_loss(lengths, t).array, rtol=1e-6)


def test_two_digit_margin_loss_backward():
    rng = numpy.random.RandomState(4)
    lengths = rng.uniform(0, 1, size=(5, 10))
    lengths[abs(lengths - 0.9) < 0.02] = 0.5  # away from the kinks
    lengths[abs(lengths - 0.1) < 0.02] = 0.5
    labels2 = random_pairs(5, seed=1)
    gradient_check.check_backward(
        lambda x: functions.two_digit_margin_loss(x, labels2), lengths,
        numpy.array(rng.randn()), dtype=numpy.float64)
    gradient_check.check_double_backward(
        lambda x: functions.two_digit_margin_loss(x, labels2), lengths,
        numpy.array(rng.randn()), rng.randn(5, 10), dtype=numpy.float64)


def test_two_digit_reconstruction_loss_against_loops():
    rng = numpy.random.RandomState(5)
    x_rec = rng.uniform(size=(3, 2, 1, 6, 6)).astype(numpy.float32)
    digits = rng.uniform(size=(3, 2, 1, 6, 6)).astype(numpy.float32)
    loss = functions.two_digit_reconstruction_loss(x_rec, digits)
    numpy.testing.assert_allclose(loss.array, two_digit_recon_loss_ref(x_rec, digits), rtol=1e-5)
    gradient_check.check_backward(
        lambda r: functions.two_digit_reconstruction_loss(r, digits.astype(numpy.float64)),
        x_rec.astype(numpy.float64), numpy.array(rng.randn()), dtype=numpy.float64)


def test_top_two_matches_a_stable_sort_and_breaks_ties_low():
    rng = numpy.random.RandomState(1)
    scores = rng.randint(0, 4, (500, 10)).astype(numpy.float32)  # many ties
    expected = numpy.argsort(-scores, axis=1, kind='stable')[:, :2]
    numpy.testing.assert_array_equal(functions.top_two(scores), expected)


def test_top_two_is_the_highest_then_the_second_highest():
    scores = numpy.array([[.1, .9, .3, .8], [.7, .2, .7, .1], [0, 0, 0, 0]], numpy.float32)
    assert functions.top_two(scores).tolist() == [[1, 3], [0, 2], [0, 1]]
    assert functions.top_two(scores).shape == (3, 2)
    assert scores[1, 0] == .7 and scores[1, 2] == .7  # the input is not changed


def test_pair_hits_say_which_labels_are_among_the_top_two():
    scores = numpy.array([[.9, .8, .1, 0],   # top {0, 1}
                          [.9, .1, .8, 0],   # top {0, 2}
                          [.1, .2, .3, .4]])  # top {3, 2}
    labels2 = numpy.array([[1, 0], [0, 1], [0, 1]])
    hits = functions.pair_hits(scores, labels2)
    assert hits.dtype == bool and hits.shape == (3, 2)
    assert hits.tolist() == [[True, True], [True, False], [False, False]]
    # The order of the two labels does not matter
    assert functions.pair_hits(scores, labels2[:, ::-1]).tolist() == [
        [True, True], [False, True], [False, False]]


@pytest.mark.gpu
def test_two_digit_losses_on_gpu_match_cpu():
    cupy = pytest.importorskip('cupy')
    rng = numpy.random.RandomState(8)
    lengths = rng.uniform(size=(6, 10)).astype(numpy.float32)
    labels2 = random_pairs(6, seed=3)
    numpy.testing.assert_allclose(
        cupy.asnumpy(functions.two_digit_margin_loss(cupy.asarray(lengths),
                                                     cupy.asarray(labels2)).array),
        functions.two_digit_margin_loss(lengths, labels2).array, rtol=1e-5)
    x_rec, digits = rng.uniform(size=(2, 6, 2, 1, 4, 4)).astype(numpy.float32)
    numpy.testing.assert_allclose(
        cupy.asnumpy(functions.two_digit_reconstruction_loss(
            cupy.asarray(x_rec), cupy.asarray(digits)).array),
        functions.two_digit_reconstruction_loss(x_rec, digits).array, rtol=1e-5)
    hits = functions.pair_hits(cupy.asarray(lengths), cupy.asarray(labels2))
    assert isinstance(hits, cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(hits), functions.pair_hits(lengths, labels2))


testing.run_module(__name__, __file__)


def test_routing_iterations_yield_each_iteration_of_routing():
    u_hat = numpy.random.RandomState(3).randn(2, 4, 6, 5)  # (B, J, I, D)
    steps = list(functions.routing_iterations(u_hat, n_iteration=3))
    assert len(steps) == 3
    for c, v in steps:
        assert c.shape == (2, 4, 6) and v.shape == (2, 4, 5)
        numpy.testing.assert_allclose(c.array.sum(axis=1), 1, rtol=1e-12)  # over digits
    numpy.testing.assert_allclose(steps[0][0].array, 1 / 4, rtol=1e-12)  # b starts at 0
    assert not numpy.allclose(steps[1][0].array, 1 / 4)  # the agreement moved them
    numpy.testing.assert_array_equal(steps[-1][1].array,
                                     functions.routing(u_hat, n_iteration=3).array)
    with pytest.raises(ValueError):
        list(functions.routing_iterations(u_hat, n_iteration=0))
