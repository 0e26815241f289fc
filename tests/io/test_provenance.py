"""What a model file records of where it comes from: versions, device, date, command and
the commit of the checkout."""

import datetime
import os
import platform
import subprocess
import sys

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
from chainer import testing

from capsnet_chainer.io import provenance as prov
from conftest import REPO


def test_repo_is_the_checkout_of_the_package():
    assert os.path.samefile(prov.REPO, REPO)
    assert os.path.isfile(os.path.join(prov.REPO, 'capsnet_chainer', '__init__.py'))


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    assert prov.git_commit(str(tmp_path)) is None


def test_git_commit_of_the_checkout_is_its_head():
    head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True)
    if head.returncode != 0:  # a copy of the files without .git
        assert prov.git_commit() is None
        return
    commit = prov.git_commit()
    assert commit in (head.stdout.strip(), head.stdout.strip() + '+dirty')
    dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain',
                            '--untracked-files=no'], capture_output=True, text=True)
    assert commit.endswith('+dirty') == bool(dirty.stdout.strip())


def test_versions_are_those_that_decide_the_numbers():
    found = prov.versions()
    assert found['python'] == platform.python_version()
    assert found['numpy'] == numpy.__version__
    assert found['chainer'] == chainer.__version__ == '7.8.1'
    from chainer.backends import cuda
    assert ('cupy' in found) == cuda.available


def test_provenance_of_a_cpu_run():
    record = prov.provenance(chainer.get_device('@numpy'))
    assert set(record) == {'device', 'platform', 'versions', 'commit', 'command'}
    assert record['device'] == '@numpy'
    assert record['platform'] == platform.platform()
    assert record['versions'] == prov.versions()
    assert record['command'].split()[0] == os.path.basename(sys.argv[0])


def test_utc_now_is_iso_8601_to_the_second():
    text = prov.utc_now()
    assert text.endswith('+00:00') and '.' not in text
    then = datetime.datetime.fromisoformat(text)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - then).total_seconds()) < 60


testing.run_module(__name__, __file__)
