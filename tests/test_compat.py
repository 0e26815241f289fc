"""compat.py: Chainer 7.8.1 imports, quietly, on Python 3.11 to 3.13 with NumPy 2."""

import os
import subprocess
import sys
import warnings

import numpy
import pytest

from capsnet_chainer import compat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh interpreter: makes numpy.distutils and pkg_resources unimportable (as on
# Python 3.12+ with NumPy 2.5 and setuptools 82), then imports what the argument names.
BLOCKED_IMPORT = r'''
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'pkg_resources' or name.startswith('numpy.distutils'):
            raise ModuleNotFoundError('No module named {!r} (blocked)'.format(name),
                                      name=name)

for name in list(sys.modules):
    if name.startswith(('numpy.distutils', 'pkg_resources')):
        del sys.modules[name]
sys.meta_path.insert(0, Block())
if sys.argv[1] == 'sctypes-only':  # compat's first step alone, by hand
    import numpy
    numpy.sctypes = {'int': [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
                     'float': [numpy.float16, numpy.float32, numpy.float64]}
else:
    __import__(sys.argv[1])
import chainer
import chainer.functions as F
x = chainer.Variable(__import__('numpy').ones((2, 3), 'f'))
F.sum(F.as_strided(x, (3,), (1,))).backward()
print('imported chainer', chainer.__version__)
'''


def _import_blocked(module):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, '-c', BLOCKED_IMPORT, module], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_package_imports_without_numpy_distutils_and_pkg_resources():
    proc = _import_blocked('capsnet_chainer')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'imported chainer 7.8.1' in proc.stdout


def test_chainer_alone_fails_there_so_the_test_above_can_fail():
    # With numpy.sctypes restored but no stand-in for chainer._environment_check,
    # Chainer's own __init__ imports numpy.distutils and fails.
    proc = _import_blocked('sctypes-only')
    assert proc.returncode != 0
    assert "No module named 'numpy.distutils" in proc.stderr


@pytest.mark.parametrize('module', ['capsnet_chainer', 'capsnet_chainer.cli'])
def test_import_prints_no_warning(module):
    proc = subprocess.run([sys.executable, '-W', 'always', '-c', 'import ' + module],
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == '' and proc.stdout == ''


def test_environment_check_is_the_stand_in():
    import chainer._environment_check as check
    assert check is sys.modules[compat.ENVIRONMENT_CHECK]
    assert check.check is compat._no_check
    assert compat.skip_environment_check() is False  # idempotent
    assert 'pkg_resources' not in sys.modules or 'numpy.distutils' not in sys.modules


def test_sctypes_restored_for_chainer():
    assert compat.patch_numpy() is False  # already patched by the package import
    assert numpy.float32 in numpy.sctypes['float']
    assert numpy.int64 in numpy.sctypes['int']
    import chainer.functions as F  # as_strided reads numpy.sctypes at import
    assert callable(F.as_strided)


def test_patch_is_idempotent_and_complete():
    saved = numpy.__dict__.pop('sctypes', None)
    try:
        assert compat.patch_numpy() is True
        assert compat.patch_numpy() is False
        assert set(numpy.sctypes) == {'int', 'uint', 'float', 'complex', 'others'}
        assert {t().itemsize for t in numpy.sctypes['int']} == {1, 2, 4, 8}
    finally:
        if saved is not None:
            numpy.sctypes = saved


def _cudnn_warnings(monkeypatch, quiet):
    """What Chainer warns when CuPy is usable without cuDNN (as CuPy 14 is)."""
    from chainer.backends import cuda
    monkeypatch.setattr(cuda, 'available', True)
    monkeypatch.setattr(cuda, 'cudnn_enabled', False)
    monkeypatch.setattr(cuda, '_cudnn_disabled_by_user', False, raising=False)
    monkeypatch.delattr(cuda.check_cuda_available, '_already_warned', raising=False)
    if quiet:
        assert compat.quiet_cudnn_warning() is True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        cuda.check_cuda_available()
    return [str(w.message) for w in caught]


def test_cupy_without_cudnn_gives_no_chainer_warning(monkeypatch):
    assert _cudnn_warnings(monkeypatch, quiet=True) == []


def test_chainer_would_warn_without_the_adaptation(monkeypatch):
    assert any('cuDNN is not enabled' in m for m in _cudnn_warnings(monkeypatch, False))


def test_quiet_cudnn_warning_is_a_no_op_without_cupy(monkeypatch):
    from chainer.backends import cuda
    monkeypatch.setattr(cuda, 'available', False)
    assert compat.quiet_cudnn_warning() is False


def test_real_cupy_import_prints_no_warning():
    """Where CuPy is installed (GPU machines, or CuPy without its CUDA libraries):
    importing the package prints nothing, NCCL or cuDNN notwithstanding."""
    pytest.importorskip('cupy')
    proc = subprocess.run([sys.executable, '-c', 'import capsnet_chainer, chainer.training'],
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == '', proc.stderr
