"""Training iterators that keep their random order in snapshots: one process's, and
each rank's slice of the same global batches (data-parallel training,
:mod:`capsnet_chainer.training.distributed`)."""

import numpy
from chainer.iterators import SerialIterator
from chainer.iterators import ShuffleOrderSampler

from capsnet_chainer.random_state import serialize_random_state


class SeededShuffleIterator(SerialIterator):
    """A shuffling :class:`SerialIterator` with its own RNG, saved in snapshots.

    Chainer's iterator saves the current epoch's order but not the generator that draws
    the next ones; this one saves both, so a resumed run sees the same batches.
    """

    def __init__(self, dataset, batch_size, seed):
        self._rng = numpy.random.RandomState(seed)
        super().__init__(dataset, batch_size, repeat=True,
                         order_sampler=ShuffleOrderSampler(self._rng))

    def serialize(self, serializer):
        super().serialize(serializer)
        serialize_random_state(serializer['rng'], self._rng)


class ScatteredBatchIterator(SeededShuffleIterator):
    """Every rank's own contiguous slice of each global batch.

    Every rank draws the same order and the same global batches of ``batch_size``
    images from ``seed``; rank ``rank`` of ``size`` returns images ``[rank * b,
    (rank + 1) * b)`` of each, with ``b = batch_size / size``. Its position, epoch and
    state in snapshots are the global iterator's, the same on every rank and the same
    as one process's.

    Args:
        dataset: The whole training set.
        batch_size (int): The global batch; ``size`` must divide it.
        seed (int): Seed of the order.
        rank (int): This rank.
        size (int): The number of ranks.
    """

    def __init__(self, dataset, batch_size, seed, rank=0, size=1):
        if batch_size % size:
            raise ValueError('batch_size {} is not divisible by {} ranks'.format(
                batch_size, size))
        super().__init__(dataset, batch_size, seed)
        self.rank = rank
        self.size = size

    def __next__(self):
        batch = super().__next__()
        n = len(batch) // self.size
        return batch[self.rank * n:(self.rank + 1) * n]

    next = __next__
