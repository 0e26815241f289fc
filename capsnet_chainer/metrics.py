"""Evaluation of a trained CapsNet: batched inference and classification metrics.

Every model evaluation runs through :func:`batched`: under
``chainer.using_config('train', False)`` and ``chainer.no_backprop_mode()``, in batches
on the model's device, with the results gathered as NumPy arrays.
"""

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
        model (~capsnet_chainer.CapsNet): The network, on any device: each batch of
            ``arrays`` is sent to its device.
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


def digit_capsules(model, x, batchsize=BATCHSIZE):
    """Digit capsules of images, as NumPy.

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        x (array): Images ``(B, C, H, W)``.

    Returns:
        numpy.ndarray: ``v`` ``(B, J, D)``, float32.
    """
    return batched(model, model.digit_capsules, (x,), (model.config['n_class'], 16),
                   batchsize)


def decode(model, v, labels, batchsize=BATCHSIZE):
    """Decodes capsules masked to ``labels``.

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        v (array): Digit capsules ``(B, J, D)``.
        labels (array): The digit to keep for each example ``(B,)``.

    Returns:
        numpy.ndarray: Images ``(B, H, W)`` (the single channel dropped), float32.
    """
    v = numpy.asarray(to_cpu(v), numpy.float32)
    labels = numpy.asarray(to_cpu(labels), numpy.int32)
    H, W = model.config['in_shape'][1:]
    y = batched(model, model.decode, (v, labels), (1, H, W), batchsize)
    return y.reshape((-1, H, W))


def score(model, x, batchsize=BATCHSIZE, progress=None):
    """Class scores of images, with no augmentation: ``model.scores`` batch by batch
    (a CapsNet's capsule lengths, the baseline CNN's logits).

    Args:
        model (~capsnet_chainer.CapsNet or ~capsnet_chainer.baseline_cnn.BaselineCNN):
            The network.
        x (array): Images ``(B, C, H, W)``.
        batchsize (int): Images per forward pass.
        progress (callable): Called as ``progress(done, total)`` after each batch.

    Returns:
        numpy.ndarray: Scores ``(B, J)``, float32.
    """
    return batched(model, model.scores, (x,), (model.config['n_class'],), batchsize,
                   progress)


def confusion_matrix(t, pred, n_class=10):
    """Counts ``(n_class, n_class)``: row the true class, column the prediction."""
    m = numpy.zeros((n_class, n_class), numpy.int64)
    numpy.add.at(m, (numpy.asarray(t), numpy.asarray(pred)), 1)
    return m


def classification_metrics(t, scores):
    """Accuracy, error rate, per-class accuracy and the confusion matrix.

    Args:
        t (array): Labels ``(B,)``.
        scores (array): Class scores ``(B, n_class)``.

    Returns:
        dict: ``n_test``, ``n_correct``, ``accuracy``, ``error_rate``,
        ``per_class_accuracy`` and ``per_class_count`` (lists of ``n_class``;
        an accuracy is ``None`` for a class absent from ``t``), ``confusion_matrix``
        (nested lists), all plain Python numbers for JSON.
    """
    t = numpy.asarray(t)
    scores = numpy.asarray(scores)
    n_class = scores.shape[1]
    pred = scores.argmax(axis=1)
    m = confusion_matrix(t, pred, n_class)
    n = int(len(t))
    n_correct = int(numpy.trace(m))
    count = m.sum(axis=1)
    accuracy = n_correct / n if n else None
    return {
        'n_test': n,
        'n_correct': n_correct,
        'accuracy': accuracy,
        'error_rate': 1 - accuracy if n else None,
        'per_class_accuracy': [int(m[k, k]) / int(count[k]) if count[k] else None
                               for k in range(n_class)],
        'per_class_count': [int(c) for c in count],
        'confusion_matrix': m.tolist(),
    }


def most_confident_errors(t, scores, k=10):
    """Indices of the ``k`` misclassified examples with the highest predicted score.

    Returns:
        numpy.ndarray: Up to ``k`` indices into ``t``, most confident first.
    """
    t = numpy.asarray(t)
    scores = numpy.asarray(scores)
    pred = scores.argmax(axis=1)
    wrong = numpy.flatnonzero(pred != t)
    confidence = scores[wrong, pred[wrong]]
    order = numpy.argsort(-confidence, kind='stable')
    return wrong[order[:k]]
