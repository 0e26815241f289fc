"""affNIST protocol: random placement, the expanded test set, the official files' reader
and the affine stand-in. Synthetic digits only; the .mat tests need SciPy (the
``[affnist]`` extra, which ``make test`` installs)."""

import io
import sys
import zipfile

import numpy
import pytest

from capsnet_chainer import affnist  # before chainer: restores numpy.sctypes
from capsnet_chainer.idx import DatasetError

import chainer
from chainer import serializers

try:
    import scipy.io
except ImportError:
    scipy = None
needs_scipy = pytest.mark.skipif(
    scipy is None, reason='reading .mat files needs SciPy: pip install -e ".[affnist]"')


def digits(n, seed=0, box=(4, 24, 6, 22)):
    """Digits with random ink (never zero) in ``box`` = rows r0:r1, columns c0:c1."""
    rs = numpy.random.RandomState(seed)
    r0, r1, c0, c1 = box
    x = numpy.zeros((n, 1, 28, 28), numpy.float32)
    x[:, :, r0:r1, c0:c1] = rs.uniform(0.2, 1.0, size=(n, 1, r1 - r0, c1 - c0))
    return x, rs.randint(0, 10, size=n).astype(numpy.int32)


def corner_digit():
    """An image that no flip, transpose or rotation maps onto itself."""
    x = numpy.zeros((28, 28), numpy.float32)
    x[2, 2:12] = 1.0   # a bar along the top, at the left
    x[3:6, 2] = 0.5    # a shorter, fainter one down from its left end
    x[20, 17] = 0.25   # a dot low on the right
    return x


# Placement and the expanded test set


def test_expand_centres_digits_at_offset_6():
    x, _ = digits(3)
    y = affnist.expand(x)
    assert y.shape == (3, 1, 40, 40) and y.dtype == numpy.float32
    numpy.testing.assert_array_equal(y[:, :, 6:34, 6:34], x)
    assert numpy.count_nonzero(y) == numpy.count_nonzero(x)  # zero elsewhere
    numpy.testing.assert_array_equal(affnist.expand(x[:, 0]), y)  # (N, 28, 28) too


def test_place_puts_the_top_left_corner_at_the_offsets():
    x, _ = digits(2)
    y = affnist.place(x, [0, 12], [12, 3])
    numpy.testing.assert_array_equal(y[0, :, 0:28, 12:40], x[0])
    numpy.testing.assert_array_equal(y[1, :, 12:40, 3:31], x[1])
    assert numpy.count_nonzero(y) == numpy.count_nonzero(x)  # zero elsewhere
    with pytest.raises(ValueError, match='inside'):
        affnist.place(x, [0, 13], [0, 0])


def find_offset(canvas, digit):
    found = [(dy, dx) for dy in range(13) for dx in range(13)
             if numpy.array_equal(canvas[:, dy:dy + 28, dx:dx + 28], digit)
             and numpy.count_nonzero(canvas) == numpy.count_nonzero(digit)]
    assert len(found) == 1
    return found[0]


def test_random_placement_puts_each_digit_whole_at_a_uniform_offset():
    x0, t0 = digits(64)
    dataset = chainer.datasets.TupleDataset(x0, t0)
    convert = affnist.RandomPlacement(seed=3)
    offsets = []
    for _ in range(8):
        x, t = convert(dataset[:64])
        assert x.shape == (64, 1, 40, 40) and x.dtype == numpy.float32
        numpy.testing.assert_array_equal(t, t0)
        offsets += [find_offset(x[i], x0[i]) for i in range(64)]
    offsets = numpy.array(offsets)
    # Per image, both axes, over the whole range 0..12 (512 draws of 13 values).
    assert len(set(map(tuple, offsets[:64]))) > 40
    for axis in range(2):
        assert offsets[:, axis].min() == 0 and offsets[:, axis].max() == 12
        assert len(numpy.unique(offsets[:, axis])) == 13
    numpy.testing.assert_array_equal(dataset._datasets[0], x0)  # dataset untouched


def test_random_placement_is_seeded():
    x0, t0 = digits(16)
    batch = chainer.datasets.TupleDataset(x0, t0)[:16]
    a = affnist.RandomPlacement(seed=5)(batch)[0]
    b = affnist.RandomPlacement(seed=5)(batch)[0]
    c = affnist.RandomPlacement(seed=6)(batch)[0]
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(a, c)


@pytest.mark.parametrize('via_file', [False, True])
def test_random_placement_resumes_the_same_placements(tmp_path, via_file):
    x0, t0 = digits(8)
    batch = chainer.datasets.TupleDataset(x0, t0)[:8]
    convert = affnist.RandomPlacement(seed=1)
    for _ in range(3):
        convert(batch)
    if via_file:
        path = str(tmp_path / 'snapshot.npz')
        serializers.save_npz(path, convert)
        resumed = affnist.RandomPlacement(seed=99)
        serializers.load_npz(path, resumed)
    else:
        saved = serializers.DictionarySerializer()
        convert.serialize(saved)
        resumed = affnist.RandomPlacement(seed=99)
        resumed.serialize(serializers.NpzDeserializer(saved.target))
    for _ in range(4):
        numpy.testing.assert_array_equal(resumed(batch)[0], convert(batch)[0])


def test_random_placement_refuses_digits_larger_than_the_canvas():
    x0, t0 = digits(2)
    with pytest.raises(ValueError, match='fit'):
        affnist.RandomPlacement(size=20)(chainer.datasets.TupleDataset(x0, t0)[:2])


@pytest.mark.gpu
def test_random_placement_on_gpu_matches_cpu():
    cupy = pytest.importorskip('cupy')
    x0, t0 = digits(16)
    batch = chainer.datasets.TupleDataset(x0, t0)[:16]
    cpu = affnist.RandomPlacement(seed=2)(batch)
    gpu = affnist.RandomPlacement(seed=2)(batch, chainer.get_device('@cupy:0'))
    assert isinstance(gpu[0], cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(gpu[0]), cpu[0])
    on_device = [(cupy.asarray(x), t) for x, t in batch]  # examples already on the GPU
    numpy.testing.assert_array_equal(
        cupy.asnumpy(affnist.RandomPlacement(seed=2)(on_device)[0]), cpu[0])


# The official files


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
    base = (affnist.expand(corner_digit()[None])[0, 0] * 255).astype(numpy.uint8)
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


# The stand-in


def identity(n):
    return numpy.broadcast_to(numpy.eye(2), (n, 2, 2))


def test_warp_identity_is_the_centred_digit_exactly():
    x, _ = digits(4)
    y = affnist.warp(x, identity(4), numpy.zeros((4, 2)))
    assert y.shape == (4, 1, 40, 40) and y.dtype == numpy.float32
    numpy.testing.assert_array_equal(y, affnist.expand(x))


def test_warp_by_whole_pixels_is_a_shift():
    x, _ = digits(2)
    y = affnist.warp(x, identity(2), [[3, -5], [-6, 6]])
    numpy.testing.assert_array_equal(y, affnist.place(x, [9, 0], [1, 12]))


def test_warp_interpolates_bilinearly_between_pixels():
    x, _ = digits(2)
    y = affnist.warp(x, identity(2), [[0.25, 0.75], [0.25, 0.75]])
    e = numpy.pad(affnist.expand(x).astype(numpy.float64), ((0, 0), (0, 0), (1, 0), (1, 0)))
    wy, wx = (0.25, 0.75), (0.75, 0.25)  # weights of pixel (r - 1, c - 1) and (r, c)
    expected = sum(wy[a] * wx[b] * e[:, :, a:a + 40, b:b + 40]
                   for a in (0, 1) for b in (0, 1))
    numpy.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('degrees, k', [(90, 1), (-90, -1), (180, 2)])
def test_warp_rotation_turns_counter_clockwise_like_rot90(degrees, k):
    x = corner_digit()[None]
    A = affnist.affine_matrices([degrees], [0], [1], [1])
    y = affnist.warp(x, A, numpy.zeros((1, 2)))
    expected = numpy.rot90(affnist.expand(x), k, axes=(2, 3))
    numpy.testing.assert_allclose(y, expected, atol=1e-6)
    assert not numpy.allclose(y, numpy.rot90(affnist.expand(x), -k, axes=(2, 3)),
                              atol=1e-3) or k == 2


def test_warp_shear_moves_lower_rows_right_and_scale_stretches_about_the_centre():
    x = numpy.zeros((1, 28, 28), numpy.float32)
    x[0, 18, 10] = 1  # 4.5 rows below the centre (13.5), 3.5 columns left of it
    y = affnist.warp(x, affnist.affine_matrices([0], [2], [1], [1]), numpy.zeros((1, 2)))
    assert numpy.argwhere(y[0, 0] == 1).tolist() == [[24, 25]]  # column 16 + 2 * 4.5
    assert y.sum() == 1
    y = affnist.warp(x, affnist.affine_matrices([0], [0], [1], [3]), numpy.zeros((1, 2)))
    assert y[0, 0, 24, 9] == 1  # column 19.5 - 3 * 3.5 = 9
    numpy.testing.assert_allclose(y.sum(), 3)  # a 3-pixel-wide bilinear footprint


def test_drawn_parameters_stay_within_the_stated_ranges_and_span_them():
    x, t = digits(3000, box=(2, 26, 4, 24))
    _, _, p = affnist.make_affine_test_set(x, t, n=3000, seed=4)
    for name, (lo, hi) in (('rotation', (-20, 20)), ('shear', (-0.2, 0.2)),
                           ('scale_y', (0.8, 1.2)), ('scale_x', (0.8, 1.2))):
        assert lo <= p[name].min() < lo + 0.05 * (hi - lo), name
        assert hi - 0.05 * (hi - lo) < p[name].max() <= hi, name
    assert affnist.STANDIN_RANGES['rotation_degrees'] == [-20.0, 20.0]
    assert affnist.STANDIN_RANGES['shear'] == [-0.2, 0.2]
    assert affnist.STANDIN_RANGES['scale_y'] == affnist.STANDIN_RANGES['scale_x'] == [0.8, 1.2]
    assert not p['cut'].any()
    # Translations reach across the canvas: at least 5 pixels each way from the centre.
    assert p['translation'].min(axis=0).max() < -5 and p['translation'].max(axis=0).min() > 5


def test_transformed_digits_stay_whole_on_the_canvas():
    # Ink as tall as MNIST's largest (20 rows in a 20x20 box) and more, up to its edges.
    x, t = digits(400, seed=1, box=(3, 25, 5, 23))
    y, _, p = affnist.make_affine_test_set(x, t, seed=2)
    assert not p['cut'].any()
    A = affnist.affine_matrices(p['rotation'], p['shear'], p['scale_y'], p['scale_x'])
    big = affnist.warp(x[p['source']], A, p['translation'], size=80)  # centre + 20
    numpy.testing.assert_array_equal(big[:, :, 20:60, 20:60], y)
    big[:, :, 20:60, 20:60] = 0
    assert not big.any()
    # ... and the bound is tight: many digits touch the outermost rows or columns.
    ink = y[:, 0] > 0
    edge = ink[:, 0].any(1) | ink[:, -1].any(1) | ink[:, :, 0].any(1) | ink[:, :, -1].any(1)
    assert edge.mean() > 0.2


def test_digit_too_large_for_the_canvas_is_centred_and_flagged():
    x = numpy.ones((2, 1, 28, 28), numpy.float32)
    _, _, p = affnist.make_affine_test_set(x, [0, 1], seed=0, size=28)
    assert p['cut'].all()
    lo, hi = affnist.support_extent(x, affnist.affine_matrices(
        p['rotation'], p['shear'], p['scale_y'], p['scale_x']))
    numpy.testing.assert_allclose(p['translation'], -(lo + hi) / 2)


def test_stand_in_is_regenerated_bit_for_bit_from_its_seed():
    x, t = digits(50, seed=3)
    a = affnist.make_affine_test_set(x, t, n=120, seed=11)
    b = affnist.make_affine_test_set(x, t, n=120, seed=11)
    c = affnist.make_affine_test_set(x, t, n=120, seed=12)
    assert a[0].shape == (120, 1, 40, 40) and a[0].dtype == numpy.float32
    numpy.testing.assert_array_equal(a[0], b[0])
    numpy.testing.assert_array_equal(a[1], b[1])
    for name in a[2]:
        numpy.testing.assert_array_equal(a[2][name], b[2][name])
    assert not numpy.array_equal(a[0], c[0])
    # Example k is digit k % 50, with its label.
    numpy.testing.assert_array_equal(a[2]['source'], numpy.arange(120) % 50)
    numpy.testing.assert_array_equal(a[1], t[numpy.arange(120) % 50])
    assert a[0].min() >= 0 and a[0].max() <= 1


# The evaluation sets


def test_eval_sets_without_affnist_use_the_named_stand_in():
    x, t = digits(20)
    sets = affnist.get_affnist_eval(chainer.datasets.TupleDataset(x, t), n=30, seed=5)
    assert list(sets) == ['expanded', 'affine_standin']
    expanded, title = sets['expanded']
    assert title == affnist.EXPANDED_TITLE and 'expanded MNIST' in title
    numpy.testing.assert_array_equal(expanded._datasets[0], affnist.expand(x))
    numpy.testing.assert_array_equal(expanded._datasets[1], t)
    standin, title = sets['affine_standin']
    assert title == affnist.STANDIN_TITLE
    assert 'stand-in' in title and 'not affNIST' in title and not title.startswith('affNIST')
    assert len(standin) == 30
    numpy.testing.assert_array_equal(standin._datasets[0],
                                     affnist.make_affine_test_set(x, t, 30, 5)[0])
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


def test_random_placement_parts_place_as_one_converter():
    """Two converters seeded alike, each with its half of a global batch (data-parallel
    training), place the digits exactly as one converter of the whole batch."""
    rng = numpy.random.RandomState(8)
    batch = [(rng.uniform(0, 1, (1, 28, 28)).astype(numpy.float32), numpy.int32(k))
             for k in range(8)]
    whole = affnist.RandomPlacement(seed=3)
    parts = [affnist.RandomPlacement(seed=3, part=(i, 2)) for i in range(2)]
    for _ in range(3):
        x, t = whole(batch)
        x0, t0 = parts[0](batch[:4])
        x1, t1 = parts[1](batch[4:])
        numpy.testing.assert_array_equal(numpy.concatenate([x0, x1]), x)
        numpy.testing.assert_array_equal(numpy.concatenate([t0, t1]), t)
    with pytest.raises(ValueError, match='part'):
        affnist.RandomPlacement(part=(2, 2))
