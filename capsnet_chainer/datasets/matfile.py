"""MATLAB ``.mat`` files (affNIST's and SVHN's), read by SciPy, an optional dependency."""

from capsnet_chainer.datasets.idx import DatasetError

#: Pin of the optional dependency that reads ``.mat`` files (the ``[affnist]`` and
#: ``[svhn]`` extras).
SCIPY_REQUIREMENT = 'scipy==1.17.1'


def loadmat_function(what, extra):
    """SciPy's ``loadmat``; without SciPy, a :class:`DatasetError` that says how to
    install it: ``reading WHAT needs SciPy ... pip install 'capsnet-chainer[EXTRA]'``."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(
            "reading {} needs SciPy, an optional dependency: pip install "
            "'capsnet-chainer[{}]' (or pip install {})".format(
                what, extra, SCIPY_REQUIREMENT)) from None
    return loadmat


def read_mat(f, where, what, extra, **kwargs):
    """The variables of the ``.mat`` file ``f`` (a path or a binary file object), a
    dict, by SciPy's ``loadmat(f, **kwargs)``.

    Raises:
        DatasetError: SciPy is missing (:func:`loadmat_function`), or ``f`` is not a
            readable ``.mat`` file (named ``where``).
    """
    loadmat = loadmat_function(what, extra)
    try:
        return loadmat(f, **kwargs)
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError, ...
        raise DatasetError('{}: not a readable .mat file ({}: {})'.format(
            where, type(e).__name__, e)) from None
