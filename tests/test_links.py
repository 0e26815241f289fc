import chainer
import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer import links


def test_primary_capsules_run_across_filters():
    """Capsule k at cell (y, x) is conv channels 8k..8k+7 at (y, x)."""
    link = links.PrimaryCapsules(in_channels=3, n_type=4, dim=8, ksize=3, stride=2)
    h = numpy.random.randn(2, 3, 9, 9).astype(numpy.float32)
    u = link(h).array
    conv = link.conv(h).array  # (2, 32, 4, 4)
    assert u.shape == (2, 4 * 16, 8)
    for k in range(4):
        for y in range(4):
            for x in range(4):
                numpy.testing.assert_array_equal(
                    u[:, k * 16 + y * 4 + x], conv[:, 8 * k:8 * k + 8, y, x])


@pytest.mark.parametrize('kwargs', [{'stride': 2}, {'stride': 1}, {'pad': 1},
                                    {'nobias': True}])
def test_convolution_link_matches_chainer(kwargs):
    """Same parameters, names and results as L.Convolution2D (padded: its own code)."""
    link = links.Convolution2D(3, 8, 3, **kwargs)
    ref = chainer.links.Convolution2D(3, 8, 3, **kwargs)
    ref.copyparams(link)
    assert [name for name, _ in link.namedparams()] == \
        [name for name, _ in ref.namedparams()]
    x = numpy.random.randn(2, 3, 9, 9)
    link.to_cpu()
    for p in list(link.params()) + list(ref.params()):
        p.array = p.array.astype(numpy.float64)
    y = link(x)
    numpy.testing.assert_allclose(y.array, ref(x).array, rtol=1e-12, atol=1e-12)
    params = [link.W] + ([] if kwargs.get('nobias') else [link.b])
    gradient_check.check_backward(link, x, numpy.random.randn(*y.shape), params,
                                  dtype=numpy.float64, atol=1e-5, rtol=1e-4)


def test_convolution_link_channels_last_with_activation():
    link = links.Convolution2D(2, 4, 3)
    x = numpy.random.randn(3, 2, 7, 7).astype(numpy.float32)
    want = chainer.functions.leaky_relu(chainer.links.Convolution2D.forward(link, x), 0.1)
    got = link.forward_nhwc(x.transpose((0, 2, 3, 1)), slope=0.1)
    numpy.testing.assert_allclose(got.array, want.array.transpose((0, 2, 3, 1)),
                                  rtol=1e-5, atol=1e-6)


def test_primary_capsules_squash_option():
    link = links.PrimaryCapsules(in_channels=3, n_type=2, dim=8, ksize=3, squash=True)
    h = numpy.random.randn(2, 3, 7, 7).astype(numpy.float32) * 10
    assert (numpy.linalg.norm(link(h).array, axis=-1) < 1).all()


def u_hat_ref(link, u):
    """u_hat[n, j, i, d] = (W_map(i)^T u_i)[j * 16 + d] (+ bias), one capsule at a time."""
    B, I, _ = u.shape
    J, D = link.n_class, link.out_dim
    W = link.W.array
    out = numpy.zeros((B, J, I, D), numpy.float32)
    for i in range(I):
        k = i // link.n_cell if link.shared else i
        y = u[:, i] @ W[k]  # (B, J * D)
        if link.shared:
            y = y + link.b.array[k]
        out[:, :, i] = y.reshape((B, J, D))
    return out


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('shared', [True, False])
def test_digit_capsule_predictions_apply_each_capsules_map(shared, fast):
    link = links.DigitCapsules(n_type=3, n_cell=4, in_dim=8, n_class=5, out_dim=6,
                               shared=shared)
    link.fast = fast
    if shared:
        link.b.array[...] = numpy.random.randn(*link.b.shape)
    u = numpy.random.randn(2, 12, 8).astype(numpy.float32)
    u_hat = link.predict_vectors(u).array
    numpy.testing.assert_allclose(u_hat, u_hat_ref(link, u), rtol=1e-5, atol=1e-6)
    assert link(u).shape == (2, 5, 6)


@pytest.mark.parametrize('shared', [True, False])
def test_digit_capsule_shapes_and_init(shared):
    link = links.DigitCapsules(shared=shared)
    n_map = 32 if shared else 1152
    assert link.W.shape == (n_map, 8, 160)
    assert (numpy.abs(link.W.array) <= 0.05).all() and link.W.array.std() > 0.02
    if shared:
        assert link.b.shape == (32, 160) and (link.b.array == 0).all()
    else:
        assert not hasattr(link, 'b')


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('shared', [True, False])
def test_digit_capsules_pass_gradient_check(shared, fast):
    link = links.DigitCapsules(n_type=2, n_cell=3, in_dim=4, n_class=3, out_dim=5,
                               shared=shared, initialW=chainer.initializers.Normal(0.5))
    link.fast = fast
    link.to_cpu()
    u = numpy.random.randn(2, 6, 4)
    gy = numpy.random.randn(2, 3, 5)
    params = [link.W] + ([link.b] if shared else [])
    for p in params:
        p.array = p.array.astype(numpy.float64)
        p.array += numpy.random.uniform(-0.1, 0.1, p.shape)
    gradient_check.check_backward(link, u, gy, params, dtype=numpy.float64,
                                  atol=1e-5, rtol=1e-4)


def test_decoder_masks_and_shapes():
    dec = links.Decoder(in_size=160, out_shape=(1, 28, 28))
    v = numpy.random.randn(3, 10, 16).astype(numpy.float32)
    labels = numpy.array([1, 2, 3], numpy.int32)
    x = dec(v, labels).array
    assert x.shape == (3, 1, 28, 28) and ((x > 0) & (x < 1)).all()
    # Only the labelled capsule matters.
    v2 = v.copy()
    v2[0, 5] += 1
    numpy.testing.assert_array_equal(dec(v2, labels).array, x)
    v2[0, 1] += 1
    assert not numpy.allclose(dec(v2, labels).array[0], x[0])


def test_link_serialization_round_trip(tmp_path):
    link = links.DigitCapsules(n_type=2, n_cell=3, in_dim=4, n_class=3, out_dim=5)
    path = str(tmp_path / 'link.npz')
    chainer.serializers.save_npz(path, link)
    other = links.DigitCapsules(n_type=2, n_cell=3, in_dim=4, n_class=3, out_dim=5)
    chainer.serializers.load_npz(path, other)
    numpy.testing.assert_array_equal(other.W.array, link.W.array)


testing.run_module(__name__, __file__)
