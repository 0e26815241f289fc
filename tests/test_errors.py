"""The errors a user can fix: every known failure is a CapsNetError, and a SettingError
names the setting (and the value) it is about."""

import pytest
from chainer import testing

from capsnet_chainer import errors


def test_setting_error_names_the_setting_and_the_value():
    e = errors.SettingError('n_test', 'exceeds the 10000 examples available', 10001)
    assert str(e) == 'n_test=10001: exceeds the 10000 examples available'
    assert (e.setting, e.message, e.value) == ('n_test', 'exceeds the 10000 examples '
                                               'available', 10001)
    assert e.has_value()


def test_setting_error_shows_the_value_as_python_writes_it():
    assert str(errors.SettingError('dataset', 'unknown', 'cifar')) == \
        "dataset='cifar': unknown"
    assert str(errors.SettingError('n_train', 'must be positive', None)) == \
        'n_train=None: must be positive'  # None given is a value


def test_setting_error_without_a_value():
    e = errors.SettingError('max_shift', 'takes no shift')
    assert str(e) == 'max_shift: takes no shift'
    assert not e.has_value()


def test_setting_error_is_a_value_error_and_a_capsnet_error():
    with pytest.raises(ValueError):
        raise errors.SettingError('batchsize', 'must divide', 15)
    assert issubclass(errors.SettingError, errors.CapsNetError)
    assert issubclass(errors.CapsNetError, Exception)
    assert not issubclass(errors.CapsNetError, ValueError)


def test_every_known_failure_is_a_capsnet_error():
    from capsnet_chainer import cli
    from capsnet_chainer import device
    from capsnet_chainer.datasets.idx import DatasetError
    from capsnet_chainer.io.modelfile import ModelFileError
    from capsnet_chainer.training.nonfinite import NonFiniteError
    from capsnet_chainer.training.snapshots import SnapshotError
    for error in (DatasetError, ModelFileError, SnapshotError, NonFiniteError,
                  device.DeviceError, cli.CLIError):
        assert issubclass(error, errors.CapsNetError), error
    assert issubclass(ModelFileError, ValueError)  # as before


testing.run_module(__name__, __file__)
