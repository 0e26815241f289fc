"""Small files in the official formats of CIFAR-10, SVHN and smallNORB, and folders of
images, written by the tests (the real files are not on the test machines), and a way to
run the scripts on them.

The official files are checked against their published checksums, which small files
cannot have: :func:`accept` makes a reader's table hold the small files' own checksums,
in this process (``monkeypatch``) or, for ``train.py`` and ``analyze.py`` in a
subprocess, through :func:`run_script`.
"""

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile

import numpy

from capsnet_chainer.datasets import cifar10
from capsnet_chainer.datasets import smallnorb
from capsnet_chainer.fileio import file_digest
from conftest import REPO


def rgb_images(n, size=32, seed=0):
    """``n`` random RGB images ``(n, size, size, 3)`` uint8 whose mean brightness grows
    with their label ``(n,)`` (0..9), so that a network can learn something."""
    rs = numpy.random.RandomState(seed)
    t = numpy.arange(n) % 10
    x = rs.randint(0, 100, size=(n, size, size, 3)) + (t * 15)[:, None, None, None]
    return x.astype(numpy.uint8), t.astype(numpy.int64)


# CIFAR-10's python version


def cifar_batch(x, t):
    """The bytes of a CIFAR-10 batch: a protocol-2 pickle of ``{b'data': N x 3072, b'labels':
    [...]}``, each row the red, green and blue planes, as the official files are."""
    data = x.transpose((0, 3, 1, 2)).reshape((len(x), 3072))
    return pickle.dumps({b'batch_label': b'a test batch', b'labels': [int(k) for k in t],
                         b'data': data, b'filenames': [b'x.png'] * len(x)}, protocol=2)


def write_cifar10(folder, per_batch=4, n_test=6, archive=True, seed=0):
    """Writes the CIFAR-10 python version into ``folder``: ``cifar-10-python.tar.gz`` or the
    extracted ``cifar-10-batches-py/``. Returns ``(path, (x_train, t_train), (x_test,
    t_test), md5)``: the archive or the folder, the images (NHWC uint8) and the MD5 of
    each file written (``{name: md5}``, the archive's under its name)."""
    x, t = rgb_images(5 * per_batch + n_test, seed=seed)
    members = {'data_batch_{}'.format(k + 1): cifar_batch(x[k * per_batch:(k + 1) * per_batch],
                                                          t[k * per_batch:(k + 1) * per_batch])
               for k in range(5)}
    members['test_batch'] = cifar_batch(x[5 * per_batch:], t[5 * per_batch:])
    members['batches.meta'] = pickle.dumps(
        {b'label_names': [n.encode() for n in cifar10.CLASS_NAMES],
         b'num_vis': 3072, b'num_cases_per_batch': per_batch}, protocol=2)
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in members.items()}
    os.makedirs(folder, exist_ok=True)
    if archive:
        path = os.path.join(folder, cifar10.ARCHIVE)
        with tarfile.open(path, 'w:gz') as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(cifar10.FOLDER + '/' + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        md5[cifar10.ARCHIVE] = file_digest(path, 'md5')
    else:
        path = os.path.join(folder, cifar10.FOLDER)
        os.makedirs(path, exist_ok=True)
        for name, data in members.items():
            with open(os.path.join(path, name), 'wb') as f:
                f.write(data)
    n = 5 * per_batch
    return path, (x[:n], t[:n]), (x[n:], t[n:]), md5


def accept_cifar10(monkeypatch, md5):
    """Makes the CIFAR-10 reader take the files of :func:`write_cifar10`."""
    monkeypatch.setattr(cifar10, 'MD5', {k: v for k, v in md5.items() if k in cifar10.MD5})
    if cifar10.ARCHIVE in md5:
        monkeypatch.setattr(cifar10, 'ARCHIVE_MD5', md5[cifar10.ARCHIVE])


# SVHN's format 2


def write_svhn(folder, n_train=12, n_test=5, seed=0):
    """Writes ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5: ``X`` 32 x 32 x 3 x N
    uint8, ``y`` N x 1 with 10 for the digit 0). Returns ``(x, t)`` of each set (NHWC
    uint8, the digits 0..9) and the MD5 of each file."""
    from scipy.io import savemat
    os.makedirs(folder, exist_ok=True)
    sets, md5 = [], {}
    for name, n, s in (('train_32x32.mat', n_train, seed),
                       ('test_32x32.mat', n_test, seed + 1)):
        x, t = rgb_images(n, seed=s)
        y = numpy.where(t == 0, 10, t).astype(numpy.uint8)[:, None]
        path = os.path.join(folder, name)
        savemat(path, {'X': numpy.ascontiguousarray(x.transpose((1, 2, 3, 0))), 'y': y})
        sets.append((x, t))
        md5[name] = file_digest(path, 'md5')
    return sets[0], sets[1], md5


# smallNORB's binary matrices


def norb_matrix(array):
    """The bytes of a NORB binary matrix: magic, ndim, at least 3 dimensions, values."""
    magic = smallnorb.UBYTE_MAGIC if array.dtype == numpy.uint8 else smallnorb.INT_MAGIC
    dims = list(array.shape) + [1] * (3 - array.ndim)
    head = struct.pack('<ii', magic, array.ndim) + struct.pack('<{}i'.format(len(dims)),
                                                               *dims)
    return head + numpy.ascontiguousarray(array, array.dtype.newbyteorder('<')).tobytes()


def write_smallnorb(folder, n_pairs=10, gz=False, seed=0):
    """Writes the four ``-dat.mat`` and ``-cat.mat`` files (or ``.mat.gz``). Returns the
    pairs ``(N, 2, 96, 96)`` uint8 and classes of each set, and the SHA-256 of each file
    written."""
    rs = numpy.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    sets, sha256 = [], {}
    for prefix in smallnorb.PREFIXES.values():
        x = rs.randint(0, 256, size=(n_pairs, 2, 96, 96)).astype(numpy.uint8)
        t = (numpy.arange(n_pairs) % 5).astype(numpy.int32)
        for suffix, array in (('-dat.mat', x), ('-cat.mat', t)):
            data = norb_matrix(array)
            name = prefix + suffix + ('.gz' if gz else '')
            with open(os.path.join(folder, name), 'wb') as f:
                f.write(gzip.compress(data) if gz else data)
            sha256[name] = file_digest(os.path.join(folder, name))
        sets.append((x, t))
    return sets[0], sets[1], sha256


# Folders of images


def write_image(path, array, mode=None):
    """Writes ``array`` (H x W or H x W x 3 uint8) as an image file (by its extension)."""
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path)


def write_image_folder(root, classes=('cat', 'dog', 'fish'), per_class=6, size=(20, 24),
                       colour=False, test=0, ext='.png', seed=0):
    """A folder of images: ``root/train/<class>/k.png`` (and ``root/test/...`` with
    ``test`` images per class), each class's images brighter than the one before (and in
    colour, tinted red, green or blue by turns). Returns ``root``."""
    rs = numpy.random.RandomState(seed)
    for where, n in (('train', per_class), ('test', test)):
        for k, name in enumerate(classes):
            for i in range(n):
                shape = size + ((3,) if colour else ())
                image = rs.randint(0, 60, size=shape) + 60 * k
                if colour:
                    image[..., k % 3] += 60
                write_image(os.path.join(root, where, name, '{}{}'.format(i, ext)),
                            image.astype(numpy.uint8))
    return root


# The scripts on such files


def run_script(script, args, cwd, patches=None, timeout=900):
    """Runs ``train.py`` or ``analyze.py`` in a subprocess in ``cwd``, first setting the
    module attributes ``patches`` (``{'capsnet_chainer.datasets.cifar10.ARCHIVE_MD5':
    value}``): the checksum tables that the files of this module need."""
    lines = ['import importlib, runpy, sys']
    for target, value in (patches or {}).items():
        module, name = target.rsplit('.', 1)
        lines.append('setattr(importlib.import_module({!r}), {!r}, {!r})'.format(
            module, name, value))
    path = os.path.join(REPO, script)
    lines += ['sys.argv = [{!r}] + {!r}'.format(path, list(args)),
              'runpy.run_path({!r}, run_name="__main__")'.format(path)]
    env = dict(os.environ, PYTHONPATH=REPO, MPLBACKEND='Agg')
    return subprocess.run([sys.executable, '-c', '\n'.join(lines)], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)
