"""--dataset multimnist end to end: the protocol's sets, the model's two-digit loss and
its reports, train.py (exact resume of the pair stream), analyze.py (the recorded
accuracy reproduced on the regenerated pairs) and the Figure 5 tiles."""

import json
import os
import subprocess
import sys

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
import pytest

from capsnet_chainer import multimnist
from capsnet_chainer import pair_figures
from capsnet_chainer import protocols
from capsnet_chainer.metrics import decode
from capsnet_chainer.metrics import digit_capsules
from capsnet_chainer.model import CapsNet
from capsnet_chainer.modelfile import load_model
from capsnet_chainer.modelfile import META_KEY
from conftest import REPO
from conftest import run_train
from test_dependability import assert_same_state
from test_dependability import run_state


def digits(n, seed=0):
    rng = numpy.random.RandomState(seed)
    x = rng.uniform(0, 1, (n, 1, 28, 28)).astype(numpy.float32)
    t = (numpy.arange(n) % 10).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


# The protocol


def test_top_two_matches_a_stable_sort_and_breaks_ties_low():
    rng = numpy.random.RandomState(1)
    scores = rng.randint(0, 4, (500, 10)).astype(numpy.float32)  # many ties
    expected = numpy.argsort(-scores, axis=1, kind='stable')[:, :2]
    numpy.testing.assert_array_equal(multimnist.top_two(scores), expected)


def test_single_digit_protocols_keep_the_digits_and_shift():
    train, test = digits(40), digits(20, 1)
    data = protocols.make_data('mnist', train, None, test, max_shift=3, seed=5)
    assert data.train is train and data.test is test and data.test_set == {}
    assert data.converter.max_shift == 3
    assert protocols.make_data('fashion-mnist', train, None, test).converter.max_shift == 2


def test_multimnist_sets():
    train, heldout, test = digits(60), digits(20, 1), digits(30, 2)
    data = protocols.make_data('multimnist', train, heldout, test, n_test=45, seed=3)
    # Training: pairs drawn on the fly from the training digits, the paper's 4 px
    assert isinstance(data.train, multimnist.PairSampler) and len(data.train) == 60
    assert data.train.max_shift == 4
    numpy.testing.assert_array_equal(data.train.images, train._datasets[0][:, 0])
    x, t2, single = data.converter([data.train[0], data.train[1]])
    assert x.shape == (2, 1, 36, 36) and t2.shape == (2, 2) and single.shape == (2, 2, 1,
                                                                                 36, 36)
    # Test: 45 fixed pairs from the test digits and the protocol's seed
    assert data.test_set == {'pairs': 45, 'seed': protocols.MULTIMNIST_TEST_SEED,
                             'max_shift': 4}
    expected = multimnist.make_test_set(test._datasets[0], test._datasets[1], 45,
                                        protocols.MULTIMNIST_TEST_SEED)
    got = chainer.dataset.concat_examples(data.test[:])
    for a, b in zip(got, expected):
        numpy.testing.assert_array_equal(a, b)
    # ... regenerated from the record alone; a prefix of a larger set
    again = protocols.make_test_set('multimnist', test, dict(data.test_set, pairs=60))
    numpy.testing.assert_array_equal(
        chainer.dataset.concat_examples(again[:45])[0], got[0])
    # Held out: one pair per held-out digit, from its own seed
    assert len(data.heldout) == 20
    assert (data.heldout[0][1] == heldout[0][1]).any()
    with pytest.raises(ValueError, match='shifts each digit'):
        protocols.make_data('multimnist', train, None, test, shift_per_image=True)
    with pytest.raises(ValueError, match='unknown data set'):
        protocols.protocol('cifar')


# The model


def naive_pair_loss(lengths, t2):
    loss = 0.0
    for b in range(len(lengths)):
        for k in range(lengths.shape[1]):
            if k in t2[b]:
                loss += max(0.0, 0.9 - lengths[b, k]) ** 2
            else:
                loss += 0.5 * max(0.0, lengths[b, k] - 0.1) ** 2
    return loss / len(lengths)


def test_capsnet_reports_the_pair_loss_and_accuracies():
    rng = numpy.random.RandomState(2)
    x, t2, single = multimnist.make_test_set(rng.uniform(0, 1, (30, 28, 28)),
                                             numpy.arange(30) % 10, 8, seed=4)
    model = CapsNet(in_shape=(1, 36, 36), reconstruct=True)
    model.cleargrads()
    observation = {}
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    with reporter.scope(observation):
        loss = model(x, t2, single)
    loss.backward()
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        v = model.digit_capsules(x).array
    lengths = numpy.sqrt((v ** 2).sum(axis=2))
    recon = sum(((decode(model, v, t2[:, k]) - single[:, k, 0]) ** 2).sum()
                for k in range(2)) / len(x)
    margin = naive_pair_loss(lengths, t2)
    numpy.testing.assert_allclose(float(observation['main/loss/margin'].array), margin,
                                  rtol=1e-5)
    numpy.testing.assert_allclose(float(observation['main/loss/recon'].array),
                                  0.0005 * recon, rtol=1e-4)
    numpy.testing.assert_allclose(float(loss.array), margin + 0.0005 * recon, rtol=1e-5)
    both, one = multimnist.pair_accuracy(lengths, t2)
    assert float(observation['main/accuracy']) == pytest.approx(both)
    assert float(observation['main/accuracy/one']) == pytest.approx(one)
    assert model.decoder.fc1.W.grad is not None and abs(model.decoder.fc1.W.grad).sum() > 0


def test_pair_tiles_overlay_the_two_reconstructions():
    rng = numpy.random.RandomState(3)
    x, t2, _ = multimnist.make_test_set(rng.uniform(0, 1, (30, 28, 28)),
                                        numpy.arange(30) % 10, 4, seed=5)
    model = CapsNet(in_shape=(1, 36, 36), reconstruct=True)
    tiles, pred = pair_figures.pair_tiles(model, x, t2)
    assert tiles.shape == (3, 4, 36, 36, 3)
    numpy.testing.assert_array_equal(tiles[0, :, :, :, 0], x[:, 0])  # grey input
    v = digit_capsules(model, x)
    numpy.testing.assert_allclose(tiles[1, ..., 0], decode(model, v, t2[:, 0]), atol=1e-6)
    numpy.testing.assert_allclose(tiles[1, ..., 1], decode(model, v, t2[:, 1]), atol=1e-6)
    numpy.testing.assert_allclose(tiles[2, ..., 0], decode(model, v, pred[:, 0]), atol=1e-6)
    assert (tiles[1:, ..., 2] == 0).all()
    numpy.testing.assert_array_equal(pred, multimnist.top_two(
        numpy.sqrt((v ** 2).sum(axis=2))))


# train.py and analyze.py

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


def run_analyze(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO, MPLBACKEND='Agg')
    return subprocess.run([sys.executable, os.path.join(REPO, 'analyze.py')] + list(args),
                          cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=600)


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


# The affNIST protocol


def test_affnist_sets():
    from capsnet_chainer import affnist
    train, heldout, test = digits(40), digits(10, 1), digits(20, 2)
    data = protocols.make_data('affnist', train, heldout, test, seed=4)
    assert data.train is train and data.test_set == {}
    assert isinstance(data.converter, affnist.RandomPlacement)
    assert data.converter.size == 40
    x, t = data.converter([train[0], train[1]])
    assert x.shape == (2, 1, 40, 40) and x.sum() == pytest.approx(
        train._datasets[0][:2].sum(), rel=1e-5)  # the whole digit, placed
    # Tested (and held out) on the digits centred: the expanded MNIST test set
    xt, tt = chainer.dataset.concat_examples(data.test[:])
    numpy.testing.assert_array_equal(xt, affnist.expand(test._datasets[0]))
    numpy.testing.assert_array_equal(tt, test._datasets[1])
    assert chainer.dataset.concat_examples(data.heldout[:])[0].shape == (10, 1, 40, 40)
    for kwargs in ({'max_shift': 2}, {'shift_per_image': True}):
        with pytest.raises(ValueError, match='takes no shift'):
            protocols.make_data('affnist', train, None, test, **kwargs)


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


def test_multimnist_is_refused_under_mpi(tmp_path):
    proc = run_train(['--dataset', 'multimnist', '--communicator', 'naive'], tmp_path)
    assert proc.returncode == 2 and 'draws its training pairs in one process' in proc.stderr
    with pytest.raises(ValueError, match='not supported yet'):
        protocols.make_data('multimnist', digits(20), None, digits(20, 1), part=(0, 2))
