import json
import os
from types import SimpleNamespace

import chainer
import chainer.links as L
import numpy
import pytest
from chainer import testing

from capsnet_chainer.fileio import remove_stale_temp_files
from capsnet_chainer.io.modelfile import SNAPSHOT_MODEL_PATH
from capsnet_chainer.training import snapshots
from capsnet_chainer.training.nonfinite import NonFiniteError


def test_snapshots_are_ordered_by_iteration_not_name_and_cleaned_up(tmp_path):
    # Names do not order snapshots: snapshot_iter_9 is past snapshot_epoch_2 here.
    for name, iteration in [('snapshot_epoch_2', 8), ('snapshot_iter_9', 9),
                            ('snapshot_iter_10', 10), ('snapshot_epoch_3', 12)]:
        with open(str(tmp_path / name), 'wb') as f:
            numpy.savez(f, **{'updater/iteration': iteration})
    assert snapshots.latest_snapshot(str(tmp_path)) == str(
        tmp_path / 'snapshot_epoch_3')
    (tmp_path / 'snapshot_epoch_3').write_bytes(b'PK\x03\x04 truncated')
    (tmp_path / '.snapshot_iter_11.abcd1234.tmp').write_bytes(b'partial')
    found, unreadable = snapshots.list_snapshots(str(tmp_path))
    assert [it for it, _ in found] == [8, 9, 10]
    assert unreadable == [str(tmp_path / 'snapshot_epoch_3')]
    assert remove_stale_temp_files(str(tmp_path)) == [
        str(tmp_path / '.snapshot_iter_11.abcd1234.tmp')]
    snapshots.remove_old_snapshots(str(tmp_path), 2, 10)
    assert sorted(os.listdir(str(tmp_path))) == [
        'snapshot_epoch_3', 'snapshot_iter_10', 'snapshot_iter_9']


def as_flag(name, value):
    return '--{} {}'.format(name.replace('_', '-'), value)


def write_snapshot(path, settings):
    with open(str(path), 'wb') as f:
        numpy.savez(f, **{'updater/iteration': numpy.array(1),
                          SNAPSHOT_MODEL_PATH + 'w': numpy.zeros(1, 'f'),
                          snapshots.SETTINGS_KEY: numpy.array(json.dumps(settings))})


def test_a_snapshot_without_dataset_resumes_as_mnist_only(tmp_path):
    path = tmp_path / 'snapshot_iter_1'
    write_snapshot(path, {'seed': 1})
    # (run_settings records --model too; a snapshot without it is a CapsNet's)
    snapshots.check_snapshot(str(path), {'seed': 1, 'dataset': 'mnist', 'model': 'capsnet'})
    with pytest.raises(snapshots.SnapshotError,
                       match="dataset='mnist' [(]this run: dataset='fashion-mnist'[)]"):
        snapshots.check_snapshot(str(path), {'seed': 1, 'dataset': 'fashion-mnist',
                                             'model': 'capsnet'})
    # train.py names its flags (train.flag_and_value)
    with pytest.raises(snapshots.SnapshotError,
                       match='--dataset mnist [(]this run: --dataset fashion-mnist[)]'):
        snapshots.check_snapshot(str(path), {'seed': 1, 'dataset': 'fashion-mnist',
                                             'model': 'capsnet'}, describe=as_flag)


def test_settings_that_differ_are_named_each_way(tmp_path):
    path = tmp_path / 'snapshot_iter_1'
    write_snapshot(path, {'seed': 1, 'batchsize': 8, 'old_flag': True})
    assert snapshots.describe_setting('max_shift', 2) == 'max_shift=2'
    assert snapshots.describe_setting('data_dir', None) == 'data_dir=None'
    with pytest.raises(snapshots.SnapshotError) as e:
        snapshots.check_snapshot(str(path), {'seed': 1, 'batchsize': 4, 'new_flag': 'x',
                                             'dataset': 'mnist', 'model': 'capsnet'})
    message = str(e.value)
    assert 'comes from a run with different settings' in message
    assert 'batchsize=8 (this run: batchsize=4)' in message
    assert "new_flag='x' (not recorded in the snapshot)" in message
    assert 'old_flag=True (unknown to this version)' in message
    found = snapshots.check_snapshot(str(path), {'seed': 1, 'batchsize': 8, 'old_flag': True,
                                                 'dataset': 'mnist', 'model': 'capsnet'})
    assert found['kind'] == 'snapshot'
    assert snapshots.read_settings(str(path)) == {'seed': 1, 'batchsize': 8, 'old_flag': True,
                                                  'dataset': 'mnist', 'model': 'capsnet'}


def test_a_setting_the_snapshot_lacks_matches_where_this_run_does_not_give_it(tmp_path):
    """A flag newer than the snapshot: ``None`` in this run resumes it, a value does not;
    a newer snapshot records it as null."""
    older, newer = tmp_path / 'snapshot_iter_1', tmp_path / 'snapshot_iter_2'
    write_snapshot(older, {'seed': 1})
    write_snapshot(newer, {'seed': 1, 'precision': None})
    run = {'seed': 1, 'dataset': 'mnist', 'model': 'capsnet'}
    for path in (older, newer):
        snapshots.check_snapshot(str(path), dict(run, precision=None))
    with pytest.raises(snapshots.SnapshotError,
                       match="precision='tf32' [(]not recorded in the snapshot[)]"):
        snapshots.check_snapshot(str(older), dict(run, precision='tf32'))
    with pytest.raises(snapshots.SnapshotError,
                       match="precision=None [(]this run: precision='tf32'[)]"):
        snapshots.check_snapshot(str(newer), dict(run, precision='tf32'))


def test_a_model_file_is_not_a_snapshot(tmp_path):
    from capsnet_chainer import CapsNet
    from capsnet_chainer import save_model
    path = str(tmp_path / 'model')
    save_model(CapsNet(), path)
    with pytest.raises(snapshots.SnapshotError, match='is a model file'):
        snapshots.check_snapshot(path, {})
    assert snapshots.snapshot_iteration(path) is None
    assert snapshots.latest_snapshot(str(tmp_path / 'nowhere')) is None


def test_a_snapshot_settles_a_deferred_check_before_it_writes(tmp_path):
    """A mid-epoch snapshot after a diverged step whose verdict is still on its way:
    the error, and no file."""
    calls = []

    def settle():
        calls.append('settle')
        raise NonFiniteError('loss (nan)', 1, 3)

    model = chainer.Sequential(L.Linear(2, 2))
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    updater = SimpleNamespace(is_new_epoch=False, iteration=4, epoch=0, settle=settle,
                              get_optimizer=lambda name: optimizer)
    trainer = SimpleNamespace(updater=updater, out=str(tmp_path))
    with pytest.raises(NonFiniteError, match='iteration 3'):
        snapshots.Snapshot(every=2).write(trainer, 'snapshot_iter_4')
    assert calls == ['settle'] and os.listdir(str(tmp_path)) == []


testing.run_module(__name__, __file__)
