"""The training iterators: a shuffling order drawn from the iterator's own seed and
saved in snapshots, and each rank's slice of the same global batches."""

import numpy
import pytest
from chainer import serializers
from chainer import testing

from capsnet_chainer.training.iterators import ScatteredBatchIterator
from capsnet_chainer.training.iterators import SeededShuffleIterator


def batches(iterator, n):
    return [list(iterator.next()) for _ in range(n)]


def test_seeded_order_is_a_permutation_per_epoch_and_ignores_numpys_global_state():
    data = list(range(10))
    numpy.random.seed(1)
    a = batches(SeededShuffleIterator(data, 5, seed=3), 6)
    numpy.random.seed(2)
    b = batches(SeededShuffleIterator(data, 5, seed=3), 6)
    assert a == b
    for epoch in range(3):  # two batches an epoch: every example once
        assert sorted(a[2 * epoch] + a[2 * epoch + 1]) == data
    assert a[:2] != a[2:4]  # a new order each epoch
    assert batches(SeededShuffleIterator(data, 5, seed=4), 6) != a


@pytest.mark.parametrize('position', [3, 4, 7])
def test_seeded_order_resumes_exactly_from_a_snapshot(tmp_path, position):
    """Saved mid-epoch or at an epoch's end, a restored iterator draws the batches the
    original draws, into the epochs after (Chainer's own saves the current order only)."""
    data = list(range(10))
    it = SeededShuffleIterator(data, 4, seed=5)
    batches(it, position)
    path = str(tmp_path / 'iterator.npz')
    serializers.save_npz(path, it)
    expected = batches(it, 8)
    restored = SeededShuffleIterator(data, 4, seed=99)
    serializers.load_npz(path, restored)
    assert batches(restored, 8) == expected
    with numpy.load(path) as npz:
        assert {'rng/keys', 'rng/pos', 'order', 'current_position'} <= set(npz.files)


def test_scattered_batches_are_the_slices_of_the_global_batches():
    data = numpy.arange(37)
    whole = SeededShuffleIterator(data, 12, seed=5)
    parts = [ScatteredBatchIterator(data, 12, 5, rank, 3) for rank in range(3)]
    for _ in range(10):  # across several epochs (37 is no multiple of 12)
        expected = whole.next()
        got = [p.next() for p in parts]
        assert [len(g) for g in got] == [4, 4, 4]
        assert sum((list(g) for g in got), []) == list(expected)
        for p in parts:
            assert p.epoch_detail == whole.epoch_detail
            assert p.is_new_epoch == whole.is_new_epoch
    with pytest.raises(ValueError):
        ScatteredBatchIterator(data, 10, 5, 0, 3)


def test_scattered_batches_resume_as_the_global_iterator_does(tmp_path):
    data = numpy.arange(22)
    parts = [ScatteredBatchIterator(data, 6, 1, rank, 2) for rank in range(2)]
    for p in parts:
        batches(p, 3)
    path = str(tmp_path / 'rank0.npz')
    serializers.save_npz(path, parts[0])  # rank 0's snapshot serves every rank
    expected = [batches(p, 5) for p in parts]
    for rank in range(2):
        restored = ScatteredBatchIterator(data, 6, 99, rank, 2)
        serializers.load_npz(path, restored)
        assert batches(restored, 5) == expected[rank]


testing.run_module(__name__, __file__)
