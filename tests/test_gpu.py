"""The GPU against the CPU: gradient checks of our FunctionNodes on CuPy, training steps
from the same weights on the same batches, and snapshots that move between the two.

The equivalence of the whole fast model with SPEC's plain equations on CuPy is in
test_equivalence.py (its ``gpu`` cases). Every test here needs a CuPy GPU (``-m gpu``)
and skips without one; the helpers are written for any two devices, so that
:func:`test_training_steps_match_across_devices_helper_on_the_cpu` checks their logic
with the CPU twice where there is no GPU.
"""

import copy
from types import SimpleNamespace

import chainer
import numpy
import pytest
from chainer import gradient_check
from chainer.backends.cuda import to_cpu

from capsnet_chainer import CapsNet
from capsnet_chainer import functions
from capsnet_chainer import links
from capsnet_chainer.datasets.mnist import get_mnist
from capsnet_chainer.kernels import conv as conv_kernel
from capsnet_chainer.kernels import conv_cuda
from capsnet_chainer.kernels import margin_loss as margin_kernel
from capsnet_chainer.kernels import prediction as prediction_kernel
from capsnet_chainer.kernels import routing as routing_kernels
from capsnet_chainer.kernels import routing_cuda
from conftest import get_device
from conftest import run_train
from test_train import read_log
from test_train import snapshot_weights
from test_train import TINY

gpu = pytest.mark.gpu


@pytest.fixture(autouse=True)
def seed():
    numpy.random.seed(0)


@pytest.fixture
def cupy_device():
    return get_device('@cupy:0')


# 1. check_backward on CuPy for each FunctionNode of ours


@gpu
@pytest.mark.parametrize('slope', [None, 0.05])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('pieces', ['whole', 'small'])
def test_convolution_kernel_gradient_check_on_gpu(cupy_device, slope, stride, pieces,
                                                  monkeypatch):
    if pieces == 'small':
        monkeypatch.setattr(conv_kernel, 'GPU_WORKSPACE_BYTES', 1)
    x = numpy.random.randn(3, 10, 9, 4)
    W = numpy.random.randn(5, 4, 3, 4)
    b = numpy.random.randn(5)
    gy = numpy.random.randn(*conv_kernel.convolution_2d(x, W, b, stride).shape)
    gradient_check.check_backward(
        lambda *a: conv_kernel.convolution_2d(*a, stride=stride, slope=slope),
        cupy_device.send((x, W, b)), cupy_device.send(gy), dtype=numpy.float64, eps=1e-6,
        atol=1e-6, rtol=1e-5)


def shared_inputs(B=2, T=2, N=3, P=3, J=3, D=4):
    return (numpy.random.randn(B, T, N, P), numpy.random.randn(T, P, J * D) * 0.5,
            numpy.random.randn(T, J * D) * 0.5)


@gpu
@pytest.mark.parametrize('n_iteration', [1, 3])
def test_routing_kernels_gradient_check_on_gpu(cupy_device, n_iteration):
    """The true gradient (``grad_all_iterations=False`` is checked against the plain
    routing in test_equivalence.py's gpu cases)."""
    u_hat = numpy.random.randn(2, 3, 5, 4) * 0.5
    gradient_check.check_backward(
        lambda u: routing_kernels.routing(u, n_iteration), cupy_device.send(u_hat),
        cupy_device.send(numpy.random.randn(2, 3, 4)), dtype=numpy.float64,
        atol=1e-5, rtol=1e-4)
    gradient_check.check_backward(
        lambda *a: routing_kernels.shared_routing(*a, n_class=3, n_iteration=n_iteration),
        cupy_device.send(shared_inputs()), cupy_device.send(numpy.random.randn(2, 3, 4)),
        dtype=numpy.float64, atol=1e-5, rtol=1e-4)


@gpu
@pytest.mark.parametrize('n_cell', [1, 5])
def test_prediction_kernel_gradient_check_on_gpu(cupy_device, n_cell):
    u, W, b = shared_inputs(B=3, T=4 if n_cell > 1 else 20, N=n_cell, J=6)
    u = u.reshape((3, -1, 3))
    gy = numpy.random.randn(3, 6, u.shape[1], 4)
    gradient_check.check_backward(
        lambda *a: prediction_kernel.prediction_vectors(*a, n_class=6, n_cell=n_cell),
        cupy_device.send((u, W, b)), cupy_device.send(gy), dtype=numpy.float64,
        atol=1e-5, rtol=1e-4)


@gpu
def test_plain_functions_double_backward_check_on_gpu(cupy_device):
    """The plain routing (F ops): first and second derivatives on CuPy."""
    u_hat = numpy.random.randn(2, 3, 4, 4) * 0.5
    gv = numpy.random.randn(2, 3, 4)
    gradient_check.check_double_backward(
        functions.routing, cupy_device.send(u_hat), cupy_device.send(gv),
        cupy_device.send(numpy.random.randn(*u_hat.shape)), dtype=numpy.float64,
        atol=1e-4, rtol=1e-3)


# 2. Training steps: the same weights and batches on two devices


def lockstep_training(models, devices, batches, alpha=1e-3):
    """Adam on each of ``models`` (moved to its device) over ``batches``, in lockstep: at
    each step every model computes its loss and gradients, then all update with the
    first model's gradients. So all follow one trajectory, and each step compares the
    devices from the same weights, rounding apart. Left to their own gradients they
    drift apart: measured on the CPU, one ulp on the weights makes hundreds of the
    decoder's weights differ by up to 8% of their array's largest after 5 steps (a ReLU
    that rounding puts on the other side of 0 changes a row of the gradient, and Adam
    makes that a step of ``alpha``).

    Returns, for each model, ``(losses, grads, weights)``: each step's loss and
    gradients, and the final weights, on the CPU.
    """
    runs = []
    for model, device in zip(models, devices):
        model.to_device(device)
        optimizer = chainer.optimizers.Adam(alpha=alpha)
        optimizer.setup(model)
        reporter = chainer.Reporter()
        reporter.add_observer('main', model)
        runs.append(SimpleNamespace(model=model, device=device, optimizer=optimizer,
                                    reporter=reporter, losses=[], grads=[]))
    for x, t in batches:
        for run in runs:
            with run.reporter.scope({}):
                loss = run.model(run.device.send(x), run.device.send(t))
            run.model.cleargrads()
            loss.backward()
            run.losses.append(float(loss.array))
            # copies: to_cpu passes NumPy arrays through, and p.grad is overwritten below
            run.grads.append({name: to_cpu(p.grad).copy()
                              for name, p in run.model.namedparams()})
        for run in runs:
            for name, p in run.model.namedparams():
                p.grad[...] = run.device.send(runs[0].grads[-1][name])
            run.optimizer.update()
    return [(run.losses, run.grads,
             {name: to_cpu(p.array) for name, p in run.model.namedparams()}) for run in runs]


def assert_arrays_close(want, got, what):
    """Every array of ``got`` equals ``want``'s to ``rtol`` 1e-3 and ``atol`` 1e-4 of the
    array's largest value; the message names every array that does not."""
    bad = []
    for name in want:
        scale = float(numpy.abs(want[name]).max()) or 1.0
        diff = numpy.abs(got[name] - want[name])
        n_bad = int((diff > 1e-3 * numpy.abs(want[name]) + 1e-4 * scale).sum())
        if n_bad:
            bad.append('{} {}: {} of {} values differ, by up to {:.1e} of its largest'.format(
                what, name, n_bad, diff.size, diff.max() / scale))
    assert not bad, '\n'.join(bad)


def assert_training_matches(device_a, device_b, mnist_dir, n_step=5, batchsize=16,
                            fast_b=True):
    """Adam steps in lockstep on two devices (``fast_b=False``: the second model runs
    the plain equations): the same losses, gradients and weights to float32 tolerance."""
    train, _ = get_mnist(data_dir=mnist_dir, n_train=n_step * batchsize, n_test=1)
    x, t = chainer.dataset.concat_examples(train)
    batches = [(x[i:i + batchsize], t[i:i + batchsize])
               for i in range(0, len(t), batchsize)]
    model = CapsNet(reconstruct=True)
    twin = copy.deepcopy(model)
    twin.fast_kernels = fast_b
    start = model.conv1.W.array.copy()
    (losses_a, grads_a, weights_a), (losses_b, grads_b, weights_b) = lockstep_training(
        (model, twin), (device_a, device_b), batches)
    assert numpy.isfinite(losses_a).all()
    assert not numpy.allclose(weights_a['/conv1/W'], start, rtol=1e-3, atol=0)  # it trained
    numpy.testing.assert_allclose(losses_a, losses_b, rtol=1e-4)
    for step, (want, got) in enumerate(zip(grads_a, grads_b), 1):
        assert_arrays_close(want, got, 'gradient of step {}:'.format(step))
    assert_arrays_close(weights_a, weights_b, 'weights:')


def test_training_steps_match_across_devices_helper_on_the_cpu(mnist_dir):
    assert_training_matches(chainer.get_device('@numpy'), chainer.get_device('@numpy'),
                            mnist_dir, n_step=2)


def test_training_steps_of_the_fast_kernels_match_the_plain_equations(mnist_dir):
    """The helper's comparison on the CPU: the fast kernels against the plain equations
    (Chainer's convolution), 2 steps on real digits, whose blank patches give conv1
    exact zeros at initialization."""
    assert_training_matches(chainer.get_device('@numpy'), chainer.get_device('@numpy'),
                            mnist_dir, n_step=2, fast_b=False)


@gpu
@pytest.mark.parametrize('fast_on_gpu, cuda_kernels', [(True, False), (False, False),
                                                       (True, True)],
                         ids=['our-conv', 'chainer-conv', 'our-conv+cuda-kernels'])
def test_gpu_training_steps_match_the_cpu(cupy_device, mnist_dir, monkeypatch,
                                          fast_on_gpu, cuda_kernels):
    """5 Adam steps with reconstruction, from the same weights on the same 16-digit
    batches, in lockstep: the losses, gradients and weights agree to float32
    tolerance, with either convolution on the GPU, and with the CUDA kernels of the
    convolution's im2col and col2im, the routing's element-wise steps and the margin
    loss."""
    monkeypatch.setattr(links.Convolution2D, 'fast_on_gpu', fast_on_gpu)
    monkeypatch.setattr(conv_cuda, 'ENABLED', cuda_kernels)
    monkeypatch.setattr(routing_cuda, 'ENABLED', cuda_kernels)
    monkeypatch.setattr(margin_kernel, 'ENABLED', cuda_kernels)
    assert_training_matches(chainer.get_device('@numpy'), cupy_device, mnist_dir)


# 3. Snapshots: taken on one device, resumed on the other


@pytest.fixture(scope='module')
def straight_cpu_run(tmp_path_factory, mnist_dir):
    """Two uninterrupted epochs on the CPU."""
    folder = tmp_path_factory.mktemp('straight')
    proc = run_train(['--data-dir', mnist_dir, '-g', '-1', '-e', '2'] + TINY, folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder


@gpu
@pytest.mark.parametrize('first, second', [('0', '-1'), ('-1', '0')],
                         ids=['gpu-then-cpu', 'cpu-then-gpu'])
def test_snapshot_resumes_on_the_other_device(cupy_device, straight_cpu_run, tmp_path,
                                              mnist_dir, first, second):
    """Epoch 1 on one device, --resume to epoch 2 on the other: the same weights and
    log as two epochs on the CPU, to float32 tolerance."""
    base = ['--data-dir', mnist_dir] + TINY
    proc = run_train(base + ['-g', first, '-e', '1'], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = run_train(base + ['-g', second, '-e', '2', '--resume'], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Resuming from' in proc.stdout
    want, got = (snapshot_weights(str(folder / 'result' / 'snapshot_epoch_2'))
                 for folder in (straight_cpu_run, tmp_path))
    assert want.keys() == got.keys() and len(want) > 0
    assert_arrays_close(want, got, 'weights of epoch 2:')
    logs = (read_log(str(folder / 'result')) for folder in (straight_cpu_run, tmp_path))
    for a, b in zip(*logs):
        assert a['epoch'] == b['epoch'] and a['iteration'] == b['iteration']
        for key in ('main/loss', 'validation/main/loss', 'validation/main/accuracy'):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
