"""Random crops with the official code's jitter, and the centre crop of test images."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets.crops import adjust_contrast
from capsnet_chainer.datasets.crops import center_crop
from capsnet_chainer.datasets.crops import RandomCrop


def batch(n=6, C=3, H=8, W=10, seed=0):
    rs = numpy.random.RandomState(seed)
    x = rs.rand(n, C, H, W).astype(numpy.float32)
    return [(x[i], numpy.int32(i)) for i in range(n)], x


def windows(x, h, w):
    """Every h x w window of image x (C, H, W), by offset."""
    return {(i, j): x[:, i:i + h, j:j + w] for i in range(x.shape[1] - h + 1)
            for j in range(x.shape[2] - w + 1)}


def test_center_crop_is_tensorflows():
    x = numpy.arange(2 * 1 * 7 * 8, dtype=numpy.float32).reshape((2, 1, 7, 8))
    numpy.testing.assert_array_equal(center_crop(x, (4, 4)), x[:, :, 1:5, 2:6])
    with pytest.raises(ValueError, match='a 8x4 crop does not fit images of 7x8'):
        center_crop(x, (8, 4))


def test_each_image_is_cropped_at_its_own_place():
    examples, x = batch()
    y, t = RandomCrop((5, 6), seed=1)(examples)
    assert y.shape == (6, 3, 5, 6) and y.dtype == numpy.float32
    numpy.testing.assert_array_equal(t, numpy.arange(6))
    offsets = []
    for n in range(6):
        found = [k for k, window in windows(x[n], 5, 6).items()
                 if numpy.array_equal(window, y[n])]
        assert len(found) == 1
        offsets.append(found[0])
    assert len(set(offsets)) > 1


def test_flip_brightness_and_contrast_are_the_official_codes():
    examples, x = batch(n=40, H=4, W=4)
    converter = RandomCrop((4, 4), flip=True, brightness=0.25, contrast=(0.2, 1.8), seed=3)
    offsets, flips, shifts, factors = RandomCrop(
        (4, 4), flip=True, brightness=0.25, contrast=(0.2, 1.8), seed=3).draw(40, (0, 0))
    y, _ = converter(examples)
    assert 0 < flips.sum() < 40 and (abs(shifts) <= 0.25).all()
    assert ((factors >= 0.2) & (factors <= 1.8)).all()
    expected = numpy.where(flips[:, None, None, None], x[..., ::-1], x)
    expected = adjust_contrast(expected + shifts[:, None, None, None].astype(numpy.float32),
                               factors)
    numpy.testing.assert_allclose(y, expected, rtol=1e-6)
    # adjust_contrast keeps each channel's mean, scales the deviations from it
    numpy.testing.assert_allclose(y.mean(axis=(2, 3)), expected.mean(axis=(2, 3)),
                                  rtol=1e-5)


def test_parts_of_a_global_batch_are_cropped_as_one_converter_does():
    examples, _ = batch(n=8)
    whole, _ = RandomCrop((4, 4), flip=True, brightness=0.1, seed=5)(examples)
    parts = [RandomCrop((4, 4), flip=True, brightness=0.1, seed=5, part=(i, 2))(
        examples[4 * i:4 * (i + 1)])[0] for i in range(2)]
    numpy.testing.assert_array_equal(numpy.concatenate(parts), whole)


def test_the_random_state_is_saved_and_restored():
    examples, _ = batch()
    converter = RandomCrop((3, 3), flip=True, seed=7)
    converter(examples)
    saved = chainer.serializers.DictionarySerializer()
    converter.serialize(saved)
    after = converter(examples)[0]
    restored = RandomCrop((3, 3), flip=True, seed=99)
    restored.serialize(chainer.serializers.NpzDeserializer(
        {k: numpy.asarray(v) for k, v in saved.target.items()}))
    numpy.testing.assert_array_equal(restored(examples)[0], after)


def test_a_crop_larger_than_the_images_is_refused():
    examples, _ = batch(H=4)
    with pytest.raises(ValueError, match='does not fit'):
        RandomCrop((5, 5))(examples)
    with pytest.raises(ValueError, match='size must be'):
        RandomCrop((0, 5))


testing.run_module(__name__, __file__)
