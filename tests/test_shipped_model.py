"""The model that ships in models/: a plain float32 file, its provenance, its score."""

import os

import chainer
import numpy
import pytest

from capsnet_chainer import CapsNet
from capsnet_chainer import load_model
from capsnet_chainer.datasets.mnist import get_mnist
from capsnet_chainer.io.modelfile import CONFIG_KEY
from capsnet_chainer.io.modelfile import META_KEY
from capsnet_chainer.io.modelfile import REFERENCE_CONFIG
from conftest import REPO

SHIPPED = os.path.join(REPO, 'models', 'capsnet_mnist.npz')


@pytest.fixture(scope='module')
def shipped():
    return load_model(SHIPPED)


def test_the_shipped_model_is_plain_float32_arrays():
    with numpy.load(SHIPPED, allow_pickle=False) as npz:
        weights = [k for k in npz.files if k not in (CONFIG_KEY, META_KEY)]
        assert set(weights) == {name.lstrip('/') for name, _ in CapsNet().namedparams()}
        assert {npz[k].dtype for k in weights} == {numpy.dtype(numpy.float32)}


def test_the_shipped_model_is_the_reference_network_with_a_trained_decoder(shipped):
    model, meta = shipped
    assert model.config == dict(REFERENCE_CONFIG, reconstruct=True, recon_weight=0.0005,
                                n_class=10, in_shape=[1, 28, 28])
    assert model.count_params() == 6787088
    assert meta['train_args']['reconstruct'] is True


def test_the_shipped_model_records_how_it_was_made(shipped):
    _, meta = shipped
    # The rule that chose it matches its run: the held-out images with --validation,
    # else the reference's (best test accuracy)
    n_heldout = meta['train_args']['validation']
    assert meta['heldout_images'] == n_heldout
    assert meta['selection']['key'] == (
        'heldout/main/accuracy' if n_heldout else 'validation/main/accuracy')
    assert meta['train_images'] + meta['heldout_images'] == 60000
    assert meta['test_images'] == 10000
    assert meta['epoch'] >= 1 and meta['train_args']['epoch'] >= 5
    assert meta['train_args']['seed'] == 789
    provenance = meta['provenance']
    assert set(provenance['versions']) >= {'python', 'numpy', 'chainer'}
    assert provenance['device'] and provenance['command'].startswith('train.py ')
    assert len(provenance['commit']) == 40  # a clean checkout: no '+dirty'
    assert meta['saved'].endswith('+00:00')


def test_the_shipped_model_scores_exactly_the_test_count_in_its_file(shipped, mnist_dir):
    model, meta = shipped
    _, test = get_mnist(data_dir=mnist_dir)
    x, t = chainer.dataset.concat_examples(test[:])
    correct = int((model.predict(x).argmax(axis=1) == t).sum())
    assert correct == meta['validation/main/accuracy_correct']
    assert correct / 10000 == pytest.approx(meta['validation/main/accuracy'], abs=1e-6)
