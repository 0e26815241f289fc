import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer import inference
from capsnet_chainer.evaluation import metrics
from conftest import pair_accuracy_ref
from conftest import random_pairs


@pytest.fixture(scope='module')
def model():
    numpy.random.seed(0)
    return CapsNet(reconstruct=True)


@pytest.mark.parametrize('batchsize', [1, 2, 100])
def test_batched_inference_equals_one_pass_at_test_time(model, batchsize):
    x = numpy.random.rand(3, 1, 28, 28).astype(numpy.float32)
    t = numpy.array([1, 5, 9], numpy.int32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x).array
        lengths = numpy.sqrt((v * v).sum(axis=2) + 1e-8)
        recon = model.decode(v, t).array[:, 0]
    numpy.testing.assert_allclose(metrics.digit_capsules(model, x, batchsize), v,
                                  rtol=1e-5, atol=1e-7)
    numpy.testing.assert_allclose(metrics.score(model, x, batchsize), lengths, rtol=1e-5)
    numpy.testing.assert_allclose(metrics.decode(model, v, t, batchsize), recon,
                                  rtol=1e-5, atol=1e-7)


def test_batched_inference_reports_progress_and_handles_no_input(model):
    x = numpy.random.rand(5, 1, 28, 28).astype(numpy.float32)
    calls = []
    metrics.score(model, x, 2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    empty = numpy.zeros((0, 1, 28, 28), numpy.float32)
    assert metrics.score(model, empty).shape == (0, 10)
    assert metrics.digit_capsules(model, empty).shape == (0, 10, 16)
    assert metrics.decode(model, numpy.zeros((0, 10, 16)), numpy.zeros(0)).shape == (0, 28, 28)


def test_classification_metrics():
    t = numpy.array([0, 0, 1, 1, 1, 2, 2, 3])
    pred = numpy.array([0, 1, 1, 1, 3, 2, 2, 3])  # column sums differ from row sums
    scores = numpy.eye(5, dtype=numpy.float32)[pred] * 0.9
    m = metrics.classification_metrics(t, scores)
    assert m['n_test'] == 8 and m['n_correct'] == 6
    assert m['accuracy'] == 6 / 8 and m['error_rate'] == 2 / 8
    assert m['per_class_accuracy'] == [0.5, 2 / 3, 1.0, 1.0, None]
    assert m['per_class_count'] == [2, 3, 2, 1, 0]
    expected = numpy.zeros((5, 5), int)
    for a, b in zip(t, pred):
        expected[a, b] += 1
    assert m['confusion_matrix'] == expected.tolist()


def test_most_confident_errors():
    t = numpy.array([0, 1, 2, 3, 4])
    scores = numpy.zeros((5, 5), numpy.float32)
    scores[0, 0] = 0.99  # right
    scores[1, 3] = 0.5   # wrong, 0.5
    scores[2, 4] = 0.8   # wrong, 0.8
    scores[3, 3] = 0.9   # right
    scores[4, 0] = 0.7   # wrong, 0.7
    assert metrics.most_confident_errors(t, scores, 10).tolist() == [2, 4, 1]
    assert metrics.most_confident_errors(t, scores, 2).tolist() == [2, 4]
    assert metrics.most_confident_errors(t[[0, 3]], scores[[0, 3]]).tolist() == []


# Two digits per image


def test_pair_accuracy_hand_made():
    scores = numpy.array([[.9, .8, .1, 0],   # top {0, 1}
                          [.9, .1, .8, 0],   # top {0, 2}
                          [.1, .2, .3, .4],  # top {3, 2}
                          [.5, .5, .5, .1]])  # a tie: the lower classes, {0, 1}
    labels2 = numpy.array([[1, 0], [0, 1], [0, 1], [0, 1]])
    assert metrics.pair_accuracy(scores, labels2) == (0.5, 0.75)
    with pytest.raises(ValueError):
        metrics.pair_accuracy(scores, numpy.array([[1, 1], [0, 1], [0, 1], [0, 1]]))
    assert metrics.pair_accuracy(numpy.zeros((0, 4)), numpy.zeros((0, 2), int)) == \
        (0.0, 0.0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pair_accuracy_against_loop(seed):
    rng = numpy.random.RandomState(seed)
    scores = rng.permutation(1000)[:500].reshape(50, 10) / 1000.0  # no ties
    labels2 = random_pairs(50, seed=seed)
    # Make a third of the rows right, so all three outcomes occur.
    top2 = numpy.argsort(-scores, axis=1)[:, :2]
    labels2[::3] = top2[::3, ::-1]
    got = metrics.pair_accuracy(chainer.Variable(scores.astype(numpy.float32)), labels2)
    assert got == pair_accuracy_ref(scores, labels2)
    both, one = got
    assert 0 < both < one < 1


@pytest.mark.gpu
def test_pair_accuracy_on_gpu_matches_cpu():
    cupy = pytest.importorskip('cupy')
    rng = numpy.random.RandomState(8)
    lengths = rng.uniform(size=(6, 10)).astype(numpy.float32)
    labels2 = random_pairs(6, seed=3)
    assert metrics.pair_accuracy(cupy.asarray(lengths), cupy.asarray(labels2)) == \
        metrics.pair_accuracy(lengths, labels2)


def test_pair_accuracy_refuses_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match='scores must be'):
        metrics.pair_accuracy(numpy.zeros((3, 10)), numpy.zeros((3,), int))
    with pytest.raises(ValueError, match='scores must be'):
        metrics.pair_accuracy(numpy.zeros((3, 10)), numpy.zeros((2, 2), int))


def test_score_is_the_batched_inference_of_the_scores():
    assert metrics.score is inference.predict


testing.run_module(__name__, __file__)
