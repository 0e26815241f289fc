"""A folder of one's own images, one subfolder per class (``train.py --dataset folder``).

The layout::

    DIR/train/<class>/*.png|jpg|jpeg|bmp
    DIR/test/<class>/...        (optional: without it, a fraction of each class is held out)

The classes are the subfolder names, sorted; ``test/`` must have the same ones. Pillow
reads the images: grey levels stay one channel and colour images three (a palette image
or a colour one with alpha is read as RGB and a grey one with alpha as grey, the alpha
dropped; a 16-bit grey one as 8-bit grey); a mix of grey and colour is read as colour,
and said so. Images of different sizes need ``image_size`` (``--image-size HxW``), to
which every image is resized (bilinear); without it they are refused, naming two files
of different sizes. Without ``test/``, ``test_fraction`` of each
class (at least one image) is held out, drawn with the seed :data:`SPLIT_SEED`. Both sets
come in an order shuffled with that seed, so that ``--n-train N`` takes images of every
class.

Every problem is one :class:`~capsnet_chainer.datasets.idx.DatasetError` naming the
folder or the file: no ``train/``, no class folders or only one, a class folder without
images, a file Pillow cannot read (or a truncated one), the classes of ``test/``
differing from those of ``train/``.
"""

import os

import numpy

from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.images import format_size
from capsnet_chainer.datasets.images import LabelledImages
from capsnet_chainer.errors import SettingError

#: The file name endings read as images (in any case).
EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
#: The fraction of each class held out for testing where ``DIR`` has no ``test/``.
DEFAULT_TEST_FRACTION = 0.2
#: The seed of the held-out split and of the order of the images.
SPLIT_SEED = 20171107
#: Pillow's modes read as one grey channel; all other modes are read as RGB.
GREY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')
LAYOUT = 'DIR/train/<class>/*.png|jpg|jpeg|bmp and, optionally, DIR/test/<class>/...'


def _image_files(folder):
    names = sorted(n for n in os.listdir(folder) if not n.startswith('.'))
    return [os.path.join(folder, n) for n in names
            if n.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]


def list_classes(root):
    """The classes of ``root`` (``DIR/train`` or ``DIR/test``) and their image files:
    ``[(name, [path, ...]), ...]``, sorted by name.

    Raises:
        DatasetError: No class folder, only one, or one without images.
    """
    names = sorted(n for n in os.listdir(root)
                   if not n.startswith('.') and os.path.isdir(os.path.join(root, n)))
    if len(names) < 2:
        loose = len(_image_files(root))
        raise DatasetError('{}: {}; a classifier needs at least two classes, one '
                           'subfolder each ({}){}'.format(
                               root, 'only the class folder {}'.format(names[0]) if names
                               else 'no class folders', LAYOUT,
                               '; its {} images outside a class folder are not read'
                               .format(loose) if loose else ''))
    classes = []
    for name in names:
        files = _image_files(os.path.join(root, name))
        if not files:
            raise DatasetError('{}: an empty class folder, no image files ({})'.format(
                os.path.join(root, name), ', '.join(EXTENSIONS)))
        classes.append((name, files))
    return classes


def _open(path):
    """Opens an image lazily; its ``mode`` and ``size`` are known, the pixels not yet."""
    from PIL import Image
    try:
        return Image.open(path)
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, ...
        raise DatasetError('{}: cannot read the image ({}: {})'.format(
            path, type(e).__name__, e)) from None


def inspect(paths):
    """``(modes, sizes)`` of the image files: Pillow's mode and ``(W, H)`` of each, from
    the headers."""
    modes, sizes = [], []
    for path in paths:
        with _open(path) as image:
            modes.append(image.mode)
            sizes.append(image.size)
    return modes, sizes


def decode(path, colour, size=None):
    """The pixels of one image, ``uint8`` ``(H, W, C)``: grey (``C = 1``) or, with
    ``colour``, RGB; resized to ``size`` ``(H, W)`` (bilinear) where given."""
    from PIL import Image
    with _open(path) as image:
        try:
            image.load()
            if image.mode in ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N'):  # 16-bit grey
                values = numpy.asarray(image, numpy.float64)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise ValueError('{}-bit values out of 0..65535'.format(image.mode))
                image = Image.fromarray(numpy.round(values / 257).astype(numpy.uint8))
            image = image.convert('RGB' if colour else 'L')
            if size is not None:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = numpy.asarray(image, numpy.uint8)
        except Exception as e:  # a truncated or corrupt file fails here
            raise DatasetError('{}: cannot read the image ({}: {})'.format(
                path, type(e).__name__, e)) from None
    return pixels.reshape(pixels.shape[:2] + (-1,))


def _split(classes, test_fraction, rs):
    """Holds out ``test_fraction`` of each class: ``(train, test)`` lists of ``(path,
    label)``."""
    train, test = [], []
    for label, (name, files) in enumerate(classes):
        n_test = max(1, int(round(test_fraction * len(files))))
        if n_test >= len(files):
            raise DatasetError('{}: {} image(s) of class {!r}: too few to hold out {:g} of '
                               'them for testing and train on the rest; add images or a '
                               'test/ folder'.format(os.path.dirname(files[0]), len(files),
                                                     name, test_fraction))
        held = set(rs.permutation(len(files))[:n_test])
        for i, path in enumerate(files):
            (test if i in held else train).append((path, label))
    return train, test


def read_folder(path, image_size=None, test_fraction=None, data_dir_name='data_dir',
                test_only=False):
    """Reads a folder of images (the layout of this module's docstring).

    Args:
        path (str): The folder ``DIR``.
        image_size (tuple of int): ``(H, W)`` to resize every image to; ``None``: the
            images' own size, which must then be the same for all.
        test_fraction (float): Without ``DIR/test``, the fraction of each class to hold
            out (``None``: :data:`DEFAULT_TEST_FRACTION`); must be ``None`` with it.
        data_dir_name (str): How messages name ``path`` (``'--data-dir'``).
        test_only (bool): Decode only the test images; the training images are still
            listed and their headers read, which decide the split, the colour and the
            size check, so that the test set is the one a full read gives.

    Returns:
        tuple: ``(train, test)``, two :class:`~capsnet_chainer.datasets.images.
        LabelledImages`; ``test.record`` says how the test set was made
        (``{'test_fraction', 'seed'}`` when held out, else ``{}``); ``train`` is ``None``
        with ``test_only``.
    """
    if path is None:
        raise SettingError('data_dir', 'is needed: the folder of images ({})'.format(LAYOUT))
    if not os.path.isdir(path):
        raise DatasetError('{} {}: no such folder ({})'.format(data_dir_name, path, LAYOUT))
    train_root, test_root = os.path.join(path, 'train'), os.path.join(path, 'test')
    if not os.path.isdir(train_root):
        raise DatasetError('{} {}: no train/ folder; a folder of images holds {}'.format(
            data_dir_name, path, LAYOUT))
    classes = list_classes(train_root)
    names = [name for name, _ in classes]
    rs = numpy.random.RandomState(SPLIT_SEED)
    if os.path.isdir(test_root):
        if test_fraction is not None:
            raise SettingError('test_fraction', '{} has a test/ folder, which is the test '
                               'set; hold nothing out'.format(path), test_fraction)
        test_classes = list_classes(test_root)
        test_names = [name for name, _ in test_classes]
        if test_names != names:
            raise DatasetError('{}: the classes of test/ differ from those of train/ ({})'
                               .format(path, _difference(names, test_names)))
        train = [(p, k) for k, (_, files) in enumerate(classes) for p in files]
        test = [(p, k) for k, (_, files) in enumerate(test_classes) for p in files]
        record = {}
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train, test = _split(classes, fraction, rs)
        record = {'test_fraction': fraction, 'seed': SPLIT_SEED}
    train = [train[i] for i in rs.permutation(len(train))]
    test = [test[i] for i in rs.permutation(len(test))]
    modes, sizes = inspect([p for p, _ in train + test])
    notes = []
    if image_size is None and len(set(sizes)) > 1:
        first = sizes[0]
        other = next(i for i, s in enumerate(sizes) if s != first)
        files = [p for p, _ in train + test]
        raise DatasetError(
            '{}: images of different sizes ({} is {}, {} is {}); pass --image-size HxW to '
            'resize them all to one'.format(path, files[0], format_size(first[::-1]),
                                            files[other], format_size(sizes[other][::-1])))
    colour = [m not in GREY_MODES for m in modes]
    if any(colour) and not all(colour):
        notes.append('{} of {} images are grey and {} in colour: all are read as RGB'.format(
            len(colour) - sum(colour), len(colour), sum(colour)))
    if image_size is not None and len(set(sizes)) > 1:
        notes.append('images of {} sizes resized to {}'.format(len(set(sizes)),
                                                               format_size(image_size)))
    sets = []
    for examples in (train, test):
        if test_only and examples is train:
            sets.append(None)
            continue
        x = numpy.stack([decode(p, any(colour), image_size) for p, _ in examples])
        x = x.transpose((0, 3, 1, 2)).astype(numpy.float32)
        x *= 1. / 255.
        t = numpy.array([k for _, k in examples], numpy.int32)
        sets.append(LabelledImages(x, t, names, notes))
    sets[1].record = record
    return tuple(sets)


def _difference(train, test):
    """What differs between the class lists of ``train/`` and ``test/``, in words."""
    said = ['{} lacks {}'.format(where, ', '.join(missing)) for where, missing in (
        ('test/', [n for n in train if n not in test]),
        ('train/', [n for n in test if n not in train])) if missing]
    return '; '.join(said) or 'the same names in another order'
