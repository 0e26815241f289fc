"""The one place that adapts Chainer 7.8.1 to NumPy 2 (and to CuPy 14).

Chainer 7.8.1 is the last release and predates NumPy 2. Its only NumPy-2 gap on the
code paths this project uses is ``numpy.sctypes`` (removed in NumPy 2.0), which
``chainer.functions.array.as_strided`` reads at import time. Import this module before
``chainer``; the package ``__init__`` does so.
"""

import numpy


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


patch_numpy()
