"""The baseline CNN of the paper's Sec. 5: parameter count, shapes, training, test mode,
the two-digit loss, model files."""

import json

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
import pytest

from capsnet_chainer.baseline_cnn import BaselineCNN
from capsnet_chainer.evaluation import metrics
from capsnet_chainer.io.modelfile import CONFIG_KEY
from capsnet_chainer.io.modelfile import load_model
from capsnet_chainer.io.modelfile import ModelFileError
from capsnet_chainer.io.modelfile import read_model_file
from capsnet_chainer.io.modelfile import save_model
from capsnet_chainer.model import CapsNet


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def fc_params(n_in, n_out):
    return n_in * n_out + n_out


def test_parameter_count_28x28_is_the_papers_35_4m():
    # conv 5x5 1->256, 256->256, 256->128 with 'same' padding: 128 x 28 x 28 features,
    # then FC 328, FC 192, FC 10.
    expected = (conv_params(1, 256, 5) + conv_params(256, 256, 5) + conv_params(256, 128, 5)
                + fc_params(128 * 28 * 28, 328) + fc_params(328, 192) + fc_params(192, 10))
    assert expected == 35445522
    assert float('{:.3g}'.format(expected / 1e6)) == 35.4
    model = BaselineCNN(initialW=chainer.initializers.Zero())  # zeros: quicker to make
    assert model.count_params() == expected
    assert model.fc1.W.shape == (328, 128 * 28 * 28)


@pytest.mark.parametrize('size', [36, 40])
def test_shapes_for_larger_inputs(size):
    model = BaselineCNN(in_shape=(1, size, size), initialW=chainer.initializers.Zero())
    assert model.fc1.W.shape == (328, 128 * size * size)
    assert model.count_params() == (
        conv_params(1, 256, 5) + conv_params(256, 256, 5) + conv_params(256, 128, 5)
        + fc_params(128 * size * size, 328) + fc_params(328, 192) + fc_params(192, 10))
    if size == 36:  # one forward pass (a few GFLOP on the CPU)
        x = numpy.random.RandomState(0).uniform(size=(1, 1, size, size)).astype('f')
        assert model.predict(x).shape == (1, 10)
        assert model.predict(x[:0]).shape == (0, 10)


def test_too_small_inputs_are_refused():
    with pytest.raises(ValueError):
        BaselineCNN(in_shape=(1, 12, 12), pad=0)


def tiny_batch():
    rng = numpy.random.RandomState(1)
    x = rng.uniform(size=(4, 1, 8, 8)).astype(numpy.float32)
    t = numpy.array([0, 3, 7, 9], numpy.int32)
    return x, t


def test_one_adam_step_decreases_the_loss():
    x, t = tiny_batch()
    # A fixed initialisation and no dropout: the step and the losses are deterministic.
    # (Over 12 random initialisations, alpha 1e-4 lowered the loss by 8-13% each time.)
    initialW = chainer.initializers.LeCunNormal(rng=numpy.random.RandomState(0))
    model = BaselineCNN(in_shape=(1, 8, 8), dropout=0.0, initialW=initialW)
    optimizer = chainer.optimizers.Adam(alpha=1e-4)
    optimizer.setup(model)
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation), chainer.using_config('train', False):
        before = float(model(x, t).array)
    assert set(observation) == {'main/loss', 'main/accuracy'}
    assert float(observation['main/loss'].array) == before
    optimizer.update(model, x, t)
    with chainer.using_config('train', False):
        assert float(model(x, t).array) < before


def test_dropout_only_in_training():
    x, _ = tiny_batch()
    model = BaselineCNN(in_shape=(1, 8, 8), dropout=0.5)
    with chainer.using_config('train', False):
        a, b = model.logits(x).array, model.logits(x).array
    numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(model.predict(x), a)
    with chainer.using_config('train', True):
        c = model.logits(x).array
    assert not numpy.array_equal(a, c)


def test_parameter_counts_36x36_and_40x40_by_hand():
    # Convolutions 6,656 + 1,638,656 + 819,328; FC 128 x H x W x 328 + 328; FC 328 x 192
    # + 192 = 63,168; FC 192 x 10 + 10 = 1,930.
    convs = 6656 + 1638656 + 819328
    assert convs == conv_params(1, 256, 5) + conv_params(256, 256, 5) + conv_params(
        256, 128, 5)
    for size, fc1, total in [(28, 32915784, 35445522), (36, 54411592, 56941330),
                             (40, 67174728, 69704466)]:
        assert fc1 == 128 * size * size * 328 + 328
        assert total == convs + fc1 + 63168 + 1930
        model = BaselineCNN(in_shape=(1, size, size), initialW=chainer.initializers.Zero())
        assert model.count_params() == total


# Two digits per image (MultiMNIST)


def naive_sigmoid_pair_loss(logits, t2):
    """Sigmoid cross-entropy against the two-hot target: summed over the classes,
    averaged over the batch, one element at a time."""
    total = 0.0
    for b in range(len(logits)):
        for k in range(logits.shape[1]):
            p = 1 / (1 + numpy.exp(-float(logits[b, k])))
            total -= numpy.log(p) if k in t2[b] else numpy.log(1 - p)
    return total / len(logits)


def pair_batch(n=16, size=12):
    rng = numpy.random.RandomState(3)
    x = rng.uniform(size=(n, 1, size, size)).astype(numpy.float32)
    first = rng.randint(0, 10, n)
    second = (first + rng.randint(1, 10, n)) % 10
    return x, numpy.stack([first, second], axis=1).astype(numpy.int32)


def test_pair_loss_is_the_sigmoid_cross_entropy_of_the_two_hot_target():
    x, t2 = pair_batch()
    model = BaselineCNN(in_shape=(1, 12, 12), dropout=0.0,
                        initialW=chainer.initializers.LeCunNormal(
                            rng=numpy.random.RandomState(0)))
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    digits = numpy.zeros((len(x), 2, 1, 12, 12), numpy.float32)  # ignored
    with reporter.scope(observation):
        loss = model(x, t2, digits)
    with chainer.using_config('train', False):
        logits = model.logits(x).array
    numpy.testing.assert_allclose(float(loss.array), naive_sigmoid_pair_loss(logits, t2),
                                  rtol=1e-5)
    assert set(observation) == {'main/loss', 'main/accuracy', 'main/accuracy/one'}
    both, one = metrics.pair_accuracy(logits, t2)
    assert 0 < one and both < 1  # the check below sees both kinds of rows
    assert float(observation['main/accuracy']) == pytest.approx(both)
    assert float(observation['main/accuracy/one']) == pytest.approx(one)
    # The gradient reaches every layer
    model.cleargrads()
    loss.backward()
    assert all(abs(p.grad).sum() > 0 for p in model.params())


def test_single_label_loss_is_the_softmax_cross_entropy():
    x, t2 = pair_batch()
    t = t2[:, 0]
    model = BaselineCNN(in_shape=(1, 12, 12), dropout=0.0)
    loss = float(model(x, t).array)
    logits = model.predict(x).astype(numpy.float64)
    log_p = logits - numpy.log(numpy.exp(logits).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_p[numpy.arange(len(t)), t].mean(), rel=1e-5)


# Model files


def test_model_file_round_trip(tmp_path):
    model = BaselineCNN(in_shape=(1, 12, 12), dropout=0.25)
    assert model.config == {'model': 'cnn', 'n_class': 10, 'in_shape': [1, 12, 12],
                            'dropout': 0.25, 'pad': 2}
    assert model.reconstruct is False
    path = str(tmp_path / 'cnn_model')
    save_model(model, path, meta={'epoch': 2})
    assert read_model_file(path) == (model.config, {'epoch': 2})
    loaded, meta = load_model(path)
    assert isinstance(loaded, BaselineCNN) and loaded.config == model.config
    assert meta == {'epoch': 2}
    x, _ = pair_batch(5)
    numpy.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    numpy.testing.assert_allclose(metrics.score(loaded, x, batchsize=2), model.predict(x),
                                  rtol=1e-5, atol=1e-6)  # other batches: other rounding
    for a, b in zip(loaded.params(), model.params()):
        numpy.testing.assert_array_equal(a.array, b.array)


def test_a_capsnet_file_without_the_marker_still_loads(tmp_path):
    """Files written before the CNN existed have no 'model' in their configuration."""
    model = CapsNet(n_iteration=2)
    path = str(tmp_path / 'capsnet_model')
    save_model(model, path)
    with numpy.load(path) as npz:
        assert 'model' not in json.loads(str(npz[CONFIG_KEY]))
    loaded, _ = load_model(path)
    assert isinstance(loaded, CapsNet) and loaded.config == model.config
    assert loaded.digits.W.array.tolist() == model.digits.W.array.tolist()


def test_an_unknown_model_kind_is_refused(tmp_path):
    path = str(tmp_path / 'm')
    model = BaselineCNN(in_shape=(1, 12, 12))
    model.config = dict(model.config, model='transformer')
    save_model(model, path)
    with pytest.raises(ModelFileError, match="unknown model 'transformer'"):
        load_model(path)
