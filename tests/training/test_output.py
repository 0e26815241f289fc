"""The folders a run writes into: ``--out`` locked and cleared of what interrupted writes
left, ``args.json``, and the file ``--save`` would replace checked first."""

import json
import os

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer import save_model
from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError
from capsnet_chainer.training import output


def test_save_target_may_be_absent_or_a_model(tmp_path):
    output.check_save_target(None)
    output.check_save_target('')
    output.check_save_target(str(tmp_path / 'not_yet'))
    model = str(tmp_path / 'model')
    save_model(CapsNet(), model)
    output.check_save_target(model)  # a model is replaced by the better one


@pytest.mark.parametrize('content', [b'my notes', b'', None])
def test_save_target_that_is_no_model_is_refused(tmp_path, content):
    path = tmp_path / 'notes'
    if content is None:  # an npz archive, but not a model file
        numpy.savez(str(path), x=numpy.zeros(2))
        path = tmp_path / 'notes.npz'
    else:
        path.write_bytes(content)
    with pytest.raises(SettingError) as e:
        output.check_save_target(str(path))
    assert (e.value.setting, e.value.value) == ('save', str(path))
    assert e.value.message == 'exists and is not a model file; refusing to overwrite it'
    assert path.exists()


def test_open_output_locks_cleans_and_records_the_settings(tmp_path, capsys):
    out = tmp_path / 'result'
    out.mkdir()
    (out / '.snapshot_iter_3.abcd1234.tmp').write_bytes(b'partial')
    (out / 'snapshot_iter_2').write_bytes(b'kept')
    models = tmp_path / 'models'
    models.mkdir()
    (models / '.best.x1y2z3w4.tmp').write_bytes(b'partial')
    (models / '.other.x1y2z3w4.tmp').write_bytes(b'not ours')
    lock = output.open_output(str(out), str(models / 'best'), {'seed': 1, 'out': 'result'})
    try:
        assert lock.is_locked
        assert sorted(os.listdir(str(out))) == ['.train.lock', 'args.json',
                                                'snapshot_iter_2']
        assert sorted(os.listdir(str(models))) == ['.other.x1y2z3w4.tmp']
        with open(str(out / 'args.json')) as f:
            assert json.load(f) == {'seed': 1, 'out': 'result'}
        assert 'Removed {}, left by an interrupted write'.format(
            out / '.snapshot_iter_3.abcd1234.tmp') in capsys.readouterr().out
        with pytest.raises(CapsNetError, match='another train.py is writing to --out '):
            output.open_output(str(out))
    finally:
        lock.release()
    again = output.open_output(str(out))  # released: the next run may write
    again.release()
    with open(str(out / 'args.json')) as f:
        assert json.load(f) == {}


def test_open_output_makes_the_folders_and_releases_the_lock_when_it_fails(tmp_path):
    out = tmp_path / 'a' / 'result'
    with pytest.raises(TypeError):
        output.open_output(str(out), str(tmp_path / 'b' / 'best'), {'x': object()})
    assert out.is_dir() and (tmp_path / 'b').is_dir()
    output.open_output(str(out)).release()  # not left locked


testing.run_module(__name__, __file__)
