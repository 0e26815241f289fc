"""Random states: seeding, and every generator's state in snapshots, so that a resumed
run draws the same."""

import operator
import random

import numpy


def serialize_random_state(serializer, rng):
    """Saves or restores the full state of ``rng``.

    Args:
        rng: A :class:`numpy.random.RandomState`, or the :mod:`numpy.random` module
            (its global generator).
    """
    kind, keys, pos, has_gauss, gauss = rng.get_state()
    keys = serializer('keys', keys)
    pos = serializer('pos', pos)
    has_gauss = serializer('has_gauss', has_gauss)
    gauss = serializer('gauss', gauss)
    rng.set_state((kind, numpy.asarray(keys, numpy.uint32), int(pos), int(has_gauss),
                   float(gauss)))


def serialize_python_random(serializer):
    """Saves or restores the state of Python's global :mod:`random` generator."""
    version, internal, gauss = random.getstate()
    internal = serializer('internal', numpy.asarray(internal, numpy.int64))
    has_gauss = serializer('has_gauss', int(gauss is not None))
    gauss = serializer('gauss', float(gauss or 0.0))
    random.setstate((version, tuple(int(v) for v in internal),
                     float(gauss) if has_gauss else None))


def set_random_seed(seed, device=None):
    """Seeds ``random``, ``numpy.random`` and, on a GPU, the device's ``xp.random``."""
    random.seed(seed)
    numpy.random.seed(seed)
    if device is not None and device.xp is not numpy:
        device.xp.random.seed(seed)


def check_part(part):
    """``part`` ``(i, n)`` of a global batch (data-parallel training) as two ints, or
    ``ValueError``: part ``i`` of ``n`` equal, contiguous parts, ``0 <= i < n``."""
    index, n_part = (operator.index(p) for p in part)
    if not 0 <= index < n_part:
        raise ValueError('part must be (i, n) with 0 <= i < n, got {}'.format(part))
    return index, n_part
