"""The device to run on: ``-g``/``--device`` to a Chainer device or one clear error
naming what to install, and the line that says what runs there."""

import numpy
import pytest
from chainer import testing

from capsnet_chainer import device
from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError


def test_no_such_gpu(monkeypatch):
    from chainer.backends import cuda

    class Runtime(object):
        @staticmethod
        def getDeviceCount():
            return 1

    class FakeCupy(object):
        class cuda(object):
            runtime = Runtime

    monkeypatch.setattr(cuda, 'available', True)
    monkeypatch.setattr(cuda, 'cupy', FakeCupy, raising=False)
    with pytest.raises(device.DeviceError) as e:
        device.get_device(3)
    assert str(e.value) == '-g 3: no such GPU; this machine has 1 GPU (ids 0..0)'
    with pytest.raises(device.DeviceError) as e:
        device.get_device(device='@cupy:2')
    assert 'no such GPU' in str(e.value)
    assert device.get_device(-1).xp is numpy


def test_describe_device_names_the_cpu():
    assert device.describe_device(device.get_device(-1)) == '@numpy'


@pytest.mark.gpu
def test_describe_device_says_whether_cudnn_is_used():
    pytest.importorskip('cupy')
    from chainer.backends import cuda
    if not cuda.available:
        pytest.skip('no usable CuPy')
    line = device.describe_device(device.get_device(0))
    assert line.startswith('@cupy:0 (') and 'CuPy' in line
    assert ('no cuDNN' in line) == (not cuda.cudnn_enabled)


def test_missing_cuda_libraries_point_to_the_ctk_extra(monkeypatch):
    from chainer.backends import cuda
    monkeypatch.setattr(cuda, 'available', False)
    monkeypatch.setattr(cuda, '_resolution_error', RuntimeError(
        'Failure finding "libcublasLt.so.13 or libcublasLt.so.12": No such file'),
        raising=False)
    with pytest.raises(device.DeviceError) as e:
        device.get_device(0)
    assert str(e.value).startswith('-g 0: CuPy is installed but the CUDA libraries are '
                                   'not found (Failure finding')
    assert 'cupy-cuda13x[ctk]' in str(e.value)


def test_the_cpu_by_id_or_specifier():
    assert device.get_device(-1).xp is numpy
    assert device.get_device(-5).xp is numpy
    assert str(device.get_device(device='@numpy')) == '@numpy'
    assert device.get_device(3, device='@numpy').xp is numpy  # --device overrides -g


def test_a_device_chainer_does_not_know_is_a_device_error():
    with pytest.raises(device.DeviceError) as e:
        device.get_device(device='@tpu:0')
    assert str(e.value).startswith('--device @tpu:0: cannot use this device (')
    assert issubclass(device.DeviceError, CapsNetError)


def _cupy_missing(monkeypatch, cause):
    from chainer.backends import cuda
    monkeypatch.setattr(cuda, 'available', False)
    monkeypatch.setattr(cuda, '_resolution_error', cause, raising=False)


def test_without_cupy_the_error_says_which_wheel_to_install(monkeypatch):
    cause = ImportError("No module named 'cupy'", name='cupy')
    _cupy_missing(monkeypatch, cause)
    with pytest.raises(device.DeviceError) as e:
        device.get_device(0)
    assert str(e.value) == '-g 0: CuPy is not installed, so no GPU can be used; ' + \
        device.CUPY_HELP
    assert 'pip install cupy-cuda13x' in device.CUPY_HELP
    assert 'cupy-cuda12x' in device.CUPY_HELP and '-g -1' in device.CUPY_HELP
    with pytest.raises(device.DeviceError, match='^--device @cupy:1: CuPy is not installed'):
        device.get_device(device='@cupy:1')


def test_a_broken_cupy_is_named_with_its_cause(monkeypatch):
    _cupy_missing(monkeypatch, RuntimeError('cannot load\n  cupy_backends'))
    with pytest.raises(device.DeviceError) as e:
        device.get_device(0)
    assert str(e.value).startswith('-g 0: CuPy is installed but cannot be imported '
                                   '(cannot load cupy_backends); ')


class _FakeCupy(object):
    """CuPy whose runtime reports ``count`` GPUs or raises it."""

    def __init__(self, count):
        def getDeviceCount():
            if isinstance(count, Exception):
                raise count
            return count
        runtime = type('runtime', (), {'getDeviceCount': staticmethod(getDeviceCount)})
        self.cuda = type('cuda', (), {'runtime': runtime})


def test_gpu_ids_and_specifiers_are_checked(monkeypatch):
    from chainer.backends import cuda
    monkeypatch.setattr(cuda, 'available', True)
    monkeypatch.setattr(cuda, 'cupy', _FakeCupy(2), raising=False)
    with pytest.raises(device.DeviceError) as e:
        device.get_device(2)
    assert str(e.value) == '-g 2: no such GPU; this machine has 2 GPUs (ids 0..1)'
    with pytest.raises(device.DeviceError) as e:
        device.get_device(device='@cupy:x')
    assert str(e.value) == '--device @cupy:x: not a device specifier; use @cupy:N or @numpy'
    monkeypatch.setattr(cuda, 'cupy', _FakeCupy(0), raising=False)
    with pytest.raises(device.DeviceError) as e:
        device.get_device(0)
    assert str(e.value) == '-g 0: no such GPU; this machine has 0 GPUs'
    monkeypatch.setattr(cuda, 'cupy', _FakeCupy(RuntimeError('no driver')), raising=False)
    with pytest.raises(device.DeviceError) as e:
        device.get_device(0)
    assert str(e.value) == ('-g 0: CuPy cannot reach a GPU (RuntimeError: no driver); check '
                            'the NVIDIA driver with nvidia-smi, or pass -g -1 to use the CPU')


# --precision


def test_float32_changes_nothing(monkeypatch):
    import os
    monkeypatch.delenv('CUPY_TF32', raising=False)
    for precision in (None, 'float32'):
        device.set_precision(precision, device.get_device(-1))
    assert 'CUPY_TF32' not in os.environ


def test_tf32_is_refused_on_the_cpu():
    with pytest.raises(SettingError) as e:
        device.set_precision('tf32', device.get_device(-1))
    assert (e.value.setting, e.value.value) == ('precision', 'tf32')
    assert e.value.message == "needs a GPU (-g N): the CPU's matrix products are float32 only"
    with pytest.raises(SettingError, match='choose one of float32, tf32'):
        device.set_precision('bf16', device.get_device(-1))


def test_tf32_sets_cupys_variable_and_compute_type(monkeypatch):
    """On a stand-in GPU: CUPY_TF32, and CuPy's compute type for float32 where it has
    one."""
    from chainer.backends import cuda
    calls = []

    class Linalg(object):
        COMPUTE_TYPE_TF32 = 7

        @staticmethod
        def set_compute_type(dtype, compute_type):
            calls.append((numpy.dtype(dtype), compute_type))

    class FakeCupy(object):
        class _core(object):
            _routines_linalg = Linalg

    monkeypatch.setattr(cuda, 'cupy', FakeCupy, raising=False)
    monkeypatch.setenv('CUPY_TF32', '0')
    gpu = type('GPU', (), {'xp': FakeCupy})()
    device.set_precision('tf32', gpu)
    import os
    assert os.environ['CUPY_TF32'] == '1'
    assert calls == [(numpy.dtype(numpy.float32), 7)]


@pytest.mark.gpu
def test_tf32_rounds_the_products_on_a_gpu(monkeypatch):
    """A float32 product of random matrices: about 1e-7 from float64 in float32, about
    1e-4 in TF32 (10 bits of mantissa)."""
    from conftest import get_device
    gpu = get_device('@cupy:0')
    import cupy
    from cupy._core import _routines_linalg as linalg
    rs = numpy.random.RandomState(0)
    a, b = rs.rand(512, 512), rs.rand(512, 512)
    want = a @ b

    def error():
        got = cupy.asnumpy(cupy.asarray(a, numpy.float32) @ cupy.asarray(b, numpy.float32))
        return numpy.abs(got - want).max() / numpy.abs(want).max()
    monkeypatch.setenv('CUPY_TF32', '0')
    linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_DEFAULT)
    float32 = error()
    device.set_precision('tf32', gpu)
    try:
        tf32 = error()
    finally:
        linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_DEFAULT)
    assert float32 < 1e-5 < tf32 < 1e-2


testing.run_module(__name__, __file__)
