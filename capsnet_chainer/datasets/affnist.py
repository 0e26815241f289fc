"""affNIST robustness (Sec. 5.2 of Sabour et al. [#]_): the official affNIST test files,
and the evaluation sets of a run of the ``affnist`` protocol.

Sec. 5.2: "We then tested this network on the affNIST data set, in which each example
is an MNIST digit with a random small affine transformation." CapsNet: 99.23% on the
expanded MNIST test set, 79% on affNIST; the CNN: 66% on affNIST. The training set is
:mod:`~capsnet_chainer.datasets.placement`'s; where the official files are absent,
:mod:`~capsnet_chainer.datasets.affine` makes a stand-in, named
:data:`STANDIN_TITLE`, never "affNIST".

* :func:`read_affnist`: the official affNIST test files, from a folder the user gives.
* :func:`get_affnist_eval`: the evaluation sets of a run, keyed and titled so that the
  results say which transformed set was used.

**The official files.** affNIST is published by Tijmen Tieleman at
:data:`AFFNIST_URL`. The test set is the 10,000 MNIST test digits, each under 32 random
affine transformations: 320,000 images of 40x40, in ``32x/transformed/``, either as one
file ``test.mat`` (``test.mat.zip``) or as 32 files ``1.mat`` .. ``32.mat`` of 10,000
images each (``test_batches.zip``). ``32x/just_centered/test.mat.zip`` holds the 10,000
test digits centred, untransformed. Every file is a MATLAB (v5) ``.mat`` file with one
variable, the struct ``affNISTdata``, whose fields include ``image`` (1600 x N,
``uint8`` 0..255, one image a column) and ``label_int`` (1 x N, the class 0..9); there
are also ``label_one_of_n`` and the transformation of each image. A column holds its
40x40 image row by row (``image[:, k].reshape(40, 40)`` in NumPy's C order is upright):
the order in which published readers take it (e.g. ``affnist_shift.py`` of the paper's
TensorFlow code, as kept in a fork). To check it on real files, read
``just_centered/test.mat`` with :func:`read_affnist` and compare it with
:func:`~capsnet_chainer.datasets.placement.expand` of the MNIST test digits: they agree
pixel for pixel when the orientation is right.
Reading ``.mat`` files needs SciPy, an optional dependency:
``pip install 'capsnet-chainer[affnist]'``.


.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import collections
import io
import os
import re
import zipfile

import chainer
import numpy

from capsnet_chainer.datasets.affine import AFFNIST_URL
from capsnet_chainer.datasets.affine import make_affine_test_set
from capsnet_chainer.datasets.arrays import dataset_arrays
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.matfile import loadmat_function
from capsnet_chainer.datasets.matfile import read_mat
from capsnet_chainer.datasets.placement import CANVAS
from capsnet_chainer.datasets.placement import expand

#: What the affNIST files are, and the extra that installs SciPy to read them
_MAT = ('the affNIST .mat files', 'affnist')

#: Keys and titles of the evaluation sets (:func:`get_affnist_eval`).
EXPANDED_KEY = 'expanded'
EXPANDED_TITLE = 'expanded MNIST (test digits centred on 40x40)'
AFFNIST_KEY = 'affnist'
AFFNIST_TITLE = 'affNIST (official test files)'
STANDIN_KEY = 'affine_standin'
STANDIN_TITLE = 'affine-MNIST (stand-in for affNIST, not affNIST)'

_BATCH = re.compile(r'(?:^|/)(\d+)\.mat$')
_WHOLE = re.compile(r'(?:^|/)test\.mat$')


def _numbered(names, where):
    """``names`` ending in ``<k>.mat`` -> the list sorted by k; they must be 1..K."""
    found = sorted((int(_BATCH.search(n).group(1)), n) for n in names)
    ks = [k for k, _ in found]
    if ks != list(range(1, len(ks) + 1)):
        missing = sorted(set(range(1, max(ks) + 1)) - set(ks))
        raise DatasetError('{}: the affNIST batches must be 1.mat .. K.mat; found {}, '
                           'missing {}'.format(where, ', '.join(n for _, n in found),
                                               ', '.join('{}.mat'.format(k)
                                                         for k in missing) or 'none'))
    return [n for _, n in found]


def affnist_files(path):
    """The affNIST test files at ``path``, in reading order.

    ``path`` may be a ``.mat`` file, a ``.zip`` file, or a folder holding, in order of
    preference: ``test.mat``; ``1.mat`` .. ``K.mat`` (directly or in ``test_batches/``);
    ``test.mat.zip``; ``test_batches.zip``. In a zip, the member ``test.mat`` or the
    members ``<k>.mat`` (in any folder) are read without unpacking.

    Returns:
        list: ``(name, open)`` pairs: a name for messages and a function that returns a
        binary file object.

    Raises:
        DatasetError: Nothing usable at ``path``; the message says what was looked for
            and where affNIST is published.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if zipfile.is_zipfile(path):
            return _zip_members(path)
        return [(path, lambda p=path: open(p, 'rb'))]
    if not os.path.isdir(path):
        raise DatasetError('affNIST folder not found: {}'.format(path))
    whole = os.path.join(path, 'test.mat')
    if os.path.isfile(whole):
        return [(whole, lambda p=whole: open(p, 'rb'))]
    for folder in (path, os.path.join(path, 'test_batches')):
        names = [n for n in (os.listdir(folder) if os.path.isdir(folder) else ())
                 if _BATCH.search(n) and os.path.isfile(os.path.join(folder, n))]
        if names:
            return [(os.path.join(folder, n), lambda p=os.path.join(folder, n): open(p, 'rb'))
                    for n in _numbered(names, folder)]
    for name in ('test.mat.zip', 'test_batches.zip'):
        archive = os.path.join(path, name)
        if os.path.isfile(archive):
            return _zip_members(archive)
    raise DatasetError(
        'no affNIST test files in {}: expected test.mat, 1.mat .. 32.mat (or '
        'test_batches/1.mat ..), test.mat.zip or test_batches.zip, from {}32x/transformed/'
        .format(path, AFFNIST_URL))


def _zip_members(archive):
    if not zipfile.is_zipfile(archive):
        raise DatasetError('{}: not a zip file'.format(archive))
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if not n.endswith('/')]
    whole = [n for n in names if _WHOLE.search(n)]
    batches = [n for n in names if _BATCH.search(n)]
    if whole:
        chosen = whole[:1]
    elif batches:
        chosen = _numbered(batches, archive)
    else:
        raise DatasetError('{}: holds no test.mat nor 1.mat .. K.mat'.format(archive))

    def opener(member):
        def open_member():
            with zipfile.ZipFile(archive) as z:
                return io.BytesIO(z.read(member))
        return open_member
    return [('{}:{}'.format(archive, m), opener(m)) for m in chosen]


def parse_affnist_mat(f, where, size=CANVAS):
    """Images and labels of one affNIST ``.mat`` file.

    Args:
        f: A binary file object holding the ``.mat`` file.
        where (str): Its name, for messages.
        size (int): Image side (40).

    Returns:
        tuple: ``images`` ``(N, size, size)`` uint8 (upright: column ``k`` of ``image``
        read row by row) and ``labels`` ``(N,)`` int32.

    Raises:
        DatasetError: Not a ``.mat`` file, or not in affNIST's layout.
    """
    mat = read_mat(f, where, *_MAT, squeeze_me=False, struct_as_record=True)
    if 'affNISTdata' not in mat:
        raise DatasetError('{}: no variable affNISTdata (found: {})'.format(
            where, ', '.join(k for k in mat if not k.startswith('__')) or 'none'))
    data = mat['affNISTdata']
    fields = data.dtype.names or ()
    if data.size != 1 or 'image' not in fields or 'label_int' not in fields:
        raise DatasetError('{}: affNISTdata must be a struct with fields image and '
                           'label_int (found fields: {})'.format(
                               where, ', '.join(fields) or 'none'))
    image = numpy.asarray(data['image'].flat[0])
    label = numpy.asarray(data['label_int'].flat[0])
    if image.ndim != 2 or image.shape[0] != size * size:
        raise DatasetError('{}: image must be {} x N (one {}x{} image a column), got '
                           'shape {}'.format(where, size * size, size, size, image.shape))
    N = image.shape[1]
    if label.size != N:
        raise DatasetError('{}: label_int has {} entries for {} images'.format(
            where, label.size, N))
    label = label.reshape(N)
    if N and (not numpy.array_equal(label, numpy.round(label)) or label.min() < 0
              or label.max() > 9):
        raise DatasetError('{}: label_int must hold classes 0..9'.format(where))
    if image.dtype != numpy.uint8:
        if N and (image.min() < 0 or image.max() > 255):
            raise DatasetError('{}: image values must be in 0..255, got {}..{}'.format(
                where, image.min(), image.max()))
        image = numpy.round(image).astype(numpy.uint8)
    images = numpy.ascontiguousarray(image.T).reshape(N, size, size)
    return images, label.astype(numpy.int32)


def read_affnist(path, n=None):
    """Reads the official affNIST test set (or any file of its layout).

    Args:
        path (str): A folder, ``.mat`` or ``.zip`` file, as :func:`affnist_files` takes.
        n (int): Keep the first ``n`` images, in file order (``None``: all; 320,000 for
            the whole test set). Only the files needed are read.

    Returns:
        tuple: ``x`` ``(n, 1, 40, 40)`` float32 in [0, 1] (uint8 / 255) and ``t``
        ``(n,)`` int32.

    Raises:
        DatasetError: The files are missing, unreadable, not in affNIST's layout, or
            hold fewer than ``n`` images; SciPy is not installed.
        ValueError: ``n`` is not a positive integer.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, numpy.integer))
                          or n <= 0):
        raise ValueError('n must be a positive integer or None, got {!r}'.format(n))
    files = affnist_files(path)
    loadmat_function(*_MAT)  # the missing dependency is named before any file is opened
    images, labels, count = [], [], 0
    for name, opener in files:
        if n is not None and count >= n:
            break
        with opener() as f:
            x, t = parse_affnist_mat(f, name)
        images.append(x)
        labels.append(t)
        count += len(x)
    if n is not None and count < n:
        raise DatasetError('{}: n={} exceeds the {} affNIST images there'.format(
            path, n, count))
    x = numpy.concatenate(images)[:n]
    t = numpy.concatenate(labels)[:n]
    out = x[:, None].astype(numpy.float32)
    out *= 1. / 255.
    return out, t


# The evaluation sets of a run


def get_affnist_eval(mnist_test, affnist_dir=None, n=None, seed=0, size=CANVAS):
    """The evaluation sets of an affNIST run: the expanded MNIST test set and the
    transformed set, the official affNIST files where given, else the stand-in.

    Args:
        mnist_test: The MNIST test set, a ``TupleDataset`` of ``(x, t)`` with ``x``
            ``(1, 28, 28)`` float32 in [0, 1] (as :func:`~capsnet_chainer.datasets.mnist.get_mnist`
            gives), or a pair ``(images, labels)``.
        affnist_dir (str): Folder (or file) of the official affNIST test files
            (:func:`read_affnist`); ``None``: use the stand-in.
        n (int): Examples of the transformed set: the first ``n`` affNIST images, or
            ``n`` stand-in examples (``None``: all 320,000 affNIST images, or one
            stand-in example per test digit).
        seed (int): Seed of the stand-in.
        size (int): Canvas side.

    Returns:
        collections.OrderedDict: key -> ``(TupleDataset, title)``: first
        :data:`EXPANDED_KEY` (``'expanded'``, :data:`EXPANDED_TITLE`), then either
        :data:`AFFNIST_KEY` (``'affnist'``, :data:`AFFNIST_TITLE`) or
        :data:`STANDIN_KEY` (``'affine_standin'``, :data:`STANDIN_TITLE`). Report each
        accuracy under its key, so that a result never calls the stand-in affNIST.
    """
    images, labels = dataset_arrays(mnist_test)
    out = collections.OrderedDict()
    out[EXPANDED_KEY] = (chainer.datasets.TupleDataset(
        expand(images, size), labels.astype(numpy.int32)), EXPANDED_TITLE)
    if affnist_dir is not None:
        if size != CANVAS:
            raise ValueError('affNIST images are {0}x{0}; size must be {0}'.format(CANVAS))
        out[AFFNIST_KEY] = (chainer.datasets.TupleDataset(*read_affnist(affnist_dir, n)),
                            AFFNIST_TITLE)
    else:
        x, t, _ = make_affine_test_set(images, labels, n, seed, size)
        out[STANDIN_KEY] = (chainer.datasets.TupleDataset(x, t), STANDIN_TITLE)
    return out
