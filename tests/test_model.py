import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet

REFERENCE_PARAMS = 6787088   # SPEC: conv1 20,992 + primary 5,308,672 + 46,080 + 1,411,344
UNSHARED_PARAMS = 8215568    # one 8x160 matrix per primary capsule, no bias (paper: 8.2M)

SWITCHES = [
    ({}, REFERENCE_PARAMS),
    ({'reconstruct': True}, REFERENCE_PARAMS),
    ({'leaky_slope': 0.0}, REFERENCE_PARAMS),
    ({'n_iteration': 1}, REFERENCE_PARAMS),
    ({'shared_weights': False}, UNSHARED_PARAMS),
    ({'squash_primary': True}, REFERENCE_PARAMS),
    ({'grad_all_iterations': False}, REFERENCE_PARAMS),
    ({'mask_test': 'prediction', 'reconstruct': True}, REFERENCE_PARAMS),
]


def batch(n=4):
    x = numpy.random.rand(n, 1, 28, 28).astype(numpy.float32)
    t = numpy.arange(n, dtype=numpy.int32) % 10
    return x, t


def reported(model, fn, *args):
    """Runs ``fn(*args)`` with ``model`` observed as 'main'; returns floats by key."""
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation):
        fn(*args)
    return {k: float(getattr(v, 'array', v)) for k, v in observation.items()}


def test_parts_of_the_parameter_count():
    model = CapsNet()
    assert model.conv1.W.size + model.conv1.b.size == 20992
    assert sum(p.size for p in model.primary.params()) == 5308672
    assert sum(p.size for p in model.digits.params()) == 46080
    assert sum(p.size for p in model.decoder.params()) == 1411344


@pytest.mark.parametrize('kwargs, n_params', SWITCHES)
def test_each_switch_has_its_parameter_count_and_output_shapes(kwargs, n_params):
    model = CapsNet(**kwargs)
    assert model.count_params() == n_params
    x, t = batch()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x)
    assert v.shape == (4, 10, 16) and v.dtype == numpy.float32
    assert model.predict(x).shape == (4, 10)


@pytest.mark.parametrize('reconstruct', [False, True])
def test_training_step_updates_weights_and_reports_the_losses(reconstruct):
    model = CapsNet(reconstruct=reconstruct)
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    x, t = batch()
    before = model.conv1.W.array.copy()
    obs = reported(model, optimizer.update, model, x, t)
    keys = {'main/loss', 'main/loss/margin', 'main/accuracy'}
    if reconstruct:
        keys.add('main/loss/recon')
    assert set(obs) == keys
    assert not numpy.array_equal(before, model.conv1.W.array)
    # The loss is margin + 0.0005 x summed squared error.
    recon = obs.get('main/loss/recon', 0.0)
    assert obs['main/loss'] == pytest.approx(obs['main/loss/margin'] + recon, rel=1e-6)
    assert (recon > 0) == reconstruct


def test_reconstruction_loss_is_weighted_and_masked_by_the_label():
    model = CapsNet(reconstruct=True)
    x, t = batch()
    with chainer.no_backprop_mode():
        obs = reported(model, model, x, t)
        v = model.digit_capsules(x)
        expected = 0.0005 * ((model.decode(v, t).array - x) ** 2).sum() / 4
    assert obs['main/loss/recon'] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize('mask_test', ['label', 'prediction'])
def test_test_time_mask_is_the_label_or_the_prediction(mask_test):
    model = CapsNet(reconstruct=True, mask_test=mask_test)
    x, _ = batch()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        pred = model.predict(x).argmax(axis=1).astype(numpy.int32)
        wrong = (pred + 1) % 10
        obs = reported(model, model, x, wrong)
        v = model.digit_capsules(x)
        labels = wrong if mask_test == 'label' else pred
        expected = 0.0005 * ((model.decode(v, labels).array - x) ** 2).sum() / 4
    assert obs['main/loss/recon'] == pytest.approx(float(expected), rel=1e-5)
    assert obs['main/accuracy'] == 0.0


def test_leaky_slope_zero_is_relu():
    relu_model = CapsNet(leaky_slope=0.0)
    leaky_model = CapsNet(leaky_slope=0.05)
    leaky_model.copyparams(relu_model)
    x, _ = batch()
    with chainer.no_backprop_mode():
        assert not numpy.allclose(relu_model.digit_capsules(x).array,
                                  leaky_model.digit_capsules(x).array)


@pytest.mark.parametrize('kwargs', [{'leaky_slope': float('nan')}, {'leaky_slope': -1},
                                    {'n_iteration': 0}, {'mask_test': 'oracle'}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        CapsNet(**kwargs)


def test_fast_kernels_off_gives_the_same_capsules_and_is_not_configuration():
    model = CapsNet(reconstruct=True)
    plain = CapsNet(reconstruct=True, fast_kernels=False)
    plain.copyparams(model)
    assert model.fast_kernels and not plain.fast_kernels
    assert 'fast_kernels' not in plain.config and plain.config == model.config
    x, _ = batch()
    with chainer.no_backprop_mode():
        numpy.testing.assert_allclose(plain.digit_capsules(x).array,
                                      model.digit_capsules(x).array, rtol=1e-4, atol=1e-6)


testing.run_module(__name__, __file__)
