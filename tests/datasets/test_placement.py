"""The affNIST protocol's training set and expanded test set: each digit placed at random
on the 40x40 canvas, or centred there. Synthetic digits only."""

import numpy
import pytest

from capsnet_chainer.datasets import placement  # before chainer: restores numpy.sctypes

import chainer
from chainer import serializers
from chainer import testing

from conftest import ink_digits as digits


def test_canvas_is_affnists_40():
    assert placement.CANVAS == 40


def test_expand_centres_digits_at_offset_6():
    x, _ = digits(3)
    y = placement.expand(x)
    assert y.shape == (3, 1, 40, 40) and y.dtype == numpy.float32
    numpy.testing.assert_array_equal(y[:, :, 6:34, 6:34], x)
    assert numpy.count_nonzero(y) == numpy.count_nonzero(x)  # zero elsewhere
    numpy.testing.assert_array_equal(placement.expand(x[:, 0]), y)  # (N, 28, 28) too


def test_place_puts_the_top_left_corner_at_the_offsets():
    x, _ = digits(2)
    y = placement.place(x, [0, 12], [12, 3])
    numpy.testing.assert_array_equal(y[0, :, 0:28, 12:40], x[0])
    numpy.testing.assert_array_equal(y[1, :, 12:40, 3:31], x[1])
    assert numpy.count_nonzero(y) == numpy.count_nonzero(x)  # zero elsewhere
    with pytest.raises(ValueError, match='inside'):
        placement.place(x, [0, 13], [0, 0])


def find_offset(canvas, digit):
    found = [(dy, dx) for dy in range(13) for dx in range(13)
             if numpy.array_equal(canvas[:, dy:dy + 28, dx:dx + 28], digit)
             and numpy.count_nonzero(canvas) == numpy.count_nonzero(digit)]
    assert len(found) == 1
    return found[0]


def test_random_placement_puts_each_digit_whole_at_a_uniform_offset():
    x0, t0 = digits(64)
    dataset = chainer.datasets.TupleDataset(x0, t0)
    convert = placement.RandomPlacement(seed=3)
    offsets = []
    for _ in range(8):
        x, t = convert(dataset[:64])
        assert x.shape == (64, 1, 40, 40) and x.dtype == numpy.float32
        numpy.testing.assert_array_equal(t, t0)
        offsets += [find_offset(x[i], x0[i]) for i in range(64)]
    offsets = numpy.array(offsets)
    # Per image, both axes, over the whole range 0..12 (512 draws of 13 values).
    assert len(set(map(tuple, offsets[:64]))) > 40
    for axis in range(2):
        assert offsets[:, axis].min() == 0 and offsets[:, axis].max() == 12
        assert len(numpy.unique(offsets[:, axis])) == 13
    numpy.testing.assert_array_equal(dataset._datasets[0], x0)  # dataset untouched


def test_random_placement_is_seeded():
    x0, t0 = digits(16)
    batch = chainer.datasets.TupleDataset(x0, t0)[:16]
    a = placement.RandomPlacement(seed=5)(batch)[0]
    b = placement.RandomPlacement(seed=5)(batch)[0]
    c = placement.RandomPlacement(seed=6)(batch)[0]
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(a, c)


@pytest.mark.parametrize('via_file', [False, True])
def test_random_placement_resumes_the_same_placements(tmp_path, via_file):
    x0, t0 = digits(8)
    batch = chainer.datasets.TupleDataset(x0, t0)[:8]
    convert = placement.RandomPlacement(seed=1)
    for _ in range(3):
        convert(batch)
    if via_file:
        path = str(tmp_path / 'snapshot.npz')
        serializers.save_npz(path, convert)
        resumed = placement.RandomPlacement(seed=99)
        serializers.load_npz(path, resumed)
    else:
        saved = serializers.DictionarySerializer()
        convert.serialize(saved)
        resumed = placement.RandomPlacement(seed=99)
        resumed.serialize(serializers.NpzDeserializer(saved.target))
    for _ in range(4):
        numpy.testing.assert_array_equal(resumed(batch)[0], convert(batch)[0])


def test_random_placement_refuses_digits_larger_than_the_canvas():
    x0, t0 = digits(2)
    with pytest.raises(ValueError, match='fit'):
        placement.RandomPlacement(size=20)(chainer.datasets.TupleDataset(x0, t0)[:2])


def test_random_placement_parts_place_as_one_converter():
    """Two converters seeded alike, each with its half of a global batch (data-parallel
    training), place the digits exactly as one converter of the whole batch."""
    rng = numpy.random.RandomState(8)
    batch = [(rng.uniform(0, 1, (1, 28, 28)).astype(numpy.float32), numpy.int32(k))
             for k in range(8)]
    whole = placement.RandomPlacement(seed=3)
    parts = [placement.RandomPlacement(seed=3, part=(i, 2)) for i in range(2)]
    for _ in range(3):
        x, t = whole(batch)
        x0, t0 = parts[0](batch[:4])
        x1, t1 = parts[1](batch[4:])
        numpy.testing.assert_array_equal(numpy.concatenate([x0, x1]), x)
        numpy.testing.assert_array_equal(numpy.concatenate([t0, t1]), t)
    with pytest.raises(ValueError, match='part'):
        placement.RandomPlacement(part=(2, 2))


@pytest.mark.gpu
def test_random_placement_on_gpu_matches_cpu():
    cupy = pytest.importorskip('cupy')
    x0, t0 = digits(16)
    batch = chainer.datasets.TupleDataset(x0, t0)[:16]
    cpu = placement.RandomPlacement(seed=2)(batch)
    gpu = placement.RandomPlacement(seed=2)(batch, chainer.get_device('@cupy:0'))
    assert isinstance(gpu[0], cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(gpu[0]), cpu[0])
    on_device = [(cupy.asarray(x), t) for x, t in batch]  # examples already on the GPU
    numpy.testing.assert_array_equal(
        cupy.asnumpy(placement.RandomPlacement(seed=2)(on_device)[0]), cpu[0])


def test_place_keeps_the_dtype_and_channels_and_takes_one_offset_for_all():
    x = numpy.arange(2 * 3 * 2 * 2, dtype=numpy.uint8).reshape((2, 3, 2, 2)) + 1
    y = placement.place(x, 1, 2, size=5)
    assert y.shape == (2, 3, 5, 5) and y.dtype == numpy.uint8
    numpy.testing.assert_array_equal(y[:, :, 1:3, 2:4], x)
    assert numpy.count_nonzero(y) == x.size
    assert placement.place(x[:0], [], [], size=5).shape == (0, 3, 5, 5)


def test_expand_refuses_digits_larger_than_the_canvas_and_several_channels():
    with pytest.raises(ValueError, match='do not fit'):
        placement.expand(numpy.zeros((1, 28, 28), numpy.float32), size=27)
    with pytest.raises(ValueError, match='got shape'):
        placement.expand(numpy.zeros((1, 3, 28, 28), numpy.float32))


def test_random_placement_refuses_a_canvas_of_no_pixels():
    with pytest.raises(ValueError, match='size must be >= 1'):
        placement.RandomPlacement(size=0)


testing.run_module(__name__, __file__)
