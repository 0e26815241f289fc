"""Model files of the reference implementation load, and compute what they computed there."""

import json
import os
import subprocess
import sys

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer import load_model
from capsnet_chainer.functions import mask
from capsnet_chainer.io import reference
from capsnet_chainer.io.modelfile import ModelFileError
from capsnet_chainer.io.modelfile import read_model_file
from conftest import REPO


class ReferenceNet(chainer.Chain):
    """The reference's chain as far as its saved file goes: the same link names and
    shapes, so ``save_npz`` writes exactly the arrays a reference user has (SPEC)."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 256, 9)
            self.conv2 = L.Convolution2D(256, 256, 9, stride=2)
            self.Ws = chainer.ChainList(*[L.Convolution2D(8, 160, 1) for _ in range(32)])
            self.fc1 = L.Linear(160, 512)
            self.fc2 = L.Linear(512, 1024)
            self.fc3 = L.Linear(1024, 784)

    def predictions(self, u):
        """The reference's reading of its prediction maps, written from SPEC alone.

        Args: u ``(B, 1152, 8)``, capsule type ``k`` at cell ``c`` being ``k * 36 + c``.
        Returns: u_hat ``(B, 10, 1152, 16)``, indexed like ours.
        """
        B = u.shape[0]
        out = []
        for k in range(32):
            x = F.reshape(u[:, k * 36:(k + 1) * 36], (B * 36, 8, 1, 1))
            y = F.reshape(self.Ws[k](x), (B, 36, 16, 10))  # output o = d * 10 + j
            out.append(F.transpose(y, (0, 3, 1, 2)))  # (B, 10, 36, 16)
        return F.concat(out, axis=2)

    def decoder_fc1(self, v, labels):
        """fc1 of the masked capsules flattened as (16 dims x 10 digits)."""
        masked = F.transpose(mask(v, labels), (0, 2, 1))  # (B, 16, 10)
        return self.fc1(F.reshape(masked, (v.shape[0], 160)))


def trained_like(seed=0, decoder_trained=True):
    """A CapsNet whose biases are non-zero, as after training."""
    numpy.random.seed(seed)
    model = CapsNet(reconstruct=True)
    for name, param in model.namedparams():
        if name.endswith('/b') and (decoder_trained or 'decoder' not in name):
            param.array[...] = numpy.random.uniform(-0.1, 0.1, param.shape)
    return model


def write_reference_file(model, path):
    """Writes ``model`` as the reference would have saved it (save_npz of its chain)."""
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(model)
    ref = ReferenceNet()
    arrays = reference.to_reference(serializer.target)
    for name, param in ref.namedparams():
        param.array[...] = arrays[name.lstrip('/')]
    chainer.serializers.save_npz(path, ref)
    return ref


def batch(n=4):
    numpy.random.seed(1)
    x = numpy.random.rand(n, 1, 28, 28).astype(numpy.float32)
    t = numpy.arange(n, dtype=numpy.int32) % 10
    return x, t


def test_the_mock_file_has_the_reference_layout(tmp_path):
    path = str(tmp_path / 'saved_model')
    write_reference_file(CapsNet(), path)
    with numpy.load(path) as npz:
        names = set(npz.files)
        assert reference.is_reference_layout(names)
        assert {n: npz[n].shape for n in names} == reference.REFERENCE_SHAPES


def test_layout_round_trip():
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(trained_like())
    ours = serializer.target
    back = reference.from_reference(reference.to_reference(ours))
    assert sorted(back) == sorted(ours)
    for name in ours:
        numpy.testing.assert_array_equal(back[name], ours[name], err_msg=name)


def test_reference_model_computes_the_same_capsules_and_reconstructions(tmp_path):
    model = trained_like()
    path = str(tmp_path / 'saved_model')
    write_reference_file(model, path)
    loaded, meta = load_model(path)
    assert 'reference' in meta['source'] and 'reconstruction' in meta['note']
    assert loaded.config == dict(CapsNet(reconstruct=True).config)
    x, t = batch()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v, v_loaded = model.digit_capsules(x), loaded.digit_capsules(x)
        numpy.testing.assert_array_equal(v_loaded.array, v.array)
        numpy.testing.assert_array_equal(loaded.decode(v_loaded, t).array,
                                         model.decode(v, t).array)


def test_mapping_follows_the_reference_reading(tmp_path):
    """Independently of our inverse mapping: the reference's own reading of its maps
    (output o is dimension o // 10 of digit o % 10; the decoder's input is the masked
    16 x 10 array flattened) gives the prediction vectors and decoder input of the
    loaded model."""
    model = trained_like()
    path = str(tmp_path / 'saved_model')
    ref = write_reference_file(model, path)
    loaded, _ = load_model(path)
    x, t = batch()
    u = numpy.random.RandomState(2).randn(len(x), 1152, 8).astype(numpy.float32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        numpy.testing.assert_allclose(loaded.digits.predict_vectors(u).array,
                                      ref.predictions(u).array, rtol=1e-5, atol=1e-6)
        v = loaded.digit_capsules(x)
        numpy.testing.assert_allclose(
            loaded.decoder.fc1(F.reshape(mask(v, t), (len(t), 160))).array,
            ref.decoder_fc1(v, t).array, rtol=1e-5, atol=1e-6)


def test_untrained_decoder_means_no_reconstruction(tmp_path):
    path = str(tmp_path / 'saved_model')
    write_reference_file(trained_like(decoder_trained=False), path)
    config, meta = read_model_file(path)
    assert config['reconstruct'] is False and 'never trained' in meta['note']
    path = str(tmp_path / 'trained')
    write_reference_file(trained_like(), path)
    assert read_model_file(path)[0]['reconstruct'] is True


def test_reference_layout_with_wrong_shapes(tmp_path):
    path = str(tmp_path / 'saved_model')
    write_reference_file(CapsNet(), path)
    with numpy.load(path) as npz:
        arrays = {n: npz[n] for n in npz.files}
    arrays['conv1/W'] = arrays['conv1/W'][:128]
    with open(path, 'wb') as f:
        numpy.savez(f, **arrays)
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    assert 'conv1/W (128, 1, 9, 9) (expected (256, 1, 9, 9))' in str(e.value)


def test_unknown_npz_is_not_a_model(tmp_path):
    path = str(tmp_path / 'other')
    with open(path, 'wb') as f:
        numpy.savez(f, weights=numpy.zeros(3))
    assert read_model_file(path) == (None, {})
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    assert 'not a CapsNet model' in str(e.value) and 'weights' in str(e.value)


def test_analyze_loads_a_reference_model(tmp_path, mnist_dir):
    write_reference_file(trained_like(), str(tmp_path / 'saved_model'))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'analyze.py'), '--load',
                           'saved_model', '--data-dir', mnist_dir, '--n-test', '5', '-o',
                           'out'], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert os.path.isfile(str(tmp_path / 'out' / 'vis.png'))
    with open(str(tmp_path / 'out' / 'metrics.json')) as f:
        metrics = json.load(f)
    assert 'reference' in metrics['source']['meta']['source']


testing.run_module(__name__, __file__)
