"""train.py under failure: SIGKILL and exact resume, atomic writes, clear errors, NaN,
same seed same run. Each test runs the real command line in a temporary folder."""

import gzip
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import numpy
import pytest
from chainer import testing

from capsnet_chainer import cli
from capsnet_chainer.datasets.idx import MNIST_FILES
from capsnet_chainer.io.modelfile import load_model
from capsnet_chainer.io.modelfile import META_KEY
from capsnet_chainer.io.modelfile import ModelFileError
from capsnet_chainer.training.snapshots import list_snapshots
from conftest import REPO
from conftest import run_train

#: 32 real digits, batches of 8: 4 iterations an epoch; snapshots after iterations
#: 3, 4 (epoch 1), 6, 8 (epoch 2), 9 and 12 (epoch 3).
KILL_RUN = ['--n-train', '32', '--n-test', '16', '-b', '8', '-e', '3', '--snapshot-every',
            '3', '--reconstruct', '--save', 'best', '-o', 'result']
FINAL_SNAPSHOT = 'snapshot_epoch_3'
#: The smallest run: 2 iterations and an evaluation of 8 digits.
ONE_EPOCH = ['--n-train', '16', '--n-test', '8', '-b', '8', '-e', '1', '--save', 'best',
             '-o', 'result']
TEMP = re.compile(r'^\..+\.tmp$')


def env():
    return dict(os.environ, PYTHONPATH=REPO, MPLBACKEND='Agg')


def start_train(args, cwd, name):
    """Starts train.py in the background; its output goes to ``cwd/name.out/.err``."""
    out = open(os.path.join(str(cwd), name + '.out'), 'w')
    err = open(os.path.join(str(cwd), name + '.err'), 'w')
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'train.py')] + list(args),
                            cwd=str(cwd), env=env(), stdout=out, stderr=err)
    out.close()
    err.close()
    return proc


def output(cwd, name):
    with open(os.path.join(str(cwd), name + '.out')) as f:
        stdout = f.read()
    with open(os.path.join(str(cwd), name + '.err')) as f:
        return stdout, f.read()


def without_time(log):
    """The log without its clock: ``elapsed_time`` and ``time/...`` (EpochTimes)."""
    return [{k: v for k, v in entry.items()
             if k != 'elapsed_time' and not k.startswith('time/')} for entry in log]


def run_state(folder, snapshot=FINAL_SNAPSHOT):
    """Everything a run leaves that must not depend on interruptions."""
    out = os.path.join(str(folder), 'result')
    with numpy.load(os.path.join(out, snapshot)) as npz:
        snap = {k: npz[k] for k in npz.files if k != '_snapshot_elapsed_time'}
    key = 'extensions/LogReport/_log'
    snap[key] = without_time(json.loads(str(snap[key])))
    with open(os.path.join(out, 'log')) as f:
        log = without_time(json.load(f))
    with numpy.load(os.path.join(str(folder), 'best')) as npz:
        best = {k: npz[k] for k in npz.files}
    # When and by which command the best model was written differs between runs.
    meta = json.loads(str(best[META_KEY]))
    assert meta.pop('saved') and meta.pop('provenance')['command']
    best[META_KEY] = meta
    return snap, log, best


def assert_same_state(a, b):
    for part_a, part_b, what in zip(a, b, ('snapshot', 'log', 'best model')):
        if isinstance(part_a, dict):
            assert sorted(part_a) == sorted(part_b), what
            for key in part_a:
                if isinstance(part_a[key], (list, dict)):
                    assert part_a[key] == part_b[key], (what, key)
                else:
                    numpy.testing.assert_array_equal(part_a[key], part_b[key],
                                                     err_msg='{} {}'.format(what, key))
        else:
            assert part_a == part_b, what


def files_of(folder):
    """``{relative path: (sha256, mtime_ns)}`` of every file under ``folder``."""
    state = {}
    for root, _, names in os.walk(str(folder)):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            state[os.path.relpath(path, str(folder))] = (digest, os.stat(path).st_mtime_ns)
    return state


def one_error_line(proc, code=None):
    """The single ``error:`` line of a failed run (and no traceback)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and 'Warning' not in line and not line.startswith('  ')]
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    return lines[0]


# 1. Exact resume after SIGKILL


@pytest.fixture(scope='module')
def straight(tmp_path_factory, mnist_dir):
    """The uninterrupted run, and its wall time."""
    folder = tmp_path_factory.mktemp('straight')
    tic = time.time()
    proc = run_train(['--data-dir', mnist_dir] + KILL_RUN, folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {'dir': folder, 'seconds': time.time() - tic, 'stdout': proc.stdout}


def _snapshot_marks(out):
    if not os.path.isdir(out):
        return set()
    return {(name, os.stat(os.path.join(out, name)).st_mtime_ns)
            for name in os.listdir(out) if name.startswith('snapshot_')}


def _wait_for(proc, condition, timeout=300):
    """Polls ``condition()`` every 10 ms until true (returns True) or ``proc`` ends."""
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError('timed out')


def test_sigkill_at_random_points_then_resume_is_exact(straight, tmp_path, mnist_dir):
    """Killed with SIGKILL four times (before any snapshot, in the middle of writing one,
    and twice at a seeded random moment after a snapshot), then resumed each time with
    --resume: the final snapshot (weights, optimizer, iterator, random states, log,
    best score), the log and the best model equal the uninterrupted run's, bit for bit.
    """
    rng = random.Random(6)
    base = ['--data-dir', mnist_dir] + KILL_RUN
    out = str(tmp_path / 'result')
    pace = straight['seconds'] / 12  # seconds per iteration, start-up included

    def snapshot_temps():
        return {name for name in os.listdir(out)
                if TEMP.match(name) and name.startswith('.snapshot_')} \
            if os.path.isdir(out) else set()

    def writing_a_snapshot():
        # A temporary file of this run's own (an earlier run's leftover does not count).
        return bool(snapshot_temps() - stale)

    plan = ['early', 'mid-write', 'random', 'random']
    events = []
    for n, when in enumerate(plan):
        stale = snapshot_temps()
        proc = start_train(base + (['--resume'] if n else []), tmp_path, 'run{}'.format(n))
        before = _snapshot_marks(out)
        if when == 'early':
            # During start-up, data loading or the first iterations: before any snapshot.
            deadline = time.time() + rng.uniform(0.5, 2.0)
            alive = _wait_for(proc, lambda: time.time() > deadline or writing_a_snapshot())
        elif when == 'mid-write':
            alive = _wait_for(proc, writing_a_snapshot)
        else:
            # Anywhere in the next two iterations after a new snapshot: in a forward or
            # backward pass, an evaluation, or writing the log, a plot or a snapshot.
            alive = _wait_for(proc, lambda: _snapshot_marks(out) - before)
            time.sleep(rng.uniform(0.0, 2.0) * pace)
            alive = alive and proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        leftovers = sorted(name for name in os.listdir(out) if TEMP.match(name)) \
            if os.path.isdir(out) else []
        events.append((when, alive, proc.returncode, sorted(_snapshot_marks(out)),
                       leftovers))
    final = start_train(base + ['--resume'], tmp_path, 'final')
    final.wait(timeout=600)
    stdout, stderr = output(tmp_path, 'final')
    assert final.returncode == 0, (events, stdout[-2000:], stderr[-2000:])

    # The kills happened where planned: at least three runs died by SIGKILL, one of them
    # in the middle of writing a snapshot, which left its temporary file behind.
    killed = [e for e in events if e[2] == -signal.SIGKILL]
    assert len(killed) >= 3, events
    mid = events[1]
    assert mid[2] == -signal.SIGKILL and any(name.startswith('.snapshot_') for name in mid[4])
    assert events[0][2] == -signal.SIGKILL and not events[0][3], events  # none yet
    runs = [output(tmp_path, 'run{}'.format(n))[0] for n in range(1, len(plan))]
    runs.append(stdout)
    assert 'starting from the beginning' in runs[0]  # killed before any snapshot
    assert any('Resuming from' in text for text in runs), events
    assert any('left by an interrupted write' in text for text in runs)
    assert not [name for name in os.listdir(out) if TEMP.match(name)]

    assert_same_state(run_state(tmp_path), run_state(straight['dir']))


# 6. Same seed, same run


def test_same_seed_gives_the_same_run(straight, tmp_path, mnist_dir):
    proc = run_train(['--data-dir', mnist_dir] + KILL_RUN, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_state(run_state(tmp_path), run_state(straight['dir']))
    # ... and the check can fail: the printed losses depend on the seed.
    other = run_train(['--data-dir', mnist_dir, '--seed', '1'] + KILL_RUN[:6]
                      + ['--reconstruct', '-e', '1', '-o', 'other'], tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    with open(str(tmp_path / 'other' / 'log')) as f:
        assert without_time(json.load(f))[0] != run_state(tmp_path)[1][0]


# 2. Nothing half-written


@pytest.fixture(scope='module')
def done_run(tmp_path_factory, mnist_dir):
    """A finished one-epoch run with a best model, for the failure tests to leave alone."""
    folder = tmp_path_factory.mktemp('done')
    proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH, folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder


def _limit_file_size(n_bytes):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


def test_full_disk_keeps_the_previous_snapshot_and_best_model(tmp_path, mnist_dir):
    """Writes that fail midway (a 1 MB file-size limit, as a full disk) leave the
    previous files intact and no temporary file; old snapshots beyond --keep go only
    once a new snapshot is complete."""
    base = ['--data-dir', mnist_dir, '--n-train', '24', '--n-test', '8', '-b', '8',
            '--save', 'best', '-o', 'result', '--snapshot-every', '1', '--keep', '2']
    proc = run_train(base + ['-e', '1'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Iterations 1, 2 and 3 (the epoch's end): the two newest are kept.
    assert sorted(n for n in os.listdir(str(tmp_path / 'result'))
                  if n.startswith('snapshot_')) == ['snapshot_epoch_1', 'snapshot_iter_2']
    before = files_of(tmp_path)
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'train.py')] + base
                          + ['-e', '2', '--resume'], cwd=str(tmp_path), env=env(),
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=_limit_file_size(1 << 20))
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'File too large' in line and 'snapshot_iter_4' in line and 'intact' in line
    after = files_of(tmp_path)
    for name in ('result/snapshot_epoch_1', 'result/snapshot_iter_2', 'best'):
        assert after[name] == before[name], name
    assert not [name for name in after if TEMP.match(os.path.basename(name))]
    # With room again, the run resumes from the kept snapshot and completes.
    proc = run_train(base + ['-e', '2', '--resume'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Resuming from result/snapshot_epoch_1' in proc.stdout


def test_data_cache_write_is_atomic(tmp_path, mnist_dir):
    """A cache file that cannot be written completely leaves the old one as it was."""
    cache = tmp_path / 'cache'
    cache.mkdir()
    name = 'train-images-idx3-ubyte.gz'
    (cache / name).write_bytes(b'an old, invalid cache file')
    script = (
        'import capsnet_chainer, sys\n'
        'from capsnet_chainer.datasets.mnist import DatasetError, get_mnist\n'
        'def source(name):\n'
        '    with open({!r} + "/" + name, "rb") as f:\n'
        '        return f.read()\n'
        'try:\n'
        '    get_mnist(cache_dir={!r}, sources=[source])\n'
        'except DatasetError as e:\n'
        '    sys.exit("error: " + str(e))\n').format(mnist_dir, str(cache))
    proc = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=env(),
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(1 << 20))
    assert proc.returncode == 1 and 'cannot write the cache file' in proc.stderr
    assert (cache / name).read_bytes() == b'an old, invalid cache file'
    assert not [n for n in os.listdir(str(cache)) if n.endswith('.tmp')]


# 3. Bad input: one clear line, a non-zero exit, no traceback, nothing overwritten


def _snapshot_of(folder):
    return str(folder / 'result' / 'snapshot_epoch_1')


@pytest.mark.parametrize('make, message', [
    (lambda d: str(d / 'nothing_here'), 'no such file'),
    (lambda d: d / 'notes.txt', 'not an npz archive'),
    (lambda d: d / 'truncated', 'truncated'),
    (lambda d: d / 'model', 'is a model file'),
    (lambda d: d / 'folder', 'is a folder'),
    (lambda d: d / 'other.npz', 'not a snapshot written by train.py'),
])
def test_resume_from_a_bad_file(done_run, tmp_path, make, message):
    (tmp_path / 'notes.txt').write_text('not a snapshot')
    with open(_snapshot_of(done_run), 'rb') as f:
        data = f.read()
    (tmp_path / 'truncated').write_bytes(data[:len(data) // 2])
    shutil.copy(str(done_run / 'best'), str(tmp_path / 'model'))
    (tmp_path / 'folder').mkdir()
    numpy.savez(str(tmp_path / 'other.npz'), x=numpy.zeros(3))
    path = str(make(tmp_path))
    proc = run_train(['--resume', path, '-o', 'out'], tmp_path, timeout=300)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert message in line and path in line
    assert not (tmp_path / 'out').exists()


def test_resume_with_other_settings_names_them(done_run, mnist_dir):
    before = files_of(done_run)
    proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH[:4] + [
        '-b', '4', '--leaky-slope', '0', '--reconstruct', '-e', '2', '--resume'], done_run,
        timeout=300)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'different settings' in line
    assert '--batchsize 8 (this run: --batchsize 4)' in line
    assert '--leaky-slope 0.05 (this run: --leaky-slope 0.0)' in line
    assert '--reconstruct off (this run: --reconstruct on)' in line
    assert '--epoch' not in line and '--save' not in line  # these may change
    assert files_of(done_run) == before


def test_settings_that_may_change_on_resume(done_run, mnist_dir, tmp_path):
    """-e, -o, --save, --keep, --snapshot-every and --data-dir may differ on resume."""
    snapshot = _snapshot_of(done_run)
    shutil.copytree(str(done_run / 'result'), str(tmp_path / 'elsewhere'))
    proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH[:6] + [
        '-e', '2', '--save', 'other_best', '-o', 'elsewhere', '--keep', '3',
        '--snapshot-every', '100', '--resume', snapshot], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.isfile(str(tmp_path / 'elsewhere' / 'snapshot_epoch_2'))


def test_fresh_run_into_a_folder_with_snapshots_is_refused(done_run, mnist_dir):
    before = files_of(done_run)
    proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH, done_run, timeout=300)
    line = one_error_line(proc, cli.EXIT_USAGE)
    assert 'already holds the snapshots' in line and '--resume' in line
    assert files_of(done_run) == before


def test_two_runs_in_one_folder_are_refused(done_run, mnist_dir):
    import filelock
    before = files_of(done_run)
    with filelock.FileLock(str(done_run / 'result' / '.train.lock')):
        proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH + ['-e', '2', '--resume'],
                         done_run, timeout=300)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'another train.py is writing to --out result' in line
    # The lock is an empty marker whose time is not ours to keep: filelock before 4.x
    # opens it with O_TRUNC, which touches it (the H200's filelock did), 4.x does not
    after = files_of(done_run)
    lock = os.path.join('result', '.train.lock')
    assert after.pop(lock)[0] == before.pop(lock)[0]  # still empty
    assert after == before


def test_resume_of_a_finished_run_does_nothing(done_run, mnist_dir):
    before = files_of(done_run)
    proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH + ['--resume'], done_run,
                     timeout=300)
    assert proc.returncode == 0 and 'nothing to do' in proc.stdout
    assert files_of(done_run) == before


def _bad_data(folder, mnist_dir, kind):
    folder.mkdir()
    for name in MNIST_FILES:
        shutil.copy(os.path.join(mnist_dir, name), str(folder / name))
    labels = folder / 't10k-labels-idx1-ubyte.gz'
    data = labels.read_bytes()
    if kind == 'truncated':
        labels.write_bytes(data[:len(data) // 2])
    elif kind == 'checksum':
        payload = bytearray(gzip.decompress(data))
        payload[-1] = (payload[-1] + 1) % 10  # one label changed: still a valid IDX file
        labels.write_bytes(gzip.compress(bytes(payload)))
    else:
        labels.unlink()
    return str(folder)


@pytest.mark.parametrize('kind, message', [
    ('missing', 'not found'),
    ('truncated', 'truncated'),
    ('checksum', 'checksum mismatch'),
])
def test_bad_data_files(done_run, mnist_dir, tmp_path, kind, message):
    before = files_of(done_run)
    data_dir = _bad_data(tmp_path / 'data', mnist_dir, kind)
    proc = run_train(['--data-dir', data_dir] + ONE_EPOCH + ['-e', '2', '--resume'],
                     done_run, timeout=300)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert message in line and 't10k-labels-idx1-ubyte.gz' in line
    assert files_of(done_run) == before


@pytest.mark.parametrize('flags, message', [
    (['-b', '0'], '--batchsize'),
    (['-e', '-1'], '--epoch'),
    (['--leaky-slope', 'nan'], '--leaky-slope'),
    (['--alpha', 'nan'], '--alpha'),
    (['--alpha', '0'], '--alpha'),
    (['--decay', '0'], '--decay'),
    (['--keep', '0'], '--keep'),
    (['--snapshot-every', '-1'], '--snapshot-every'),
    (['--recon-weight', '-1'], '--recon-weight'),
    (['--max-shift', '28'], '--max-shift'),
    (['-o', 'log'], 'is a file'),
    (['--save', 'result'], 'is a folder'),
    (['--save', 'log/best'], 'is a file'),
    (['--save', 'log'], 'not a model file; refusing to overwrite it'),
])
def test_nonsense_flags(done_run, flags, message):
    (done_run / 'log').write_text('a file where a folder is asked for')
    before = files_of(done_run)
    proc = run_train(flags, done_run, timeout=120)
    line = one_error_line(proc, cli.EXIT_USAGE)
    assert message in line
    assert files_of(done_run) == before


def test_too_many_training_images(done_run, mnist_dir):
    before = files_of(done_run)
    proc = run_train(['--data-dir', mnist_dir, '--n-train', '60001', '-o', 'new'],
                     done_run, timeout=300)
    line = one_error_line(proc, cli.EXIT_USAGE)
    assert '--n-train 60001: exceeds' in line
    assert files_of(done_run) == before


def test_debug_shows_the_traceback(tmp_path):
    proc = run_train(['--resume', 'missing_snapshot', '--debug'], tmp_path, timeout=120)
    assert proc.returncode == cli.EXIT_FAILURE
    assert 'Traceback' in proc.stderr and 'SnapshotError' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('error: ')


def _cupy_importable():
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_cupy_importable(), reason='CuPy is installed here')
def test_gpu_without_cupy_says_what_to_install(done_run):
    before = files_of(done_run)
    proc = run_train(['-g', '0', '-o', 'new'], done_run, timeout=120)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert line.startswith('error: -g 0: CuPy is not installed')
    assert 'cupy-cuda13x (CUDA 13)' in line and 'cupy-cuda12x (CUDA 12)' in line
    assert files_of(done_run) == before


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_importable(), reason='needs CuPy and a GPU')
def test_no_such_gpu_cli(tmp_path):
    proc = run_train(['-g', '99', '-o', 'new'], tmp_path, timeout=120)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'no such GPU' in line


@pytest.mark.parametrize('content, message', [
    (None, 'no such file'),
    (b'', 'empty'),
    (b'hello', 'not an npz archive'),
    ('half', 'truncated'),
])
def test_load_model_errors(done_run, tmp_path, content, message):
    path = tmp_path / 'model'
    if content == 'half':
        data = (done_run / 'best').read_bytes()
        content = data[:len(data) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError) as e:
        load_model(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


def test_load_model_reads_a_snapshot(done_run):
    model, meta = load_model(_snapshot_of(done_run))
    best, _ = load_model(str(done_run / 'best'))
    assert meta['source'] == 'trainer snapshot' and meta['epoch'] == 1
    assert model.config == best.config
    assert model.count_params() == best.count_params()


# 4. NaN never passes silently


def test_nan_loss_stops_with_the_last_good_snapshot(tmp_path, mnist_dir):
    """A learning rate of 1e10 blows the weights up in one step: the next loss is NaN."""
    proc = run_train(['--data-dir', mnist_dir, '--n-train', '32', '--n-test', '8', '-b',
                      '8', '-e', '2', '--snapshot-every', '1', '--keep', '5', '--alpha',
                      '1e10', '--save', 'best'], tmp_path, timeout=300)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    match = re.match(r'error: non-finite loss \(nan\) at epoch (\d+), iteration (\d+); '
                     r'training stopped\. The last good snapshot is (\S+)$', line)
    assert match, line
    epoch, iteration, last = int(match.group(1)), int(match.group(2)), match.group(3)
    assert epoch == 1 and iteration >= 2
    assert last == os.path.join('result', 'snapshot_iter_{}'.format(iteration - 1))
    # Every snapshot is of finite weights, none is of the bad step or after it.
    snapshots, _ = list_snapshots(str(tmp_path / 'result'))
    assert [it for it, _ in snapshots] == list(range(1, iteration))
    model, meta = load_model(str(tmp_path / last))
    assert all(numpy.isfinite(p.array).all() for p in model.params())
    assert meta['iteration'] == iteration - 1
    assert not (tmp_path / 'result' / 'log').exists()  # no epoch was completed
    assert not (tmp_path / 'best').exists()


def _with_nan(source, target, key):
    """Copies the npz archive ``source`` to ``target`` with one NaN in ``key``."""
    with numpy.load(source) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[key] = arrays[key].copy()
    arrays[key].flat[3] = numpy.nan
    with open(target, 'wb') as f:
        numpy.savez(f, **arrays)


def test_a_model_with_nan_weights_is_refused_naming_the_array(done_run, tmp_path):
    path = str(tmp_path / 'nan_model.npz')
    _with_nan(str(done_run / 'best'), path, 'digits/W')
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    assert str(e.value).startswith(
        '{}: array digits/W holds 1 NaN or infinite value (of '.format(path))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'analyze.py'), '--load', path],
        cwd=str(tmp_path), env=env(), capture_output=True, text=True, timeout=120)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'array digits/W holds 1 NaN' in line and path in line
    assert not (tmp_path / 'analyze_result').exists()  # no meaningless figures


def test_a_snapshot_with_nan_is_refused_on_resume(done_run, tmp_path, mnist_dir):
    (tmp_path / 'result').mkdir()
    key = 'updater/optimizer:main/conv1/W/v'  # Adam's second moment, not a weight
    _with_nan(_snapshot_of(done_run), str(tmp_path / 'result' / 'snapshot_epoch_1'), key)
    proc = run_train(['--data-dir', mnist_dir] + ONE_EPOCH[:-4] + ['-e', '2', '--resume'],
                     tmp_path, timeout=300)
    line = one_error_line(proc, cli.EXIT_FAILURE)
    assert 'snapshot_epoch_1: array {} holds 1 NaN'.format(key) in line


testing.run_module(__name__, __file__)
