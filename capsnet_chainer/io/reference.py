"""Model files of the reference implementation: recognising and converting their layout.

The reference saves its chain with :func:`chainer.serializers.save_npz` and stores no
configuration. Its arrays, by name (see SPEC):

.. csv-table::
    :header: name, shape, ours

    ``conv1/W``, "(256, 1, 9, 9)", ``conv1/W``
    ``conv2/W``, "(256, 256, 9, 9)", ``primary/conv/W``
    ``Ws/k/W`` (k = 0 .. 31), "(160, 8, 1, 1)", "``digits/W[k]`` (8, 160), reordered"
    ``Ws/k/b``, "(160,)", "``digits/b[k]``, reordered"
    ``fc1/W``, "(512, 160)", "``decoder/fc1/W``, columns reordered"
    ``fc2/W``, "(1024, 512)", ``decoder/fc2/W``
    ``fc3/W``, "(784, 1024)", ``decoder/fc3/W``

and the biases of each. The reference reads its 160 prediction outputs, and the
decoder's 160 inputs, as a 16 x 10 array: index ``d * 10 + j`` is dimension ``d`` of digit
``j``. Ours index them ``j * 16 + d``.
"""

import numpy

N_TYPE = 32
N_CLASS = 10
DIM = 16

#: Reference array name -> our array name, for the arrays that need no reordering.
_SAME = {
    'conv1/W': 'conv1/W', 'conv1/b': 'conv1/b',
    'conv2/W': 'primary/conv/W', 'conv2/b': 'primary/conv/b',
    'fc1/b': 'decoder/fc1/b',
    'fc2/W': 'decoder/fc2/W', 'fc2/b': 'decoder/fc2/b',
    'fc3/W': 'decoder/fc3/W', 'fc3/b': 'decoder/fc3/b',
}

#: Every array name of a reference model file.
REFERENCE_NAMES = frozenset(list(_SAME) + ['fc1/W'] + [
    'Ws/{}/{}'.format(k, p) for k in range(N_TYPE) for p in ('W', 'b')])

#: The shape of each reference array.
REFERENCE_SHAPES = dict(
    [('conv1/W', (256, 1, 9, 9)), ('conv1/b', (256,)), ('conv2/W', (256, 256, 9, 9)),
     ('conv2/b', (256,)), ('fc1/W', (512, 160)), ('fc1/b', (512,)),
     ('fc2/W', (1024, 512)), ('fc2/b', (1024,)), ('fc3/W', (784, 1024)),
     ('fc3/b', (784,))]
    + [('Ws/{}/W'.format(k), (160, 8, 1, 1)) for k in range(N_TYPE)]
    + [('Ws/{}/b'.format(k), (160,)) for k in range(N_TYPE)])


def is_reference_layout(names):
    """Whether the array names ``names`` are exactly those of a reference model."""
    return set(names) == REFERENCE_NAMES


def _ref_to_ours(a):
    """Reorders the last axis from ``d * 10 + j`` to ``j * 16 + d``."""
    lead = a.shape[:-1]
    return a.reshape(lead + (DIM, N_CLASS)).swapaxes(-1, -2).reshape(lead + (DIM * N_CLASS,))


def _ours_to_ref(a):
    """Reorders the last axis from ``j * 16 + d`` to ``d * 10 + j``."""
    lead = a.shape[:-1]
    return a.reshape(lead + (N_CLASS, DIM)).swapaxes(-1, -2).reshape(lead + (DIM * N_CLASS,))


def check_shapes(arrays):
    """Returns a list of ``'name (shape, expected shape)'`` for arrays of a wrong shape."""
    wrong = []
    for name, shape in sorted(REFERENCE_SHAPES.items()):
        if tuple(arrays[name].shape) != shape:
            wrong.append('{} {} (expected {})'.format(name, tuple(arrays[name].shape), shape))
    return wrong


def from_reference(arrays):
    """Converts the arrays of a reference model file to ours.

    Args:
        arrays (dict-like): Reference name -> array (an open ``NpzFile`` works).

    Returns:
        dict: Our array names (as :class:`chainer.serializers.DictionarySerializer`
        writes them for :class:`~capsnet_chainer.CapsNet`) -> ``float32`` arrays.
    """
    ours = {mine: numpy.asarray(arrays[ref], numpy.float32) for ref, mine in _SAME.items()}
    # (160, 8, 1, 1) per type, output o = d * 10 + j -> (32, 8, 160), column j * 16 + d
    W = numpy.stack([numpy.asarray(arrays['Ws/{}/W'.format(k)])[:, :, 0, 0]
                     for k in range(N_TYPE)])  # (32, 160, 8)
    ours['digits/W'] = _ref_to_ours(W.swapaxes(1, 2)).astype(numpy.float32)
    b = numpy.stack([numpy.asarray(arrays['Ws/{}/b'.format(k)]) for k in range(N_TYPE)])
    ours['digits/b'] = _ref_to_ours(b).astype(numpy.float32)
    ours['decoder/fc1/W'] = _ref_to_ours(
        numpy.asarray(arrays['fc1/W'])).astype(numpy.float32)
    return ours


def to_reference(arrays):
    """The inverse of :func:`from_reference`: our arrays -> a reference model's arrays."""
    ref = {r: numpy.asarray(arrays[mine]) for r, mine in _SAME.items()}
    W = _ours_to_ref(numpy.asarray(arrays['digits/W'])).swapaxes(1, 2)  # (32, 160, 8)
    b = _ours_to_ref(numpy.asarray(arrays['digits/b']))
    for k in range(N_TYPE):
        ref['Ws/{}/W'.format(k)] = numpy.ascontiguousarray(W[k][:, :, None, None])
        ref['Ws/{}/b'.format(k)] = numpy.ascontiguousarray(b[k])
    ref['fc1/W'] = _ours_to_ref(numpy.asarray(arrays['decoder/fc1/W']))
    return ref


def decoder_was_trained(arrays):
    """Guesses whether the decoder was trained (the model used ``--reconstruct``).

    Without the reconstruction loss no gradient reaches the decoder, so Adam never
    moves it and its biases keep their initial value, exactly zero.
    """
    return any(numpy.any(numpy.asarray(arrays[name]) != 0)
               for name in ('fc1/b', 'fc2/b', 'fc3/b'))
