"""MultiMNIST's pairs: the canvas, the pair sampler and its exact resume, the fixed test
set, against naive loops."""

import io

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import multimnist
from conftest import fake_digits


# Naive references: one example, one pixel at a time.


def pad_and_shift_ref(images, dy, dx, size=36):
    N, H, W = images.shape
    out = numpy.zeros((N, 1, size, size), numpy.float32)
    for n in range(N):
        for r in range(H):
            for c in range(W):
                rr = (size - H) // 2 + int(dy[n]) + r
                cc = (size - W) // 2 + int(dx[n]) + c
                if 0 <= rr < size and 0 <= cc < size:
                    out[n, 0, rr, cc] = images[n, r, c]
    return out


def bbox(image):
    """(top, bottom, left, right) of the non-zero pixels of a 2-D image."""
    rows = numpy.nonzero(image.any(axis=1))[0]
    cols = numpy.nonzero(image.any(axis=0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


# Canvas and merge


@pytest.mark.parametrize('max_shift', [0, 4, 6])
def test_pad_and_shift_against_loops(max_shift):
    rng = numpy.random.RandomState(1)
    images = rng.uniform(size=(7, 28, 28)).astype(numpy.float32)
    dy, dx = rng.randint(-max_shift, max_shift + 1, size=(2, 7))
    out = multimnist.pad_and_shift(images, dy, dx)
    assert out.shape == (7, 1, 36, 36) and out.dtype == numpy.float32
    numpy.testing.assert_array_equal(out, pad_and_shift_ref(images, dy, dx))
    numpy.testing.assert_array_equal(  # (N, 1, 28, 28) inputs too
        multimnist.pad_and_shift(images[:, None], dy, dx), out)


def test_pad_and_shift_loses_nothing_up_to_4_and_cuts_beyond():
    images = numpy.ones((2, 28, 28), numpy.float32)  # the digit fills its frame
    out = multimnist.pad_and_shift(images, [-4, 4], [4, -4])
    assert (out.sum(axis=(1, 2, 3)) == 28 * 28).all()
    assert out[0, 0, 0, 8] == 1 and out[0, 0, 0, 7] == 0  # top edge at row 0, col 8
    out = multimnist.pad_and_shift(images, [-6, 0], [0, 6])
    assert (out.sum(axis=(1, 2, 3)) == [26 * 28, 28 * 26]).all()  # two rows/cols cut


def test_pad_and_shift_refuses_digits_larger_than_the_canvas():
    with pytest.raises(ValueError):
        multimnist.pad_and_shift(numpy.zeros((1, 28, 28), numpy.float32), [0], [0], size=27)
    with pytest.raises(ValueError):
        multimnist.pad_and_shift(numpy.zeros((1, 3, 28, 28), numpy.float32), [0], [0])


def test_overlay_is_min_of_sum_and_one():
    rng = numpy.random.RandomState(2)
    a, b = rng.uniform(size=(2, 3, 1, 5, 5)).astype(numpy.float32)
    out = multimnist.overlay(a, b)
    assert out.dtype == numpy.float32
    for idx in numpy.ndindex(*a.shape):
        assert out[idx] == min(a[idx] + b[idx], numpy.float32(1))


# Pair drawing


def check_pair(images, labels, i, x, labels2, digits, max_shift):
    """The pair on base ``i``: shapes, classes, shift bounds, content, merge."""
    assert x.shape == (1, 36, 36) and x.dtype == numpy.float32
    assert labels2.shape == (2,) and labels2.dtype == numpy.int32
    assert digits.shape == (2, 1, 36, 36) and digits.dtype == numpy.float32
    assert labels2[0] == labels[i] and labels2[1] != labels2[0]
    for k in range(2):
        # Which digit of the split is it? The one of its class whose shifted bbox fits.
        found = False
        for j in numpy.nonzero(labels == labels2[k])[0]:
            if k == 0 and j != i:
                continue
            t, b, l, r = bbox(images[j])
            T, B, L, R = bbox(digits[k, 0])
            dy, dx = T - (t + 4), L - (l + 4)
            if (B - (b + 4), R - (r + 4)) != (dy, dx):
                continue
            if abs(dy) > max_shift or abs(dx) > max_shift:
                continue
            if numpy.array_equal(digits[k], pad_and_shift_ref(images[j:j + 1], [dy], [dx])[0]):
                found = True
                break
        assert found, 'digit {} of the pair is no digit of the split within the shifts'.format(k)
    for idx in numpy.ndindex(*x.shape):
        assert x[idx] == min(digits[(0,) + idx] + digits[(1,) + idx], numpy.float32(1))


@pytest.mark.parametrize('max_shift', [4, 6])
def test_sampler_pairs(max_shift):
    images, labels = fake_digits(30)
    sampler = multimnist.PairSampler(images, labels, max_shift=max_shift, seed=5)
    assert len(sampler) == 30
    for i in [0, 7, 29, 7]:
        x, labels2, digits = sampler[i]
        check_pair(images, labels, i, x, labels2, digits, max_shift)


def test_sampler_draw_distribution():
    # Unbalanced classes: 0 (6 digits), 1 (3), 2 (1). The second digit is uniform over
    # the digits of the other classes; shifts are uniform in [-4, 4].
    labels = numpy.array([0, 1, 0, 2, 0, 1, 0, 0, 1, 0], numpy.int32)
    images, _ = fake_digits(len(labels))
    sampler = multimnist.PairSampler(images, labels, seed=0)
    seen = {c: numpy.zeros(len(labels), int) for c in range(3)}
    shifts_seen = numpy.zeros(9, int)
    for _ in range(600):
        for i in range(len(labels)):
            j, shifts = sampler.draw(i)
            assert shifts.shape == (2, 2)
            assert labels[j] != labels[i]
            seen[labels[i]][j] += 1
            numpy.add.at(shifts_seen, shifts.ravel() + 4, 1)
    for c in range(3):
        others = labels != c
        assert (seen[c][~others] == 0).all()
        counts = seen[c][others]
        expected = counts.sum() / others.sum()
        assert (abs(counts - expected) < 0.25 * expected).all(), (c, counts)
    expected = shifts_seen.sum() / 9
    assert (abs(shifts_seen - expected) < 0.1 * expected).all(), shifts_seen


def test_sampler_refuses_bad_input():
    images, labels = fake_digits(4)
    with pytest.raises(ValueError):
        multimnist.PairSampler(images, numpy.zeros(4, numpy.int32))  # one class
    with pytest.raises(ValueError):
        multimnist.PairSampler(images, labels[:3])
    with pytest.raises(ValueError):
        multimnist.PairSampler(images, labels, max_shift=-1)


def stream(sampler, n_batch, batchsize=4):
    it = chainer.iterators.SerialIterator(sampler, batchsize, shuffle=False)
    return [chainer.dataset.concat_examples(it.next()) for _ in range(n_batch)]


def assert_streams_equal(s1, s2):
    assert len(s1) == len(s2)
    for b1, b2 in zip(s1, s2):
        for a1, a2 in zip(b1, b2):
            assert a1.dtype == a2.dtype
            numpy.testing.assert_array_equal(a1, a2)


def test_sampler_is_deterministic():
    images, labels = fake_digits(20)
    s1 = stream(multimnist.PairSampler(images, labels, seed=3), 6)
    s2 = stream(multimnist.PairSampler(images, labels, seed=3), 6)
    assert_streams_equal(s1, s2)
    s3 = stream(multimnist.PairSampler(images, labels, seed=4), 6)
    assert any(not numpy.array_equal(b1[0], b3[0]) for b1, b3 in zip(s1, s3))


def test_sampler_resumes_exactly(tmp_path):
    images, labels = fake_digits(20)
    sampler = multimnist.PairSampler(images, labels, seed=3)
    it = chainer.iterators.SerialIterator(sampler, 6, shuffle=False)
    for _ in range(5):  # K batches, ending mid-epoch
        it.next()
    saver = chainer.serializers.DictionarySerializer()
    saver['sampler'].save(sampler)
    saver['iterator'].save(it)
    path = str(tmp_path / 'snapshot.npz')
    numpy.savez(path, **saver.target)
    expected = [chainer.dataset.concat_examples(it.next()) for _ in range(7)]
    # Saving does not disturb the stream: a twin that never saved draws the same.
    twin = chainer.iterators.SerialIterator(
        multimnist.PairSampler(images, labels, seed=3), 6, shuffle=False)
    for _ in range(5):
        twin.next()
    assert_streams_equal(expected,
                         [chainer.dataset.concat_examples(twin.next()) for _ in range(7)])

    fresh = multimnist.PairSampler(images, labels, seed=99)
    it2 = chainer.iterators.SerialIterator(fresh, 6, shuffle=False)
    with numpy.load(path) as npz:
        chainer.serializers.NpzDeserializer(npz, path='sampler/').load(fresh)
        chainer.serializers.NpzDeserializer(npz, path='iterator/').load(it2)
    got = [chainer.dataset.concat_examples(it2.next()) for _ in range(7)]
    assert_streams_equal(expected, got)

    # Also through save_npz / load_npz of the sampler alone, into a fresh object.
    buf = io.BytesIO()
    chainer.serializers.save_npz(buf, sampler)
    after = stream(sampler, 3)
    buf.seek(0)
    fresh = multimnist.PairSampler(images, labels, seed=99)
    chainer.serializers.load_npz(buf, fresh)
    assert_streams_equal(after, stream(fresh, 3))


def test_sampler_state_has_the_keys_of_earlier_snapshots():
    """The random state is saved under the keys that snapshots have always used."""
    images, labels = fake_digits(10)
    sampler = multimnist.PairSampler(images, labels, seed=3)
    saver = chainer.serializers.DictionarySerializer()
    sampler.serialize(saver)
    assert set(saver.target) == {'keys', 'pos', 'has_gauss', 'gauss'}
    numpy.testing.assert_array_equal(saver.target['keys'],
                                     numpy.random.RandomState(3).get_state()[1])


# Fixed test set


def test_make_test_set():
    images, labels = fake_digits(25)
    x, labels2, digits = multimnist.make_test_set(images, labels, 60, seed=11)
    assert x.shape == (60, 1, 36, 36) and x.dtype == numpy.float32
    assert labels2.shape == (60, 2) and labels2.dtype == numpy.int32
    assert digits.shape == (60, 2, 1, 36, 36) and digits.dtype == numpy.float32
    numpy.testing.assert_array_equal(labels2[:, 0], labels[numpy.arange(60) % 25])
    for k in [0, 24, 25, 59]:
        check_pair(images, labels, k % 25, x[k], labels2[k], digits[k], 4)
    again = multimnist.make_test_set(images, labels, 60, seed=11)
    for a, b in zip((x, labels2, digits), again):
        assert a.tobytes() == b.tobytes()
    other = multimnist.make_test_set(images, labels, 60, seed=12)
    assert not numpy.array_equal(x, other[0])
    assert not numpy.array_equal(labels2[:, 1], other[1][:, 1])
    # The set is what a sampler with that seed draws, base k % N, pair by pair.
    sampler = multimnist.PairSampler(images, labels, seed=11)
    for k in range(60):
        xk, lk, dk = sampler[k % 25]
        numpy.testing.assert_array_equal(xk, x[k])
        numpy.testing.assert_array_equal(lk, labels2[k])
        numpy.testing.assert_array_equal(dk, digits[k])
    empty = multimnist.make_test_set(images, labels, 0, seed=11)
    assert [a.shape for a in empty] == [(0, 1, 36, 36), (0, 2), (0, 2, 1, 36, 36)]


def mnist_arrays(split):
    x, t = chainer.dataset.concat_examples(split[:])
    return x, t


def test_real_digits(mnist_dir):
    from capsnet_chainer.datasets.mnist import get_mnist
    _, test = get_mnist(data_dir=mnist_dir, n_test=500)
    images, labels = mnist_arrays(test)
    x, labels2, digits = multimnist.make_test_set(images, labels, 1000, seed=0)
    assert (labels2[:, 0] != labels2[:, 1]).all()
    base = images[numpy.arange(1000) % 500, 0]
    # Nothing is lost with shifts up to 4: each single digit keeps all its ink.
    numpy.testing.assert_allclose(digits[:, 0].sum(axis=(1, 2, 3)), base.sum(axis=(1, 2)),
                                  rtol=1e-5)
    for k in range(0, 1000, 37):
        t, b, l, r = bbox(base[k])
        T, B, L, R = bbox(digits[k, 0, 0])
        assert T - t - 4 == B - b - 4 and L - l - 4 == R - r - 4
        assert abs(T - t - 4) <= 4 and abs(L - l - 4) <= 4
    assert x.min() >= 0 and x.max() <= 1
    numpy.testing.assert_array_equal(x, numpy.minimum(digits[:, 0] + digits[:, 1], 1))
    # Overlapping pairs saturate somewhere.
    assert (x == 1).any() and (digits[:, 0] + digits[:, 1] > 1).any()


@pytest.mark.gpu
def test_overlay_on_gpu_matches_cpu():
    cupy = pytest.importorskip('cupy')
    rng = numpy.random.RandomState(8)
    x_rec, digits = rng.uniform(size=(2, 6, 2, 1, 4, 4)).astype(numpy.float32)
    merged = multimnist.overlay(cupy.asarray(x_rec), cupy.asarray(digits))
    assert isinstance(merged, cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(merged), numpy.minimum(x_rec + digits, 1))


testing.run_module(__name__, __file__)
