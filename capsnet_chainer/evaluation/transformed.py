"""The affNIST protocol's second score (Sec. 5.2 of Sabour et al. [#]_): a model trained
on digits placed on 40x40 canvases, scored on affNIST's official test files or, without
them, on an affine-transformed MNIST test set that stands in for affNIST and is named so
(:mod:`~capsnet_chainer.datasets.affnist`, :mod:`~capsnet_chainer.datasets.affine`).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import os

from capsnet_chainer.datasets import affine
from capsnet_chainer.datasets import affnist
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.errors import SettingError
from capsnet_chainer.inference import predict

#: Seed of the affine-transformed MNIST test set that stands in for affNIST.
STANDIN_SEED = 20171107


def score_transformed(model, digits, affnist_dir=None, n=None, batchsize=100,
                      progress=None):
    """The accuracy on affNIST, or on its stand-in (named as such).

    Args:
        model: The network (a CapsNet or the baseline CNN), on any device.
        digits: The MNIST test digits ``(x, t)``, from which the stand-in is made.
        affnist_dir (str): The official affNIST test files (``--affnist-dir``); ``None``:
            the stand-in.
        n (int): Score the first ``n`` transformed images (``None``: all).
        batchsize (int): Images per forward pass.
        progress (callable): ``progress(label)`` -> a ``(done, total)`` callback.

    Returns:
        dict: ``key``, ``title``, ``n_test``, ``n_correct``, ``accuracy``, and ``files``
        (the official files) or the stand-in's ``seed``, ``ranges`` and a ``note``.

    Raises:
        SettingError: ``n`` beyond the images (``n_transformed``).
    """
    # The expanded test set, the other half of affnist.get_affnist_eval, is scored apart
    try:
        if affnist_dir:
            key, title = affnist.AFFNIST_KEY, affnist.AFFNIST_TITLE
            x, t = affnist.read_affnist(affnist_dir, n)
        else:
            key, title = affnist.STANDIN_KEY, affnist.STANDIN_TITLE
            x, t, _ = affine.make_affine_test_set(*dataset_arrays(digits), n=n,
                                                  seed=STANDIN_SEED)
    except ValueError as e:  # n beyond the files
        raise SettingError('n_transformed', str(e)) from None
    scores = predict(model, x, batchsize, progress and progress(
        'scoring {} {} images'.format(len(t), key)))
    correct = int((scores.argmax(axis=1) == t).sum())
    result = {'key': key, 'title': title, 'n_test': len(t), 'n_correct': correct,
              'accuracy': correct / max(len(t), 1)}
    if affnist_dir:
        result['files'] = os.path.abspath(affnist_dir)
    else:
        result.update(seed=STANDIN_SEED, ranges=affine.STANDIN_RANGES,
                      note='not affNIST: MNIST test digits under random affine '
                           'transformations drawn from ranges meant to be affNIST\'s; '
                           'not comparable with the paper\'s 79%')
    return result
