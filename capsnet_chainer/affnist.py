"""affNIST robustness (Sec. 5.2 of Sabour et al. [#]_): train on MNIST placed at random on
a 40x40 canvas, test on the expanded MNIST test set and on affNIST.

Sec. 5.2 of the paper: "we trained a CapsNet and a traditional convolutional network
(with MaxPooling and DropOut) on a padded and translated MNIST training set, in which
each example is an MNIST digit placed randomly on a black background of 40 x 40 pixels.
We then tested this network on the affNIST data set, in which each example is an MNIST
digit with a random small affine transformation." CapsNet: 99.23% on the expanded MNIST
test set, 79% on affNIST; the CNN: 66% on affNIST.

The pieces (arrays in, arrays out; only :func:`read_affnist` reads files):

* :class:`RandomPlacement`, the training converter: each 28x28 digit at a uniformly
  random integer position on the 40x40 zero canvas (top-left offset 0..12 per axis; the
  official code's ``--pad=6 --shift=6``), with a random state that snapshots save.
* :func:`expand`: the expanded MNIST test set, digits centred (offset 6), which is
  affNIST's own ``just_centered`` version ("centered in the 40x40 image by adding an edge
  of 6 background pixels around the original 28x28").
* :func:`read_affnist`: the official affNIST test files, from a folder the user gives.
* :func:`make_affine_test_set`: where those files are absent, a deterministic
  affine-transformed MNIST test set that stands in for them, named
  :data:`STANDIN_TITLE`, never "affNIST".
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
``just_centered/test.mat`` with :func:`read_affnist` and compare it with :func:`expand`
of the MNIST test digits: they agree pixel for pixel when the orientation is right.
Reading ``.mat`` files needs SciPy, an optional dependency:
``pip install 'capsnet-chainer[affnist]'``.

**The stand-in.** Each image is a test digit under a random affine transformation drawn
from the ranges below, then translated so that the whole digit stays on the canvas.
The ranges are meant to be affNIST's, as its page describes its transformations
(docs/affnist.md says how they were checked; the shear is uncertain):

* rotation within :data:`MAX_ROTATION` (20) degrees;
* shear within :data:`MAX_SHEAR` (0.2: the horizontal coordinate gains up to 0.2 x the
  vertical one);
* vertical and horizontal scale factors, each in :data:`SCALE_RANGE` (0.8 to 1.2);
* a translation that keeps the digit inside the 40x40 image.

Every parameter is drawn uniformly and independently. The stand-in is *not* affNIST:
its transformations are drawn anew, its interpolation is our own, and its figures are
not comparable with the paper's 79%. Its key and title say so.

Shapes: ``N`` examples, ``B`` batch, ``S`` canvas side (40); digits are ``(N, 28, 28)``
or ``(N, 1, 28, 28)``; canvases ``(N, 1, S, S)`` float32 in [0, 1].

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import collections
import io
import operator
import os
import re
import zipfile

import chainer
import numpy

from capsnet_chainer.idx import DatasetError
from capsnet_chainer.random_state import check_part
from capsnet_chainer.random_state import serialize_random_state

#: Canvas side of the paper's padded MNIST and of affNIST.
CANVAS = 40
#: Where affNIST is published.
AFFNIST_URL = 'https://www.cs.toronto.edu/~tijmen/affNIST/'
#: Pin of the optional dependency that reads ``.mat`` files (the ``[affnist]`` extra).
SCIPY_REQUIREMENT = 'scipy==1.17.1'

#: Largest rotation of the stand-in, degrees (affNIST's 20; docs/affnist.md gives the sources).
MAX_ROTATION = 20.0
#: Largest shear factor of the stand-in: 0.2, about 11 degrees. The one uncertain range:
#: docs/affnist.md says why 0.2, and not the 45 degrees that one source gives.
MAX_SHEAR = 0.2
#: Range of each of the vertical and horizontal scale factors (affNIST's 0.8 to 1.2).
SCALE_RANGE = (0.8, 1.2)
#: The stand-in's ranges, to record beside its results.
STANDIN_RANGES = collections.OrderedDict([
    ('rotation_degrees', [-MAX_ROTATION, MAX_ROTATION]),
    ('shear', [-MAX_SHEAR, MAX_SHEAR]),
    ('scale_y', list(SCALE_RANGE)),
    ('scale_x', list(SCALE_RANGE)),
    ('translation', 'uniform over the positions that keep the whole digit on the canvas'),
    ('source', AFFNIST_URL),
])

#: Keys and titles of the evaluation sets (:func:`get_affnist_eval`).
EXPANDED_KEY = 'expanded'
EXPANDED_TITLE = 'expanded MNIST (test digits centred on 40x40)'
AFFNIST_KEY = 'affnist'
AFFNIST_TITLE = 'affNIST (official test files)'
STANDIN_KEY = 'affine_standin'
STANDIN_TITLE = 'affine-MNIST (stand-in for affNIST, not affNIST)'


def _as_digits(images):
    """``(N, H, W)`` or ``(N, 1, H, W)`` -> a ``(N, 1, H, W)`` array (dtype kept)."""
    images = numpy.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError('images must be (N, H, W) or (N, 1, H, W), got shape {}'.format(
            images.shape))
    return images


def place(x, dy, dx, size=CANVAS):
    """Puts each image on a ``size`` x ``size`` zero canvas, top-left corner at
    ``(dy[i], dx[i])``.

    Args:
        x (:ref:`ndarray`): Images ``(B, C, H, W)``, NumPy or CuPy, ``H, W <= size``.
        dy, dx (array of ints): Row and column of each image's top-left corner, ``(B,)``,
            in ``[0, size - H]`` and ``[0, size - W]``.
        size (int): Canvas side.

    Returns:
        :ref:`ndarray`: ``(B, C, size, size)``, the dtype and device of ``x``.
    """
    xp = chainer.backend.get_array_module(x)
    B, C, H, W = x.shape
    dy = numpy.broadcast_to(numpy.asarray(dy, numpy.int64), (B,))
    dx = numpy.broadcast_to(numpy.asarray(dx, numpy.int64), (B,))
    if B and (dy.min() < 0 or dy.max() > size - H or dx.min() < 0 or dx.max() > size - W):
        raise ValueError('every {}x{} image must lie inside the {}x{} canvas'.format(
            H, W, size, size))
    out = xp.zeros((B, C, size, size), x.dtype)
    rows = xp.asarray(dy[:, None, None, None] + numpy.arange(H)[None, None, :, None])
    cols = xp.asarray(dx[:, None, None, None] + numpy.arange(W)[None, None, None, :])
    b = xp.arange(B)[:, None, None, None]
    c = xp.arange(C)[None, :, None, None]
    out[b, c, rows, cols] = x
    return out


def expand(images, size=CANVAS):
    """The expanded MNIST test set: each digit at the centre of a ``size`` x ``size``
    zero canvas (offset ``(size - 28) // 2``, 6 for 40: affNIST's ``just_centered``).

    Args:
        images (numpy.ndarray): Digits ``(N, H, W)`` or ``(N, 1, H, W)``.
        size (int): Canvas side.

    Returns:
        numpy.ndarray: ``(N, 1, size, size)``, the dtype of ``images``.
    """
    x = _as_digits(images)
    H, W = x.shape[2:]
    if H > size or W > size:
        raise ValueError('digits of {}x{} do not fit a canvas of {}'.format(H, W, size))
    return place(x, (size - H) // 2, (size - W) // 2, size)


class RandomPlacement(chainer.dataset.Converter):
    """Converter that concatenates a batch and puts each digit at a random position on a
    ``size`` x ``size`` zero canvas: the paper's training set for affNIST (Sec. 5.2,
    "each example is an MNIST digit placed randomly on a black background of 40 x 40
    pixels").

    Each image draws its own top-left corner ``(dy, dx)``, both uniform over the integers
    ``0 .. size - 28`` (0..12 for 40), so the whole digit is always on the canvas: the
    official code's expanded MNIST (``mnist_shift.py --pad=6 --shift=6``: padded by 6,
    shifted by -6..6 per axis) has the same 13 x 13 positions, each once. Use it as the
    ``converter`` of the training updater only, with no other augmentation; evaluate on
    :func:`expand`. Each call draws ``(B, 2)`` integers from the converter's own
    :class:`numpy.random.RandomState`; ``StandardUpdater.serialize`` does not save its
    converter, so serialize this object too (:meth:`serialize`) to resume the same
    placements.

    Args:
        size (int): Canvas side.
        seed (int): Seed of the converter's random state.
        part (tuple of int): ``(i, n)``: each batch is part ``i`` of ``n`` equal,
            contiguous parts of a global batch (data-parallel training, see
            :mod:`capsnet_chainer.distributed`): the positions are drawn for the whole
            global batch and part ``i`` of them used, so that ``n`` converters seeded
            alike place as one converter of the global batch does.
    """

    def __init__(self, size=CANVAS, seed=None, part=(0, 1)):
        size = operator.index(size)
        if size < 1:
            raise ValueError('size must be >= 1, got {}'.format(size))
        index, n_part = check_part(part)
        self.size = size
        self.part = (index, n_part)
        self.random_state = numpy.random.RandomState(seed)

    def __call__(self, batch, device=None):
        """Converts a batch.

        Args:
            batch (list): Examples ``(x, t, ...)``, ``x`` of shape ``(C, H, W)``.
            device (~chainer.backend.Device): Where to send the arrays; ``None`` leaves
                them where they are.

        Returns:
            tuple: ``(x, t, ...)``, ``x`` of shape ``(B, C, size, size)``.
        """
        arrays = chainer.dataset.concat_examples(batch)
        x, rest = arrays[0], arrays[1:]
        B, _, H, W = x.shape
        if H > self.size or W > self.size:
            raise ValueError('images of {}x{} do not fit a canvas of {}'.format(
                H, W, self.size))
        index, n_part = self.part
        offsets = self.random_state.randint(
            0, [self.size - H + 1, self.size - W + 1], size=(B * n_part, 2))
        offsets = offsets[index * B:(index + 1) * B]
        x = place(x, offsets[:, 0], offsets[:, 1], self.size)
        return tuple(chainer.dataset.to_device(device, a) for a in (x,) + tuple(rest))

    def serialize(self, serializer):
        """Saves or restores the full state of the random number generator."""
        serialize_random_state(serializer, self.random_state)


# The official affNIST files

_BATCH = re.compile(r'(?:^|/)(\d+)\.mat$')
_WHOLE = re.compile(r'(?:^|/)test\.mat$')


def _loadmat():
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(
            'reading the affNIST .mat files needs SciPy, an optional dependency: '
            "pip install 'capsnet-chainer[affnist]' (or pip install {})".format(
                SCIPY_REQUIREMENT)) from None
    return loadmat


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
    loadmat = _loadmat()
    try:
        mat = loadmat(f, squeeze_me=False, struct_as_record=True)
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError, ...
        raise DatasetError('{}: not a readable .mat file ({}: {})'.format(
            where, type(e).__name__, e)) from None
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
    _loadmat()  # the missing dependency is named before any file is opened
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


# The stand-in: affine-transformed MNIST


def affine_matrices(rotation, shear, scale_y, scale_x):
    """The linear parts of the stand-in's transformations, in ``(row, column)``
    coordinates: scale, then shear, then rotate.

    ``A = R(rotation) @ [[1, 0], [shear, 1]] @ diag(scale_y, scale_x)``. A positive
    rotation turns the image counter-clockwise as displayed (rows down): 90 degrees is
    :func:`numpy.rot90`. A positive shear moves lower rows to the right.

    Args:
        rotation (array): Degrees, ``(n,)``.
        shear, scale_y, scale_x (array): ``(n,)``.

    Returns:
        numpy.ndarray: ``(n, 2, 2)`` float64, mapping ``(dy, dx)`` about the digit's
        centre to ``(dy, dx)`` about the canvas centre.
    """
    theta = numpy.deg2rad(numpy.asarray(rotation, numpy.float64))
    c, s = numpy.cos(theta), numpy.sin(theta)
    R = numpy.stack([numpy.stack([c, -s], -1), numpy.stack([s, c], -1)], -2)
    shear = numpy.asarray(shear, numpy.float64)
    H = numpy.zeros(shear.shape + (2, 2))
    H[..., 0, 0] = H[..., 1, 1] = 1
    H[..., 1, 0] = shear
    S = numpy.zeros(shear.shape + (2, 2))
    S[..., 0, 0] = scale_y
    S[..., 1, 1] = scale_x
    return R @ H @ S


def warp(images, matrices, translations, size=CANVAS, chunk=1024):
    """Affine warp of digits onto a ``size`` x ``size`` zero canvas, bilinear.

    Output pixel ``p`` (row, column) takes the digit at
    ``A^-1 (p - c_out - t) + c_in``, with ``c_in`` and ``c_out`` the centres of the digit
    and of the canvas (``(H - 1) / 2``, ``(size - 1) / 2``), interpolated bilinearly
    with zero outside the digit. With ``A = I`` the digit lands centred as in
    :func:`expand`; an integer ``t`` moves it by whole pixels, exactly.

    Args:
        images (numpy.ndarray): Digits ``(N, H, W)`` or ``(N, 1, H, W)``.
        matrices (numpy.ndarray): ``(N, 2, 2)``, invertible (:func:`affine_matrices`).
        translations (numpy.ndarray): ``(N, 2)``, ``(t_row, t_col)`` in pixels.
        size (int): Canvas side.
        chunk (int): Images computed at once (memory: about ``chunk * size**2 * 100``
            bytes).

    Returns:
        numpy.ndarray: ``(N, 1, size, size)`` float32.
    """
    x = _as_digits(images)[:, 0].astype(numpy.float64)
    N, H, W = x.shape
    inv = numpy.linalg.inv(numpy.asarray(matrices, numpy.float64).reshape(N, 2, 2))
    t = numpy.asarray(translations, numpy.float64).reshape(N, 2)
    c_in = numpy.array([(H - 1) / 2, (W - 1) / 2])
    c_out = (size - 1) / 2
    grid = numpy.stack(numpy.meshgrid(numpy.arange(size), numpy.arange(size),
                                      indexing='ij'), -1).reshape(-1, 2)  # (P, 2)
    # Zero border: 1 before, 2 after, so that the clipped coordinates below (in
    # [-1, H] and [-1, W]) and their +1 neighbours all index zeros outside the digit.
    padded = numpy.zeros((N, H + 3, W + 3))
    padded[:, 1:H + 1, 1:W + 1] = x
    out = numpy.empty((N, size * size), numpy.float32)
    for i in range(0, N, chunk):
        j = min(i + chunk, N)
        d = grid[None] - c_out - t[i:j, None, :]  # (n, P, 2)
        src = numpy.einsum('nab,npb->npa', inv[i:j], d) + c_in
        sy = numpy.clip(src[..., 0], -1, H)
        sx = numpy.clip(src[..., 1], -1, W)
        y0, x0 = numpy.floor(sy), numpy.floor(sx)
        wy, wx = sy - y0, sx - x0
        y0 = y0.astype(numpy.int64) + 1
        x0 = x0.astype(numpy.int64) + 1
        n = numpy.arange(j - i)[:, None]
        img = padded[i:j]
        out[i:j] = ((1 - wy) * ((1 - wx) * img[n, y0, x0] + wx * img[n, y0, x0 + 1])
                    + wy * ((1 - wx) * img[n, y0 + 1, x0] + wx * img[n, y0 + 1, x0 + 1]))
    return out.reshape(N, 1, size, size)


def support_extent(images, matrices):
    """Where the warped ink can be non-zero, relative to the canvas centre, before
    translation.

    A bilinear sample is non-zero only inside the open box that extends the digit's ink
    by one pixel on every side; this returns the bounding box of that box's image under
    each matrix. A digit without ink uses its whole frame.

    Returns:
        tuple: ``lo`` and ``hi``, ``(N, 2)`` float64 (row, column).
    """
    x = _as_digits(images)[:, 0]
    N, H, W = x.shape
    ink = x > 0
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (N, H), (N, W)
    blank = ~rows.any(axis=1)
    r0 = numpy.where(blank, 0, rows.argmax(axis=1))
    r1 = numpy.where(blank, H - 1, H - 1 - rows[:, ::-1].argmax(axis=1))
    c0 = numpy.where(blank, 0, cols.argmax(axis=1))
    c1 = numpy.where(blank, W - 1, W - 1 - cols[:, ::-1].argmax(axis=1))
    cy, cx = (H - 1) / 2, (W - 1) / 2
    corners = numpy.stack([numpy.stack([r - cy, c - cx], -1)
                           for r in (r0 - 1, r1 + 1) for c in (c0 - 1, c1 + 1)], 1)  # (N,4,2)
    mapped = numpy.einsum('nab,nkb->nka', numpy.asarray(matrices, numpy.float64), corners)
    return mapped.min(axis=1), mapped.max(axis=1)


def draw_affine_params(rng, images, size=CANVAS):
    """Draws one stand-in transformation for each digit.

    Uses ``rng`` twice: one ``uniform`` of shape ``(N, 4)`` for rotation, shear and the
    two scales, then one of shape ``(N, 2)`` for the translation, uniform over the
    interval that keeps the digit's non-zero pixels on the canvas (see
    :func:`support_extent`); where no translation can (a digit too large for the
    canvas), the digit is centred and its edges are cut.

    Returns:
        dict: ``rotation``, ``shear``, ``scale_y``, ``scale_x`` ``(N,)``,
        ``translation`` ``(N, 2)``, float64, and ``cut`` ``(N,)`` bool.
    """
    images = _as_digits(images)
    N = len(images)
    u = rng.uniform(size=(N, 4))
    params = {
        'rotation': MAX_ROTATION * (2 * u[:, 0] - 1),
        'shear': MAX_SHEAR * (2 * u[:, 1] - 1),
        'scale_y': SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 2],
        'scale_x': SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 3],
    }
    A = affine_matrices(params['rotation'], params['shear'], params['scale_y'],
                        params['scale_x'])
    lo, hi = support_extent(images, A)
    c = (size - 1) / 2
    # Pixel centres 0 .. size-1 must hold every non-zero sample: the open support
    # (c + lo + t, c + hi + t) must lie within [-1, size].
    low, high = -1 - c - lo, size - c - hi
    cut = (low > high).any(axis=1)
    v = rng.uniform(size=(N, 2))
    params['translation'] = numpy.where(low <= high, low + (high - low) * v,
                                        (low + high) / 2)
    params['cut'] = cut
    return params


def make_affine_test_set(images, labels, n=None, seed=0, size=CANVAS):
    """The stand-in for affNIST: a fixed affine-transformed MNIST test set on the
    ``size`` x ``size`` canvas, regenerated bit for bit from ``seed``.

    Example ``k`` is digit ``k % N`` under its own transformation
    (:func:`draw_affine_params`, from a :class:`numpy.random.RandomState` seeded with
    ``seed``; :func:`warp`). RandomState keeps its stream across NumPy versions, so the
    parameters depend only on the digits, ``n``, ``seed`` and ``size``; the pixels also
    on the floating-point arithmetic (identical on one platform). Title it
    :data:`STANDIN_TITLE`: it is not affNIST.

    Args:
        images (numpy.ndarray): Test digits ``(N, 28, 28)`` or ``(N, 1, 28, 28)``,
            float32 in [0, 1].
        labels (numpy.ndarray): Their classes ``(N,)``.
        n (int): Number of examples (``None``: ``N``, one transformation per digit).
        seed (int): Seed.
        size (int): Canvas side.

    Returns:
        tuple: ``x`` ``(n, 1, size, size)`` float32, ``t`` ``(n,)`` int32 and
        ``params`` (:func:`draw_affine_params`'s dict, plus ``source`` ``(n,)``, the
        index of each example's digit).
    """
    images = _as_digits(images)
    labels = numpy.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError('labels must be ({},), got shape {}'.format(
            len(images), labels.shape))
    n = len(images) if n is None else operator.index(n)
    if n < 0 or (n and not len(images)):
        raise ValueError('n must be >= 0 (and the digits not empty), got {}'.format(n))
    source = numpy.arange(n) % max(len(images), 1)
    digits = images[source]
    params = draw_affine_params(numpy.random.RandomState(seed), digits, size)
    A = affine_matrices(params['rotation'], params['shear'], params['scale_y'],
                        params['scale_x'])
    x = warp(digits, A, params['translation'], size)
    params['source'] = source
    return x, labels[source].astype(numpy.int32), params


# The evaluation sets of a run


def dataset_arrays(dataset):
    """``(images, labels)`` of a ``TupleDataset``, a pair of arrays or any dataset of
    ``(x, t, ...)`` examples, as NumPy arrays (a ``TupleDataset``'s own, not copies)."""
    if isinstance(dataset, chainer.datasets.TupleDataset):
        images, labels = dataset._datasets[:2]
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
    else:
        images, labels = chainer.dataset.concat_examples(list(dataset))[:2]
    return numpy.asarray(images), numpy.asarray(labels)


def get_affnist_eval(mnist_test, affnist_dir=None, n=None, seed=0, size=CANVAS):
    """The evaluation sets of an affNIST run: the expanded MNIST test set and the
    transformed set, the official affNIST files where given, else the stand-in.

    Args:
        mnist_test: The MNIST test set, a ``TupleDataset`` of ``(x, t)`` with ``x``
            ``(1, 28, 28)`` float32 in [0, 1] (as :func:`~capsnet_chainer.mnist.get_mnist`
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
