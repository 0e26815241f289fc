import chainer
import numpy
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer import load_model
from capsnet_chainer import save_model
from capsnet_chainer.io.modelfile import CONFIG_KEY
from capsnet_chainer.io.modelfile import read_model_file


def batch(n=4):
    x = numpy.random.rand(n, 1, 28, 28).astype(numpy.float32)
    t = numpy.arange(n, dtype=numpy.int32) % 10
    return x, t


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
        numpy.testing.assert_array_equal(loaded.digit_capsules(x).array,
                                         model.digit_capsules(x).array)


def test_model_file_is_a_chainer_npz(tmp_path):
    model = CapsNet()
    path = str(tmp_path / 'm')
    save_model(model, path)
    other = CapsNet()
    chainer.serializers.load_npz(path, other)  # extra config entries are ignored
    numpy.testing.assert_array_equal(other.digits.W.array, model.digits.W.array)
    assert read_model_file(path)[0] == model.config


def test_model_file_does_not_record_fast_kernels(tmp_path):
    model = CapsNet(fast_kernels=False)
    path = str(tmp_path / 'm')
    save_model(model, path)
    with numpy.load(path) as npz:
        assert 'fast_kernels' not in str(npz[CONFIG_KEY])
    loaded, _ = load_model(path)
    assert loaded.config == model.config and loaded.fast_kernels


testing.run_module(__name__, __file__)
