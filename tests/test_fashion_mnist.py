"""--dataset fashion-mnist: the registry, its sources and checksums, and the scripts."""

import gzip
import json
import os

import numpy
import pytest
from chainer import testing

from capsnet_chainer import idx  # before chainer: restores numpy.sctypes
from capsnet_chainer import mnist as datasets
from capsnet_chainer import mnist_sources
from capsnet_chainer import snapshots
from capsnet_chainer.modelfile import inspect_model_file
from capsnet_chainer.modelfile import SNAPSHOT_MODEL_PATH
from conftest import run_train
from test_analyze import run_analyze

NAMES = list(idx.FASHION_MNIST_FILES)
DEBIAN = mnist_sources.DEBIAN_FASHION_MNIST_DIR
FASHION = datasets.DATASETS['fashion-mnist']


def synthetic_payloads(n_train=5, n_test=3, seed=0):
    rs = numpy.random.RandomState(seed)
    arrays = [rs.randint(0, 256, size=(n_train, 28, 28)).astype(numpy.uint8),
              rs.randint(0, 10, size=n_train).astype(numpy.uint8),
              rs.randint(0, 256, size=(n_test, 28, 28)).astype(numpy.uint8),
              rs.randint(0, 10, size=n_test).astype(numpy.uint8)]
    return {name: idx.format_idx(a) for name, a in zip(NAMES, arrays)}, arrays


def write_folder(folder, payloads):
    for name, payload in payloads.items():
        (folder / name).write_bytes(gzip.compress(payload, compresslevel=1))


def own_checksums(monkeypatch, payloads):
    """Makes the registry expect ``payloads`` for Fashion-MNIST."""
    files = type(FASHION.files)(
        (name, (idx.sha256_hex(payloads[name]), len(payloads[name]))) for name in NAMES)
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
    assert str(tmp_path / NAMES[0]) in message
    assert 'checksum mismatch' in message and 'not Fashion-MNIST' in message
    assert idx.FASHION_MNIST_FILES[NAMES[0]][0] in message


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
    assert all(str(tmp_path / name) in message for name in NAMES)
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
    assert sorted(os.listdir(str(cache))) == sorted(NAMES + ['lock'])
    assert train[4][1] == arrays[1][4]
    # Read from the cache now: the folder is not needed any more.
    for name in NAMES:
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
    assert calls == NAMES
    assert idx.read_payload(str(tmp_path / NAMES[1]), files=datasets.DATASETS[
        'fashion-mnist'].files, what='Fashion-MNIST') == payloads[NAMES[1]]


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
    assert message.startswith('Could not obtain the Fashion-MNIST file(s) ' + NAMES[0])
    for name in NAMES:
        assert '{} from {}: no such folder (apt-get install dataset-fashion-mnist'.format(
            name, os.path.join(absent, name)) in message
        assert '{} from http://127.0.0.1:9/{}: '.format(name, name) in message
        assert '{} from wrong: checksum mismatch'.format(name) in message
    assert '--data-dir DIR' in message and 'apt-get install dataset-fashion-mnist' in message
    assert not os.path.exists(str(tmp_path / 'cache' / NAMES[0]))


def test_default_sources_are_the_debian_folder_then_the_official_host(monkeypatch, tmp_path):
    made = mnist_sources.make_sources(FASHION.sources)
    assert [w for w, _ in made[0].attempts(NAMES[0])] == [os.path.join(DEBIAN, NAMES[0])]
    assert [w for w, _ in made[1].attempts(NAMES[0])] == [
        'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/' + NAMES[0]]


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason='dataset-fashion-mnist not installed')
def test_debian_folder_holds_the_real_files():
    train, test = datasets.get_fashion_mnist(data_dir=DEBIAN, n_train=10)
    assert len(train) == 10 and len(test) == 10000
    # The first test image is an ankle boot, the first training image too.
    assert train[0][1] == 9 and test[0][1] == 9


# Resuming a snapshot written before --dataset existed


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
                       match='--dataset mnist [(]this run: --dataset fashion-mnist[)]'):
        snapshots.check_snapshot(str(path), {'seed': 1, 'dataset': 'fashion-mnist',
                                             'model': 'capsnet'})


# The scripts


def test_train_with_a_folder_lacking_the_files_is_one_line(tmp_path):
    proc = run_train(['--dataset', 'fashion-mnist', '--data-dir', str(tmp_path), '-e', '1'],
                     tmp_path, timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: Fashion-MNIST file(s) not found')
    assert '--data-dir' in lines[0] and 'apt-get install dataset-fashion-mnist' in lines[0]


def test_train_refuses_an_unknown_dataset(tmp_path):
    proc = run_train(['--dataset', 'cifar10'], tmp_path, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'cifar10'" in proc.stderr


def test_mnist_model_records_its_dataset_and_analyze_says_so(trained_run, mnist_dir, tmp_path):
    meta = inspect_model_file(trained_run['model'])['meta']
    assert meta['dataset'] == 'mnist' and meta['train_args']['dataset'] == 'mnist'
    proc = run_analyze(['--load', trained_run['model'], '--data-dir', mnist_dir,
                        '--n-test', '20', '--top-k', '1', '-o', 'out'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '# dataset: MNIST (as the model file records)' in proc.stdout
    assert 'on 20 MNIST test images' in proc.stdout
    with open(str(tmp_path / 'out' / 'metrics.json')) as f:
        evaluation = json.load(f)['evaluation']
    assert evaluation['dataset'] == 'mnist'
    assert evaluation['images'] == 'the first 20 of the MNIST test set'
    assert evaluation['class_names'] == [str(d) for d in range(10)]
    # --dataset overrides the record: here, a folder without Fashion-MNIST.
    proc = run_analyze(['--load', trained_run['model'], '--data-dir', mnist_dir,
                        '--dataset', 'fashion-mnist', '-o', 'out2'], tmp_path)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'checksum mismatch' in proc.stderr and 'not Fashion-MNIST' in proc.stderr


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason='dataset-fashion-mnist not installed')
def test_fashion_mnist_end_to_end(tmp_path):
    proc = run_train(['--dataset', 'fashion-mnist', '--data-dir', DEBIAN, '--n-train', '64',
                      '--n-test', '32', '-b', '32', '-e', '1', '--reconstruct',
                      '--save', 'model'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '# dataset: Fashion-MNIST (64 training, 32 test images)' in proc.stdout
    assert '# parameters: 6,787,088' in proc.stdout
    proc = run_analyze(['--load', 'model', '--data-dir', DEBIAN, '--n-test', '32',
                        '--top-k', '2', '-o', 'out'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '# dataset: Fashion-MNIST (as the model file records)' in proc.stdout
    assert 'on 32 Fashion-MNIST test images' in proc.stdout
    assert '9 Ankle boot' in proc.stdout
    with open(str(tmp_path / 'out' / 'metrics.json')) as f:
        metrics = json.load(f)
    assert metrics['evaluation']['dataset'] == 'fashion-mnist'
    assert metrics['source']['meta']['dataset'] == 'fashion-mnist'
    assert os.path.isfile(str(tmp_path / 'out' / 'vis_all.png'))


testing.run_module(__name__, __file__)
