"""An ensemble of models (analyze.py --load A B C): the class of the mean of their class
scores, each model's accuracy beside it, and models that cannot be averaged refused."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer.baseline_cnn import BaselineCNN
from capsnet_chainer.evaluation import ensemble
from capsnet_chainer.inference import predict
from capsnet_chainer.io.modelfile import save_model


def member(tmp_path, name, seed, model=None, **meta):
    numpy.random.seed(seed)
    model = model or CapsNet(in_shape=(1, 17, 17), n_class=3)
    path = str(tmp_path / name)
    save_model(model, path)
    return path, model, dict({'dataset': 'npz', 'class_names': ['a', 'b', 'c']}, **meta)


def test_the_ensemble_takes_the_class_of_the_mean_length(tmp_path):
    members = [member(tmp_path, 'm{}'.format(k), k) for k in range(3)]
    x = numpy.random.RandomState(5).rand(12, 1, 17, 17).astype(numpy.float32)
    t = numpy.arange(12, dtype=numpy.int32) % 3
    result = ensemble.evaluate(members, x, t, n_test=10, batchsize=4)
    scores = [predict(m, x[:10]) for _, m, _ in members]
    expected = (numpy.mean(scores, axis=0).argmax(axis=1) == t[:10]).sum()
    assert result['n_correct'] == expected and result['n_test'] == 10
    assert result['accuracy'] == pytest.approx(expected / 10)
    assert result['n_models'] == 3 and 'capsule length' in result['rule']
    for (path, _, _), scores_k, report in zip(members, scores, result['members']):
        assert report['path'] == path and len(report['sha256']) == 64
        assert report['n_correct'] == (scores_k.argmax(axis=1) == t[:10]).sum()
    lines = ensemble.summary(result).splitlines()
    assert len(lines) == 4 and lines[-1].startswith('ensemble of 3 models: test accuracy')


def test_known_scores_are_used_not_computed_again(tmp_path, monkeypatch):
    members = [member(tmp_path, 'm{}'.format(k), k) for k in range(2)]
    x = numpy.random.RandomState(5).rand(6, 1, 17, 17).astype(numpy.float32)
    t = numpy.arange(6, dtype=numpy.int32) % 3
    want = ensemble.evaluate(members, x, t)
    first = predict(members[0][1], x)
    scored = []

    def counted(model, *args):
        scored.append(model)
        return predict(model, *args)
    monkeypatch.setattr(ensemble, 'predict', counted)
    got = ensemble.evaluate(members, x, t, known={0: first})
    assert scored == [members[1][1]]  # the second model only
    assert got == want
    # the known scores are what counts: the first model's, changed, change the result
    wrong = numpy.roll(first, 1, axis=1) * 100
    changed = ensemble.evaluate(members, x, t, known={0: wrong})
    assert changed['members'][0]['n_correct'] == (wrong.argmax(axis=1) == t).sum()


@pytest.mark.parametrize('change, what', [
    ({'dataset': 'folder'}, "--dataset (npz and folder)"),
    ({'class_names': ['a', 'b', 'd']}, 'classes'),
    ({'test_set': {'crop': [24, 24]}}, 'test set'),
])
def test_models_of_other_data_are_refused(tmp_path, change, what):
    members = [member(tmp_path, 'a', 0), member(tmp_path, 'b', 1, **change)]
    with pytest.raises(ensemble.EnsembleError) as e:
        ensemble.check_members(members)
    assert 'differ in their ' + what in str(e.value)
    assert str(tmp_path / 'a') in str(e.value) and str(tmp_path / 'b') in str(e.value)


def test_other_shapes_and_networks_are_refused(tmp_path):
    first = member(tmp_path, 'a', 0)
    wider = member(tmp_path, 'b', 1, model=CapsNet(in_shape=(1, 17, 18), n_class=3))
    with pytest.raises(ensemble.EnsembleError, match='input shape'):
        ensemble.check_members([first, wider])
    cnn = member(tmp_path, 'c', 2, model=BaselineCNN(in_shape=(1, 17, 17), n_class=3))
    with pytest.raises(ensemble.EnsembleError, match="network \\(capsnet and cnn\\)"):
        ensemble.check_members([first, cnn])
    # a file that records no classes (older MNIST files) goes with one that does
    ensemble.check_members([first, member(tmp_path, 'd', 3, class_names=None)])
    with pytest.raises(ensemble.EnsembleError, match='MultiMNIST pairs'):
        ensemble.evaluate([first], numpy.zeros((2, 1, 17, 17), numpy.float32),
                          numpy.zeros((2, 2), numpy.int32))


testing.run_module(__name__, __file__)
