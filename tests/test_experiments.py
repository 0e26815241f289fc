"""The paper's experiments end to end: ``train.py`` and ``analyze.py`` in subprocesses,
on a few real digits, for the baseline CNN (``--model cnn``) on MNIST and MultiMNIST,
CapsNet on MultiMNIST (the exact resume of the pair stream, the recorded accuracy
reproduced on the regenerated pairs), the affNIST protocol and Fashion-MNIST; and on a
few dozen tiny images written by the tests, one's own images (a folder, an .npz file)
and CIFAR-10 in its official format."""

import json
import os
import shutil

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer.baseline_cnn import BaselineCNN
from capsnet_chainer.datasets import protocols
from capsnet_chainer.datasets import sources
from capsnet_chainer.io.modelfile import inspect_model_file
from capsnet_chainer.io.modelfile import load_model
from capsnet_chainer.io.modelfile import META_KEY
from capsnet_chainer.training.snapshots import SETTINGS_KEY
from conftest import run_train
from conftest import tile_colours
from official_files import run_script
from official_files import write_cifar10
from official_files import write_image
from official_files import write_image_folder
from test_analyze import run_analyze
from test_dependability import assert_same_state
from test_dependability import run_state

#: Where Debian's dataset-fashion-mnist puts the files.
DEBIAN = sources.DEBIAN_FASHION_MNIST_DIR


# The baseline CNN (--model cnn): one tiny run on MNIST and one on MultiMNIST

#: 16 training images (or base digits of pairs) in batches of 8, 16 test images.
CNN_TINY = ['--model', 'cnn', '--n-train', '16', '--n-test', '16', '-b', '8', '--save',
            'best', '-o', 'result']


def tiny_run(folder, mnist_dir, *flags):
    proc = run_train(['--data-dir', mnist_dir, '-e', '1'] + CNN_TINY + list(flags), folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope='module')
def cnn_mnist_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp('cnn_mnist')
    return folder, tiny_run(folder, mnist_dir)


@pytest.fixture(scope='module')
def cnn_pair_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp('cnn_multimnist')
    return folder, tiny_run(folder, mnist_dir, '--dataset', 'multimnist')


def analyzed(folder, mnist_dir, out, *flags):
    proc = run_analyze(['--load', str(folder / 'best'), '--data-dir', mnist_dir,
                        '-o', str(out)] + list(flags), out.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(str(out / 'metrics.json')) as f:
        return proc.stdout, json.load(f)


def test_train_mnist_records_the_model(cnn_mnist_run):
    folder, stdout = cnn_mnist_run
    assert '# parameters: 35,445,522' in stdout
    model, meta = load_model(str(folder / 'best'))
    assert isinstance(model, BaselineCNN)
    assert model.config == {'model': 'cnn', 'n_class': 10, 'in_shape': [1, 28, 28],
                            'dropout': 0.5, 'pad': 2}
    assert meta['model'] == meta['train_args']['model'] == 'cnn'
    assert meta['dataset'] == 'mnist'
    with open(str(folder / 'result' / 'log')) as f:
        log = json.load(f)
    assert len(log) == 1 and {'main/loss', 'validation/main/accuracy'} <= set(log[0])


def test_analyze_mnist_reproduces_the_recorded_accuracy(cnn_mnist_run, mnist_dir, tmp_path):
    folder, _ = cnn_mnist_run
    stdout, results = analyzed(folder, mnist_dir, tmp_path / 'an', '--n-test', '16')
    _, meta = load_model(str(folder / 'best'))
    assert results['n_test'] == 16
    assert results['n_correct'] == meta['validation/main/accuracy_correct']
    assert results['evaluation']['scores'] == 'logits'
    assert results['config']['model'] == 'cnn'
    assert '# no capsule figures' in stdout and 'MNIST (as the model file records)' in stdout
    assert sorted(os.listdir(str(tmp_path / 'an'))) == [
        'args.json', 'confusion.png', 'metrics.json', 'misclassified.png']


def test_resume_continues_a_cnn_run(cnn_mnist_run, mnist_dir, tmp_path):
    folder, _ = cnn_mnist_run
    shutil.copytree(str(folder / 'result'), str(tmp_path / 'result'))
    proc = run_train(['--data-dir', mnist_dir, '-e', '2', '--resume'] + CNN_TINY, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Resuming from' in proc.stdout
    with open(str(tmp_path / 'result' / 'log')) as f:
        log = json.load(f)
    assert [entry['epoch'] for entry in log] == [1, 2]
    assert os.listdir(str(tmp_path / 'result')).count('snapshot_epoch_2') == 1


def with_settings(source, target, change):
    """A copy of the snapshot ``source`` whose recorded settings ``change`` edits."""
    with numpy.load(source) as npz:
        arrays = {k: npz[k] for k in npz.files}
    settings = json.loads(str(arrays[SETTINGS_KEY]))
    change(settings)
    arrays[SETTINGS_KEY] = numpy.array(json.dumps(settings, sort_keys=True))
    with open(target, 'wb') as f:
        numpy.savez(f, **arrays)
    return target


@pytest.mark.parametrize('change', [
    lambda s: s.update(model='capsnet'),  # a CapsNet run's settings
    lambda s: s.pop('model'),  # a snapshot written before --model existed: CapsNet
], ids=['capsnet', 'before-model-flag'])
def test_a_capsnet_snapshot_is_not_resumed_as_a_cnn(cnn_mnist_run, mnist_dir, tmp_path, change):
    folder, _ = cnn_mnist_run
    snapshot = with_settings(str(folder / 'result' / 'snapshot_epoch_1'),
                             str(tmp_path / 'snapshot_epoch_1'), change)
    proc = run_train(['--data-dir', mnist_dir, '-e', '2', '--resume', snapshot] + CNN_TINY,
                     tmp_path)
    assert proc.returncode == 1
    assert 'different settings: --model capsnet (this run: --model cnn).' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_a_cnn_snapshot_is_not_resumed_as_a_capsnet(cnn_mnist_run, mnist_dir, tmp_path):
    folder, _ = cnn_mnist_run
    flags = [f for f in CNN_TINY if f not in ('--model', 'cnn')]
    proc = run_train(['--data-dir', mnist_dir, '-e', '2', '--resume',
                      str(folder / 'result' / 'snapshot_epoch_1')] + flags, tmp_path)
    assert proc.returncode == 1
    assert 'different settings: --model cnn (this run: --model capsnet).' in proc.stderr


def test_train_and_analyze_multimnist(cnn_pair_run, mnist_dir, tmp_path):
    folder, stdout = cnn_pair_run
    assert '# parameters: 56,941,330' in stdout  # 36x36
    model, meta = load_model(str(folder / 'best'))
    assert isinstance(model, BaselineCNN) and model.config['in_shape'] == [1, 36, 36]
    with open(str(folder / 'result' / 'log')) as f:
        log = json.load(f)
    assert 'validation/main/accuracy/one' in log[0]
    stdout, results = analyzed(folder, mnist_dir, tmp_path / 'an')
    assert results['n_test'] == 16
    assert results['n_correct'] == meta['validation/main/accuracy_correct']
    assert results['accuracy_at_least_one'] == pytest.approx(
        log[0]['validation/main/accuracy/one'])
    assert '# no capsule figures' in stdout
    assert sorted(os.listdir(str(tmp_path / 'an'))) == ['args.json', 'metrics.json']


# CapsNet on MultiMNIST

#: 32 base digits, batches of 8: 4 iterations an epoch; 16 test pairs.
PAIR_RUN = ['--dataset', 'multimnist', '--n-train', '32', '--n-test', '16', '-b', '8',
            '--reconstruct', '--save', 'best', '-o', 'result']


@pytest.fixture(scope='module')
def pair_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp('pairs')
    proc = run_train(['--data-dir', mnist_dir, '-e', '3'] + PAIR_RUN, folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder, proc.stdout


def test_train_multimnist_records_the_test_pairs(pair_run):
    folder, stdout = pair_run
    assert '# parameters: 7,311,888' in stdout  # 36x36, shared weights
    assert '16 test pairs from seed {}'.format(protocols.MULTIMNIST_TEST_SEED) in stdout
    model, meta = load_model(str(folder / 'best'))
    assert model.config['in_shape'] == [1, 36, 36]
    assert meta['dataset'] == 'multimnist'
    assert meta['test_set'] == {'pairs': 16, 'seed': protocols.MULTIMNIST_TEST_SEED,
                                'max_shift': 4}
    with open(str(folder / 'result' / 'log')) as f:
        log = json.load(f)
    assert len(log) == 3 and all('validation/main/accuracy/one' in e for e in log)


def test_resume_draws_the_same_pairs(pair_run, tmp_path, mnist_dir):
    """Stopped after epoch 1 and resumed to epoch 3: the same snapshot, log and best
    model as the uninterrupted run (the pair sampler's random state is in the
    snapshot)."""
    first = run_train(['--data-dir', mnist_dir, '-e', '1'] + PAIR_RUN, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_train(['--data-dir', mnist_dir, '-e', '3', '--resume'] + PAIR_RUN,
                        tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'Resuming from' in resumed.stdout
    with numpy.load(str(tmp_path / 'result' / 'snapshot_epoch_3')) as npz:
        assert 'updater/dataset/keys' in npz.files
    states = [run_state(tmp_path), run_state(pair_run[0])]
    for _, _, best in states:  # -e differs between the two commands
        best[META_KEY]['train_args'].pop('epoch')
    assert_same_state(*states)


def test_analyze_reproduces_the_recorded_accuracy(pair_run, mnist_dir, tmp_path):
    folder, _ = pair_run
    proc = run_analyze(['--load', str(folder / 'best'), '--data-dir', mnist_dir,
                        '-o', str(tmp_path / 'an')], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'MultiMNIST (as the model file records)' in proc.stdout
    with open(str(tmp_path / 'an' / 'metrics.json')) as f:
        results = json.load(f)
    _, meta = load_model(str(folder / 'best'))
    assert results['n_test'] == 16
    assert results['n_correct'] == meta['validation/main/accuracy_correct']
    assert results['accuracy'] <= results['accuracy_at_least_one']
    assert results['evaluation']['test_set'] == meta['test_set']
    for name in ('multimnist.png', 'multimnist_right.png', 'multimnist_wrong.png'):
        assert os.path.getsize(str(tmp_path / 'an' / name)) > 0
    # A single-digit data set does not fit a 36x36 model: said in one line
    proc = run_analyze(['--load', str(folder / 'best'), '--data-dir', mnist_dir,
                        '--dataset', 'mnist', '-o', str(tmp_path / 'an2')], tmp_path)
    assert proc.returncode != 0 and 'takes images of shape (1, 36, 36)' in proc.stderr


def test_shift_per_image_is_refused_for_pairs(tmp_path):
    proc = run_train(['--dataset', 'multimnist', '--shift-per-image'], tmp_path)
    assert proc.returncode == 2 and 'shifts each digit of a pair' in proc.stderr


def test_multimnist_is_refused_under_mpi(tmp_path):
    proc = run_train(['--dataset', 'multimnist', '--communicator', 'naive'], tmp_path)
    assert proc.returncode == 2 and 'draws its training pairs in one process' in proc.stderr


# The affNIST protocol


def test_train_and_analyze_affnist(mnist_dir, tmp_path):
    proc = run_train(['--data-dir', mnist_dir, '--dataset', 'affnist', '--n-train', '32',
                      '--n-test', '20', '-b', '16', '-e', '1', '--save', 'best',
                      '-o', 'result'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '# parameters: 7,623,488' in proc.stdout
    model, meta = load_model(str(tmp_path / 'best'))
    assert model.config['in_shape'] == [1, 40, 40] and meta['dataset'] == 'affnist'
    proc = run_analyze(['--load', 'best', '--data-dir', mnist_dir, '--n-test', '20',
                        '--n-transformed', '30', '-o', 'an'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(str(tmp_path / 'an' / 'metrics.json')) as f:
        results = json.load(f)
    assert results['n_correct'] == meta['validation/main/accuracy_correct']
    transformed = results['transformed']
    assert transformed['key'] == 'affine_standin' and transformed['n_test'] == 30
    assert 'not affNIST' in transformed['title'] and 'ranges' in transformed
    assert transformed['accuracy'] == transformed['n_correct'] / 30
    assert 'stand-in for affNIST, not affNIST) accuracy' in proc.stdout
    # The official files: a folder without them is named in one line
    proc = run_analyze(['--load', 'best', '--data-dir', mnist_dir, '--n-test', '20',
                        '--affnist-dir', str(tmp_path / 'nothing'), '-o', 'an2'], tmp_path)
    assert proc.returncode != 0 and 'nothing' in proc.stderr
    assert 'Traceback' not in proc.stderr
    # ... and a shift for this protocol is refused
    proc = run_train(['--dataset', 'affnist', '--max-shift', '2'], tmp_path)
    assert proc.returncode == 2 and 'places each digit at random' in proc.stderr


# Fashion-MNIST


def test_train_with_a_folder_lacking_the_files_is_one_line(tmp_path):
    proc = run_train(['--dataset', 'fashion-mnist', '--data-dir', str(tmp_path), '-e', '1'],
                     tmp_path, timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: Fashion-MNIST file(s) not found')
    assert '--data-dir' in lines[0] and 'apt-get install dataset-fashion-mnist' in lines[0]


def test_train_refuses_an_unknown_dataset(tmp_path):
    proc = run_train(['--dataset', 'cifar100'], tmp_path, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'cifar100'" in proc.stderr


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


# One's own images and CIFAR-10: a tiny run each, then its analysis


def own_run(tmp_path, train_flags, analyze_flags=(), patches=None):
    """Trains one epoch and analyzes the model; returns both outputs, the model's meta
    and the analysis' metrics."""
    proc = run_script('train.py', list(train_flags) + ['-e', '1', '-b', '8', '--save',
                                                       'model', '-o', 'result'],
                      tmp_path, patches)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    analysis = run_script('analyze.py', ['--load', 'model', '-o', 'an'] + list(analyze_flags),
                          tmp_path, patches)
    assert analysis.returncode == 0, analysis.stdout[-2000:] + analysis.stderr[-2000:]
    assert not [line for line in (proc.stderr + analysis.stderr).splitlines()
                if 'warning' in line and 'was trained without --reconstruct' not in line]
    with open(str(tmp_path / 'an' / 'metrics.json')) as f:
        metrics = json.load(f)
    return proc.stdout, analysis.stdout, load_model(str(tmp_path / 'model'))[1], metrics


def test_a_folder_of_colour_images_end_to_end(tmp_path):
    write_image_folder(str(tmp_path / 'images'), per_class=8, size=(20, 20), colour=True)
    stdout, analysis, meta, metrics = own_run(
        tmp_path, ['--dataset', 'folder', '--data-dir', 'images', '--reconstruct',
                   '--test-fraction', '0.25'], ['--data-dir', 'images'])
    assert ('# dataset: image folder (18 training, 6 test images of 20x20, 3 channels, 3 '
            'classes)') in stdout
    assert '# parameters: 7,165,360' in stdout
    assert meta['class_names'] == ['cat', 'dog', 'fish']
    assert meta['test_set'] == {'test_fraction': 0.25, 'seed': 20171107}
    assert meta['preprocessing']['train'].startswith('shifted up to 2 px')
    assert metrics['n_correct'] == meta['validation/main/accuracy_correct']
    assert metrics['evaluation']['class_names'] == ['cat', 'dog', 'fish']
    assert '# classes: 0 cat, 1 dog, 2 fish' in analysis
    # the figures are in colour
    assert tile_colours(str(tmp_path / 'an' / 'vis.png'), 2, 6).std(axis=-1).max() > 0.02
    for name in ('vis_all.png', 'vis_tweaked2.png', 'confusion.png', 'misclassified.png'):
        assert os.path.getsize(str(tmp_path / 'an' / name)) > 0


def test_arrays_end_to_end_and_an_ensemble(tmp_path):
    rs = numpy.random.RandomState(0)
    t = numpy.arange(40) % 4
    x = (rs.rand(40, 18, 18, 2) * 0.5 + t[:, None, None, None] * 0.12).astype(numpy.float32)
    numpy.savez(str(tmp_path / 'mine.npz'), x_train=x[:32], y_train=t[:32], x_test=x[32:],
                y_test=t[32:], class_names=numpy.array(['north', 'east', 'south', 'west']))
    stdout, analysis, meta, metrics = own_run(
        tmp_path, ['--dataset', 'npz', '--data-dir', 'mine.npz'],
        ['--data-dir', 'mine.npz', '--load', 'model', 'model'])  # twice: an ensemble
    assert '(32 training, 8 test images of 18x18, 2 channels, 4 classes)' in stdout
    assert '# parameters: 6,591,624' in stdout
    assert meta['class_names'] == ['north', 'east', 'south', 'west']
    assert metrics['n_correct'] == meta['validation/main/accuracy_correct']
    result = metrics['ensemble']
    assert result['n_models'] == 2 and result['n_correct'] == metrics['n_correct']
    assert [m['n_correct'] for m in result['members']] == [metrics['n_correct']] * 2
    assert 'ensemble of 2 models: test accuracy' in analysis


def test_cifar10_end_to_end(tmp_path):
    _, _, _, md5 = write_cifar10(str(tmp_path / 'cifar'), per_batch=8, n_test=16)
    patches = {'capsnet_chainer.datasets.cifar10.ARCHIVE_MD5': md5['cifar-10-python.tar.gz']}
    stdout, analysis, meta, metrics = own_run(
        tmp_path, ['--dataset', 'cifar10', '--data-dir', 'cifar'], ['--data-dir', 'cifar'],
        patches)
    assert '# dataset: CIFAR-10 (40 training, 16 test images of 24x24, 3 channels' in stdout
    assert '# parameters: 13,150,912' in stdout
    config = metrics['config']
    assert config['in_shape'] == [3, 24, 24] and config['n_primary_type'] == 64
    assert config['none_of_the_above'] is True and config['standardize'] is True
    assert meta['test_set'] == {'crop': [24, 24]}
    assert meta['preprocessing']['test'] == 'the centre 24x24 crop'
    assert metrics['n_correct'] == meta['validation/main/accuracy_correct']
    assert '# classes: 0 airplane, 1 automobile' in analysis
    # the official files only: the small archive is not
    proc = run_train(['--dataset', 'cifar10', '--data-dir', 'cifar', '-e', '1', '-o', 'r2'],
                     tmp_path, timeout=120)
    assert proc.returncode == 1 and 'MD5 checksum mismatch' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('flags, code, message', [
    (['--dataset', 'folder', '--data-dir', 'sizes'], 1, 'images of different sizes'),
    (['--dataset', 'folder', '--data-dir', 'sizes', '--image-size', '16x30', '-b', '2'], 2,
     '--image-size 16x30: images of 16x30 are too small for CapsNet'),
    (['--dataset', 'folder', '--data-dir', 'one'], 1, 'only the class folder cat'),
    (['--dataset', 'folder', '--data-dir', 'sizes', '--test-fraction', '1.5'], 2,
     'argument --test-fraction: must be in (0, 1)'),
    (['--dataset', 'npz', '--data-dir', 'sizes', '--test-fraction', '0.5'], 2,
     '--test-fraction 0.5: applies to --dataset folder, not npz'),
    (['--image-size', '32x32'], 2, '--image-size 32x32: applies to --dataset folder and '
                                   'npz, not mnist'),
    (['--dataset', 'cifar10', '--max-shift', '2'], 2, 'trains on random 24x24 crops'),
    (['--model', 'cnn', '--none-of-the-above'], 2, '--none-of-the-above configures CapsNet'),
])
def test_bad_settings_and_data_are_one_line(tmp_path, flags, code, message):
    root = write_image_folder(str(tmp_path / 'sizes'), per_class=2, size=(20, 20))
    blank = numpy.zeros((30, 30), numpy.uint8)
    write_image(os.path.join(root, 'train', 'dog', 'big.png'), blank)
    write_image(str(tmp_path / 'one' / 'train' / 'cat' / '0.png'), blank[:20, :20])
    proc = run_train(flags + ['-e', '1'], tmp_path, timeout=120)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and 'Traceback' not in proc.stderr


testing.run_module(__name__, __file__)
