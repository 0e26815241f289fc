"""The device to run on: choosing it from ``-g``/``--device``, one line that says what
it is and which convolution runs there, and the precision of its matrix products."""

import os

import chainer
import numpy

from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError
from capsnet_chainer.links import Convolution2D

CUPY_HELP = ('install the CuPy wheel that matches your CUDA: pip install cupy-cuda13x '
             '(CUDA 13) or pip install cupy-cuda12x (CUDA 12); or pass -g -1 to use the '
             'CPU')


#: The precisions of ``--precision``: float32 throughout (the reference; the default),
#: or float32 arrays whose matrix products run on a GPU's tensor cores in TF32 (inputs
#: rounded to 10 bits of mantissa, float32 sums).
PRECISIONS = ('float32', 'tf32')


class DeviceError(CapsNetError):
    """The requested device cannot be used (no CuPy, no such GPU)."""


def get_device(gpu=-1, device=None):
    """Returns the Chainer device for ``-g GPU`` or ``--device SPEC``, or raises.

    Args:
        gpu (int): GPU id; negative for the CPU.
        device (str): A Chainer device specifier (``@numpy``, ``@cupy:0``); overrides
            ``gpu``.

    Raises:
        DeviceError: CuPy is missing or broken, or there is no such GPU. The message
            says which package to install.
    """
    if device is not None:
        spec, flag = device, '--device {}'.format(device)
    else:
        spec = '@cupy:{}'.format(gpu) if gpu >= 0 else '@numpy'
        flag = '-g {}'.format(gpu)
    if spec.startswith('@cupy'):
        from chainer.backends import cuda
        if not cuda.available:
            cause = getattr(cuda, '_resolution_error', None)
            if isinstance(cause, ImportError) and getattr(cause, 'name', '') == 'cupy':
                raise DeviceError('{}: CuPy is not installed, so no GPU can be used; {}'
                                  .format(flag, CUPY_HELP))
            if 'libcu' in str(cause) or 'libnvrtc' in str(cause):
                raise DeviceError(
                    '{}: CuPy is installed but the CUDA libraries are not found ({}); '
                    'install them with CuPy\'s [ctk] extra: pip install '
                    '"cupy-cuda13x[ctk]" (CUDA 13) or "cupy-cuda12x[ctk]" (CUDA 12)'
                    .format(flag, ' '.join(str(cause).split())))
            raise DeviceError('{}: CuPy is installed but cannot be imported ({}); {}'
                              .format(flag, ' '.join(str(cause).split()), CUPY_HELP))
        try:
            device_id = int(spec.partition(':')[2])
        except ValueError:
            raise DeviceError('{}: not a device specifier; use @cupy:N or @numpy'
                              .format(flag)) from None
        try:
            n_gpu = cuda.cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, no device: CUDARuntimeError and others
            raise DeviceError('{}: CuPy cannot reach a GPU ({}: {}); check the NVIDIA '
                              'driver with nvidia-smi, or pass -g -1 to use the CPU'
                              .format(flag, type(e).__name__, e)) from None
        if not 0 <= device_id < n_gpu:
            raise DeviceError('{}: no such GPU; this machine has {} GPU{}{}'.format(
                flag, n_gpu, '' if n_gpu == 1 else 's',
                ' (ids 0..{})'.format(n_gpu - 1) if n_gpu else ''))
    try:
        return chainer.get_device(spec)
    except Exception as e:
        raise DeviceError('{}: cannot use this device ({}: {})'.format(
            flag, type(e).__name__, e)) from None


def describe_device(device):
    """One line naming ``device``; for a GPU, its name and CuPy, and whether cuDNN is used.

    CuPy 14 has no cuDNN: our convolution kernel then runs the model's (valid)
    convolutions, and Chainer runs others (and all of them without
    ``Convolution2D.fast_on_gpu``) through im2col and a matrix product, which is
    expected (see :mod:`capsnet_chainer.compat`), so this says so once instead of
    Chainer's warning.
    """
    from chainer.backends import cuda
    xp = getattr(device, 'xp', None)
    if not cuda.available or xp is not cuda.cupy:
        return str(device)
    cupy = cuda.cupy
    try:
        props = cupy.cuda.runtime.getDeviceProperties(device.device.id)
        name = props['name']
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an unusual driver: the name is only for the user's eyes
        name = 'GPU'
    # The links' own choice (Convolution2D.kernel_on_gpu), so that the line cannot
    # disagree with what runs
    if Convolution2D.kernel_on_gpu():
        conv = 'valid convolutions run as our kernel, others as im2col + matrix products'
    elif chainer.should_use_cudnn('>=auto'):
        conv = 'cuDNN'
    else:
        conv = 'convolutions run as im2col + matrix products'
    if not cuda.cudnn_enabled:
        conv = 'no cuDNN in this CuPy: ' + conv
    return '{} ({}, CuPy {}; {})'.format(device, name, cupy.__version__, conv)


def set_precision(precision, device):
    """Sets the precision of ``device``'s float32 matrix products (``--precision``).

    ``tf32`` sets CuPy's ``CUPY_TF32`` (read at the first float32 product) and, where
    CuPy has it, its compute type for float32 at once: every float32 product through
    cuBLAS (``matmul``, ``dot``, ``tensordot``: the convolutions', the decoder's, the
    predictions') then runs in TF32. ``float32`` (or ``None``) changes nothing.

    Raises:
        SettingError: ``tf32`` on the CPU, whose products are float32 only.
    """
    if precision in (None, 'float32'):
        return
    if precision not in PRECISIONS:
        raise SettingError('precision', 'choose one of {}'.format(', '.join(PRECISIONS)),
                           precision)
    if device.xp is numpy:
        raise SettingError('precision', 'needs a GPU (-g N): the CPU\'s matrix products '
                           'are float32 only', precision)
    os.environ['CUPY_TF32'] = '1'
    from chainer.backends import cuda
    linalg = getattr(getattr(cuda.cupy, '_core', None), '_routines_linalg', None)
    if hasattr(linalg, 'set_compute_type') and hasattr(linalg, 'COMPUTE_TYPE_TF32'):
        linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32)
