"""analyze.py end to end, in subprocesses, on the short real training run."""

import hashlib
import json
import os
import subprocess
import sys

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import matplotlib.image
import numpy
import pytest
from chainer import testing

from capsnet_chainer import CapsNet
from capsnet_chainer import load_model
from capsnet_chainer import save_model
from capsnet_chainer.datasets.mnist import get_mnist
from capsnet_chainer.io.modelfile import read_model_file
from conftest import is_green
from conftest import tile_colours

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TEST = 100
TOP_K = 5
SAMPLE_FIGURES = ['vis.png', 'vis_all.png'] + ['vis_tweaked{}.png'.format(k)
                                               for k in range(10)]
ALL_FILES = sorted(SAMPLE_FIGURES + ['args.json', 'metrics.json', 'confusion.png',
                                     'misclassified.png', 'routing.png', 'explorer.html'])


def run_analyze(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('MPLBACKEND', None)  # analyze.py must choose Agg itself
    env.pop('DISPLAY', None)
    return subprocess.run([sys.executable, os.path.join(REPO, 'analyze.py')] + list(args),
                          cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc, text, returncode=1):
    assert proc.returncode == returncode
    assert 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    assert text in lines[0]


@pytest.fixture(scope='module')
def analyzed(trained_run, mnist_dir, tmp_path_factory):
    """analyze.py run on the trained model, on the first N_TEST test images."""
    folder = tmp_path_factory.mktemp('analyze')
    proc = run_analyze(['--load', trained_run['model'], '--data-dir', mnist_dir,
                        '--n-test', str(N_TEST), '--top-k', str(TOP_K), '-o', 'out',
                        '--log', os.path.join(trained_run['out'], 'log')], folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = folder / 'out'
    with open(str(out / 'metrics.json')) as f:
        metrics = json.load(f)
    return {'proc': proc, 'out': out, 'metrics': metrics, 'model': trained_run['model']}


@pytest.fixture(scope='module')
def untrained_model(tmp_path_factory):
    """A CapsNet trained without --reconstruct (here: not trained at all)."""
    path = str(tmp_path_factory.mktemp('untrained') / 'model')
    save_model(CapsNet(), path, {'epoch': 0})
    return path


def test_writes_every_file(analyzed):
    out, proc = analyzed['out'], analyzed['proc']
    assert sorted(os.listdir(str(out))) == sorted(ALL_FILES + ['test_error.png'])  # --log
    for name in ALL_FILES:
        if name != 'args.json':
            assert 'wrote {}'.format(os.path.join('out', name)) in proc.stdout
    assert 'Device: @numpy' in proc.stdout
    assert 'warning' not in proc.stderr  # trained with --reconstruct
    assert 'scoring {} test images: 100% ({}/{})'.format(N_TEST, N_TEST, N_TEST) \
        in proc.stderr


def test_metrics_agree_with_an_independent_count(analyzed, mnist_dir):
    metrics = analyzed['metrics']
    model, meta = load_model(analyzed['model'])
    _, test = get_mnist(data_dir=mnist_dir, n_test=N_TEST)
    x, t = chainer.dataset.concat_examples(test[:])
    pred = model.predict(x).argmax(axis=1)
    correct = pred == t
    assert metrics['n_test'] == N_TEST
    assert metrics['n_correct'] == int(correct.sum())
    assert metrics['accuracy'] == pytest.approx(correct.mean())
    assert metrics['error_rate'] == pytest.approx(1 - correct.mean())
    for k in range(10):
        expected = correct[t == k].mean() if (t == k).any() else None
        assert metrics['per_class_accuracy'][k] == pytest.approx(expected)
        assert metrics['per_class_count'][k] == int((t == k).sum())
    matrix = numpy.array(metrics['confusion_matrix'])
    assert matrix.sum() == N_TEST and numpy.trace(matrix) == correct.sum()
    assert matrix[t[0], pred[0]] >= 1
    # The most confident mistakes, most confident first.
    wrong = numpy.flatnonzero(~correct)
    shown = metrics['misclassified']
    assert len(shown) == min(TOP_K, len(wrong))
    assert [m['score'] for m in shown] == sorted((m['score'] for m in shown), reverse=True)
    for m in shown:
        assert m['index'] in wrong
        assert (m['true'], m['pred']) == (int(t[m['index']]), int(pred[m['index']]))
    assert metrics['evaluation']['augmentation'] == 'none'


def test_metrics_record_the_config_and_the_model_files_sha256(analyzed):
    metrics, path = analyzed['metrics'], analyzed['model']
    config, meta = read_model_file(path)
    assert metrics['config'] == config
    assert metrics['config']['reconstruct'] is True
    with open(path, 'rb') as f:
        assert metrics['source']['sha256'] == hashlib.sha256(f.read()).hexdigest()
    assert metrics['source']['path'] == os.path.abspath(path)
    assert metrics['source']['meta'] == meta
    assert metrics['source']['meta']['epoch'] >= 1
    assert metrics['source']['meta']['train_args']['reconstruct'] is True


def test_figure_sizes_and_colours(analyzed):
    out = analyzed['out']
    for name, (R, C) in [('vis.png', (2, 20)), ('vis_all.png', (11, 20)),
                         ('vis_tweaked0.png', (9, 16)), ('vis_tweaked9.png', (9, 16))]:
        path = str(out / name)
        assert matplotlib.image.imread(path).shape[:2] == (R * 50, C * 50), name
        colours = tile_colours(path, R, C)
        given = 4 if name.startswith('vis_tweaked') else 0
        assert is_green(colours[given]).all(), name
        assert not is_green(numpy.delete(colours, given, axis=0)).any(), name
    n_shown = len(analyzed['metrics']['misclassified'])
    if n_shown:
        assert matplotlib.image.imread(str(out / 'misclassified.png')).shape[1] == (
            max(n_shown, 4) * 50)


def test_paper_perturbation_and_untrained_decoder(untrained_model, mnist_dir, tmp_path):
    proc = run_analyze(['--load', untrained_model, '--data-dir', mnist_dir, '--n-test', '5',
                        '--perturbation', 'paper', '--top-k', '3', '-o', 'out'], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'trained without --reconstruct' in proc.stderr
    assert 'decoder is untrained' in proc.stderr
    assert sorted(os.listdir(str(tmp_path / 'out'))) == ALL_FILES
    # The paper's Fig. 4: 16 dimensions (rows) x 11 steps (columns), r = 0 green.
    path = str(tmp_path / 'out' / 'vis_tweaked5.png')
    assert matplotlib.image.imread(path).shape[:2] == (16 * 50, 11 * 50)
    colours = tile_colours(path, 16, 11)
    assert is_green(colours[:, 5]).all()
    assert not is_green(numpy.delete(colours, 5, axis=1)).any()
    with open(str(tmp_path / 'out' / 'metrics.json')) as f:
        metrics = json.load(f)
    assert metrics['n_test'] == 5 and metrics['config']['reconstruct'] is False
    # explorer.html without sliders, saying why on the page and in the log
    assert '# explorer.html: no sliders: the model was trained without --reconstruct' in (
        proc.stdout)
    assert metrics['routing']['explorer']['sliders'] is False
    with open(str(tmp_path / 'out' / 'explorer.html'), encoding='utf-8') as f:
        assert 'no sliders: the model was trained without --reconstruct' in f.read()


def test_routing_numbers_and_no_explorer(untrained_model, mnist_dir, tmp_path):
    proc = run_analyze(['--load', untrained_model, '--data-dir', mnist_dir, '--n-test', '5',
                        '--no-explorer', '-o', 'out'], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(str(tmp_path / 'out'))) == [
        f for f in ALL_FILES if f != 'explorer.html']
    with open(str(tmp_path / 'out' / 'metrics.json')) as f:
        routing = json.load(f)['routing']
    assert routing['images'] == 5 and routing['explorer'] is None
    assert len(routing['entropy']['mean_per_iteration']) == 3
    assert len(routing['class_maps']) == 10
    assert 'wrote out/routing.png' in proc.stdout and 'explorer.html' not in proc.stdout


def test_log_of_the_run_draws_its_error_curves_silently(analyzed):
    assert 'wrote out/test_error.png' in analyzed['proc'].stdout
    assert 'warning' not in analyzed['proc'].stderr


def test_log_of_another_run_is_drawn_with_a_warning(trained_run, mnist_dir, tmp_path):
    with open(os.path.join(trained_run['out'], 'log')) as f:
        log = json.load(f)
    for entry in log:  # the same epochs, other accuracies
        entry['validation/main/accuracy'] = entry['validation/main/accuracy'] / 2
    (tmp_path / 'other_log').write_text(json.dumps(log))
    proc = run_analyze(['--load', trained_run['model'], '--data-dir', mnist_dir,
                        '--n-test', '5', '-o', 'out', '--log', 'other_log'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'warning: --log other_log: its epoch' in proc.stderr
    assert 'is it the log of another run?' in proc.stderr
    assert (tmp_path / 'out' / 'test_error.png').exists()


@pytest.mark.parametrize('content,text', [
    (None, 'cannot read it'),
    ('{"epoch": 1', 'not a JSON file'),
    ('{"epoch": 1}', 'not a train.py log'),
    ('[]', 'not a train.py log'),
    ('[{"main/loss": 0.5}]', 'not a train.py log'),
    ('[{"epoch": 1, "main/loss": 0.5}]', 'no accuracy in its entries'),
    ('[{"epoch": 1, "main/accuracy": "high"}]', 'an accuracy in it is not a number'),
])
def test_bad_log_is_refused_before_the_scoring(untrained_model, tmp_path, content, text):
    if content is not None:
        (tmp_path / 'log').write_text(content)
    proc = run_analyze(['--load', untrained_model, '--log', 'log', '-o', 'out'], tmp_path)
    assert_one_line_error(proc, text)
    assert proc.stderr.startswith('error: --log log: ')
    assert not (tmp_path / 'out').exists()


def test_ensemble_of_pair_models_is_refused_before_the_data(mnist_dir, tmp_path):
    # An ensemble averages one label per image: MultiMNIST pairs have two.
    path = str(tmp_path / 'pairs_model')
    save_model(CapsNet(in_shape=(1, 36, 36), reconstruct=True), path,
               {'epoch': 0, 'dataset': 'multimnist'})
    proc = run_analyze(['--load', path, path, '--dataset', 'multimnist', '--data-dir',
                        mnist_dir, '--n-test', '2', '--top-k', '1', '-o', 'out'], tmp_path)
    assert_one_line_error(proc, '--dataset multimnist', returncode=2)
    assert '--load' in proc.stderr and 'one model' in proc.stderr
    assert not (tmp_path / 'out').exists()


def test_missing_model_file(tmp_path):
    proc = run_analyze(['--load', str(tmp_path / 'nothing')], tmp_path)
    assert_one_line_error(proc, 'no such file')
    assert proc.stderr.startswith('error: --load: ')
    assert not (tmp_path / 'analyze_result').exists()


def test_not_a_model_file(tmp_path):
    (tmp_path / 'notes.txt').write_text('not a model')
    proc = run_analyze(['--load', 'notes.txt'], tmp_path)
    assert_one_line_error(proc, 'not a model file')


def test_model_without_configuration(tmp_path):
    # Our arrays written by save_npz alone: neither our layout nor the reference's.
    chainer.serializers.save_npz(str(tmp_path / 'bare_model'), CapsNet())
    proc = run_analyze(['--load', 'bare_model'], tmp_path)
    assert_one_line_error(proc, 'no capsnet_chainer configuration')


def test_missing_data(untrained_model, tmp_path):
    proc = run_analyze(['--load', untrained_model, '--data-dir', str(tmp_path)], tmp_path)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'error: MNIST file(s) not found' in proc.stderr


def test_out_is_a_file(untrained_model, tmp_path):
    (tmp_path / 'out').write_text('')
    proc = run_analyze(['--load', untrained_model, '-o', 'out'], tmp_path)
    assert_one_line_error(proc, 'is a file, not a folder', returncode=2)


def test_help_names_the_default_out_folder(tmp_path):
    proc = run_analyze(['--help'], tmp_path)
    assert proc.returncode == 0
    assert 'analyze_result' in proc.stdout and '--perturbation' in proc.stdout


testing.run_module(__name__, __file__)
