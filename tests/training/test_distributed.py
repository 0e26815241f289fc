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

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer import cli
from capsnet_chainer.errors import SettingError
from capsnet_chainer.training import distributed
from capsnet_chainer.training.iterators import ScatteredBatchIterator
from capsnet_chainer.training.iterators import SeededShuffleIterator
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


def test_global_batch_must_divide_among_the_processes():
    assert distributed.local_batchsize(256, None) == 256
    assert distributed.local_batchsize(256, FakeComm(0, 4)) == 64
    with pytest.raises(SettingError) as e:
        distributed.local_batchsize(15, FakeComm(0, 2))
    assert cli.exit_code(e.value) == cli.EXIT_USAGE
    assert 'global batch' in str(e.value) and 'multiple of 2' in str(e.value)
    assert (e.value.setting, e.value.value) == ('batchsize', 15)
    assert cli.describe(e.value).startswith('--batchsize 15: the global batch, split equally '
                                            'among the 2 processes')


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
    with pytest.raises(SettingError) as e:
        distributed.rank_device(-1, '@cupy:1', FakeComm(0, 2))
    assert cli.exit_code(e.value) == cli.EXIT_USAGE
    assert cli.describe(e.value).startswith('--device @cupy:1: with --communicator: pass '
                                            '-g G instead')
    assert distributed.rank_device(0, '@numpy', FakeComm(1, 2)) == (0, '@numpy')


def test_the_check_is_deferred_on_a_gpu_in_one_process_once_switched_on(monkeypatch):
    cpu = chainer.get_device('@numpy')
    gpu = type('Gpu', (), {'xp': object()})()  # a stand-in GPU
    assert not distributed.deferred_check(gpu, None)  # off until measured
    monkeypatch.setattr(distributed, 'DEFERRED_CHECK_ON_GPU', True)
    assert distributed.deferred_check(gpu, None)
    assert not distributed.deferred_check(cpu, None)
    assert not distributed.deferred_check(gpu, FakeComm(0, 2))


def test_one_process_needs_no_communicator():
    assert distributed.create_communicator(None) is None
    assert distributed.create_communicator(None, use_gpu=True) is None
    assert distributed.is_writer(None)
    assert distributed.is_writer(FakeComm(0, 2)) and not distributed.is_writer(FakeComm(1, 2))
    value = object()
    assert distributed.bcast(value, None) is value
    stdout = sys.stdout
    distributed.quiet_unless_writer(None)
    distributed.quiet_unless_writer(FakeComm(0, 2))
    assert sys.stdout is stdout
    distributed.abort_on_failure(0)  # nothing to end outside an MPI job


@pytest.mark.parametrize('name, use_gpu, message', [
    ('nccl2', False, 'unknown communicator; choose one of naive (CPU'),
    ('pure_nccl', False, 'needs GPUs: add -g 0'),
    ('flat', False, 'or use --communicator naive on the CPU'),
])
def test_communicators_that_cannot_work_are_setting_errors(name, use_gpu, message):
    with pytest.raises(SettingError) as e:
        distributed.create_communicator(name, use_gpu=use_gpu)
    assert (e.value.setting, e.value.value) == ('communicator', name)
    assert message in e.value.message
    assert cli.describe(e.value).startswith('--communicator {}: '.format(name))


def test_optimizer_is_set_up_on_the_model_without_a_communicator():
    model = chainer.links.Linear(2, 3)
    adam = chainer.optimizers.Adam()
    optimizer = distributed.setup_optimizer(adam, model, None)
    assert optimizer is adam and optimizer.target is model


def test_iterators_of_one_process_and_of_a_rank():
    data = numpy.arange(20)
    one = distributed.train_iterator(data, 4, 7, None)
    assert isinstance(one, SeededShuffleIterator)
    same = SeededShuffleIterator(data, 4, 7)
    for _ in range(6):
        numpy.testing.assert_array_equal(one.next(), same.next())
    rank = distributed.train_iterator(data, 4, 7, FakeComm(1, 2))
    assert isinstance(rank, ScatteredBatchIterator)
    assert (rank.rank, rank.size, rank.batch_size) == (1, 2, 4)
    whole = SeededShuffleIterator(data, 4, 7)
    for _ in range(6):
        numpy.testing.assert_array_equal(rank.next(), whole.next()[2:])
    test = distributed.test_iterator(data, 8, None)
    assert [list(b) for b in test] == [list(range(8)), list(range(8, 16)), list(range(16, 20))]
    part = distributed.test_iterator(data, 8, FakeComm(2, 3))  # examples 13..19
    assert [list(b) for b in part] == [list(range(13, 20))]
    assert not part.repeat


def test_evaluator_of_one_process_is_chainers():
    data = chainer.datasets.TupleDataset(numpy.zeros((4, 2), numpy.float32),
                                         numpy.zeros(4, numpy.int32))
    model = chainer.links.Classifier(chainer.links.Linear(2, 3))
    evaluator = distributed.evaluator(distributed.test_iterator(data, 2, None), model,
                                      chainer.get_device('@numpy'), None)
    assert type(evaluator) is chainer.training.extensions.Evaluator
    reporter = chainer.Reporter()  # as the trainer's
    reporter.add_observer('main', model)
    with reporter.scope({}):
        result = evaluator.evaluate()
    assert set(result) == {'main/loss', 'main/accuracy'}


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
