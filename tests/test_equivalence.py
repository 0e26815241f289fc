"""The model against a plain implementation of SPEC's equations.

:func:`plain_loss` computes the network the straightforward way, in
:mod:`chainer.functions` and with no kernel of ours: Chainer's convolution, capsule
type ``k`` at a grid cell as channels ``8k .. 8k+7``, one ``8 -> 160`` product per
primary capsule with its type's (or its own) matrix, the library's plain routing
(:func:`capsnet_chainer.functions.routing`, Procedure 1), the decoder; where the
network standardizes its input, the library's
:func:`~capsnet_chainer.functions.per_image_standardization` (checked against NumPy in
test_functions.py). The kernels
themselves are compared with the library's plain functions in kernels/test_routing.py
and kernels/test_prediction.py, and with Chainer's convolution in kernels/test_conv.py.
For every switch of :class:`CapsNet` the fast model's outputs, loss and the gradients
of every parameter and of the input must agree with it: to rounding in float64, and to
float32 precision in float32. Every test runs on the CPU and, under ``-m gpu``, on a
CuPy GPU: there the convolutions are Chainer's own unless
``Convolution2D.fast_on_gpu`` (both are tested).
"""

import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import testing
from chainer.backends.cuda import to_cpu

from capsnet_chainer import CapsNet
from capsnet_chainer import links
from capsnet_chainer.functions import EPS
from capsnet_chainer.functions import per_image_standardization
from capsnet_chainer.functions import routing
from capsnet_chainer.functions import squash
from capsnet_chainer.kernels import conv as conv_kernel
from conftest import get_device


def plain_capsules(model, x):
    """conv1, (leaky) ReLU, primary capsules, predictions and routing, from SPEC; the
    sizes of an adapted network (Sec. 7) from its configuration."""
    cfg = model.config
    T, P, D = (cfg.get('n_primary_type', 32), cfg.get('primary_dim', 8),
               cfg.get('capsule_dim', 16))
    if cfg.get('standardize'):
        x = per_image_standardization(x)
    h = F.convolution_2d(x, model.conv1.W, model.conv1.b)
    h = F.relu(h) if cfg['leaky_slope'] == 0 else F.leaky_relu(h, cfg['leaky_slope'])
    h = F.convolution_2d(h, model.primary.conv.W, model.primary.conv.b, stride=2)
    B, C, H, W = h.shape  # (B, 256, 6, 6)
    # Capsule k at cell (y, x) is channels 8k..8k+7 there; i = k * 36 + y * 6 + x.
    u = F.reshape(F.transpose(F.reshape(h, (B, T, P, H * W)), (0, 1, 3, 2)),
                  (B, T * H * W, P))
    if cfg['squash_primary']:
        u = squash(u)
    # u_hat[b, j, i, d] = (u_i W_map(i) + b_map(i))[j * 16 + d]: the map of capsule i
    # is its type's (shared, with a bias) or its own.
    I, J = u.shape[1], cfg['n_class']
    xp = chainer.backend.get_array_module(x)
    maps = xp.arange(I) // (H * W) if cfg['shared_weights'] else xp.arange(I)
    u_hat = F.matmul(F.transpose(u, (1, 0, 2)), model.digits.W[maps])  # (I, B, J * 16)
    if cfg['shared_weights']:
        u_hat = u_hat + F.broadcast_to(model.digits.b[maps][:, None, :], u_hat.shape)
    u_hat = F.transpose(F.reshape(u_hat, (I, B, J, D)), (1, 2, 0, 3))  # (B, J, I, 16)
    return routing(u_hat, cfg['n_iteration'], cfg['grad_all_iterations'],
                   cfg.get('none_of_the_above', False))


def plain_loss(model, x, t):
    """Margin loss (+ 0.0005 x summed squared reconstruction error), mean over the batch.
    Returns ``(loss, v)``."""
    cfg = model.config
    v = plain_capsules(model, x)
    B, J, D = v.shape
    xp = chainer.backend.get_array_module(v)
    lengths = F.sqrt(F.sum(v * v, axis=2) + EPS)
    present = xp.eye(J, dtype=v.dtype)[t]
    loss = F.sum(present * F.relu(0.9 - lengths) ** 2
                 + 0.5 * (1 - present) * F.relu(lengths - 0.1) ** 2) / B
    if cfg['reconstruct']:
        labels = t
        if not chainer.config.train and cfg['mask_test'] == 'prediction':
            labels = lengths.array.argmax(axis=1)
        keep = xp.eye(J, dtype=v.dtype)[labels]
        h = F.reshape(v * F.broadcast_to(keep[:, :, None], v.shape), (B, J * D))
        dec = model.decoder
        h = F.relu(F.linear(h, dec.fc1.W, dec.fc1.b))
        h = F.relu(F.linear(h, dec.fc2.W, dec.fc2.b))
        x_rec = F.reshape(F.sigmoid(F.linear(h, dec.fc3.W, dec.fc3.b)), x.shape)
        loss = loss + cfg['recon_weight'] * F.sum((x_rec - x) ** 2) / B
    return loss, v


SWITCHES = [
    {},
    {'reconstruct': True},
    {'reconstruct': True, 'shared_weights': False},
    {'leaky_slope': 0.0},
    {'squash_primary': True},
    {'n_iteration': 1},
    {'n_iteration': 2, 'grad_all_iterations': False},
    {'grad_all_iterations': False},
    {'grad_all_iterations': False, 'shared_weights': False},
    {'shared_weights': False, 'leaky_slope': 0.0, 'squash_primary': True},
    # Adapted to other data (Sec. 7): colour, another size, other capsule counts and
    # dimensions, the none-of-the-above category, per-image standardization
    {'reconstruct': True, 'in_shape': (3, 24, 24), 'n_primary_type': 4,
     'conv1_channels': 24, 'none_of_the_above': True, 'standardize': True},
    {'reconstruct': True, 'in_shape': (2, 17, 21), 'n_class': 5, 'conv1_channels': 16,
     'n_primary_type': 3, 'primary_dim': 6, 'capsule_dim': 8, 'shared_weights': False,
     'none_of_the_above': True, 'grad_all_iterations': False},
]


def make_model(kwargs, dtype, device=None, seed=0):
    """A model with random weights and non-zero biases, in ``dtype``, on ``device``
    (the CPU by default)."""
    numpy.random.seed(seed)
    model = CapsNet(**kwargs)
    for name, param in model.namedparams():
        if name.endswith('/b'):
            param.array[...] = numpy.random.uniform(-0.05, 0.05, param.shape)
    if dtype != numpy.float32:
        for param in model.params():
            param.array = param.array.astype(dtype)
    if device is not None:
        model.to_device(device)
    return model


def run(model, loss_fn, x, t):
    """Loss, capsules and the gradients of every parameter and of ``x``, as NumPy arrays
    whichever device ``model`` is on (``x`` and ``t`` are sent there)."""
    device = model.device
    model.cleargrads()
    xv = chainer.Variable(device.send(x.copy()))
    loss, v = loss_fn(model, xv, device.send(t))
    loss.backward()
    grads = {name: to_cpu(p.grad) for name, p in model.namedparams() if p.grad is not None}
    grads['x'] = to_cpu(xv.grad)
    return float(loss.array), to_cpu(v.array), grads


#: Where the model runs: the CPU (where the conv kernel is always used), and a GPU with
#: Chainer's im2col convolutions or with ours (``Convolution2D.fast_on_gpu``).
PLACES = [pytest.param(('@numpy', False), id='cpu'),
          pytest.param(('@cupy:0', False), id='gpu', marks=pytest.mark.gpu),
          pytest.param(('@cupy:0', True), id='gpu-conv-kernel', marks=pytest.mark.gpu)]


@pytest.fixture(params=PLACES)
def device(request, monkeypatch):
    """The device to run the model on, with ``fast_on_gpu`` set for the case."""
    name, fast_on_gpu = request.param
    monkeypatch.setattr(links.Convolution2D, 'fast_on_gpu', fast_on_gpu)
    return get_device(name)


def fast_loss(model, x, t):
    with chainer.no_backprop_mode():
        v = model.digit_capsules(x)
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    with reporter.scope({}):
        loss = model(x, t)
    return loss, v


#: Relative tolerance, and absolute tolerance as a fraction of the largest value.
TOLERANCES = {numpy.float64: (1e-8, 1e-10), numpy.float32: (2e-3, 1e-4)}


def assert_close(got, want, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    scale = float(numpy.abs(want).max()) or 1.0
    numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


CASES = ([(kwargs, numpy.float64) for kwargs in SWITCHES]
         + [({'reconstruct': True}, numpy.float32),
            ({'reconstruct': True, 'shared_weights': False}, numpy.float32)])


def case_id(case):
    kwargs, dtype = case
    return '{}-{}'.format(','.join('{}={}'.format(a, b) for a, b in sorted(kwargs.items()))
                          or 'reference', dtype.__name__)


@pytest.mark.parametrize('kwargs, dtype', CASES, ids=[case_id(c) for c in CASES])
def test_fast_model_equals_plain_equations(kwargs, dtype, device):
    model = make_model(kwargs, dtype, device)
    x = numpy.random.rand(2, *model.config['in_shape']).astype(dtype)
    t = numpy.array([3, 7], numpy.int32) % model.config['n_class']
    loss, v, grads = run(model, fast_loss, x, t)
    loss_ref, v_ref, grads_ref = run(model, plain_loss, x, t)
    assert v.dtype == dtype and grads['x'].dtype == dtype
    assert_close(v, v_ref, dtype, 'capsules')
    assert loss == pytest.approx(loss_ref, rel=1e-9 if dtype == numpy.float64 else 1e-5)
    expected = {name for name, _ in model.namedparams()
                if kwargs.get('reconstruct') or not name.startswith('/decoder/')}
    assert set(grads) == set(grads_ref) == expected | {'x'}
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], dtype, name)


@pytest.mark.parametrize('kwargs', [{}])
def test_fast_model_equals_plain_in_small_pieces(kwargs, device, monkeypatch):
    """The convolutions cut into one image and one kernel row at a time."""
    monkeypatch.setattr(conv_kernel, 'WORKSPACE_BYTES', 1)
    monkeypatch.setattr(conv_kernel, 'GPU_WORKSPACE_BYTES', 1)
    monkeypatch.setattr(conv_kernel, 'CACHE_BYTES', 1)
    model = make_model(dict(kwargs, reconstruct=True), numpy.float64, device)
    x = numpy.random.rand(2, 1, 28, 28)
    t = numpy.array([1, 2], numpy.int32)
    loss, v, grads = run(model, fast_loss, x, t)
    loss_ref, v_ref, grads_ref = run(model, plain_loss, x, t)
    assert_close(v, v_ref, numpy.float64, 'capsules')
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], numpy.float64, name)


@pytest.mark.parametrize('mask_test', ['label', 'prediction'])
def test_test_time_loss_equals_plain(mask_test, device):
    model = make_model({'reconstruct': True, 'mask_test': mask_test}, numpy.float64, device)
    x = device.send(numpy.random.rand(3, 1, 28, 28))
    t = device.send(numpy.array([1, 2, 3], numpy.int32))
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        loss, v = fast_loss(model, x, t)
        loss_ref, v_ref = plain_loss(model, x, t)
        scores = model.predict(x)
    v, v_ref = to_cpu(v.array), to_cpu(v_ref.array)
    assert float(loss.array) == pytest.approx(float(loss_ref.array), rel=1e-9)
    assert_close(v, v_ref, numpy.float64, 'capsules')
    numpy.testing.assert_allclose(scores, numpy.sqrt((v_ref ** 2).sum(axis=2) + EPS),
                                  rtol=1e-9)


@pytest.mark.parametrize('kwargs', [{'reconstruct': True},
                                    {'reconstruct': True, 'shared_weights': False},
                                    {'grad_all_iterations': False, 'leaky_slope': 0.0}])
def test_model_without_fast_kernels_equals_plain_equations(kwargs, device):
    model = make_model(kwargs, numpy.float64, device)
    model.fast_kernels = False
    x = numpy.random.rand(2, 1, 28, 28)
    t = numpy.array([3, 7], numpy.int32)
    loss, v, grads = run(model, fast_loss, x, t)
    loss_ref, v_ref, grads_ref = run(model, plain_loss, x, t)
    assert_close(v, v_ref, numpy.float64, 'capsules')
    assert loss == pytest.approx(loss_ref, rel=1e-9)
    assert set(grads) == set(grads_ref)
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], numpy.float64, name)


testing.run_module(__name__, __file__)
