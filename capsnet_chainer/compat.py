"""The one place that adapts Chainer 7.8.1 to today's Python, NumPy and CuPy.

Chainer 7.8.1 is the last release (2020). It predates NumPy 2, Python 3.12 and CuPy 14.
Three adaptations make it import and run cleanly on Python 3.11 to 3.13 with NumPy 2;
the first two must happen before ``chainer`` is imported, so import this module first
(``capsnet_chainer/__init__.py`` does, so ``import capsnet_chainer`` is enough):

1. :func:`patch_numpy` restores ``numpy.sctypes`` (removed in NumPy 2.0), which
   ``chainer.functions.array.as_strided`` reads at import time.
2. :func:`skip_environment_check` replaces ``chainer._environment_check``. Chainer's
   ``__init__`` imports it unconditionally, and it imports ``numpy.distutils`` (absent
   from NumPy's wheels for Python 3.12+, and from NumPy 2.5 entirely) and
   ``pkg_resources`` (absent from setuptools 82+, deprecated with a warning before). Its
   checks do not apply here: a refusal of Python 3.5.0, a macOS Accelerate warning read
   through ``numpy.distutils``, and a comparison of the installed CuPy with ``<8``, which
   warns for every CuPy that runs on today's GPUs. The stand-in's ``check()`` does
   nothing.
3. :func:`quiet_cudnn_warning`: CuPy 14 ships no cuDNN, so Chainer runs convolutions
   through im2col and a matrix product. That is expected, not a broken install, so
   Chainer's "cuDNN is not enabled, please reinstall CuPy" warning is marked as given;
   :func:`capsnet_chainer.device.describe_device` says it once, in our words.
4. :func:`import_chainer` imports Chainer without CuPy's "nccl library could not be
   loaded" warning. Chainer's ``MultiprocessParallelUpdater`` module, imported with
   ``chainer.training``, imports ``cupy.cuda.nccl``, and CuPy warns there when NCCL is
   absent (CuPy's ``[ctk]`` extra does not bring it). Single-GPU training never uses
   NCCL; a multi-GPU communicator that needs it fails with its own error.

If ``chainer`` was imported before this module, steps 1 and 2 are too late to matter
(and, since that import worked, not needed); they are skipped.
"""

import sys
import types
import warnings

import numpy

#: The Chainer module that :func:`skip_environment_check` replaces.
ENVIRONMENT_CHECK = 'chainer._environment_check'


def _sctypes():
    return {
        'int': [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        'uint': [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        'float': [numpy.float16, numpy.float32, numpy.float64, numpy.longdouble],
        'complex': [numpy.complex64, numpy.complex128, numpy.clongdouble],
        'others': [bool, object, bytes, str, numpy.void],
    }


def patch_numpy():
    """Restores ``numpy.sctypes`` where NumPy 2 removed it. Idempotent.

    Returns:
        bool: ``True`` when the attribute was added, ``False`` when it existed.
    """
    if 'sctypes' in numpy.__dict__:
        return False
    numpy.sctypes = _sctypes()
    return True


def _no_check():
    """Chainer's environment check, skipped: see :mod:`capsnet_chainer.compat`."""


def skip_environment_check():
    """Registers a stand-in for ``chainer._environment_check``. Idempotent.

    Returns:
        bool: ``True`` when the stand-in was registered now, ``False`` when it already
        was, or when ``chainer`` is imported already (too late to matter).
    """
    if ENVIRONMENT_CHECK in sys.modules:
        return False
    if 'chainer' in sys.modules:
        return False
    stand_in = types.ModuleType(ENVIRONMENT_CHECK, _no_check.__doc__)
    stand_in.check = _no_check
    sys.modules[ENVIRONMENT_CHECK] = stand_in
    return True


def quiet_cudnn_warning():
    """Marks Chainer's missing-cuDNN warning as given when CuPy has no cuDNN.

    Returns:
        bool: ``True`` when CuPy is usable and has no cuDNN (the warning was silenced).
    """
    from chainer.backends import cuda
    if cuda.available and not cuda.cudnn_enabled:
        cuda.check_cuda_available._already_warned = True
        return True
    return False


#: CuPy's warning when NCCL cannot be loaded (see step 4 above).
NCCL_WARNING = r'\s*nccl library could not be loaded'
#: Chainer's warning when CuPy has no cuDNN (see step 3 above).
CUDNN_WARNING = r'cuDNN is not enabled'


def import_chainer():
    """Imports ``chainer`` and ``chainer.training`` without CuPy's NCCL warning, nor
    Chainer's missing-cuDNN warning, which the import itself gives on a machine with a
    GPU (a CUDA check runs while ``chainer.training`` is imported)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=NCCL_WARNING, category=UserWarning)
        warnings.filterwarnings('ignore', message=CUDNN_WARNING, category=UserWarning)
        import chainer
        import chainer.training  # noqa: F401  (imports cupy.cuda.nccl where CuPy is)
    return chainer


def apply():
    """Applies every adaptation, in order; imports ``chainer`` after the first two."""
    patch_numpy()
    skip_environment_check()
    import_chainer()
    quiet_cudnn_warning()


apply()
