"""pyproject.toml and requirements.txt pin the same versions."""

import os
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split('#')[0].strip()
        if line and not line.startswith('-'):
            name, _, version = line.partition('==')
            pins[name.split('[')[0].strip().lower().replace('_', '-')] = version.strip()
    return pins


def _pyproject():
    with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)


def test_pyproject_dependencies_are_the_requirements_pins():
    with open(os.path.join(REPO, 'requirements.txt')) as f:
        requirements = _pins(f)
    project = _pyproject()['project']
    runtime = _pins(project['dependencies'])
    test = _pins(project['optional-dependencies']['test'])
    assert all(v for v in runtime.values()), 'every dependency is pinned with =='
    assert {**runtime, **test} == requirements


def test_cuda_extras_pin_one_cupy_version():
    extras = _pyproject()['project']['optional-dependencies']
    cupy = {k: _pins(v) for k, v in extras.items() if k.startswith('cuda')}
    assert set(cupy) == {'cuda13', 'cuda13-ctk', 'cuda12', 'cuda12-ctk'}
    versions = {v for pins in cupy.values() for v in pins.values()}
    assert len(versions) == 1
    assert cupy['cuda13'] == {'cupy-cuda13x': versions.pop()}


def test_affnist_extra_pins_the_scipy_that_the_reader_names():
    from capsnet_chainer.affnist import SCIPY_REQUIREMENT
    extras = _pyproject()['project']['optional-dependencies']
    assert extras['affnist'] == [SCIPY_REQUIREMENT]
    assert _pins(extras['affnist'])['scipy']  # pinned with ==


def test_mpi_extra_pins_mpi4py_and_an_mpi():
    from capsnet_chainer.distributed import INSTALL_LINE
    mpi = _pins(_pyproject()['project']['optional-dependencies']['mpi'])
    assert set(mpi) == {'mpi4py', 'mpich'}
    assert all(mpi.values()), 'pinned with =='
    assert "'.[mpi]'" in INSTALL_LINE
