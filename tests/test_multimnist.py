"""MultiMNIST: generation, resume, the two-digit loss and scoring, against naive loops."""

import io

import chainer
import chainer.functions as F
import numpy
import pytest
from chainer import gradient_check

from capsnet_chainer import multimnist
from capsnet_chainer.functions import margin_loss
from capsnet_chainer.model import CapsNet


# Naive references: one example, one pixel, one class at a time.


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


def two_digit_margin_loss_ref(lengths, labels2):
    total = 0.0
    for n in range(lengths.shape[0]):
        for k in range(lengths.shape[1]):
            if k in (labels2[n, 0], labels2[n, 1]):
                total += max(0.0, 0.9 - lengths[n, k]) ** 2
            else:
                total += 0.5 * max(0.0, lengths[n, k] - 0.1) ** 2
    return total / lengths.shape[0]


def recon_loss_ref(x_rec, digits):
    total = 0.0
    for n in range(x_rec.shape[0]):
        for k in range(2):
            for e, d in zip(x_rec[n, k].ravel(), digits[n, k].ravel()):
                total += (float(e) - float(d)) ** 2
    return total / x_rec.shape[0]


def pair_accuracy_ref(scores, labels2):
    both = one = 0
    for n in range(len(scores)):
        order = sorted(range(scores.shape[1]), key=lambda k: -scores[n, k])
        top = {order[0], order[1]}
        found = [int(labels2[n, k]) in top for k in range(2)]
        both += all(found)
        one += any(found)
    return both / len(scores), one / len(scores)


def bbox(image):
    """(top, bottom, left, right) of the non-zero pixels of a 2-D image."""
    rows = numpy.nonzero(image.any(axis=1))[0]
    cols = numpy.nonzero(image.any(axis=0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


def fake_digits(n, n_class=10, seed=0):
    """Distinct 28x28 'digits' in [0, 1], each a random blob inside a random box."""
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
    from capsnet_chainer.mnist import get_mnist
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


# Loss


def random_pairs(B, J=10, seed=0):
    rng = numpy.random.RandomState(seed)
    first = rng.randint(J, size=B)
    second = (first + rng.randint(1, J, size=B)) % J
    return numpy.stack([first, second], axis=1).astype(numpy.int32)


def test_two_digit_margin_loss_against_loops():
    rng = numpy.random.RandomState(3)
    lengths = rng.uniform(0, 1, size=(8, 10)).astype(numpy.float32)
    labels2 = random_pairs(8)
    loss = multimnist.two_digit_margin_loss(lengths, labels2)
    assert loss.shape == ()
    numpy.testing.assert_allclose(loss.array, two_digit_margin_loss_ref(lengths, labels2),
                                  rtol=1e-5)
    # Hand-made: both present classes at 0.9 and the others at 0.1 cost nothing.
    perfect = numpy.full((1, 10), 0.1, numpy.float32)
    perfect[0, [2, 7]] = 0.9
    assert multimnist.two_digit_margin_loss(perfect, numpy.array([[7, 2]])).array == 0
    # Swapping the two labels changes nothing.
    numpy.testing.assert_allclose(
        multimnist.two_digit_margin_loss(lengths, labels2[:, ::-1].copy()).array,
        loss.array, rtol=1e-6)


def test_two_digit_margin_loss_with_equal_labels_counts_the_class_once():
    lengths = numpy.random.RandomState(7).uniform(size=(3, 10)).astype(numpy.float32)
    t = numpy.array([3, 0, 9], numpy.int32)
    numpy.testing.assert_allclose(
        multimnist.two_digit_margin_loss(lengths, numpy.stack([t, t], axis=1)).array,
        margin_loss(lengths, t).array, rtol=1e-6)


def test_two_digit_margin_loss_backward():
    rng = numpy.random.RandomState(4)
    lengths = rng.uniform(0, 1, size=(5, 10))
    lengths[abs(lengths - 0.9) < 0.02] = 0.5  # away from the kinks
    lengths[abs(lengths - 0.1) < 0.02] = 0.5
    labels2 = random_pairs(5, seed=1)
    gradient_check.check_backward(
        lambda x: multimnist.two_digit_margin_loss(x, labels2), lengths,
        numpy.array(rng.randn()), dtype=numpy.float64)
    gradient_check.check_double_backward(
        lambda x: multimnist.two_digit_margin_loss(x, labels2), lengths,
        numpy.array(rng.randn()), rng.randn(5, 10), dtype=numpy.float64)


def test_two_digit_reconstruction_loss_against_loops():
    rng = numpy.random.RandomState(5)
    x_rec = rng.uniform(size=(3, 2, 1, 6, 6)).astype(numpy.float32)
    digits = rng.uniform(size=(3, 2, 1, 6, 6)).astype(numpy.float32)
    loss = multimnist.two_digit_reconstruction_loss(x_rec, digits)
    numpy.testing.assert_allclose(loss.array, recon_loss_ref(x_rec, digits), rtol=1e-5)
    gradient_check.check_backward(
        lambda r: multimnist.two_digit_reconstruction_loss(r, digits.astype(numpy.float64)),
        x_rec.astype(numpy.float64), numpy.array(rng.randn()), dtype=numpy.float64)


class ToyDecoder(object):
    """decode(v, labels): mask to the label's capsule, one linear map, sigmoid."""

    def __init__(self, J, D, n_out, seed=0):
        self.w = numpy.random.RandomState(seed).randn(J * D, n_out) * 0.3
        self.n_out = n_out

    def __call__(self, v, labels):
        B, J, D = v.shape
        keep = numpy.eye(J)[labels].astype(v.dtype)
        h = F.reshape(v * F.broadcast_to(keep[:, :, None], v.shape), (B, J * D))
        y = F.sigmoid(F.matmul(h, self.w.astype(h.dtype)))
        return F.reshape(y, (B, 1, 1, self.n_out))

    def ref(self, v, label):
        """One example: the capsule ``label`` alone through the map."""
        J, D = v.shape
        h = numpy.zeros(J * D)
        h[label * D:(label + 1) * D] = v[label]
        return 1 / (1 + numpy.exp(-(h @ self.w)))


def test_reconstruct_both_and_two_digit_loss():
    rng = numpy.random.RandomState(6)
    B, J, D = 4, 10, 3
    v = rng.randn(B, J, D) * 0.3
    labels2 = random_pairs(B, seed=2)
    decode = ToyDecoder(J, D, 5)
    digits = rng.uniform(size=(B, 2, 1, 1, 5))
    x_rec = multimnist.reconstruct_both(decode, v, labels2)
    assert x_rec.shape == (B, 2, 1, 1, 5)
    for n in range(B):
        for k in range(2):  # digit k reconstructed from its own label's capsule
            numpy.testing.assert_allclose(x_rec.array[n, k, 0, 0],
                                          decode.ref(v[n], labels2[n, k]), rtol=1e-10)
    loss, parts = multimnist.two_digit_loss(v, labels2, digits, decode, recon_weight=0.0005)
    lengths = numpy.sqrt((v * v).sum(axis=-1))
    rec = numpy.stack([[decode.ref(v[n], labels2[n, k]) for k in range(2)]
                       for n in range(B)])[:, :, None, None]
    margin = two_digit_margin_loss_ref(lengths, labels2)
    recon = 0.0005 * recon_loss_ref(rec, digits)
    numpy.testing.assert_allclose(parts['loss/margin'].array, margin, rtol=1e-6)
    numpy.testing.assert_allclose(parts['loss/recon'].array, recon, rtol=1e-6)
    numpy.testing.assert_allclose(loss.array, margin + recon, rtol=1e-6)
    only_margin, parts = multimnist.two_digit_loss(v, labels2)
    assert set(parts) == {'loss/margin'}
    numpy.testing.assert_allclose(only_margin.array, margin, rtol=1e-6)
    with pytest.raises(ValueError):
        multimnist.two_digit_loss(v, labels2, None, decode)
    gradient_check.check_backward(
        lambda v: multimnist.two_digit_loss(v, labels2, digits, decode, 0.5)[0], v,
        numpy.array(rng.randn()), dtype=numpy.float64, atol=1e-4, rtol=1e-4)


# Scoring


def test_pair_accuracy_hand_made():
    scores = numpy.array([[.9, .8, .1, 0],   # top {0, 1}
                          [.9, .1, .8, 0],   # top {0, 2}
                          [.1, .2, .3, .4],  # top {3, 2}
                          [.5, .5, .5, .1]])  # a tie: the lower classes, {0, 1}
    labels2 = numpy.array([[1, 0], [0, 1], [0, 1], [0, 1]])
    assert multimnist.pair_accuracy(scores, labels2) == (0.5, 0.75)
    with pytest.raises(ValueError):
        multimnist.pair_accuracy(scores, numpy.array([[1, 1], [0, 1], [0, 1], [0, 1]]))
    assert multimnist.pair_accuracy(numpy.zeros((0, 4)), numpy.zeros((0, 2), int)) == \
        (0.0, 0.0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pair_accuracy_against_loop(seed):
    rng = numpy.random.RandomState(seed)
    scores = rng.permutation(1000)[:500].reshape(50, 10) / 1000.0  # no ties
    labels2 = random_pairs(50, seed=seed)
    # Make a third of the rows right, so all three outcomes occur.
    top2 = numpy.argsort(-scores, axis=1)[:, :2]
    labels2[::3] = top2[::3, ::-1]
    got = multimnist.pair_accuracy(chainer.Variable(scores.astype(numpy.float32)), labels2)
    assert got == pair_accuracy_ref(scores, labels2)
    both, one = got
    assert 0 < both < one < 1


@pytest.mark.gpu
def test_loss_and_scoring_on_gpu_match_cpu():
    cupy = pytest.importorskip('cupy')
    rng = numpy.random.RandomState(8)
    lengths = rng.uniform(size=(6, 10)).astype(numpy.float32)
    labels2 = random_pairs(6, seed=3)
    numpy.testing.assert_allclose(
        cupy.asnumpy(multimnist.two_digit_margin_loss(cupy.asarray(lengths),
                                                      cupy.asarray(labels2)).array),
        multimnist.two_digit_margin_loss(lengths, labels2).array, rtol=1e-5)
    x_rec, digits = rng.uniform(size=(2, 6, 2, 1, 4, 4)).astype(numpy.float32)
    numpy.testing.assert_allclose(
        cupy.asnumpy(multimnist.two_digit_reconstruction_loss(
            cupy.asarray(x_rec), cupy.asarray(digits)).array),
        multimnist.two_digit_reconstruction_loss(x_rec, digits).array, rtol=1e-5)
    assert multimnist.pair_accuracy(cupy.asarray(lengths), cupy.asarray(labels2)) == \
        multimnist.pair_accuracy(lengths, labels2)
    merged = multimnist.overlay(cupy.asarray(x_rec), cupy.asarray(digits))
    assert isinstance(merged, cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(merged), numpy.minimum(x_rec + digits, 1))


# The 36x36 CapsNet


def test_capsnet_36x36_unshared_has_the_papers_11_36m_parameters():
    model = CapsNet(shared_weights=False, in_shape=(1, 36, 36))
    assert model.count_params() == 11361808


def test_capsnet_36x36_forward_on_pairs():
    images, labels = fake_digits(10)
    x, labels2, digits = multimnist.make_test_set(images, labels, 2, seed=0)
    model = CapsNet(shared_weights=False, in_shape=(1, 36, 36), reconstruct=True)
    capsules = model.digit_capsules
    v = capsules(x)
    assert v.shape == (2, 10, 16)
    loss, parts = multimnist.two_digit_loss(v, labels2, digits, model.decode)
    assert numpy.isfinite(loss.array) and set(parts) == {'loss/margin', 'loss/recon'}
    model.cleargrads()
    loss.backward()
    grads = [p.grad for p in model.params()]
    assert all(g is not None and numpy.isfinite(g).all() for g in grads)
    assert all((g != 0).any() for g in grads)  # the decoder's and the encoder's
