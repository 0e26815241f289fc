import chainer
import numpy
import pytest
from chainer import gradient_check
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer.datasets import multimnist
from capsnet_chainer.errors import SettingError
from capsnet_chainer.evaluation import metrics
from conftest import fake_digits
from conftest import pair_accuracy_ref
from conftest import random_pairs
from conftest import two_digit_margin_loss_ref
from conftest import two_digit_recon_loss_ref

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


# The network adapted to other data (Sec. 7 of the paper)

#: (arguments, parameter count, class capsules (B, J, D)): CIFAR-10's network (3
#: channels, 24x24, 64 primary capsule types), SVHN's (conv1 of 64 channels, 16 types of
#: 6-D primary capsules, 8-D class capsules), smallNORB's (2 channels, 32x32, 5 classes)
#: and a non-square input whose grid is 1 x 7.
ADAPTED = [
    ({'in_shape': (3, 24, 24), 'n_primary_type': 64, 'none_of_the_above': True,
      'standardize': True}, 13150912, (10, 16)),
    ({'in_shape': (3, 32, 32), 'conv1_channels': 64, 'n_primary_type': 16,
      'primary_dim': 6, 'capsule_dim': 8}, 4237920, (10, 8)),
    ({'in_shape': (2, 32, 32), 'n_class': 5, 'standardize': True}, 8039424, (5, 16)),
    ({'in_shape': (1, 17, 30), 'n_class': 3}, 6416638, (3, 16)),
]


@pytest.mark.parametrize('kwargs, n_params, capsules', ADAPTED)
def test_the_network_adapts_to_its_input(kwargs, n_params, capsules):
    model = CapsNet(reconstruct=True, **kwargs)
    assert model.count_params() == n_params
    C, H, W = kwargs['in_shape']
    assert model.conv1.W.shape[1] == C
    assert model.decoder.fc3.W.shape[0] == C * H * W
    x = numpy.random.rand(3, C, H, W).astype(numpy.float32)
    t = numpy.arange(3, dtype=numpy.int32) % capsules[0]
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x)
        assert v.shape == (3,) + capsules
        assert model.decode(v, t).shape == x.shape
    assert model.predict(x).shape == (3, capsules[0])
    # Each setting that differs from MNIST's network is in the configuration, and
    # rebuilds the same network
    assert model.config == dict(CapsNet(reconstruct=True).config, **{
        k: list(v) if k == 'in_shape' else v for k, v in kwargs.items()})
    assert CapsNet(**model.config).count_params() == n_params
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    optimizer.update(model, x, t)


def test_the_mnist_configuration_has_no_new_keys():
    assert sorted(CapsNet().config) == [
        'grad_all_iterations', 'in_shape', 'leaky_slope', 'mask_test', 'n_class',
        'n_iteration', 'recon_weight', 'reconstruct', 'shared_weights', 'squash_primary']
    # the MNIST values given explicitly add nothing either
    assert CapsNet(conv1_channels=256, n_primary_type=32, primary_dim=8, capsule_dim=16,
                   none_of_the_above=False, standardize=False).config == CapsNet().config


@pytest.mark.parametrize('in_shape', [(1, 16, 28), (3, 28, 16), (1, 8, 8)])
def test_an_image_too_small_is_refused_with_the_smallest_size(in_shape):
    with pytest.raises(SettingError, match='the smallest input is 17x17') as e:
        CapsNet(in_shape=in_shape)
    assert e.value.setting == 'image_size'
    assert '{}x{}'.format(*in_shape[1:]) in str(e.value)
    assert CapsNet(in_shape=(1, 17, 17)).digits.n_cell == 1


def test_standardize_makes_the_network_blind_to_brightness_and_contrast():
    model = CapsNet(in_shape=(3, 24, 24), standardize=True)
    x = numpy.random.rand(2, 3, 24, 24).astype(numpy.float32)
    with chainer.no_backprop_mode():
        v = model.digit_capsules(x).array
        numpy.testing.assert_allclose(model.digit_capsules(x * 1.7 - 0.3).array, v,
                                      rtol=1e-3, atol=1e-5)
        plain = CapsNet(in_shape=(3, 24, 24))
        plain.copyparams(model)
        assert not numpy.allclose(plain.digit_capsules(x * 1.7 - 0.3).array, v)


def test_none_of_the_above_shortens_the_capsules():
    """Part of each primary capsule's vote goes to the extra category."""
    x, _ = batch()
    leaky = CapsNet(none_of_the_above=True)
    plain = CapsNet()
    plain.copyparams(leaky)
    with chainer.no_backprop_mode():
        assert (leaky.predict(x) < plain.predict(x)).all()


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


# Two digits per image (MultiMNIST): labels (B, 2) give the pair loss


class GivenCapsules(CapsNet):
    """A CapsNet whose digit capsules are its input ``v`` ``(B, J, D)``: its loss is the
    loss of given capsules, through its own decoder (``in_shape`` then only sizes the
    decoder's output; the convolutions never run)."""

    def digit_capsules(self, v):
        return v


def decode_ref(model, v, label):
    """One example: the capsule ``label`` of ``v`` ``(J, D)`` alone through the decoder's
    three layers (ReLU, ReLU, sigmoid), flat."""
    J, D = v.shape
    h = numpy.zeros(J * D)
    h[label * D:(label + 1) * D] = v[label]
    for fc in (model.decoder.fc1, model.decoder.fc2):
        h = numpy.maximum(fc.W.array @ h + fc.b.array, 0)
    fc = model.decoder.fc3
    return 1 / (1 + numpy.exp(-(fc.W.array @ h + fc.b.array)))


def test_pair_loss_is_the_margin_loss_of_both_plus_each_digits_reconstruction():
    """With labels ``(B, 2)``: the two-digit margin loss, plus the reconstruction of each
    digit from its own label's capsule against that digit alone, weighted."""
    rng = numpy.random.RandomState(6)
    B, J, D = 4, 10, 16
    with chainer.using_config('dtype', numpy.float64):
        model = GivenCapsules(reconstruct=True, in_shape=(1, 17, 18))
    for fc in (model.decoder.fc1, model.decoder.fc2, model.decoder.fc3):
        fc.W.array *= 10  # each capsule decodes to its own image (see sharp_capsnet)
    v = rng.randn(B, J, D) * 0.3
    labels2 = random_pairs(B, seed=2)
    digits = rng.uniform(size=(B, 2, 1, 17, 18))
    obs = reported(model, model, v, labels2, digits)
    assert set(obs) == {'main/loss', 'main/loss/margin', 'main/loss/recon', 'main/accuracy',
                        'main/accuracy/one'}
    lengths = numpy.sqrt((v * v).sum(axis=-1))
    rec = numpy.stack([[decode_ref(model, v[n], labels2[n, k]) for k in range(2)]
                       for n in range(B)]).reshape((B, 2, 1, 17, 18))
    margin = two_digit_margin_loss_ref(lengths, labels2)
    recon = 0.0005 * two_digit_recon_loss_ref(rec, digits)
    numpy.testing.assert_allclose(obs['main/loss/margin'], margin, rtol=1e-6)
    numpy.testing.assert_allclose(obs['main/loss/recon'], recon, rtol=1e-6)
    numpy.testing.assert_allclose(obs['main/loss'], margin + recon, rtol=1e-6)
    # Digit k is reconstructed from its own label's capsule, not from the other one's:
    # against the reference reconstructions themselves the loss is 0, swapped it is not
    assert reported(model, model, v, labels2, rec)['main/loss/recon'] < 1e-20
    assert reported(model, model, v, labels2, rec[:, ::-1].copy())['main/loss/recon'] > 1e-4
    both, one = pair_accuracy_ref(lengths, labels2)
    assert obs['main/accuracy'] == pytest.approx(both)
    assert obs['main/accuracy/one'] == pytest.approx(one)
    # Without reconstruction: the margin loss alone
    with chainer.using_config('dtype', numpy.float64):
        margin_only = GivenCapsules(in_shape=(1, 17, 18))
    obs = reported(margin_only, margin_only, v, labels2)
    assert set(obs) == {'main/loss', 'main/loss/margin', 'main/accuracy',
                        'main/accuracy/one'}
    numpy.testing.assert_allclose(obs['main/loss'], margin, rtol=1e-6)
    with pytest.raises(ValueError, match='digits are needed'):
        model(v, labels2)
    with chainer.using_config('dtype', numpy.float64):
        weighted = GivenCapsules(reconstruct=True, recon_weight=0.5, in_shape=(1, 17, 18))
    gradient_check.check_backward(
        lambda v: weighted(v, labels2, digits), v, numpy.array(rng.randn()),
        dtype=numpy.float64, atol=1e-4, rtol=1e-4)


def test_capsnet_36x36_unshared_has_the_papers_11_36m_parameters():
    model = CapsNet(shared_weights=False, in_shape=(1, 36, 36))
    assert model.count_params() == 11361808


def test_capsnet_36x36_forward_on_pairs():
    images, labels = fake_digits(10)
    x, labels2, digits = multimnist.make_test_set(images, labels, 2, seed=0)
    model = CapsNet(shared_weights=False, in_shape=(1, 36, 36), reconstruct=True)
    capsules = model.digit_capsules
    v = capsules(x)
    assert v.shape == (2, 10, 16)
    observation = {}
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    with reporter.scope(observation):
        loss = model(x, labels2, digits)
    assert numpy.isfinite(loss.array)
    assert {'main/loss/margin', 'main/loss/recon'} <= set(observation)
    model.cleargrads()
    loss.backward()
    grads = [p.grad for p in model.params()]
    assert all(g is not None and numpy.isfinite(g).all() for g in grads)
    assert all((g != 0).any() for g in grads)  # the decoder's and the encoder's


def test_capsnet_reports_the_pair_loss_and_accuracies():
    rng = numpy.random.RandomState(2)
    x, t2, single = multimnist.make_test_set(rng.uniform(0, 1, (30, 28, 28)),
                                             numpy.arange(30) % 10, 8, seed=4)
    model = CapsNet(in_shape=(1, 36, 36), reconstruct=True)
    model.cleargrads()
    observation = {}
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    with reporter.scope(observation):
        loss = model(x, t2, single)
    loss.backward()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x).array
    lengths = numpy.sqrt((v ** 2).sum(axis=2))
    recon = sum(((metrics.decode(model, v, t2[:, k]) - single[:, k, 0]) ** 2).sum()
                for k in range(2)) / len(x)
    margin = two_digit_margin_loss_ref(lengths, t2)
    numpy.testing.assert_allclose(float(observation['main/loss/margin'].array), margin,
                                  rtol=1e-5)
    numpy.testing.assert_allclose(float(observation['main/loss/recon'].array),
                                  0.0005 * recon, rtol=1e-4)
    numpy.testing.assert_allclose(float(loss.array), margin + 0.0005 * recon, rtol=1e-5)
    both, one = metrics.pair_accuracy(lengths, t2)
    assert float(observation['main/accuracy']) == pytest.approx(both)
    assert float(observation['main/accuracy/one']) == pytest.approx(one)
    assert model.decoder.fc1.W.grad is not None and abs(model.decoder.fc1.W.grad).sum() > 0


testing.run_module(__name__, __file__)
