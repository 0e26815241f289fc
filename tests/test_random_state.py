"""Random states: every generator saved and restored through Chainer's serializers, so
that a resumed run draws what an uninterrupted one draws; seeding; the parts of a
global batch."""

import random

import chainer
import numpy
import pytest
from chainer import serializers
from chainer import testing

from capsnet_chainer import random_state


def roundtrip(save, load):
    """Saves with ``save(serializer)`` into an npz-like dict, then loads with ``load``."""
    saver = serializers.DictionarySerializer()
    save(saver)
    load(serializers.NpzDeserializer(saver.target))
    return saver.target


@pytest.mark.parametrize('with_gauss', [False, True])
def test_a_random_state_is_restored_exactly(with_gauss):
    rng = numpy.random.RandomState(3)
    rng.uniform(size=7)
    if with_gauss:
        rng.standard_normal()  # leaves a cached Gaussian half-pair
    target = roundtrip(lambda s: random_state.serialize_random_state(s, rng), lambda s: None)
    assert set(target) == {'keys', 'pos', 'has_gauss', 'gauss'}
    expected = (rng.uniform(size=5), rng.standard_normal(3))
    other = numpy.random.RandomState(99)
    random_state.serialize_random_state(serializers.NpzDeserializer(target), other)
    numpy.testing.assert_array_equal(other.uniform(size=5), expected[0])
    numpy.testing.assert_array_equal(other.standard_normal(3), expected[1])


def test_numpys_global_generator_is_restored_exactly():
    numpy.random.seed(5)
    numpy.random.rand(3)
    saver = serializers.DictionarySerializer()
    random_state.serialize_random_state(saver, numpy.random)
    expected = numpy.random.rand(4)
    numpy.random.seed(0)
    random_state.serialize_random_state(serializers.NpzDeserializer(saver.target),
                                        numpy.random)
    numpy.testing.assert_array_equal(numpy.random.rand(4), expected)


@pytest.mark.parametrize('with_gauss', [False, True])
def test_pythons_generator_is_restored_exactly(with_gauss):
    random.seed(7)
    random.random()
    if with_gauss:
        random.gauss(0, 1)  # leaves a cached value
    saver = serializers.DictionarySerializer()
    random_state.serialize_python_random(saver)
    assert set(saver.target) == {'internal', 'has_gauss', 'gauss'}
    expected = [random.random(), random.gauss(0, 1), random.randint(0, 100)]
    random.seed(0)
    random_state.serialize_python_random(serializers.NpzDeserializer(saver.target))
    assert [random.random(), random.gauss(0, 1), random.randint(0, 100)] == expected


def test_state_survives_an_npz_file(tmp_path):
    rng = numpy.random.RandomState(11)
    rng.randint(10, size=4)

    class Holder(object):
        def serialize(self, serializer):
            random_state.serialize_random_state(serializer['rng'], rng)
            random_state.serialize_python_random(serializer['python'])

    path = str(tmp_path / 'state.npz')
    random.seed(2)
    serializers.save_npz(path, Holder())
    expected = rng.uniform(size=3), random.random()
    rng.seed(0)
    random.seed(0)
    serializers.load_npz(path, Holder())
    numpy.testing.assert_array_equal(rng.uniform(size=3), expected[0])
    assert random.random() == expected[1]


def test_set_random_seed_seeds_python_and_numpy():
    random_state.set_random_seed(42)
    a = random.random(), numpy.random.rand()
    random_state.set_random_seed(42, chainer.get_device('@numpy'))
    assert (random.random(), numpy.random.rand()) == a
    random.seed(42)
    numpy.random.seed(42)
    assert (random.random(), numpy.random.rand()) == a


def test_check_part():
    assert random_state.check_part((0, 1)) == (0, 1)
    assert random_state.check_part([numpy.int64(2), 3]) == (2, 3)
    for part in ((1, 1), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match=r'part must be \(i, n\) with 0 <= i < n'):
            random_state.check_part(part)
    with pytest.raises(TypeError):
        random_state.check_part((0.5, 2))


testing.run_module(__name__, __file__)
