"""The stand-in for affNIST: MNIST digits under random affine transformations, warped
onto the 40x40 canvas. Synthetic digits only."""

import numpy
import pytest

from capsnet_chainer.datasets import affine  # before chainer: restores numpy.sctypes
from capsnet_chainer.datasets.placement import expand
from capsnet_chainer.datasets.placement import place

from chainer import testing

from conftest import corner_digit
from conftest import ink_digits as digits


def identity(n):
    return numpy.broadcast_to(numpy.eye(2), (n, 2, 2))


def test_warp_identity_is_the_centred_digit_exactly():
    x, _ = digits(4)
    y = affine.warp(x, identity(4), numpy.zeros((4, 2)))
    assert y.shape == (4, 1, 40, 40) and y.dtype == numpy.float32
    numpy.testing.assert_array_equal(y, expand(x))


def test_warp_by_whole_pixels_is_a_shift():
    x, _ = digits(2)
    y = affine.warp(x, identity(2), [[3, -5], [-6, 6]])
    numpy.testing.assert_array_equal(y, place(x, [9, 0], [1, 12]))


def test_warp_interpolates_bilinearly_between_pixels():
    x, _ = digits(2)
    y = affine.warp(x, identity(2), [[0.25, 0.75], [0.25, 0.75]])
    e = numpy.pad(expand(x).astype(numpy.float64), ((0, 0), (0, 0), (1, 0), (1, 0)))
    wy, wx = (0.25, 0.75), (0.75, 0.25)  # weights of pixel (r - 1, c - 1) and (r, c)
    expected = sum(wy[a] * wx[b] * e[:, :, a:a + 40, b:b + 40]
                   for a in (0, 1) for b in (0, 1))
    numpy.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('degrees, k', [(90, 1), (-90, -1), (180, 2)])
def test_warp_rotation_turns_counter_clockwise_like_rot90(degrees, k):
    x = corner_digit()[None]
    A = affine.affine_matrices([degrees], [0], [1], [1])
    y = affine.warp(x, A, numpy.zeros((1, 2)))
    expected = numpy.rot90(expand(x), k, axes=(2, 3))
    numpy.testing.assert_allclose(y, expected, atol=1e-6)
    assert not numpy.allclose(y, numpy.rot90(expand(x), -k, axes=(2, 3)),
                              atol=1e-3) or k == 2


def test_warp_shear_moves_lower_rows_right_and_scale_stretches_about_the_centre():
    x = numpy.zeros((1, 28, 28), numpy.float32)
    x[0, 18, 10] = 1  # 4.5 rows below the centre (13.5), 3.5 columns left of it
    y = affine.warp(x, affine.affine_matrices([0], [2], [1], [1]), numpy.zeros((1, 2)))
    assert numpy.argwhere(y[0, 0] == 1).tolist() == [[24, 25]]  # column 16 + 2 * 4.5
    assert y.sum() == 1
    y = affine.warp(x, affine.affine_matrices([0], [0], [1], [3]), numpy.zeros((1, 2)))
    assert y[0, 0, 24, 9] == 1  # column 19.5 - 3 * 3.5 = 9
    numpy.testing.assert_allclose(y.sum(), 3)  # a 3-pixel-wide bilinear footprint


def test_drawn_parameters_stay_within_the_stated_ranges_and_span_them():
    x, t = digits(3000, box=(2, 26, 4, 24))
    _, _, p = affine.make_affine_test_set(x, t, n=3000, seed=4)
    for name, (lo, hi) in (('rotation', (-20, 20)), ('shear', (-0.2, 0.2)),
                           ('scale_y', (0.8, 1.2)), ('scale_x', (0.8, 1.2))):
        assert lo <= p[name].min() < lo + 0.05 * (hi - lo), name
        assert hi - 0.05 * (hi - lo) < p[name].max() <= hi, name
    assert affine.STANDIN_RANGES['rotation_degrees'] == [-20.0, 20.0]
    assert affine.STANDIN_RANGES['shear'] == [-0.2, 0.2]
    assert affine.STANDIN_RANGES['scale_y'] == affine.STANDIN_RANGES['scale_x'] == [0.8, 1.2]
    assert not p['cut'].any()
    # Translations reach across the canvas: at least 5 pixels each way from the centre.
    assert p['translation'].min(axis=0).max() < -5 and p['translation'].max(axis=0).min() > 5


def test_transformed_digits_stay_whole_on_the_canvas():
    # Ink as tall as MNIST's largest (20 rows in a 20x20 box) and more, up to its edges.
    x, t = digits(400, seed=1, box=(3, 25, 5, 23))
    y, _, p = affine.make_affine_test_set(x, t, seed=2)
    assert not p['cut'].any()
    A = affine.affine_matrices(p['rotation'], p['shear'], p['scale_y'], p['scale_x'])
    big = affine.warp(x[p['source']], A, p['translation'], size=80)  # centre + 20
    numpy.testing.assert_array_equal(big[:, :, 20:60, 20:60], y)
    big[:, :, 20:60, 20:60] = 0
    assert not big.any()
    # ... and the bound is tight: many digits touch the outermost rows or columns.
    ink = y[:, 0] > 0
    edge = ink[:, 0].any(1) | ink[:, -1].any(1) | ink[:, :, 0].any(1) | ink[:, :, -1].any(1)
    assert edge.mean() > 0.2


def test_digit_too_large_for_the_canvas_is_centred_and_flagged():
    x = numpy.ones((2, 1, 28, 28), numpy.float32)
    _, _, p = affine.make_affine_test_set(x, [0, 1], seed=0, size=28)
    assert p['cut'].all()
    lo, hi = affine.support_extent(x, affine.affine_matrices(
        p['rotation'], p['shear'], p['scale_y'], p['scale_x']))
    numpy.testing.assert_allclose(p['translation'], -(lo + hi) / 2)


def test_stand_in_is_regenerated_bit_for_bit_from_its_seed():
    x, t = digits(50, seed=3)
    a = affine.make_affine_test_set(x, t, n=120, seed=11)
    b = affine.make_affine_test_set(x, t, n=120, seed=11)
    c = affine.make_affine_test_set(x, t, n=120, seed=12)
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


def test_affine_matrices_rotate_a_sheared_and_scaled_frame():
    """``A = R(rotation) [[1, 0], [shear, 1]] diag(scale_y, scale_x)``, by hand."""
    A = affine.affine_matrices([30, 0], [0.1, 0], [0.9, 1], [1.1, 1])
    c, s = numpy.cos(numpy.pi / 6), numpy.sin(numpy.pi / 6)
    R = numpy.array([[c, -s], [s, c]])
    expected = R @ numpy.array([[1, 0], [0.1, 1]]) @ numpy.diag([0.9, 1.1])
    numpy.testing.assert_allclose(A[0], expected, rtol=1e-12)
    numpy.testing.assert_allclose(A[1], numpy.eye(2), atol=1e-15)
    # 90 degrees takes the row axis (down) to the column axis (right): numpy.rot90
    numpy.testing.assert_allclose(affine.affine_matrices([90], [0], [1], [1])[0],
                                  [[0, -1], [1, 0]], atol=1e-15)


def test_support_extent_of_a_blank_digit_is_its_frame_grown_by_a_pixel():
    lo, hi = affine.support_extent(numpy.zeros((1, 28, 28)), numpy.eye(2)[None])
    numpy.testing.assert_allclose(lo, [[-14.5, -14.5]])
    numpy.testing.assert_allclose(hi, [[14.5, 14.5]])


def test_make_affine_test_set_refuses_labels_of_another_length_and_negative_n():
    x, t = digits(3)
    with pytest.raises(ValueError, match='labels must be'):
        affine.make_affine_test_set(x, t[:2])
    with pytest.raises(ValueError, match='n must be >= 0'):
        affine.make_affine_test_set(x, t, n=-1)
    assert affine.make_affine_test_set(x, t, n=0)[0].shape == (0, 1, 40, 40)


testing.run_module(__name__, __file__)
