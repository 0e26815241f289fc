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
    from capsnet_chainer.datasets.matfile import SCIPY_REQUIREMENT
    extras = _pyproject()['project']['optional-dependencies']
    assert extras['affnist'] == extras['svhn'] == [SCIPY_REQUIREMENT]
    assert _pins(extras['affnist'])['scipy']  # pinned with ==


def test_mpi_extra_pins_mpi4py_and_an_mpi():
    from capsnet_chainer.training.distributed import INSTALL_LINE
    mpi = _pins(_pyproject()['project']['optional-dependencies']['mpi'])
    assert set(mpi) == {'mpi4py', 'mpich'}
    assert all(mpi.values()), 'pinned with =='
    assert "'.[mpi]'" in INSTALL_LINE


def test_version_is_the_projects():
    import capsnet_chainer
    assert capsnet_chainer.__version__ == _pyproject()['project']['version']


def test_the_subpackages_are_packaged():
    find = _pyproject()['tool']['setuptools']['packages']['find']
    assert find['include'] == ['capsnet_chainer', 'capsnet_chainer.*']
    for package in ('datasets', 'evaluation', 'io', 'kernels', 'training'):
        assert os.path.isfile(os.path.join(REPO, 'capsnet_chainer', package, '__init__.py'))


def test_the_top_level_re_exports_the_public_api():
    import capsnet_chainer as pkg
    from capsnet_chainer import baseline_cnn, errors, functions, model
    from capsnet_chainer.datasets import augment, idx, mnist
    from capsnet_chainer.io import modelfile
    from capsnet_chainer.training import nonfinite
    expected = {
        'CapsNet': model.CapsNet, 'BaselineCNN': baseline_cnn.BaselineCNN,
        'CapsNetError': errors.CapsNetError, 'SettingError': errors.SettingError,
        'DatasetError': idx.DatasetError, 'ModelFileError': modelfile.ModelFileError,
        'NonFiniteError': nonfinite.NonFiniteError,
        'get_dataset': mnist.get_dataset, 'get_mnist': mnist.get_mnist,
        'get_fashion_mnist': mnist.get_fashion_mnist,
        'RandomShift': augment.RandomShift, 'shift_images': augment.shift_images,
        'load_model': modelfile.load_model, 'save_model': modelfile.save_model,
    }
    for name in ('squash', 'capsule_length', 'prediction_vectors', 'routing',
                 'shared_routing', 'margin_loss', 'reconstruction_loss'):
        expected[name] = getattr(functions, name)
    for name, value in expected.items():
        assert getattr(pkg, name) is value, name
    for name in ('DatasetError', 'ModelFileError', 'NonFiniteError', 'SettingError'):
        assert issubclass(getattr(pkg, name), pkg.CapsNetError), name
    assert not hasattr(pkg, 'build_trainer')  # train.py's main() shows the trainer


def test_the_subpackages_re_export_their_main_names():
    from capsnet_chainer import datasets, evaluation, io, kernels, training
    from capsnet_chainer.datasets import multimnist, placement, protocols
    from capsnet_chainer.evaluation import metrics
    from capsnet_chainer.io import modelfile
    from capsnet_chainer.kernels import routing
    from capsnet_chainer.training import (extensions, iterators, nonfinite, snapshots,
                                          updater)
    # The kernel modules are named after the functions they compute, and none is hidden
    # by a re-exported function of its name
    assert callable(routing.routing) and callable(kernels.routing.shared_routing)
    assert datasets.PairSampler is multimnist.PairSampler
    assert datasets.RandomPlacement is placement.RandomPlacement
    assert datasets.PROTOCOLS is protocols.PROTOCOLS
    assert evaluation.score is metrics.score
    assert evaluation.classification_metrics is metrics.classification_metrics
    assert io.load_model is modelfile.load_model and io.save_model is modelfile.save_model
    assert training.BestModelSaver is extensions.BestModelSaver
    assert training.EpochLimit is extensions.EpochLimit
    assert training.SeededShuffleIterator is iterators.SeededShuffleIterator
    assert training.NonFiniteError is nonfinite.NonFiniteError
    assert training.Snapshot is snapshots.Snapshot
    assert training.ConverterStateUpdater is updater.ConverterStateUpdater
