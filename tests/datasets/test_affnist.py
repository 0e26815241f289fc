"""affNIST's official test files (the reader) and the evaluation sets of a run of the
``affnist`` protocol. Synthetic digits and files only; the .mat tests need SciPy (the
``[affnist]`` extra, which ``make test`` installs)."""

import io
import sys
import zipfile

import numpy
import pytest

from capsnet_chainer.datasets import affnist  # before chainer: restores numpy.sctypes
from capsnet_chainer.datasets.affine import make_affine_test_set
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.datasets.placement import expand

import chainer
from chainer import testing

from conftest import corner_digit
from conftest import ink_digits as digits

try:
    import scipy.io
except ImportError:
    scipy = None
needs_scipy = pytest.mark.skipif(
    scipy is None, reason='reading .mat files needs SciPy: pip install -e ".[affnist]"')


def write_affnist_mat(path, images, labels, image_dtype=numpy.uint8):
    """A .mat file in affNIST's layout: struct affNISTdata, image 1600 x N (column k is
    image k row by row), label_int 1 x N, label_one_of_n 10 x N."""
    images = numpy.asarray(images)
    N = len(images)
    one_of_n = numpy.zeros((10, N))
    one_of_n[numpy.asarray(labels, int) % 10, numpy.arange(N)] = 1
    scipy.io.savemat(path, {'affNISTdata': {
        'image': images.reshape(N, 1600).T.astype(image_dtype),
        'label_int': numpy.asarray(labels).reshape(1, N).astype(numpy.uint8),
        'label_one_of_n': one_of_n}}, do_compression=True)


def scaled(images):
    """uint8 -> float32 in [0, 1], as the MNIST reader and chainer.datasets.get_mnist."""
    return images.astype(numpy.float32) * (1. / 255.)


def asymmetric_images(n):
    base = (expand(corner_digit()[None])[0, 0] * 255).astype(numpy.uint8)
    return numpy.stack([numpy.roll(base, k, axis=1) for k in range(n)])  # (n, 40, 40)


@needs_scipy
def test_read_affnist_test_mat_keeps_images_upright_and_labels(tmp_path):
    images = asymmetric_images(5)
    labels = numpy.array([3, 1, 4, 1, 5])
    write_affnist_mat(str(tmp_path / 'test.mat'), images, labels)
    x, t = affnist.read_affnist(str(tmp_path))
    assert x.shape == (5, 1, 40, 40) and x.dtype == numpy.float32
    assert t.dtype == numpy.int32
    numpy.testing.assert_array_equal(t, labels)
    numpy.testing.assert_array_equal(x[:, 0], scaled(images))
    # The bar lies along the top (row 8), not down the left edge: no transpose.
    assert x[0, 0, 8, 8:18].min() == 1.0 and x[0, 0, 9:18, 8].max() < 1.0
    assert x.max() == 1.0
    x2, t2 = affnist.read_affnist(str(tmp_path / 'test.mat'), n=2)  # the file itself
    numpy.testing.assert_array_equal(x2, x[:2])
    numpy.testing.assert_array_equal(t2, labels[:2])


@needs_scipy
def test_read_affnist_reads_one_image_files_and_float_images(tmp_path):
    images = asymmetric_images(1)
    write_affnist_mat(str(tmp_path / 'test.mat'), images, [7], image_dtype=numpy.float64)
    x, t = affnist.read_affnist(str(tmp_path))
    numpy.testing.assert_array_equal(x[0, 0], scaled(images[0]))
    assert t.tolist() == [7]


@needs_scipy
@pytest.mark.parametrize('subfolder', ['', 'test_batches'])
def test_read_affnist_batches_in_numeric_order_reading_only_what_n_needs(
        tmp_path, subfolder):
    folder = tmp_path / subfolder
    folder.mkdir(exist_ok=True)
    images = asymmetric_images(30)
    labels = numpy.arange(30) % 10
    for k in range(3):  # 1.mat, 2.mat, 3.mat; then 10.mat must come after 3.mat
        write_affnist_mat(str(folder / '{}.mat'.format(k + 1)), images[10 * k:10 * k + 10],
                          labels[10 * k:10 * k + 10])
    for k in range(4, 10):
        write_affnist_mat(str(folder / '{}.mat'.format(k)), images[:1], [9])
    write_affnist_mat(str(folder / '10.mat'), images[:2], [8, 8])
    x, t = affnist.read_affnist(str(tmp_path))
    assert len(x) == 30 + 6 + 2
    numpy.testing.assert_array_equal(x[:30, 0], scaled(images))
    numpy.testing.assert_array_equal(t[:30], labels)
    assert t[30:].tolist() == [9] * 6 + [8, 8]
    (folder / '3.mat').write_bytes(b'not a mat file')  # n=15 needs 1.mat and 2.mat only
    x15, t15 = affnist.read_affnist(str(tmp_path), n=15)
    numpy.testing.assert_array_equal(x15, x[:15])
    with pytest.raises(DatasetError, match=r'3\.mat: not a readable \.mat file'):
        affnist.read_affnist(str(tmp_path), n=25)


@needs_scipy
@pytest.mark.parametrize('member', ['test_batches/{}.mat', '{}.mat'])
def test_read_affnist_reads_the_zip_without_unpacking(tmp_path, member):
    images = asymmetric_images(4)
    with zipfile.ZipFile(str(tmp_path / 'test_batches.zip'), 'w') as z:
        for k in (2, 1):
            f = io.BytesIO()
            write_affnist_mat(f, images[2 * (k - 1):2 * k], [k, k])
            z.writestr(member.format(k), f.getvalue())
    x, t = affnist.read_affnist(str(tmp_path))
    numpy.testing.assert_array_equal(x[:, 0], scaled(images))
    assert t.tolist() == [1, 1, 2, 2]
    numpy.testing.assert_array_equal(
        affnist.read_affnist(str(tmp_path / 'test_batches.zip'), n=3)[0], x[:3])


@needs_scipy
def test_read_affnist_errors_name_the_file_and_the_fault(tmp_path):
    def fails(match, n=None):
        with pytest.raises(DatasetError, match=match):
            affnist.read_affnist(str(tmp_path), n=n)

    images = asymmetric_images(3)
    with pytest.raises(DatasetError, match='not found'):
        affnist.read_affnist(str(tmp_path / 'absent'))
    fails(r'no affNIST test files in .*toronto')
    path = tmp_path / 'test.mat'
    path.write_bytes(b'\x00' * 200)
    fails(r'test\.mat: not a readable \.mat file')
    scipy.io.savemat(str(path), {'other': numpy.zeros(3)})
    fails(r'test\.mat: no variable affNISTdata \(found: other\)')
    scipy.io.savemat(str(path), {'affNISTdata': {'image': numpy.zeros((1600, 2))}})
    fails(r'fields image and label_int')
    scipy.io.savemat(str(path), {'affNISTdata': {'image': numpy.zeros((1599, 2)),
                                                 'label_int': numpy.zeros((1, 2))}})
    fails(r'image must be 1600 x N')
    scipy.io.savemat(str(path), {'affNISTdata': {'image': numpy.zeros((1600, 2)),
                                                 'label_int': numpy.zeros((1, 3))}})
    fails(r'label_int has 3 entries for 2 images')
    write_affnist_mat(str(path), images, [1, 12, 3])
    fails(r'classes 0\.\.9')
    write_affnist_mat(str(path), images, [1, 2, 3])
    fails(r'n=4 exceeds the 3 affNIST images', n=4)
    with pytest.raises(ValueError, match='positive'):
        affnist.read_affnist(str(tmp_path), n=0)
    path.unlink()
    for k in (1, 3):
        write_affnist_mat(str(tmp_path / '{}.mat'.format(k)), images, [1, 2, 3])
    fails(r'1\.mat \.\. K\.mat; found 1\.mat, 3\.mat, missing 2\.mat')


def test_read_affnist_without_scipy_names_the_install_line(tmp_path, monkeypatch):
    (tmp_path / 'test.mat').write_bytes(b'whatever')
    monkeypatch.setitem(sys.modules, 'scipy.io', None)  # import scipy.io fails
    with pytest.raises(DatasetError, match=r"needs SciPy.*capsnet-chainer\[affnist\]"):
        affnist.read_affnist(str(tmp_path))


def test_eval_sets_without_affnist_use_the_named_stand_in():
    x, t = digits(20)
    sets = affnist.get_affnist_eval(chainer.datasets.TupleDataset(x, t), n=30, seed=5)
    assert list(sets) == ['expanded', 'affine_standin']
    expanded, title = sets['expanded']
    assert title == affnist.EXPANDED_TITLE and 'expanded MNIST' in title
    numpy.testing.assert_array_equal(expanded._datasets[0], expand(x))
    numpy.testing.assert_array_equal(expanded._datasets[1], t)
    standin, title = sets['affine_standin']
    assert title == affnist.STANDIN_TITLE
    assert 'stand-in' in title and 'not affNIST' in title and not title.startswith('affNIST')
    assert len(standin) == 30
    numpy.testing.assert_array_equal(standin._datasets[0],
                                     make_affine_test_set(x, t, 30, 5)[0])
    assert list(affnist.get_affnist_eval((x, t))) == ['expanded', 'affine_standin']


@needs_scipy
def test_eval_sets_with_affnist_read_the_official_files(tmp_path):
    x, t = digits(20)
    images = asymmetric_images(6)
    write_affnist_mat(str(tmp_path / 'test.mat'), images, numpy.arange(6))
    sets = affnist.get_affnist_eval(chainer.datasets.TupleDataset(x, t),
                                    affnist_dir=str(tmp_path), n=4)
    assert list(sets) == ['expanded', 'affnist']
    official, title = sets['affnist']
    assert title == affnist.AFFNIST_TITLE and title.startswith('affNIST')
    assert len(official) == 4
    numpy.testing.assert_array_equal(official._datasets[0][:, 0],
                                     scaled(images[:4]))


def test_eval_sets_with_affnist_take_its_40x40_canvas_only(tmp_path):
    x, t = digits(4)
    with pytest.raises(ValueError, match='size must be 40'):
        affnist.get_affnist_eval((x, t), affnist_dir=str(tmp_path), size=36)


testing.run_module(__name__, __file__)
