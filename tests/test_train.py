"""train.py end to end, through its command line, on real MNIST digits."""

import json
import os

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer import load_model
from conftest import run_train

TINY = ['--n-train', '64', '--n-test', '32', '-b', '32', '--reconstruct']


def read_log(out):
    with open(os.path.join(out, 'log')) as f:
        return json.load(f)


def snapshot_weights(path):
    with numpy.load(path) as npz:
        return {k: npz[k] for k in npz.files if k.startswith('updater/model:main/')}


@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory, mnist_dir):
    """One 2-epoch run, and one run of 1 epoch resumed to 2."""
    base = ['--data-dir', mnist_dir] + TINY
    straight = tmp_path_factory.mktemp('straight')
    resumed = tmp_path_factory.mktemp('resumed')
    procs = {
        'straight': run_train(base + ['-e', '2', '--save', 'best'], straight),
        'first': run_train(base + ['-e', '1', '--save', 'best'], resumed),
    }
    procs['second'] = run_train(base + ['-e', '2', '--save', 'best', '--resume'], resumed)
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-2000:])
    return {'straight': straight, 'resumed': resumed, 'procs': procs}


def test_prints_arguments_and_parameter_count(tiny_runs):
    out = tiny_runs['procs']['first'].stdout
    args = json.loads(out[out.index('{'):out.index('}') + 1])
    assert args['batchsize'] == 32 and args['reconstruct'] is True
    assert args['seed'] == 789 and args['decay'] == 0.95 and args['epoch'] == 1
    assert '# parameters: 6,787,088' in out


def test_writes_log_plots_snapshot_and_best_model(tiny_runs):
    folder = tiny_runs['straight']
    out = str(folder / 'result')
    for name in ('log', 'loss.png', 'accuracy.png', 'args.json', 'snapshot_epoch_2'):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, 'snapshot_epoch_1'))  # --keep 1
    log = read_log(out)
    assert [e['epoch'] for e in log] == [1, 2]
    for key in ('main/loss', 'main/loss/margin', 'main/loss/recon',
                'validation/main/loss', 'validation/main/accuracy'):
        assert all(numpy.isfinite(e[key]) for e in log), key
    # The learning rate decays by 0.95 after every epoch.
    assert log[0]['alpha'] == pytest.approx(1e-3)
    assert log[1]['alpha'] == pytest.approx(0.95e-3)
    model, meta = load_model(str(folder / 'best'))
    assert model.config['reconstruct'] is True
    best = max(e['validation/main/accuracy'] for e in log)
    assert meta['validation/main/accuracy'] == pytest.approx(best)
    assert meta['train_args']['n_train'] == 64


def test_resume_continues_to_the_same_weights(tiny_runs):
    """1 epoch + --resume to 2 ends where 2 uninterrupted epochs end."""
    proc = tiny_runs['procs']['second']
    assert 'Resuming from' in proc.stdout and 'snapshot_epoch_1' in proc.stdout
    straight = snapshot_weights(str(tiny_runs['straight'] / 'result' / 'snapshot_epoch_2'))
    resumed = snapshot_weights(str(tiny_runs['resumed'] / 'result' / 'snapshot_epoch_2'))
    assert straight.keys() == resumed.keys() and len(straight) > 0
    for key in straight:
        numpy.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    log_a = read_log(str(tiny_runs['straight'] / 'result'))
    log_b = read_log(str(tiny_runs['resumed'] / 'result'))
    for a, b in zip(log_a, log_b):
        assert {k: v for k, v in a.items() if k != 'elapsed_time'} == \
            {k: v for k, v in b.items() if k != 'elapsed_time'}


def test_short_real_training_learns(trained_run):
    """640 real digits, 3 epochs: the loss falls and accuracy ends far above chance."""
    log = read_log(trained_run['out'])
    assert len(log) == 3
    assert log[-1]['main/loss'] < 0.5 * log[0]['main/loss']
    assert log[-1]['validation/main/accuracy'] > 0.3  # chance is 0.1
    model, meta = load_model(trained_run['model'])
    assert meta['validation/main/accuracy'] == pytest.approx(
        max(e['validation/main/accuracy'] for e in log))


def test_vis_every_writes_reconstruction_figures(trained_run):
    figures = sorted(f for f in os.listdir(trained_run['out'])
                     if f.startswith('reconstruction_epoch_'))
    assert figures == ['reconstruction_epoch_2.png']  # --vis-every 2, 3 epochs


@pytest.mark.parametrize('flags, message', [
    (['-b', '0'], '--batchsize'),
    (['-e', '-1'], '--epoch'),
    (['--leaky-slope', 'nan'], '--leaky-slope'),
    (['--decay', '2'], '--decay'),
])
def test_bad_flags_exit_with_a_clear_message(tmp_path, flags, message):
    proc = run_train(flags, tmp_path, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / 'result').write_text('not a folder')
    proc = run_train(['-o', 'result'], tmp_path, timeout=120)
    assert proc.returncode == 2 and '--out' in proc.stderr


def test_missing_data_dir_files_are_reported(tmp_path):
    proc = run_train(['--data-dir', str(tmp_path), '-e', '1'], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert 'train-images-idx3-ubyte.gz' in proc.stderr and 'Traceback' not in proc.stderr


def test_public_api_step_on_real_digits(mnist_dir):
    from capsnet_chainer import CapsNet
    from capsnet_chainer.datasets import get_mnist
    train, _ = get_mnist(data_dir=mnist_dir, n_train=8, n_test=1)
    x, t = chainer.dataset.concat_examples(train[:8])
    model = CapsNet(reconstruct=True)
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    optimizer.update(model, x, t)
    assert numpy.isfinite(model.conv1.W.grad).all()


testing.run_module(__name__, __file__)
