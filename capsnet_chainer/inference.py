"""Test-time inference in batches: every evaluation of a trained network runs through
:func:`batched`, under ``chainer.using_config('train', False)`` and
``chainer.no_backprop_mode()``, batch by batch on the network's device, with the
results gathered as NumPy arrays."""

import chainer
import numpy

#: Images per forward pass.
BATCHSIZE = 100


def to_cpu(a):
    """An array or Variable on any device as a NumPy array."""
    return chainer.backend.CpuDevice().send(getattr(a, 'array', a))


def batched(model, fn, arrays, empty_shape, batchsize=BATCHSIZE, progress=None):
    """``fn`` applied batch by batch at test time, the results gathered on the CPU.

    Args:
        model (~chainer.Link): The network, on any device: each batch of ``arrays`` is
            sent to its device.
        fn (callable): Called as ``fn(*batch)``; returns an array or Variable whose
            first axis is the batch.
        arrays (tuple of arrays): Inputs with one length ``B``.
        empty_shape (tuple of ints): The trailing shape of the result, for ``B = 0``.
        batchsize (int): Examples per call of ``fn``.
        progress (callable): Called as ``progress(done, total)`` after each batch.

    Returns:
        numpy.ndarray: The results ``(B, ...)`` concatenated.
    """
    n = len(arrays[0])
    out = []
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        for i in range(0, n, batchsize):
            s = slice(i, min(i + batchsize, n))
            out.append(to_cpu(fn(*(model.device.send(a[s]) for a in arrays))))
            if progress is not None:
                progress(s.stop, n)
    if not out:
        return numpy.zeros((0,) + tuple(empty_shape), numpy.float32)
    return numpy.concatenate(out)


def predict(model, x, batchsize=BATCHSIZE, progress=None):
    """Class scores of images, with no augmentation: ``model.scores`` batch by batch (a
    CapsNet's capsule lengths, the baseline CNN's logits).

    Args:
        model: A network with ``scores(x)`` and ``config['n_class']``.
        x (array): Images ``(B, C, H, W)``, on any device.
        batchsize (int): Images per forward pass.
        progress (callable): Called as ``progress(done, total)`` after each batch.

    Returns:
        numpy.ndarray: Scores ``(B, J)``, float32.
    """
    return batched(model, model.scores, (x,), (model.config['n_class'],), batchsize,
                   progress)
