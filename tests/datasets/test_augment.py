import numpy
import pytest

from capsnet_chainer.datasets import augment  # before chainer: restores numpy.sctypes

import chainer
from chainer import testing


def shift_reference(x, dy, dx):
    y = numpy.zeros_like(x)
    H, W = x.shape[-2:]
    for i in range(H):
        for j in range(W):
            if 0 <= i - dy < H and 0 <= j - dx < W:
                y[..., i, j] = x[..., i - dy, j - dx]
    return y


@pytest.mark.parametrize('dy, dx', [(0, 0), (1, 0), (0, -1), (2, -2), (-3, 1), (5, 0),
                                    (0, -7), (-4, -5)])
def test_shift_images_moves_pixels_with_zero_fill(dy, dx):
    x = numpy.arange(1, 2 * 3 * 4 * 5 + 1, dtype=numpy.float32).reshape((2, 3, 4, 5))
    y = augment.shift_images(x, dy, dx)
    assert y is not x
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    numpy.testing.assert_array_equal(y, shift_reference(x, dy, dx))
    assert x[0, 0, 0, 0] == 1  # input untouched


def test_shift_images_down_and_left_example():
    x = numpy.array([[[[1, 2], [3, 4]]]])
    assert augment.shift_images(x, 1, -1).tolist() == [[[[0, 0], [2, 0]]]]


@pytest.mark.gpu
def test_shift_images_on_gpu_matches_cpu():
    cupy = pytest.importorskip('cupy')
    x = numpy.random.RandomState(0).rand(2, 1, 6, 6).astype(numpy.float32)
    y = augment.shift_images(cupy.asarray(x), -2, 1)
    assert isinstance(y, cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(y), shift_reference(x, -2, 1))


def image_batch(n, seed=0, size=8):
    rs = numpy.random.RandomState(seed)
    x = (rs.rand(n, 1, size, size) + 0.5).astype(numpy.float32)  # no zeros
    t = rs.randint(0, 10, size=n).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t), x, t


def find_shift(shifted, original, max_shift):
    found = [(dy, dx) for dy in range(-max_shift, max_shift + 1)
             for dx in range(-max_shift, max_shift + 1)
             if numpy.array_equal(shifted, augment.shift_images(original[None], dy, dx)[0])]
    assert len(found) == 1
    return found[0]


def test_random_shift_per_batch():
    dataset, x0, t0 = image_batch(16)
    convert = augment.RandomShift(max_shift=2, seed=1)
    shifts = []
    for _ in range(10):
        x, t = convert(dataset[:16])
        assert x.shape == (16, 1, 8, 8)
        assert x.dtype == numpy.float32
        numpy.testing.assert_array_equal(t, t0)
        dy, dx = find_shift(x[0], x0[0], 2)
        numpy.testing.assert_array_equal(x, augment.shift_images(x0, dy, dx))
        shifts.append((dy, dx))
    assert len(set(shifts)) > 1
    numpy.testing.assert_array_equal(dataset._datasets[0], x0)  # dataset untouched
    assert x0.min() >= 0.5


def test_random_shift_per_image():
    dataset, x0, t0 = image_batch(64)
    x, t = augment.RandomShift(max_shift=2, per_image=True, seed=0)(dataset[:64])
    shifts = [find_shift(x[i], x0[i], 2) for i in range(64)]
    assert len(set(shifts)) > 5
    for i in range(64):
        # Zero fill, the rest of the values preserved.
        assert (x[i] == 0).sum() == 64 - numpy.isin(x[i], x0[i]).sum()
    numpy.testing.assert_array_equal(t, t0)


def test_random_shift_zero_is_identity():
    dataset, x0, t0 = image_batch(5)
    x, t = augment.RandomShift(max_shift=0)(dataset[:5])
    numpy.testing.assert_array_equal(x, x0)
    numpy.testing.assert_array_equal(t, t0)
    with pytest.raises(ValueError):
        augment.RandomShift(max_shift=-1)


def test_random_shift_device():
    dataset, x0, t0 = image_batch(4)
    convert = augment.RandomShift(seed=0)
    for device in (None, -1, '@numpy', chainer.get_device('@numpy')):
        x, t = convert(dataset[:4], device)
        assert isinstance(x, numpy.ndarray)
        assert isinstance(t, numpy.ndarray)


def draws(convert, x0, n=5):
    dataset = chainer.datasets.TupleDataset(x0, numpy.zeros(len(x0), numpy.int32))
    return [convert(dataset[:len(x0)])[0] for _ in range(n)]


@pytest.mark.parametrize('per_image', [False, True])
def test_random_shift_serialize(tmp_path, per_image):
    _, x0, _ = image_batch(8)
    convert = augment.RandomShift(per_image=per_image, seed=3)
    draws(convert, x0, 3)
    convert.random_state.randn()  # a cached gaussian is part of the state, too
    path = str(tmp_path / 'shift.npz')
    chainer.serializers.save_npz(path, convert)
    expected = draws(convert, x0)
    restored = augment.RandomShift(per_image=per_image, seed=99)
    chainer.serializers.load_npz(path, restored)
    got = draws(restored, x0)
    for a, b in zip(got, expected):
        numpy.testing.assert_array_equal(a, b)
    assert any(not numpy.array_equal(a, b)
               for a, b in zip(draws(augment.RandomShift(per_image=per_image, seed=99),
                                     x0), expected))


def test_random_shift_in_standard_updater():
    dataset, _, _ = image_batch(8, size=28)
    model = chainer.links.Classifier(chainer.links.Linear(784, 10))
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(dataset, 4)
    updater = chainer.training.updaters.StandardUpdater(
        iterator, optimizer, converter=augment.RandomShift(seed=0), device='@numpy')
    updater.update()
    assert updater.iteration == 1
    assert model.loss is not None


@pytest.mark.parametrize('per_image', [False, True])
def test_shift_parts_are_the_slices_of_one_converter(per_image):
    x = numpy.random.RandomState(0).rand(12, 1, 6, 6).astype(numpy.float32)
    batch = [(x[i], numpy.int32(i)) for i in range(12)]
    whole = augment.RandomShift(2, per_image=per_image, seed=3)
    parts = [augment.RandomShift(2, per_image=per_image, seed=3, part=(i, 3)) for i in range(3)]
    for _ in range(4):
        expected, _ = whole(batch)
        got = numpy.concatenate([p(batch[4 * i:4 * (i + 1)])[0] for i, p in enumerate(parts)])
        numpy.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError):
        augment.RandomShift(2, part=(3, 3))


testing.run_module(__name__, __file__)
