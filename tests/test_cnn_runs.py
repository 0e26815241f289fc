"""train.py --model cnn and analyze.py on its model files, end to end: one tiny run on
MNIST and one on MultiMNIST, their resume, and the flags --model cnn refuses."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest

from capsnet_chainer.baseline_cnn import BaselineCNN
from capsnet_chainer.modelfile import load_model
from capsnet_chainer.snapshots import SETTINGS_KEY
from conftest import REPO
from conftest import run_train

#: 16 training images (or base digits of pairs) in batches of 8, 16 test images.
TINY = ['--model', 'cnn', '--n-train', '16', '--n-test', '16', '-b', '8', '--save', 'best',
        '-o', 'result']


def run_analyze(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO, MPLBACKEND='Agg')
    return subprocess.run([sys.executable, os.path.join(REPO, 'analyze.py')] + list(args),
                          cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=600)


def tiny_run(folder, mnist_dir, *flags):
    proc = run_train(['--data-dir', mnist_dir, '-e', '1'] + TINY + list(flags), folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope='module')
def mnist_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp('cnn_mnist')
    return folder, tiny_run(folder, mnist_dir)


@pytest.fixture(scope='module')
def pair_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp('cnn_multimnist')
    return folder, tiny_run(folder, mnist_dir, '--dataset', 'multimnist')


def analyzed(folder, mnist_dir, out, *flags):
    proc = run_analyze(['--load', str(folder / 'best'), '--data-dir', mnist_dir,
                        '-o', str(out)] + list(flags), out.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(str(out / 'metrics.json')) as f:
        return proc.stdout, json.load(f)


# MNIST


def test_train_mnist_records_the_model(mnist_run):
    folder, stdout = mnist_run
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


def test_analyze_mnist_reproduces_the_recorded_accuracy(mnist_run, mnist_dir, tmp_path):
    folder, _ = mnist_run
    stdout, results = analyzed(folder, mnist_dir, tmp_path / 'an', '--n-test', '16')
    _, meta = load_model(str(folder / 'best'))
    assert results['n_test'] == 16
    assert results['n_correct'] == meta['validation/main/accuracy_correct']
    assert results['evaluation']['scores'] == 'logits'
    assert results['config']['model'] == 'cnn'
    assert '# no capsule figures' in stdout and 'MNIST (as the model file records)' in stdout
    assert sorted(os.listdir(str(tmp_path / 'an'))) == [
        'args.json', 'confusion.png', 'metrics.json', 'misclassified.png']


def test_resume_continues_a_cnn_run(mnist_run, mnist_dir, tmp_path):
    folder, _ = mnist_run
    shutil.copytree(str(folder / 'result'), str(tmp_path / 'result'))
    proc = run_train(['--data-dir', mnist_dir, '-e', '2', '--resume'] + TINY, tmp_path)
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
def test_a_capsnet_snapshot_is_not_resumed_as_a_cnn(mnist_run, mnist_dir, tmp_path, change):
    folder, _ = mnist_run
    snapshot = with_settings(str(folder / 'result' / 'snapshot_epoch_1'),
                             str(tmp_path / 'snapshot_epoch_1'), change)
    proc = run_train(['--data-dir', mnist_dir, '-e', '2', '--resume', snapshot] + TINY,
                     tmp_path)
    assert proc.returncode == 1
    assert 'different settings: --model capsnet (this run: --model cnn).' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_a_cnn_snapshot_is_not_resumed_as_a_capsnet(mnist_run, mnist_dir, tmp_path):
    folder, _ = mnist_run
    flags = [f for f in TINY if f not in ('--model', 'cnn')]
    proc = run_train(['--data-dir', mnist_dir, '-e', '2', '--resume',
                      str(folder / 'result' / 'snapshot_epoch_1')] + flags, tmp_path)
    assert proc.returncode == 1
    assert 'different settings: --model cnn (this run: --model capsnet).' in proc.stderr


# MultiMNIST


def test_train_and_analyze_multimnist(pair_run, mnist_dir, tmp_path):
    folder, stdout = pair_run
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


# The flags --model cnn refuses


def load_train_module():
    spec = importlib.util.spec_from_file_location('train_script',
                                                  os.path.join(REPO, 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('flags, message', [
    (['--reconstruct'], '--reconstruct configures CapsNet; --model cnn has no use for it'),
    (['--recon'], '--reconstruct configures CapsNet'),
    (['--recon-weight', '0.1'], '--recon-weight configures CapsNet'),
    (['--leaky-slope', '0'], '--leaky-slope configures CapsNet'),
    (['--n-iteration', '2'], '--n-iteration configures CapsNet'),
    (['--unshared'], '--unshared configures CapsNet'),
    (['--squash-primary'], '--squash-primary configures CapsNet'),
    (['--routing-grad', 'last'], '--routing-grad configures CapsNet'),
    (['--mask-test', 'prediction'], '--mask-test configures CapsNet'),
    (['--vis-every', '1'], '--vis-every draws reconstructions, and --model cnn has no '
                           'decoder'),
])
def test_capsnet_flags_are_refused(flags, message, capsys, tmp_path):
    train = load_train_module()
    out = ['-o', str(tmp_path / 'result')]
    with pytest.raises(SystemExit) as e:
        train.parse_args(['--model', 'cnn'] + flags + out)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    # Without --model cnn, CapsNet takes them
    assert train.parse_args(flags + out).model == 'capsnet'


def test_capsnet_flags_at_their_defaults_are_accepted(tmp_path):
    train = load_train_module()
    args = train.parse_args(['--model', 'cnn', '--leaky-slope', '0.05', '--n-iteration', '3',
                             '--mask-test', 'label', '-o', str(tmp_path / 'result')])
    assert args.model == 'cnn'
    model = train.build_model(args, (1, 12, 12))
    assert isinstance(model, BaselineCNN) and model.config['in_shape'] == [1, 12, 12]
