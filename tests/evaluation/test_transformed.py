"""The affNIST protocol's score on transformed digits: affNIST's files or the stand-in,
named as such."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer.errors import SettingError
from capsnet_chainer.evaluation import transformed
from capsnet_chainer.inference import predict
from conftest import ink_digits


def test_the_stand_in_is_scored_and_named(monkeypatch):
    x, t = ink_digits(30)
    digits = chainer.datasets.TupleDataset(x, t)
    model = CapsNet(in_shape=(1, 40, 40))
    result = transformed.score_transformed(model, digits, n=12, batchsize=5)
    assert result['key'] == 'affine_standin' and 'not affNIST' in result['title']
    assert result['n_test'] == 12 and result['seed'] == transformed.STANDIN_SEED
    assert result['accuracy'] == result['n_correct'] / 12 and 'ranges' in result
    assert 'not comparable' in result['note']
    from capsnet_chainer.datasets import affine
    x40, t40, _ = affine.make_affine_test_set(x, t, n=12, seed=transformed.STANDIN_SEED)
    assert result['n_correct'] == int((predict(model, x40).argmax(axis=1) == t40).sum())
    # more images than affNIST's files hold: said of --n-transformed
    from capsnet_chainer.datasets import affnist

    def beyond(path, n):
        raise ValueError('n = {} exceeds the 320000 images'.format(n))
    monkeypatch.setattr(affnist, 'read_affnist', beyond)
    with pytest.raises(SettingError) as e:
        transformed.score_transformed(model, digits, affnist_dir='files', n=400000)
    assert e.value.setting == 'n_transformed' and 'exceeds' in str(e.value)


testing.run_module(__name__, __file__)
