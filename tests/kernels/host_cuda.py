"""The project's CUDA kernels run on the host: their source strings compiled with g++ as
C++, one thread in one block, so that each kernel's grid-stride loop covers every unit,
and launched through the modules' own launch code on NumPy arrays.

The fixture ``host_cuda`` (``from host_cuda import host_cuda_fixture``) patches, with
``monkeypatch``, only these seams:

* ``kernels.base.cuda``: ``launch`` compiles and calls the kernel with g++ instead of
  CuPy (:class:`HostCuda`), checking each argument against the kernel's parameter list
  as CUDA would read it (a pointer to the right type, an ``int``, a ``long long``, ...);
* ``kernels.base.backend`` and ``kernels.margin_loss.backend``: inside
  :meth:`HostCuda.device`, NumPy arrays count as CuPy arrays (a stand-in module that is
  not ``numpy``), so that the real ``on_cuda`` and the margin loss take their kernel
  paths; outside, the NumPy paths run as they do on the CPU;
* ``kernels.routing_cuda.cuda``: its outputs are allocated by NumPy, not CuPy;
* ``kernels.conv_cuda._vec``: the real one, shown arrays that have CuPy's
  ``data.ptr``;
* ``ENABLED`` of ``conv_cuda`` and ``routing_cuda``: on.

Without g++ the tests that use it are skipped.
"""

import contextlib
import ctypes
import hashlib
import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy
import pytest

from capsnet_chainer.kernels import base
from capsnet_chainer.kernels import conv_cuda
from capsnet_chainer.kernels import margin_loss
from capsnet_chainer.kernels import routing_cuda

#: What CUDA gives a kernel that C++ lacks: one block of one thread, the vector types,
#: the math functions' float and double overloads, and ``__global__`` as nothing.
PRELUDE = r'''
#include <cmath>
using std::exp;
using std::sqrt;
struct float4 { float x, y, z, w; };
struct double2 { double x, y; };
struct host_dim3 { unsigned x; };
static const host_dim3 blockIdx = {0}, blockDim = {1}, gridDim = {1}, threadIdx = {0};
#define __global__
'''
#: C type -> (the NumPy scalar type a launch must pass, its ctypes type).
SCALARS = {'int': (numpy.int32, ctypes.c_int), 'long long': (numpy.int64, ctypes.c_longlong),
           'float': (numpy.float32, ctypes.c_float), 'double': (numpy.float64, ctypes.c_double)}
#: C type -> the dtype of the array a pointer to it takes.
POINTEES = {'int': numpy.dtype(numpy.int32), 'float': numpy.dtype(numpy.float32),
            'double': numpy.dtype(numpy.float64)}
#: The session's g++ builds: their folder, and ``(source, name)`` -> ``(function,
#: parameters)``.
_BUILDS = {'folder': None, 'kernels': {}}


def parameters(source, name):
    """The parameters of kernel ``name`` in ``source``: ``(C type, is a pointer)``."""
    match = re.search(r'\b{}\s*\(([^)]*)\)'.format(re.escape(name)), source)
    assert match, 'no kernel {} in its source'.format(name)
    found = []
    for param in match.group(1).split(','):
        words = param.replace('*', ' * ').replace('__restrict__', '').split()
        pointer = '*' in words
        ctype = ' '.join(w for w in words[:-1] if w not in ('const', '*'))
        assert ctype in (POINTEES if pointer else SCALARS), param
        found.append((ctype, pointer))
    return found


class HostCuda(object):
    """``cuda.raw`` on the host, and the switch between the kernel and NumPy paths.

    Attributes:
        launched (list): The names of the kernels launched, in order.
    """

    def __init__(self):
        self.launched = []
        self.active = False

    def raw(self, source, name):
        """The kernel ``name`` of ``source``, called as CuPy's ``RawKernel`` is."""
        key, compiled = (source, name), _BUILDS['kernels']
        if key not in compiled:
            digest = hashlib.sha1((source + name).encode()).hexdigest()[:16]
            cpp = _BUILDS['folder'] / '{}_{}.cpp'.format(name, digest)
            cpp.write_text(PRELUDE + source)
            lib = cpp.with_suffix('.so')
            proc = subprocess.run(['g++', '-O1', '-shared', '-fPIC', '-o', str(lib), str(cpp)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            function = getattr(ctypes.CDLL(str(lib)), name)
            function.restype = None
            compiled[key] = function, parameters(source, name)
        function, params = compiled[key]

        def call(grid, block, args):
            assert len(args) == len(params), (name, len(args), len(params))
            self.launched.append(name)
            function(*[self._argument(name, k, a, p) for k, (a, p) in
                       enumerate(zip(args, params))])
        return call

    @staticmethod
    def _argument(name, k, a, param):
        # What CUDA would read wrongly: an array of another dtype, an int64 for an int
        ctype, pointer = param
        if pointer:
            assert isinstance(a, numpy.ndarray) and a.dtype == POINTEES[ctype], (
                '{} argument {}: {} for a {}*'.format(name, k, type(a), ctype))
            return ctypes.c_void_p(a.ctypes.data)
        scalar, c_scalar = SCALARS[ctype]
        assert type(a) is scalar, '{} argument {}: {} for a {}'.format(
            name, k, type(a), ctype)
        return c_scalar(a.item())

    def get_array_module(self, *arrays):
        """CuPy's place for arrays inside :meth:`device`: a module that is not
        ``numpy``; NumPy outside."""
        return _NOT_NUMPY if self.active else numpy

    @contextlib.contextmanager
    def device(self):
        """The NumPy arrays pass for CuPy arrays: the kernel paths run."""
        self.active = True
        try:
            yield self
        finally:
            self.active = False


class _NotNumPy(object):
    """NumPy under another name: ``xp is numpy`` is false, ``xp.empty`` is NumPy's."""

    def __getattr__(self, name):
        return getattr(numpy, name)


_NOT_NUMPY = _NotNumPy()


class _DevicePointer(object):
    """A NumPy array with CuPy's ``data.ptr``, for ``conv_cuda._vec``'s alignment test."""

    def __init__(self, array):
        self._array = array
        self.data = SimpleNamespace(ptr=array.ctypes.data)

    def __getattr__(self, name):
        return getattr(self._array, name)


@pytest.fixture(name='host_cuda')
def host_cuda_fixture(monkeypatch, tmp_path_factory):
    """A :class:`HostCuda` launching the kernels' real CUDA source, compiled with g++
    (once per source for the session), on NumPy arrays inside its ``device()``."""
    if shutil.which('g++') is None:
        pytest.skip('g++ is not installed: the CUDA sources cannot be run on the host')
    if _BUILDS['folder'] is None:
        _BUILDS['folder'] = tmp_path_factory.mktemp('host_cuda')
    host = HostCuda()
    monkeypatch.setattr(base, 'cuda', SimpleNamespace(raw=host.raw))
    backend = SimpleNamespace(get_array_module=host.get_array_module)
    monkeypatch.setattr(base, 'backend', backend)
    monkeypatch.setattr(margin_loss, 'backend', backend)
    monkeypatch.setattr(routing_cuda, 'cuda', SimpleNamespace(cupy=numpy))
    real_vec = conv_cuda._vec
    monkeypatch.setattr(conv_cuda, '_vec', lambda *arrays: real_vec(
        *[_DevicePointer(array) for array in arrays]))
    monkeypatch.setattr(conv_cuda, 'ENABLED', True)
    monkeypatch.setattr(routing_cuda, 'ENABLED', True)
    return host
