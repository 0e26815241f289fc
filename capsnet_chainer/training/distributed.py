"""Data-parallel training over MPI with ChainerMN (``train.py --communicator NAME``).

``mpiexec -n N python train.py --communicator naive ...`` starts N processes (ranks)
that train one model together, as ChainerMN's own MNIST example does: the multi-node
optimizer averages the gradients of all ranks every step, each rank trains on its part
of every batch and evaluates its part of the test set, and only rank 0 prints, logs,
plots and writes snapshots and the best model. What N ranks compute is what one process
computes:

* ``--batchsize`` is the *global* batch, the images of one step over all ranks; each
  rank takes ``batchsize / N`` of them (it must divide). Epochs, iterations and the
  learning-rate schedule therefore count the same steps as with one process.
* Every rank draws the same global order of the training set from ``--seed`` and keeps
  its own contiguous slice of each global batch
  (:class:`~capsnet_chainer.training.iterators.ScatteredBatchIterator`): rank ``r`` of
  ``N`` takes images ``[r * B/N, (r + 1) * B/N)`` of the batch. That is how the training
  data is scattered; every rank loads the data set itself.
* The shift augmentation's generator is seeded alike on every rank. One shift per
  batch (the default) is then the same on all ranks, as for one process; with
  ``--shift-per-image`` each rank draws the shifts of the whole global batch and keeps
  its slice (:class:`~capsnet_chainer.datasets.augment.RandomShift`'s ``part``).
* The gradient all-reduce is a mean of the ranks' batch means, which is the mean over
  the global batch since the slices are equal: N ranks train the model that one
  process trains, up to float32 rounding (the sums are ordered differently).
* The training loss and accuracy in the log are averaged over the ranks every step
  (:class:`MeanObservations`). The test set is split into N contiguous parts, one per
  rank, and ChainerMN's multi-node evaluator averages the ranks' results: equal to one
  process's when the parts hold whole test batches of equal size (e.g. 10,000 images,
  ``--test-batchsize 100``, N = 2, 4 or 5); otherwise a part's batches weigh a little
  more or less. ``--test-batchsize`` is per rank.

Every rank's training state is the same (the weights after the all-reduce, Adam's
moments, the iterator, every random generator), so rank 0's snapshot holds the whole
run: on ``--resume`` rank 0 reads it and sends it to the others (no shared file system
is needed). A snapshot of one process resumes under N and back, as long as N divides
the batch.

An error on one rank ends every rank (:func:`abort_on_failure`, and ChainerMN's global
except hook for unexpected exceptions), so that no rank waits forever for the others.
"""

import io
import os
import sys
import time

import chainer
import numpy
from chainer import training
from chainer.dataset import convert
from chainer.training import extensions

from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.resident import as_batch
from capsnet_chainer.datasets.resident import index_dataset
from capsnet_chainer.datasets.resident import ResidentBatches
from capsnet_chainer.datasets.resident import ResidentShift
from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError
from capsnet_chainer.training.iterators import ScatteredBatchIterator
from capsnet_chainer.training.iterators import SeededShuffleIterator
from capsnet_chainer.training.nonfinite import to_float

#: ChainerMN's communicators, and where they run.
COMMUNICATORS = {
    'naive': 'CPU; MPI only (GPUs only with a CUDA-aware MPI)',
    'flat': 'GPU; MPI on whole gradient buffers',
    'non_cuda_aware': 'GPU; NCCL within a machine, MPI between machines',
    'pure_nccl': 'GPU; NCCL (the fastest on GPUs)',
}
#: The communicators that need GPUs.
GPU_COMMUNICATORS = ('flat', 'non_cuda_aware', 'pure_nccl')
#: How to install mpi4py and MPICH (the ``mpi`` extra of pyproject.toml).
INSTALL_LINE = "PIP_CONSTRAINT=constraints.txt pip install -e '.[mpi]'"
#: Environment variables that MPI launchers (MPICH's Hydra, Open MPI, PMIx, Slurm) set
#: in the processes they start.
LAUNCHER_VARIABLES = ('PMI_RANK', 'PMI_SIZE', 'PMIX_RANK', 'OMPI_COMM_WORLD_SIZE',
                      'OMPI_COMM_WORLD_RANK', 'MPI_LOCALRANKID', 'SLURM_PROCID')
#: How long a failing rank waits before it aborts the job, so that the MPI launcher
#: forwards its error message first.
ABORT_DELAY = 0.3


# The communicator


def launched_by_mpi(environ=None):
    """Whether an MPI launcher (``mpiexec``, ``mpirun``, ``srun``) started this process."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in LAUNCHER_VARIABLES)


def create_communicator(name, use_gpu=False):
    """A ChainerMN communicator (``None`` for no ``name``: one process), or an error
    saying what to do.

    Args:
        name (str): One of :data:`COMMUNICATORS`, or ``None``.
        use_gpu (bool): Whether the ranks train on GPUs.

    Raises:
        SettingError: The name is unknown; it needs GPUs and ``use_gpu`` is false; the
            process was not started by ``mpiexec``.
        CapsNetError: mpi4py or the MPI library is missing; the communicator cannot be
            created (e.g. NCCL missing).
    """
    if name is None:
        return None
    if name not in COMMUNICATORS:
        raise SettingError('communicator', 'unknown communicator; choose one of {}'.format(
            ', '.join('{} ({})'.format(k, v) for k, v in COMMUNICATORS.items())), name)
    if name in GPU_COMMUNICATORS and not use_gpu:
        raise SettingError('communicator', 'needs GPUs: add -g 0 (each rank then uses '
                           'GPU 0 + its rank on its machine), or use --communicator naive '
                           'on the CPU', name)
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        raise CapsNetError('--communicator {}: training on several processes needs mpi4py '
                           'and an MPI library ({}: {}); install both with: {}'.format(
                               name, type(e).__name__, e, INSTALL_LINE)) from None
    if MPI.COMM_WORLD.size == 1 and not launched_by_mpi():
        raise SettingError(
            'communicator', 'this process was not started by mpiexec, so it would train '
            'alone; launch N processes with: mpiexec -n N python train.py --communicator '
            '{} ... (or leave out --communicator to train in one process)'.format(name),
            name)
    import chainermn
    try:
        comm = chainermn.create_communicator(name, MPI.COMM_WORLD)
    except Exception as e:  # e.g. pure_nccl without NCCL
        raise CapsNetError('--communicator {}: cannot create the communicator ({}: {})'
                           .format(name, type(e).__name__, ' '.join(str(e).split()))) \
            from None
    if comm.size > 1 and sys.excepthook is sys.__excepthook__:
        # An unexpected exception on one rank calls MPI_Abort: the others end too.
        chainermn.global_except_hook.add_hook()
    return comm


def abort_on_failure(exit_code):
    """Ends every rank of the MPI job when this one fails (``exit_code`` non-zero).

    A rank that merely exited would leave the others waiting in their next collective
    operation forever. Does nothing outside an MPI job of several processes.
    """
    if not exit_code or 'mpi4py.MPI' not in sys.modules:
        return
    MPI = sys.modules['mpi4py.MPI']
    if not MPI.Is_initialized() or MPI.Is_finalized() or MPI.COMM_WORLD.size == 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(ABORT_DELAY)
    MPI.COMM_WORLD.Abort(exit_code)


def rank_device(gpu, device, comm):
    """``(gpu, device)`` for :func:`~capsnet_chainer.device.get_device` on this rank.

    With a communicator, ``-g G`` (``G >= 0``) means GPUs: rank ``r`` uses GPU
    ``G + intra_rank``, its rank among the processes of its machine. ``--device`` may
    then only name the CPU.
    """
    if comm is None:
        return gpu, device
    if device is not None:
        if device.startswith('@cupy'):
            raise SettingError('device', 'with --communicator: pass -g G instead (rank r '
                               'of a machine then uses GPU G + r)', device)
        return gpu, device
    return (gpu + comm.intra_rank if gpu >= 0 else gpu), None


def local_batchsize(batchsize, comm):
    """This rank's share of the global ``--batchsize``; refuses one that does not divide."""
    if comm is None:
        return batchsize
    if batchsize % comm.size:
        raise SettingError(
            'batchsize', 'the global batch, split equally among the {} processes, and {} '
            'does not divide it; choose a multiple of {}'.format(
                comm.size, comm.size, comm.size), batchsize)
    return batchsize // comm.size


def is_writer(comm):
    """Whether this process prints and writes files: rank 0, or the only process."""
    return comm is None or comm.rank == 0


def quiet_unless_writer(comm):
    """Silences this rank's standard output unless it is rank 0 (errors still show)."""
    if not is_writer(comm):
        sys.stdout = open(os.devnull, 'w')


def bcast(value, comm):
    """Rank 0's ``value`` on every rank (``value`` itself without a communicator)."""
    return value if comm is None else comm.mpi_comm.bcast(value, root=0)


# Data


def train_iterator(dataset, batchsize, seed, comm):
    """The training iterator: the global batches of ``batchsize`` in an order drawn from
    ``seed``; under a communicator, this rank's slice of each."""
    if comm is None:
        return SeededShuffleIterator(dataset, batchsize, seed)
    return ScatteredBatchIterator(dataset, batchsize, seed, comm.rank, comm.size)


def on_gpu(device):
    """Whether ``device`` is a GPU, where the paths below apply (the tests force them on
    the CPU by replacing this function)."""
    return device.xp is not numpy


#: Keep the training set on the GPU and shift it there (:func:`train_pipeline`); the
#: batches are the same either way. Off until its gpu tests have passed on a GPU and its
#: speed is measured there (bench/README.md, "Prepared, not yet measured"): ``False``
#: keeps the set on the host, as on the CPU.
RESIDENT_ON_GPU = False
#: The largest set (its images' bytes) that :func:`train_pipeline` or
#: :func:`test_iterator` keeps on a GPU.
RESIDENT_MAX_BYTES = 2 ** 31


def keep_on_gpu(dataset, comm, device):
    """Whether ``dataset`` of ``(x, t, ...)`` examples is kept on ``device``: with
    :data:`RESIDENT_ON_GPU`, on a GPU in one process, images of at most
    :data:`RESIDENT_MAX_BYTES`."""
    return (RESIDENT_ON_GPU and comm is None and device is not None and on_gpu(device)
            and len(dataset) > 0
            and numpy.asarray(dataset[0][0]).nbytes * len(dataset) <= RESIDENT_MAX_BYTES)


def train_pipeline(data, batchsize, seed, comm, device):
    """The training iterator and converter of ``data`` (a protocol's
    :class:`~capsnet_chainer.datasets.protocol_base.Data`) on ``device``.

    They are :func:`train_iterator` and ``data.converter``, except on a GPU in one
    process with :class:`~capsnet_chainer.datasets.augment.RandomShift`'s batches
    (MNIST, Fashion-MNIST, images without crops) of a set of at most
    :data:`RESIDENT_MAX_BYTES`: there the set is kept on the GPU, the iterator batches
    its indices in the same order and
    :class:`~capsnet_chainer.datasets.resident.ResidentShift` gathers and shifts them
    there, the same batches and the same snapshots (:data:`RESIDENT_ON_GPU`).
    """
    train = data.train
    if (keep_on_gpu(train, comm, device) and type(data.converter) is RandomShift
            and not hasattr(train, 'serialize')):
        return (train_iterator(index_dataset(len(train)), batchsize, seed, comm),
                ResidentShift(data.converter, train, device))
    return train_iterator(train, batchsize, seed, comm), data.converter


#: Check each step for NaN without a device sync (:func:`deferred_check`). Off until its
#: gpu tests have passed on a GPU and its speed is measured there, as
#: :data:`RESIDENT_ON_GPU`.
DEFERRED_CHECK_ON_GPU = False


def deferred_check(device, comm):
    """Whether the updater's non-finite check is deferred: a step's verdict kept on the
    device, where the optimizer skips a diverged step, and read by the host a step late,
    with no sync per step (:class:`~capsnet_chainer.training.nonfinite.NonFiniteCheck`).
    On a GPU in one process, with :data:`DEFERRED_CHECK_ON_GPU`; elsewhere a sync costs
    little or the ranks' optimizer has no gate."""
    return DEFERRED_CHECK_ON_GPU and comm is None and on_gpu(device)


def test_iterator(dataset, batchsize, comm, device=None):
    """An iterator over this rank's part of ``dataset`` (:func:`shard`), once, in order.

    Where :func:`keep_on_gpu` says so, the set is kept on the GPU
    (:class:`~capsnet_chainer.datasets.resident.ResidentBatches`: the same batches, not
    copied to the GPU batch by batch); :func:`evaluator` then passes them on as they are.
    """
    if keep_on_gpu(dataset, comm, device):
        return ResidentBatches(dataset, batchsize, device)
    return chainer.iterators.SerialIterator(shard(dataset, comm), batchsize, repeat=False,
                                            shuffle=False)


def shard(dataset, comm):
    """This rank's contiguous part of ``dataset`` (parts differ by at most one example).

    The same split as :func:`chainermn.scatter_dataset` without shuffling, but every
    rank cuts its part from its own copy: nothing is sent.
    """
    if comm is None or comm.size == 1:
        return dataset
    n = len(dataset)
    start, stop = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
    return chainer.datasets.SubDataset(dataset, start, stop)


# Training


def setup_optimizer(optimizer, model, comm):
    """``optimizer`` set up on ``model``; under a communicator, ChainerMN's multi-node
    optimizer around it, with rank 0's weights.

    ChainerMN's first ``update()`` only broadcasts the weights and skips the step (and so
    would the first step after every resume). Broadcasting here instead makes every
    step train, as one process does.
    """
    if comm is None:
        optimizer.setup(model)
        return optimizer
    import chainermn
    optimizer = chainermn.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    missing = [name for name, p in model.namedparams() if p.array is None]
    if missing:
        raise ValueError('parameters not initialized before training: {}'.format(missing))
    comm.bcast_data(model)
    optimizer.is_changed(model)  # records the parameters: the next update() trains
    return optimizer


def create_multi_node_evaluator(evaluator, comm):
    """ChainerMN's multi-node evaluator: the mean of the ranks' results."""
    import chainermn
    return chainermn.create_multi_node_evaluator(evaluator, comm)


class MeanObservations(training.Extension):
    """Replaces the training observations (``main/...``) by their mean over the ranks.

    Every step, so that the log's training loss and accuracy are those of the global
    batch, as one process reports them. A collective operation: every rank must have
    this extension.
    """

    # Every iteration, through a trigger with no state: an IntervalTrigger would add an
    # entry to the snapshots that a one-process run cannot resume from.
    trigger = staticmethod(lambda trainer: True)
    priority = training.PRIORITY_EDITOR  # after the updater reports, before LogReport

    def __init__(self, comm, prefix='main/'):
        self.comm = comm
        self.prefix = prefix

    def __call__(self, trainer):
        keys = sorted(k for k in trainer.observation if k.startswith(self.prefix))
        values = numpy.array([to_float(getattr(trainer.observation[k], 'array',
                                               trainer.observation[k])) for k in keys])
        total = self.comm.mpi_comm.allreduce(values)
        for key, value in zip(keys, total / self.comm.size):
            trainer.observation[key] = value


def load_snapshot(path, trainer, comm, load):
    """Restores every rank's ``trainer`` from rank 0's snapshot at ``path``.

    Rank 0 checks and loads the file with ``load(path, trainer)``, then sends its bytes
    to the other ranks, which need no access to the file.
    """
    data = None
    if comm.rank == 0:
        load(path, trainer)
        with open(path, 'rb') as f:
            data = f.read()
    data = comm.bcast_obj(data)
    if comm.rank != 0:
        with numpy.load(io.BytesIO(data), allow_pickle=False) as npz:
            chainer.serializers.NpzDeserializer(npz).load(trainer)


def evaluator(iterator, model, device, comm):
    """:class:`~chainer.training.extensions.Evaluator`, multi-node under a communicator."""
    converter = as_batch if isinstance(iterator, ResidentBatches) else convert.concat_examples
    ev = extensions.Evaluator(iterator, model, converter=converter, device=device)
    return ev if comm is None else create_multi_node_evaluator(ev, comm)
