"""Evaluation of a trained network: its capsules, decodings and scores on a test set
(computed by :func:`capsnet_chainer.inference.batched`), and classification metrics.
"""

import numpy

from capsnet_chainer.functions import pair_hits
from capsnet_chainer.inference import batched
from capsnet_chainer.inference import BATCHSIZE
from capsnet_chainer.inference import predict as score  # NOQA: the scores of a test set
from capsnet_chainer.inference import to_cpu


def digit_capsules(model, x, batchsize=BATCHSIZE):
    """Digit capsules of images, as NumPy.

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        x (array): Images ``(B, C, H, W)``.

    Returns:
        numpy.ndarray: ``v`` ``(B, J, D)``, float32.
    """
    return batched(model, model.digit_capsules, (x,),
                   (model.config['n_class'], model.digits.out_dim), batchsize)


def image_tiles(x):
    """Images as figures draw them: ``(B, 1, H, W)`` or ``(B, H, W)`` as ``(B, H, W)``
    grey levels, ``(B, 3, H, W)`` as ``(B, H, W, 3)`` RGB, and images of another number
    of channels (smallNORB's stereo pairs) by their first channel, ``(B, H, W)``; NumPy."""
    x = numpy.asarray(to_cpu(x))
    if x.ndim == 4 and x.shape[1] == 3:
        return x.transpose((0, 2, 3, 1))
    if x.ndim == 4:
        x = x[:, 0]
    return x.reshape((len(x),) + x.shape[-2:])


def decode(model, v, labels, batchsize=BATCHSIZE):
    """Decodes capsules masked to ``labels``.

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        v (array): Digit capsules ``(B, J, D)``.
        labels (array): The digit to keep for each example ``(B,)``.

    Returns:
        numpy.ndarray: Images as :func:`image_tiles` gives them: ``(B, H, W)`` (the
        single channel dropped) or, in colour, ``(B, H, W, 3)``; float32.
    """
    v = numpy.asarray(to_cpu(v), numpy.float32)
    labels = numpy.asarray(to_cpu(labels), numpy.int32)
    y = batched(model, model.decode, (v, labels), tuple(model.config['in_shape']),
                batchsize)
    return image_tiles(y)


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


def pair_accuracy(scores, labels2):
    """Fractions of images whose two digits are both, or at least one, recognised.

    The prediction of an image is the set of its two highest-scoring classes (the two
    longest capsules; :func:`~capsnet_chainer.functions.top_two`). An image is right when
    that set equals the set of its two labels, and "at least one right" when it contains
    at least one of them.

    Args:
        scores (array): Class scores ``(B, J)``, e.g. capsule lengths.
        labels2 (array): ``(B, 2)``, ints, the two labels of each row different.

    Returns:
        tuple of floats: ``(both, at_least_one)``, fractions in [0, 1] (0 for B = 0).
    """
    scores = numpy.asarray(to_cpu(scores))
    labels2 = numpy.asarray(to_cpu(labels2))
    if scores.ndim != 2 or labels2.shape != (scores.shape[0], 2):
        raise ValueError('scores must be (B, J) and labels2 (B, 2), got {} and {}'.format(
            scores.shape, labels2.shape))
    if (labels2[:, 0] == labels2[:, 1]).any():
        raise ValueError('every row of labels2 needs two different classes')
    if len(scores) == 0:
        return 0.0, 0.0
    hit = pair_hits(scores, labels2)
    return float(hit.all(axis=1).mean()), float(hit.any(axis=1).mean())
