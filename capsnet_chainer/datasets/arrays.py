"""Data sets as arrays: what the protocols and the evaluation sets take apart."""

import chainer
import numpy


def as_images(images):
    """``(N, H, W)`` or ``(N, 1, H, W)`` -> a ``(N, 1, H, W)`` array (dtype kept).

    Raises:
        ValueError: Any other shape (several channels among them).
    """
    images = numpy.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError('images must be (N, H, W) or (N, 1, H, W), got shape {}'.format(
            images.shape))
    return images


def dataset_arrays(dataset):
    """``(images, labels)`` of a ``TupleDataset``, a tuple of two arrays or any dataset of
    ``(x, t, ...)`` examples (a list of them too), as NumPy arrays (a ``TupleDataset``'s
    own, not copies)."""
    if isinstance(dataset, chainer.datasets.TupleDataset):
        images, labels = dataset._datasets[:2]
    elif (isinstance(dataset, tuple) and len(dataset) == 2
          and all(isinstance(a, numpy.ndarray) for a in dataset)):
        images, labels = dataset
    else:
        images, labels = chainer.dataset.concat_examples(list(dataset))[:2]
    return numpy.asarray(images), numpy.asarray(labels)
