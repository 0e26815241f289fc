"""Data-parallel training with ChainerMN: the pieces on one process, and train.py under
``mpiexec -n 2`` on the CPU (``naive`` communicator).

The MPI tests need mpi4py and an ``mpiexec`` (``pip install -e '.[mpi]'``; ``make test``
installs them) and are skipped with the reason where they are missing. They train on a
few real digits for a few iterations.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer import cli
from capsnet_chainer import distributed
from capsnet_chainer.augment import RandomShift
from capsnet_chainer.random_state import SeededShuffleIterator
from conftest import REPO
from conftest import run_train
from test_dependability import assert_same_state
from test_dependability import one_error_line
from test_dependability import run_state

MPIEXEC = shutil.which('mpiexec', path=os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
HAVE_MPI4PY = importlib.util.find_spec('mpi4py') is not None
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or not HAVE_MPI4PY,
    reason='needs mpi4py and mpiexec: {}'.format(distributed.INSTALL_LINE))

#: 64 digits, global batch 16: 4 iterations an epoch.
RUN = ['--n-train', '64', '--n-test', '32', '-b', '16', '--reconstruct', '--save', 'best',
       '-o', 'result']
#: Float32 sums in another order: the same model to this relative tolerance (of each
#: array's largest value).
RTOL = 1e-4
#: No MPI job may take longer than this; one that does hangs.
TIMEOUT = 240


def mpi_env(**extra):
    # Open MPI's mpiexec refuses to run as root (as in containers) without these two;
    # MPICH's ignores them
    return dict(os.environ, PYTHONPATH=REPO, MPLBACKEND='Agg', OMPI_ALLOW_RUN_AS_ROOT='1',
                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1', **extra)


def run_mpi(n, args, cwd, timeout=TIMEOUT, env=None):
    """``mpiexec -n N python train.py ARGS --communicator naive`` in ``cwd``."""
    command = [MPIEXEC, '-n', str(n), sys.executable, os.path.join(REPO, 'train.py')]
    return subprocess.run(command + list(args) + ['--communicator', 'naive'],
                          cwd=str(cwd), env=env or mpi_env(), capture_output=True,
                          text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def snapshot(folder, name):
    with numpy.load(os.path.join(str(folder), 'result', name)) as npz:
        return {k: npz[k] for k in npz.files if k != '_snapshot_elapsed_time'}


def read_log(folder):
    with open(os.path.join(str(folder), 'result', 'log')) as f:
        return json.load(f)


def assert_same_training(a, b, name):
    """The snapshots ``name`` of runs ``a`` and ``b`` hold the same model to float32
    tolerance, the same iterator, random states and schedule exactly, and their logs
    agree."""
    snap_a, snap_b = snapshot(a, name), snapshot(b, name)
    assert sorted(snap_a) == sorted(snap_b)
    log_key = 'extensions/LogReport/_log'
    for key in snap_a:
        x, y = snap_a[key], snap_b[key]
        if key == log_key:
            continue
        if key.startswith(('updater/model:', 'updater/optimizer:')) and x.dtype.kind == 'f':
            scale = float(numpy.abs(x).max()) if x.size else 0.0
            numpy.testing.assert_allclose(y, x, rtol=RTOL, atol=RTOL * scale, err_msg=key)
        else:
            numpy.testing.assert_array_equal(y, x, err_msg=key)
    log_a, log_b = read_log(a), read_log(b)
    assert len(log_a) == len(log_b)
    for entry_a, entry_b in zip(log_a, log_b):
        assert sorted(entry_a) == sorted(entry_b)
        for key in entry_a:
            if key != 'elapsed_time' and not key.startswith('time/'):
                assert entry_b[key] == pytest.approx(entry_a[key], rel=RTOL), key


# The pieces, in one process


class FakeComm(object):
    def __init__(self, rank, size, intra_rank=None):
        self.rank, self.size = rank, size
        self.intra_rank = rank if intra_rank is None else intra_rank


def test_scattered_batches_are_the_slices_of_the_global_batches():
    data = numpy.arange(37)
    whole = SeededShuffleIterator(data, 12, seed=5)
    parts = [distributed.ScatteredBatchIterator(data, 12, 5, rank, 3) for rank in range(3)]
    for _ in range(10):  # across several epochs (37 is no multiple of 12)
        expected = whole.next()
        got = [p.next() for p in parts]
        assert [len(g) for g in got] == [4, 4, 4]
        assert sum((list(g) for g in got), []) == list(expected)
        for p in parts:
            assert p.epoch_detail == whole.epoch_detail
            assert p.is_new_epoch == whole.is_new_epoch
    with pytest.raises(ValueError):
        distributed.ScatteredBatchIterator(data, 10, 5, 0, 3)


@pytest.mark.parametrize('per_image', [False, True])
def test_shift_parts_are_the_slices_of_one_converter(per_image):
    x = numpy.random.RandomState(0).rand(12, 1, 6, 6).astype(numpy.float32)
    batch = [(x[i], numpy.int32(i)) for i in range(12)]
    whole = RandomShift(2, per_image=per_image, seed=3)
    parts = [RandomShift(2, per_image=per_image, seed=3, part=(i, 3)) for i in range(3)]
    for _ in range(4):
        expected, _ = whole(batch)
        got = numpy.concatenate([p(batch[4 * i:4 * (i + 1)])[0] for i, p in enumerate(parts)])
        numpy.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError):
        RandomShift(2, part=(3, 3))


def test_global_batch_must_divide_among_the_processes():
    assert distributed.local_batchsize(256, None) == 256
    assert distributed.local_batchsize(256, FakeComm(0, 4)) == 64
    with pytest.raises(cli.CLIError) as e:
        distributed.local_batchsize(15, FakeComm(0, 2))
    assert e.value.exit_code == cli.EXIT_USAGE
    assert 'global batch' in str(e.value) and 'multiple of 2' in str(e.value)


def test_test_set_parts_cover_it_once():
    data = numpy.arange(10)
    parts = [distributed.shard(data, FakeComm(r, 3)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 4]
    assert sum((list(p) for p in parts), []) == list(data)
    assert distributed.shard(data, None) is data


def test_each_rank_takes_the_gpu_of_its_local_rank():
    assert distributed.rank_device(-1, None, FakeComm(1, 2)) == (-1, None)
    assert distributed.rank_device(0, None, FakeComm(5, 8, intra_rank=1)) == (1, None)
    assert distributed.rank_device(2, None, FakeComm(1, 2)) == (3, None)
    assert distributed.rank_device(0, '@cupy:0', None) == (0, '@cupy:0')
    with pytest.raises(cli.CLIError):
        distributed.rank_device(-1, '@cupy:1', FakeComm(0, 2))


def test_launcher_detection():
    assert not distributed.launched_by_mpi({'HOME': '/'})
    assert distributed.launched_by_mpi({'PMI_RANK': '0'})
    assert distributed.launched_by_mpi({'OMPI_COMM_WORLD_SIZE': '2'})


# Clear errors


def test_unknown_communicator_lists_the_choices(tmp_path):
    line = one_error_line(run_train(['--communicator', 'nccl2'] + RUN, tmp_path),
                          cli.EXIT_USAGE)
    for name in distributed.COMMUNICATORS:
        assert name in line


def test_gpu_communicator_on_the_cpu_is_refused(tmp_path):
    line = one_error_line(run_train(['--communicator', 'pure_nccl'] + RUN, tmp_path),
                          cli.EXIT_USAGE)
    assert 'needs GPUs' in line and '--communicator naive' in line


def test_missing_mpi4py_names_the_install_line(tmp_path):
    fake = tmp_path / 'fake' / 'mpi4py'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ImportError('No module named mpi4py')\n")
    env = mpi_env()
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path / 'fake'), REPO])
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '--communicator',
                           'naive'] + RUN, cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=120)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'mpi4py' in line and distributed.INSTALL_LINE in line


@pytest.mark.skipif(not HAVE_MPI4PY, reason='needs mpi4py: ' + distributed.INSTALL_LINE)
def test_communicator_without_mpiexec_says_how_to_launch(tmp_path):
    env = {k: v for k, v in mpi_env().items() if k not in distributed.LAUNCHER_VARIABLES}
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '--communicator',
                           'naive'] + RUN, cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=120)
    line = one_error_line(proc, cli.EXIT_USAGE)
    assert 'not started by mpiexec' in line and 'mpiexec -n N python train.py' in line
    assert not os.path.exists(str(tmp_path / 'result'))


# Under mpiexec -n 2


@needs_mpi
# Per image: slow (10 s more); the unit test above checks the converter's parts.
@pytest.mark.parametrize('shift', ['per-batch', pytest.param('per-image',
                                                             marks=pytest.mark.slow)])
def test_two_processes_train_the_model_of_one(tmp_path, mnist_dir, shift):
    """Same global batch: the weights, Adam's moments, the iterator, the random states
    and the log of 2 processes are those of 1 process (4 steps; 2 per image)."""
    args = ['--data-dir', mnist_dir, '-e', '1'] + RUN
    if shift == 'per-image':
        args += ['--shift-per-image', '--n-train', '32']  # 2 steps
    one, two = tmp_path / 'one', tmp_path / 'two'
    one.mkdir()
    two.mkdir()
    ok(run_train(args, one))
    proc = ok(run_mpi(2, args, two))
    assert proc.stdout.count('# processes: 2') == 1  # rank 0 alone prints
    assert '8 images of each batch per process' in proc.stdout
    assert_same_training(one, two, 'snapshot_epoch_1')
    with numpy.load(str(two / 'best')) as npz:
        assert json.loads(str(npz['capsnet_chainer/meta']))['processes'] == 2


#: The variable that holds a process's rank: MPICH's, Open MPI's, PMIx's
RANK_VARIABLES = (b'PMI_RANK=', b'OMPI_COMM_WORLD_RANK=', b'PMIX_RANK=')


def _rank_pid(tag, rank):
    """The pid of the train.py process of MPI rank ``rank`` whose environment holds
    ``tag``, under MPICH or Open MPI."""
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/{}/environ'.format(name), 'rb') as f:
                environ = f.read().split(b'\0')
            with open('/proc/{}/cmdline'.format(name), 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        if (b'CAPSNET_TEST_TAG=' + tag.encode() in environ and b'train.py' in cmdline
                and any(v + str(rank).encode() in environ for v in RANK_VARIABLES)):
            return int(name)
    return None


@needs_mpi
@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the ranks through /proc')
def test_sigkill_of_one_rank_then_resume_is_exact(tmp_path, mnist_dir):
    """Rank 1 killed with SIGKILL after the snapshot of iteration 2: mpiexec ends the
    job; the same command with --resume ends where an uninterrupted 2-process run
    ends, bit for bit (snapshot, log, best model)."""
    args = ['--data-dir', mnist_dir, '-e', '1', '--snapshot-every', '2'] + RUN
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    straight.mkdir()
    killed.mkdir()
    ok(run_mpi(2, args, straight))

    tag = uuid.uuid4().hex
    command = [MPIEXEC, '-n', '2', sys.executable, os.path.join(REPO, 'train.py')] + args \
        + ['--communicator', 'naive']
    with open(str(killed / 'first.log'), 'w') as log:
        proc = subprocess.Popen(command, cwd=str(killed), env=mpi_env(CAPSNET_TEST_TAG=tag),
                                stdout=log, stderr=subprocess.STDOUT)
    out = killed / 'result'
    end = time.time() + TIMEOUT
    while not (out / 'snapshot_iter_2').exists():
        assert proc.poll() is None and time.time() < end, 'no snapshot before the kill'
        time.sleep(0.01)
    pid = _rank_pid(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)  # the job ends: nothing hangs
    assert proc.returncode != 0
    assert not (out / 'snapshot_epoch_1').exists()

    resumed = ok(run_mpi(2, args + ['--resume'], killed))
    assert 'Resuming from' in resumed.stdout
    assert_same_state(run_state(straight, 'snapshot_epoch_1'),
                      run_state(killed, 'snapshot_epoch_1'))


@needs_mpi
def test_one_process_snapshot_resumes_under_two_and_back(tmp_path, mnist_dir):
    """Epoch 1 on 1 process, epoch 2 on 2 processes, epoch 3 on 1 process: the model of 3
    epochs on 1 process (global batch 16 throughout)."""
    args = ['--data-dir', mnist_dir, '--n-train', '32', '--n-test', '16', '-b', '16',
            '--reconstruct', '--save', 'best', '-o', 'result']
    straight, mixed = tmp_path / 'straight', tmp_path / 'mixed'
    straight.mkdir()
    mixed.mkdir()
    ok(run_train(args + ['-e', '3'], straight))
    ok(run_train(args + ['-e', '1'], mixed))
    assert 'Resuming from' in ok(run_mpi(2, args + ['-e', '2', '--resume'], mixed)).stdout
    assert 'Resuming from' in ok(run_train(args + ['-e', '3', '--resume'], mixed)).stdout
    assert_same_training(straight, mixed, 'snapshot_epoch_3')


@needs_mpi
def test_batch_that_does_not_divide_is_refused(tmp_path, mnist_dir):
    """A global batch that 2 processes cannot split: one clear error, no file, no hang
    (also when resuming a 1-process snapshot with that batch)."""
    args = ['--data-dir', mnist_dir, '--n-train', '30', '--n-test', '8', '-b', '15', '-e',
            '1', '-o', 'result']
    proc = run_mpi(2, args, tmp_path)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert 'does not divide it; choose a multiple of 2' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'result').exists()


@needs_mpi
def test_an_error_on_one_rank_ends_every_rank(tmp_path, mnist_dir):
    """Rank 1 alone cannot read its data (its --data-dir is missing) while rank 0 waits
    for it: the job ends with rank 1's error instead of hanging."""
    train = [sys.executable, os.path.join(REPO, 'train.py')]
    args = RUN + ['-e', '1', '--communicator', 'naive']
    missing = str(tmp_path / 'no_such_folder')
    command = [MPIEXEC, '-n', '1'] + train + ['--data-dir', mnist_dir] + args \
        + [':', '-n', '1'] + train + ['--data-dir', missing] + args
    tic = time.time()
    proc = subprocess.run(command, cwd=str(tmp_path), env=mpi_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert 'error: ' in proc.stderr and 'no_such_folder' in proc.stderr, proc.stderr
    assert time.time() - tic < TIMEOUT


testing.run_module(__name__, __file__)
