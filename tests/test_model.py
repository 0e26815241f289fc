import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer import load_model
from capsnet_chainer import save_model
from capsnet_chainer.model import read_model_file
from capsnet_chainer.fileio import write_atomic

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
def test_switches_shapes_and_counts(kwargs, n_params):
    model = CapsNet(**kwargs)
    assert model.count_params() == n_params
    x, t = batch()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.capsules(x)
    assert v.shape == (4, 10, 16) and v.dtype == numpy.float32
    assert model.predict(x).shape == (4, 10)


@pytest.mark.parametrize('reconstruct', [False, True])
def test_training_step_reports(reconstruct):
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


def test_reconstruction_weight_and_label_mask():
    model = CapsNet(reconstruct=True)
    x, t = batch()
    with chainer.no_backprop_mode():
        obs = reported(model, model, x, t)
        v = model.capsules(x)
        expected = 0.0005 * ((model.decode(v, t).array - x) ** 2).sum() / 4
    assert obs['main/loss/recon'] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize('mask_test', ['label', 'prediction'])
def test_test_time_mask(mask_test):
    model = CapsNet(reconstruct=True, mask_test=mask_test)
    x, _ = batch()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        pred = model.predict(x).argmax(axis=1).astype(numpy.int32)
        wrong = (pred + 1) % 10
        obs = reported(model, model, x, wrong)
        v = model.capsules(x)
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
        assert not numpy.allclose(relu_model.capsules(x).array,
                                  leaky_model.capsules(x).array)


@pytest.mark.parametrize('kwargs', [{'leaky_slope': float('nan')}, {'leaky_slope': -1},
                                    {'n_iteration': 0}, {'mask_test': 'oracle'}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        CapsNet(**kwargs)


def test_model_file_carries_configuration(tmp_path):
    model = CapsNet(reconstruct=True, shared_weights=False, n_iteration=2,
                    squash_primary=True, leaky_slope=0.0)
    path = str(tmp_path / 'saved_model')
    save_model(model, path, meta={'epoch': 3})
    assert (tmp_path / 'saved_model').exists()  # written exactly at --save's path
    loaded, meta = load_model(path)
    assert loaded.config == model.config and meta == {'epoch': 3}
    x, _ = batch()
    with chainer.no_backprop_mode():
        numpy.testing.assert_array_equal(loaded.capsules(x).array, model.capsules(x).array)


def test_model_file_is_a_chainer_npz(tmp_path):
    model = CapsNet()
    path = str(tmp_path / 'm')
    save_model(model, path)
    other = CapsNet()
    chainer.serializers.load_npz(path, other)  # extra config entries are ignored
    numpy.testing.assert_array_equal(other.digits.W.array, model.digits.W.array)
    assert read_model_file(path)[0] == model.config


def test_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / 'file'
    path.write_bytes(b'old')

    def failing(f):
        f.write(b'half')
        raise OSError('disk full')
    with pytest.raises(OSError):
        write_atomic(str(path), failing)
    assert path.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['file']


testing.run_module(__name__, __file__)
