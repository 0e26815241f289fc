import numpy

from capsnet_chainer import compat


def test_sctypes_restored_for_chainer():
    assert compat.patch_numpy() is False  # already patched by the package import
    assert numpy.float32 in numpy.sctypes['float']
    assert numpy.int64 in numpy.sctypes['int']
    import chainer.functions as F  # as_strided reads numpy.sctypes at import
    assert callable(F.as_strided)


def test_patch_is_idempotent_and_complete():
    saved = numpy.__dict__.pop('sctypes', None)
    try:
        assert compat.patch_numpy() is True
        assert compat.patch_numpy() is False
        assert set(numpy.sctypes) == {'int', 'uint', 'float', 'complex', 'others'}
        assert {t().itemsize for t in numpy.sctypes['int']} == {1, 2, 4, 8}
    finally:
        if saved is not None:
            numpy.sctypes = saved
