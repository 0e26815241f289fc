import os

import numpy
from chainer import testing

from capsnet_chainer import snapshots


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
    assert snapshots.remove_stale_temp_files(str(tmp_path)) == [
        str(tmp_path / '.snapshot_iter_11.abcd1234.tmp')]
    snapshots.remove_old_snapshots(str(tmp_path), 2, 10)
    assert sorted(os.listdir(str(tmp_path))) == [
        'snapshot_epoch_3', 'snapshot_iter_10', 'snapshot_iter_9']


def test_resumable_changes_are_the_where_how_long_and_bookkeeping_flags():
    assert set(snapshots.BOOKKEEPING_FLAGS) <= set(snapshots.RESUMABLE_CHANGES)
    assert {'epoch', 'out', 'save', 'data_dir'} <= set(snapshots.RESUMABLE_CHANGES)
    assert not {'seed', 'batchsize', 'alpha', 'reconstruct'} & set(snapshots.RESUMABLE_CHANGES)


testing.run_module(__name__, __file__)
