"""train.py end to end, through its command line, on real MNIST digits."""

import importlib.util
import json
import os
import re

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import chainer
import numpy
import pytest
from chainer import testing

from capsnet_chainer import cli
from capsnet_chainer import load_model
from capsnet_chainer.baseline_cnn import BaselineCNN
from capsnet_chainer.errors import SettingError
from capsnet_chainer.io.modelfile import SNAPSHOT_MODEL_PATH
from capsnet_chainer.training import distributed
from capsnet_chainer.training import nonfinite
from capsnet_chainer.training.snapshots import SETTINGS_KEY
from capsnet_chainer.training.snapshots import SnapshotError
from conftest import REPO
from conftest import run_train
from test_dependability import without_time

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
    # Where each epoch's time went: the updates, and the rest (evaluation, files)
    for e in log:
        assert e['time/updates'] > 0 and e['time/rest'] >= 0
        assert e['time/updates'] + e['time/rest'] <= e['elapsed_time'] + 0.01
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
        assert without_time([a]) == without_time([b])


def test_the_gpu_paths_wiring_trains_the_same_run(tiny_runs, mnist_dir, tmp_path,
                                                  monkeypatch):
    """train.py with the GPU paths that are not CUDA code forced on the CPU: the training
    and test sets "resident" (ResidentShift, ResidentBatches) and the non-finite check
    deferred (GatedAdam skipping on the device, the verdict read a step late). The same
    weights and log as the straight run, bit for bit: what a GPU run with them switched
    on computes, less its kernels."""
    verdicts, made = [], []

    class Counted(nonfinite._Verdict):
        def __init__(self, *args):
            verdicts.append(args[-1])
            super().__init__(*args)

    def counting(cls):
        class Counting(cls):
            def __init__(self, *args):
                made.append(cls.__name__)
                super().__init__(*args)
        return Counting

    for name in ('ResidentShift', 'ResidentBatches'):
        monkeypatch.setattr(distributed, name, counting(getattr(distributed, name)))
    monkeypatch.setattr(nonfinite, '_Verdict', Counted)
    monkeypatch.setattr(distributed, 'on_gpu', lambda device: True)
    monkeypatch.setattr(distributed, 'RESIDENT_ON_GPU', True)
    monkeypatch.setattr(distributed, 'DEFERRED_CHECK_ON_GPU', True)
    monkeypatch.chdir(tmp_path)
    load_train_module().main(['--data-dir', mnist_dir] + TINY + ['-e', '2', '--save', 'best'])
    assert sorted(made) == ['ResidentBatches', 'ResidentShift']
    assert verdicts == [(1, 1), (1, 2), (2, 3), (2, 4)]  # (epoch, iteration), deferred
    straight = snapshot_weights(str(tiny_runs['straight'] / 'result' / 'snapshot_epoch_2'))
    forced = snapshot_weights(str(tmp_path / 'result' / 'snapshot_epoch_2'))
    assert straight.keys() == forced.keys() and len(straight) > 0
    for key in straight:
        numpy.testing.assert_array_equal(straight[key], forced[key], err_msg=key)
    assert without_time(read_log(str(tmp_path / 'result'))) == without_time(
        read_log(str(tiny_runs['straight'] / 'result')))


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


def test_tf32_on_the_cpu_is_refused_before_anything_is_written(tmp_path):
    proc = run_train(['--precision', 'tf32'], tmp_path, timeout=120)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert ("error: --precision tf32: needs a GPU (-g N): the CPU's matrix products are "
            "float32 only") in proc.stderr
    assert not (tmp_path / 'result').exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / 'result').write_text('not a folder')
    proc = run_train(['-o', 'result'], tmp_path, timeout=120)
    assert proc.returncode == 2 and '--out' in proc.stderr


def test_missing_data_dir_files_are_reported(tmp_path):
    proc = run_train(['--data-dir', str(tmp_path), '-e', '1'], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert 'train-images-idx3-ubyte.gz' in proc.stderr and 'Traceback' not in proc.stderr
    assert 'The folder given as --data-dir must hold' in proc.stderr


def test_validation_holds_out_the_last_images_and_chooses_the_model(tmp_path, mnist_dir):
    # 96 images: the first 64 are trained on, the last 32 held out; batch 32 gives 2
    # iterations per epoch only if the held-out images are really left out.
    proc = run_train(['--data-dir', mnist_dir, '--n-train', '96', '--n-test', '100', '-b',
                      '32', '-e', '2', '--validation', '32', '--test-batchsize', '16',
                      '--save', 'best', '--reconstruct'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '# model selection: best accuracy on the last 32 training images' in proc.stdout
    log = read_log(str(tmp_path / 'result'))
    assert [e['iteration'] for e in log] == [2, 4]
    assert all('heldout/main/accuracy' in e and 'validation/main/accuracy' in e
               for e in log)
    model, meta = load_model(str(tmp_path / 'best'))
    assert meta['selection']['key'] == 'heldout/main/accuracy'
    assert (meta['train_images'], meta['heldout_images'], meta['test_images']) == \
        (64, 32, 100)
    chosen = max(log, key=lambda e: e['heldout/main/accuracy'])  # the first best wins
    assert meta['epoch'] == chosen['epoch']
    assert meta['heldout/main/accuracy'] == pytest.approx(chosen['heldout/main/accuracy'])
    assert meta['validation/main/accuracy'] == pytest.approx(
        chosen['validation/main/accuracy'])
    # Correct answers are recorded where the batches are full: 32 = 2 x 16, 100 is not.
    assert meta['heldout/main/accuracy_correct'] == round(32 * chosen['heldout/main/accuracy'])
    assert 'validation/main/accuracy_correct' not in meta


def test_model_file_records_its_provenance(tiny_runs):
    import capsnet_chainer.io.provenance as prov
    _, meta = load_model(str(tiny_runs['straight'] / 'best'))
    assert meta['selection']['key'] == 'validation/main/accuracy'
    assert 'reference' in meta['selection']['rule']
    assert meta['provenance']['versions'] == prov.versions()
    assert meta['provenance']['device'] == '@numpy'
    assert meta['provenance']['command'].startswith('train.py ')
    assert meta['provenance']['commit'] == prov.git_commit()
    assert meta['saved'].endswith('+00:00') and meta['train_args']['seed'] == 789
    assert meta['validation/main/accuracy_correct'] == round(
        32 * meta['validation/main/accuracy'])


@pytest.mark.parametrize('flags, message', [
    (['--n-train', '64'], '--batchsize 256 exceeds the 64 training images (--n-train 64)'),
    (['--n-train', '64', '-b', '32', '--validation', '40'],
     '--batchsize 32 exceeds the 24 training images (--n-train 64) after --validation 40'),
    (['--n-train', '64', '--validation', '64'],
     '--validation 64 holds out all 64 training images'),
])
def test_a_training_set_smaller_than_a_batch_is_refused(tmp_path, mnist_dir, flags, message):
    proc = run_train(['--data-dir', mnist_dir, '-e', '1'] + flags, tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert message in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'result').exists()


def test_public_api_step_on_real_digits(mnist_dir):
    from capsnet_chainer import CapsNet
    from capsnet_chainer.datasets.mnist import get_mnist
    train, _ = get_mnist(data_dir=mnist_dir, n_train=8, n_test=1)
    x, t = chainer.dataset.concat_examples(train[:8])
    model = CapsNet(reconstruct=True)
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    optimizer.update(model, x, t)
    assert numpy.isfinite(model.conv1.W.grad).all()


def test_a_cpu_run_says_early_how_long_it_will_take(trained_run):
    """Once, early in the first epoch (after 6 of its 20 steps, before the progress bar's
    first report at step 10), with the advice for the CPU."""
    stdout = trained_run['stdout']
    lines = [line for line in stdout.splitlines() if '# at ' in line]
    assert len(lines) == 1, lines
    assert re.match(r'# at \d+\.\d\d s per step \(20 steps an epoch\), 3 epochs take about '
                    r'\d+(\.\d)? (seconds|minutes|hours|days) of training steps, more with '
                    r'the test set every epoch\. To go faster: train on a GPU \(-g 0\), on '
                    r'fewer images \(--n-train N\) or for fewer epochs \(-e N\)$', lines[0])
    assert stdout.index('# at ') < stdout.index(' 10 iter, 0 epoch / 3 epochs')


# train.py's own functions: the flags, the settings of a resume


def load_train_module():
    spec = importlib.util.spec_from_file_location('train_script',
                                                  os.path.join(REPO, 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def train():
    return load_train_module()


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
def test_capsnet_flags_are_refused(train, flags, message, tmp_path):
    out = ['-o', str(tmp_path / 'result')]
    args = train.parse_args(['--model', 'cnn'] + flags + out)  # parsed, then checked
    with pytest.raises(cli.CLIError) as e:
        train.check_args(args)
    assert e.value.exit_code == cli.EXIT_USAGE == 2
    assert message in str(e.value)
    # Without --model cnn, CapsNet takes them
    args = train.parse_args(flags + out)
    train.check_args(args)
    assert args.model == 'capsnet'


def test_capsnet_flags_at_their_defaults_are_accepted(train, tmp_path):
    args = train.parse_args(['--model', 'cnn', '--leaky-slope', '0.05', '--n-iteration', '3',
                             '--mask-test', 'label', '-o', str(tmp_path / 'result')])
    train.check_args(args)
    assert args.model == 'cnn'
    model = train.build_model(args, (1, 12, 12))
    assert isinstance(model, BaselineCNN) and model.config['in_shape'] == [1, 12, 12]


@pytest.mark.parametrize('flags, message', [
    (['--decay', '0'], 'argument --decay/-d: must be in (0, 1], got 0'),
    (['--decay', '1.5'], 'must be in (0, 1], got 1.5'),
    (['--alpha', '0'], 'argument --alpha: must be > 0, got 0'),
    (['--alpha', 'inf'], 'argument --alpha: must be a finite number, got inf'),
    (['--min-alpha=-1e-5'], 'argument --min-alpha: must be >= 0, got -1e-5'),
    (['--recon-weight', '-0.1'], 'argument --recon-weight: must be >= 0, got -0.1'),
    (['--leaky-slope', 'nan'], 'argument --leaky-slope: must be a finite number, got nan'),
    (['--leaky-slope', '-0.05'], 'argument --leaky-slope: must be >= 0, got -0.05'),
    (['-b', '0'], 'argument --batchsize/-b: must be a positive integer, got 0'),
])
def test_parse_args_refuses_values_out_of_range(train, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        train.parse_args(flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err


def test_parse_args_only_parses_and_check_args_sets_the_protocols_shift(train, tmp_path):
    out = ['-o', str(tmp_path / 'result')]
    for dataset, shift in (('mnist', 2), ('fashion-mnist', 2), ('multimnist', 4),
                           ('affnist', None)):
        args = train.parse_args(['--dataset', dataset] + out)
        assert args.max_shift is None  # not yet the protocol's
        train.check_args(args)
        assert args.max_shift == shift, dataset
    args = train.parse_args(['--max-shift', '5'] + out)
    train.check_args(args)
    assert args.max_shift == 5
    args = train.parse_args(['--dataset', 'affnist', '--max-shift', '2'] + out)
    with pytest.raises(SettingError) as e:
        train.check_args(args)
    assert cli.describe(e.value) == ('--max-shift: --dataset affnist places each digit at '
                                     'random on the 40x40 canvas and shifts nothing')
    (tmp_path / 'file').write_text('')
    with pytest.raises(cli.CLIError, match='is a file, not a folder'):
        train.check_args(train.parse_args(['-o', str(tmp_path / 'file')]))
    with pytest.raises(cli.CLIError, match='is a folder; give a file name'):
        train.check_args(train.parse_args(out + ['--save', str(tmp_path)]))


def test_precision_is_recorded_and_must_match_on_resume_where_given(train):
    assert train.parse_args([]).precision is None  # float32: older snapshots resume
    args = train.parse_args(['--precision', 'tf32'])
    assert train.run_settings(args)['precision'] == 'tf32'
    assert 'precision' not in train.BOOKKEEPING_FLAGS  # so in the model's train_args
    assert 'precision' not in train.RESUMABLE_CHANGES


def test_resumable_changes_are_the_where_how_long_and_bookkeeping_flags(train):
    assert set(train.BOOKKEEPING_FLAGS) <= set(train.RESUMABLE_CHANGES)
    assert {'epoch', 'out', 'save', 'data_dir'} <= set(train.RESUMABLE_CHANGES)
    assert not {'seed', 'batchsize', 'alpha', 'reconstruct'} & set(train.RESUMABLE_CHANGES)


def test_run_settings_are_every_flag_but_the_resumable_ones(train, tmp_path):
    args = train.parse_args(['-b', '16', '--reconstruct', '-e', '3', '--save', 'best',
                             '-o', str(tmp_path), '--keep', '2'])
    settings = train.run_settings(args)
    assert set(settings) == set(vars(args)) - set(train.RESUMABLE_CHANGES)
    assert settings['batchsize'] == 16 and settings['reconstruct'] is True
    assert 'epoch' not in settings and 'keep' not in settings and 'save' not in settings
    assert list(settings) == sorted(settings)  # as JSON stores them


def test_a_snapshot_older_than_some_flags_resumes_while_they_are_not_given(train, tmp_path):
    path = str(tmp_path / 'snapshot_iter_1')

    def args(flags):
        return train.parse_args(['-o', str(tmp_path), '--resume', path] + flags)
    newer = ('none_of_the_above', 'image_size', 'test_fraction', 'precision')
    settings = train.run_settings(args([]))
    assert all(settings[k] is None for k in newer)  # recorded as null where not given
    with open(path, 'wb') as f:
        numpy.savez(f, **{'updater/iteration': numpy.array(1),
                          SNAPSHOT_MODEL_PATH + 'w': numpy.zeros(1, 'f'),
                          SETTINGS_KEY: numpy.array(json.dumps(
                              {k: v for k, v in settings.items() if k not in newer}))})
    assert train.find_resume_snapshot(args([]), settings) == path
    for flags in (['--none-of-the-above'], ['--image-size', '20x20'],
                  ['--test-fraction', '0.5'], ['--precision', 'tf32']):
        given = args(flags)
        with pytest.raises(SnapshotError,
                           match=flags[0] + ' .*[(]not recorded in the snapshot[)]'):
            train.find_resume_snapshot(given, train.run_settings(given))


testing.run_module(__name__, __file__)
