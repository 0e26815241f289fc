"""MATLAB files through SciPy: the install line where SciPy is missing, the file named
where it is not a .mat file."""

import sys

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import matfile
from capsnet_chainer.datasets.idx import DatasetError


def test_without_scipy_the_error_names_what_and_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'scipy.io', None)  # import scipy.io fails
    with pytest.raises(DatasetError) as e:
        matfile.read_mat(str(tmp_path / 'x.mat'), 'x.mat', 'the X files', 'xset')
    assert str(e.value) == (
        "reading the X files needs SciPy, an optional dependency: pip install "
        "'capsnet-chainer[xset]' (or pip install {})".format(matfile.SCIPY_REQUIREMENT))


def test_a_mat_file_is_read_and_anything_else_named(tmp_path):
    scipy_io = pytest.importorskip('scipy.io')
    path = str(tmp_path / 'a.mat')
    scipy_io.savemat(path, {'X': numpy.arange(6, dtype=numpy.uint8).reshape(2, 3)})
    mat = matfile.read_mat(path, path, 'A', 'a')
    numpy.testing.assert_array_equal(mat['X'], [[0, 1, 2], [3, 4, 5]])
    bad = tmp_path / 'b.mat'
    bad.write_bytes(b'not a mat file at all, but long enough to be read' * 4)
    with pytest.raises(DatasetError, match=r'^the b file: not a readable \.mat file \('):
        matfile.read_mat(str(bad), 'the b file', 'B', 'b')


testing.run_module(__name__, __file__)
