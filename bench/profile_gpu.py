"""Where ``train.py -g 0``'s time goes, beside the benchmark and the peer: one JSON.

Usage::

    python bench/profile_gpu.py -g 0 --data-dir DIR --peer torch_capsnet.py \\
        --json OUT/profile.json --deadline-s 480
    python bench/report.py OUT/profile.json          # the tables of bench/README.md

It runs these parts in order, each in a process of its own, each written into the JSON
as it ends, and none started past ``--deadline-s`` (a part that would run past it is
stopped there and recorded so):

1. ``host``: the date, the commit, the CPU (model, cores, load average), the versions
   and the GPU; ``nvidia-smi``'s clocks, power and temperature, read every 2 s all
   along (``smi``: each part's median SM clock, its highest temperature and power);
2. ``ceilings``: the float32 matrix-product rate and the copy bandwidth
   (``bench_gpu.ceilings``), hence the floors of an epoch;
3. ``train_py``: ``train.py -g G --reconstruct -e E`` itself (``--train-epochs``), its
   steps split into phases by :class:`~capsnet_chainer.training.profile.StepProfile`:
   the iterator's batch, the converter's host part, the copy to the device, forward,
   backward, the non-finite check, Adam, and the extensions between steps (each
   extension's seconds too): wall, CPU and GPU-span ms per phase in every step, and
   the GPU-busy ms per phase in ``--device-steps`` steps of the last epoch (which is
   then not a clean epoch); its log's epochs;
4. ``cupti``: a short ``train.py`` run whose steps ``--cupti-steps`` are recorded by
   CUPTI through PyTorch's profiler, in the same process: kernel launches, memory
   copies and synchronizations per phase and per step, and the kernels' GPU time (where
   PyTorch or its profiler is missing, the reason);
5. ``bench``: ``bench_gpu.py``'s ``--variants``, ``--bench-epochs`` epochs each
   (median, min, max), with its per-step wall, host and GPU ms and function groups;
   each with the kernel paths that ``train_py`` leaves off (below) off too
   (:data:`BENCH_OFF`: the variant run is recorded), and a ``deferred-check`` variant
   skipped where that path is off;
6. ``peer``: the PyTorch peer's real epochs (``--data``: MNIST on the GPU, a new order
   and shift per batch, the test set), ``--peer-epochs`` each, in float32: eager,
   ``--compile``, ``--compile-mode reduce-overhead``, ``--compile-mode max-autotune``
   (the last after ``train_py_host``: its autotuning may take minutes);
7. ``train_py_host``: ``train.py`` again on the default path: the training set on the
   host, CuPy's im2col copy and routing operations, the plain margin loss and the
   non-finite check's sync per step (``RESIDENT_ON_GPU``, ``conv_cuda.ENABLED``,
   ``routing_cuda.ENABLED``, ``margin_loss.ENABLED`` and ``DEFERRED_CHECK_ON_GPU`` off),
   which ``train_py`` switches on: the paths of
   :data:`GPU_PATHS` in ``--paths``, less those whose gpu tests failed in
   ``--tests-xml`` (the JSON says which were on).

The parts run in the order of :data:`PARTS` (the most needed first); ``--parts`` picks
some (a second call on the same machine runs those the first had no time for, and
``bench/report.py`` reads both files together). ``-g -1`` runs it
all on the CPU with ``--n-train``/``--n-test`` to check the script (the peer needs
PyTorch). It is a benchmark, not a test: it measures and asserts nothing.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import capsnet_chainer  # noqa: E402,F401  (adapts Chainer before its import)
import bench_gpu  # noqa: E402  (this folder: its batch, data flags and variants)
from bench_gpu import BATCH, N_TEST, N_TRAIN, TEST_BATCH  # noqa: E402
from capsnet_chainer.training.profile import NEXT  # noqa: E402
from capsnet_chainer.training.profile import StepProfile  # noqa: E402

#: The fields ``nvidia-smi --query-gpu`` reads (the first six: issue 29's).
SMI_FIELDS = ('name', 'clocks.sm', 'clocks.mem', 'clocks.max.sm', 'power.draw',
              'temperature.gpu', 'utilization.gpu', 'memory.used')
#: The peer's float32 configurations: name -> flags.
PEER_MODES = {
    'eager': [],
    'compile': ['--compile'],
    'reduce-overhead': ['--compile-mode', 'reduce-overhead'],
    'max-autotune': ['--compile-mode', 'max-autotune'],
}
#: The GPU paths that are off by default until measured, which ``train_py`` switches on
#: (``train_py_host`` leaves them off): name -> the test files whose gpu tests check it.
GPU_PATHS = {
    'resident': ('tests/datasets/test_resident.py',),
    'conv_cuda': ('tests/kernels/test_conv_cuda.py',),
    'routing_cuda': ('tests/kernels/test_routing_cuda.py',),
    'margin_loss': ('tests/kernels/test_margin_loss.py',),
    'deferred_check': ('tests/training/test_gated_adam.py', 'tests/training/test_updater.py'),
}
#: The kernel paths of :data:`GPU_PATHS` that ``bench_gpu.py``'s worker switches on, and
#: the variant suffix that switches each off (the deferred check is a variant of its own;
#: the resident set has none: the worker's batches come from the host).
BENCH_OFF = {'conv_cuda': 'im2col-copy', 'routing_cuda': 'routing-ops',
             'margin_loss': 'plain-loss'}


def paths_on(names, tests_xml=None):
    """``(on, off)``: the paths of ``names`` (a comma list of :data:`GPU_PATHS`) to
    switch on, and ``{name: why}`` of those left off: those whose tests failed or
    erred in the JUnit file ``tests_xml`` (the gpu tests of the same call), so that a
    broken kernel costs its own figures only; every one where ``tests_xml`` is given
    but missing (pytest died before writing it: nothing says the kernels work)."""
    import xml.etree.ElementTree as ElementTree
    wanted = [n for n in names.split(',') if n]
    unknown = set(wanted) - set(GPU_PATHS)
    if unknown:
        raise ValueError('unknown --paths {}; choose from {}'.format(
            ', '.join(sorted(unknown)), ', '.join(GPU_PATHS)))
    missing = tests_xml and not os.path.exists(tests_xml)
    failed = []  # (the test's module and class, its name)
    if tests_xml and not missing:
        for case in ElementTree.parse(tests_xml).iter('testcase'):
            if case.find('failure') is not None or case.find('error') is not None:
                failed.append((case.get('classname', ''), case.get('name')))
    on, off = [], {}
    for name in wanted:
        modules = [f[:-3].replace('/', '.') for f in GPU_PATHS[name]]
        modules += [m.partition('.')[2] for m in modules]  # without 'tests.' too
        bad = [test for where, test in failed
               if any(where == m or where.startswith(m + '.') for m in modules)]
        if missing:
            off[name] = 'no gpu test results: {} is missing'.format(tests_xml)
        elif bad:
            off[name] = 'its gpu tests failed: {}'.format(', '.join(bad[:3]))
        else:
            on.append(name)
    off.update({n: 'not in --paths' for n in GPU_PATHS if n not in wanted})
    return on, off


#: The parts, most needed first: (name, at most seconds, at least seconds left to
#: start it).
PARTS = (
    ('ceilings', 60, 10),
    ('train_py', 180, 60),
    ('cupti', 100, 40),
    ('bench:0', 150, 60),
    ('peer:eager', 100, 40),
    ('peer:compile', 160, 60),
    ('peer:reduce-overhead', 160, 60),
    ('train_py_host', 140, 50),
    ('peer:max-autotune', 400, 90),
    ('bench:1', 150, 60),
    ('bench:2', 150, 60),
)
#: How many ``--variants`` the bench slots of :data:`PARTS` hold.
BENCH_SLOTS = sum(name.startswith('bench:') for name, _, _ in PARTS)


def part_labels(variants, peer_modes):
    """The parts that ``--variants`` and ``--peer-modes`` (lists) make, in the order of
    :data:`PARTS`: ``(label, at most seconds, at least seconds left)``, the bench slots
    labelled ``bench:VARIANT``."""
    out = []
    for name, cap, least in PARTS:
        kind, _, which = name.partition(':')
        if kind == 'bench':
            if int(which) < len(variants):
                out.append(('bench:' + variants[int(which)], cap, least))
        elif kind != 'peer' or which in peer_modes:
            out.append((name, cap, least))
    return out


def check_choices(variants, peer_modes, parts):
    """Raises ``ValueError`` for an unknown or surplus name in ``--variants``,
    ``--peer-modes`` or ``--parts`` (lists), before any part has run."""
    bench_gpu.check_variants(variants)
    if len(variants) > BENCH_SLOTS:
        raise ValueError('at most {} --variants (the bench slots of PARTS), not {}'.format(
            BENCH_SLOTS, len(variants)))
    unknown = [m for m in peer_modes if m not in PEER_MODES]
    if unknown:
        raise ValueError('unknown --peer-modes {}; choose from {}'.format(
            ', '.join(unknown), ', '.join(PEER_MODES)))
    labels = [label for label, _, _ in part_labels(variants, peer_modes)]
    unknown = [p for p in parts if p not in labels]
    if unknown:
        raise ValueError('unknown --parts {}; choose from {}'.format(
            ', '.join(unknown), ', '.join(labels)))


#: The phase ranges of the CUPTI pass are named so in the trace.
RANGE = 'capsnet/'


# The host and the GPU


def host_record(gpu):
    """The machine: CPU model, cores, load, memory, versions and GPU, date, commit."""
    from capsnet_chainer.io.provenance import git_commit
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f
                     if line.startswith('model name')]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'), 'commit': git_commit(), 'cpu': cpu,
        'cores': os.cpu_count(), 'load_average': os.getloadavg(),
        'platform': platform.platform()}
    try:
        info['usable_cores'] = len(os.sched_getaffinity(0))
        with open('/proc/meminfo') as f:
            info['memory_gib'] = int(f.readline().split()[1]) / 2 ** 20
    except (AttributeError, OSError, ValueError, IndexError):
        pass
    proc = subprocess.run(
        [sys.executable, '-c', 'import json, bench_gpu; print(json.dumps('
         'bench_gpu.machine({})))'.format(gpu)],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
        timeout=300)
    info['machine'] = (json.loads(proc.stdout.strip().splitlines()[-1])
                       if proc.returncode == 0 else {'error': proc.stderr[-2000:]})
    return info


def read_smi():
    """One reading of :data:`SMI_FIELDS` per GPU, or ``None`` without nvidia-smi."""
    try:
        proc = subprocess.run(['nvidia-smi', '--query-gpu=' + ','.join(SMI_FIELDS),
                               '--format=csv,noheader,nounits'],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [dict(zip(SMI_FIELDS, (v.strip() for v in line.split(','))))
            for line in proc.stdout.strip().splitlines()]


class SmiSampler(threading.Thread):
    """Reads nvidia-smi every ``period`` seconds, labelling each reading with the part
    running then."""

    def __init__(self, gpu, period=2.0):
        super().__init__(daemon=True)
        self.gpu, self.period = gpu, period
        self.part = 'start'
        self.samples = []  # (seconds since start, part, reading)
        self.start_time = time.perf_counter()
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            reading = read_smi()
            if reading is None:
                return
            self.samples.append((time.perf_counter() - self.start_time, self.part,
                                 reading[max(0, self.gpu)]))
            self.stopped.wait(self.period)

    def by_part(self):
        """Per part: median SM and memory clocks, highest temperature and power."""
        out = {}
        for _, part, r in self.samples:
            out.setdefault(part, []).append(r)

        def numbers(rows, key):
            values = []
            for row in rows:
                try:
                    values.append(float(row[key]))
                except (KeyError, ValueError):
                    pass
            return values

        summary = {}
        for part, rows in out.items():
            s = {'readings': len(rows)}
            for key, how in (('clocks.sm', statistics.median), ('clocks.mem', statistics.median),
                             ('clocks.max.sm', max), ('temperature.gpu', max),
                             ('power.draw', max), ('utilization.gpu', statistics.median)):
                values = numbers(rows, key)
                if values:
                    s[key] = how(values)
            summary[part] = s
        return summary


# train.py, profiled, in a process of its own


def train_py_worker(args):
    """Runs ``train.main`` with a StepProfile in the updater and the Trainer's
    extensions timed; writes the figures to ``args.worker_json``."""
    import chainer
    import chainer.training
    import train
    from capsnet_chainer.training import distributed
    from capsnet_chainer.training.updater import ConverterStateUpdater
    from capsnet_chainer.kernels import conv_cuda
    from capsnet_chainer.kernels import margin_loss as margin_kernel
    from capsnet_chainer.kernels import routing_cuda
    # The new GPU paths (off by default until measured) whose tests passed, or the old
    # path with --host-data
    on = [] if args.host_data else [p for p in args.paths.split(',') if p]
    distributed.RESIDENT_ON_GPU = 'resident' in on
    conv_cuda.ENABLED = 'conv_cuda' in on
    routing_cuda.ENABLED = 'routing_cuda' in on
    margin_kernel.ENABLED = 'margin_loss' in on
    distributed.DEFERRED_CHECK_ON_GPU = 'deferred_check' in on
    device = chainer.get_device('@cupy:{}'.format(args.gpu) if args.gpu >= 0 else '@numpy')
    n_train = args.n_train or N_TRAIN
    steps = -(-n_train // BATCH)  # train.py's default batch, which argv keeps
    last = (args.epochs - 1) * steps  # iterations before the last epoch
    first = last + 1 + min(10, steps // 4)
    device_steps = range(first, min(first + args.device_steps, last + steps + 1))
    if args.cupti_steps:
        profile = CuptiProfile(device, args.cupti_steps, args.trace)
    else:
        profile = StepProfile(device, device_steps)

    class ProfiledTrainer(chainer.training.Trainer):
        def run(self, *a, **k):
            profile.wrap_extensions(self)
            return super().run(*a, **k)

    chainer.training.Trainer = ProfiledTrainer
    train.ConverterStateUpdater = functools.partial(ConverterStateUpdater, profile=profile)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ['-g', str(args.gpu), '--reconstruct', '-e', str(args.epochs),
                '-o', os.path.join(tmp, 'result'), '--save', os.path.join(tmp, 'model')]
        argv += bench_gpu.data_flags(args)
        argv += ['--precision', args.precision] if args.precision else []
        start = time.perf_counter()
        train.main(argv)
        wall = time.perf_counter() - start
        profile.finish()
        with open(os.path.join(tmp, 'result', 'log')) as f:
            log = json.load(f)
    out = {'argv': argv, 'paths_on': on, 'wall_s': wall, 'log': log,
           'steps_per_epoch': steps, 'device_steps': list(device_steps)
           if not args.cupti_steps else [],
           'summary': profile.summary(skip_epochs=1 if args.epochs > 1 else 0),
           'records': [compact(r) for r in profile.records()]}
    if args.cupti_steps:
        out['cupti'] = profile.result
    with open(args.worker_json, 'w') as f:
        json.dump(out, f)


def compact(record):
    """A step's record with its numbers rounded (the JSON stays small)."""
    out = {}
    for k, v in record.items():
        if isinstance(v, tuple):
            out[k] = [None if x is None else round(x, 4) for x in v]
        elif isinstance(v, float):
            out[k] = round(v, 6)
        else:
            out[k] = v
    return out


#: CUDA calls that launch a kernel, and those that wait for the GPU (a synchronous copy
#: to the host waits too).
LAUNCH = re.compile(r'Launch(Kernel|CooperativeKernel)')
SYNC = re.compile(r'Synchronize|^cuMemcpyDtoH(_v2)?$|^cudaMemcpy$|^cuMemcpy(_v2)?$')


class CuptiProfile(StepProfile):
    """A StepProfile that, over the steps ``cupti_steps`` (``(first, last)``), runs
    PyTorch's profiler (CUPTI: every kernel, copy and CUDA call of the process) with a
    named range per phase, then counts them per phase (:func:`cupti_counts`)."""

    def __init__(self, device, cupti_steps, trace_path):
        super().__init__(device)
        self.first, self.last = cupti_steps
        self.trace_path = trace_path
        self.result = {'error': 'the profiled steps were not reached'}
        self._profiler = self._range = None

    def _open(self, name):
        if self._profiler is not None:
            import torch
            self._range = torch.profiler.record_function(RANGE + name)
            self._range.__enter__()

    def _close(self):
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def step(self, updater):
        iteration = updater.iteration + 1
        if iteration == self.first:
            try:
                import torch
                self._profiler = torch.profiler.profile(activities=[
                    torch.profiler.ProfilerActivity.CPU,
                    torch.profiler.ProfilerActivity.CUDA])
                self._profiler.__enter__()
            except Exception as e:  # no PyTorch, or no CUPTI: say why
                self.result = {'error': '{}: {}'.format(type(e).__name__, e)}
                self._profiler = None
        self._close()  # the extensions since the last step
        self._open('batch')
        super().step(updater)
        self._close()
        self._open('extensions')
        if iteration == self.last and self._profiler is not None:
            self._close()
            if self.gpu:
                self.xp.cuda.Device().synchronize()
            profiler, self._profiler = self._profiler, None
            profiler.__exit__(None, None, None)
            profiler.export_chrome_trace(self.trace_path)
            with open(self.trace_path) as f:
                trace = json.load(f)
            self.result = cupti_counts(trace.get('traceEvents', []),
                                       self.last - self.first + 1)

    def mark(self, phase):
        super().mark(phase)
        if self._range is not None:
            self._close()
            if phase in NEXT:
                self._open(NEXT[phase])


def cupti_counts(events, n_steps):
    """Per phase and per step, from a PyTorch profiler trace (Chrome's format): the
    CUDA calls made in each phase's range (``capsnet/PHASE``), kernel launches and
    synchronizations among them, and the kernels, copies and memsets on the GPU that
    those calls started (by their correlation id) with their GPU ms.

    Args:
        events (list): The trace's ``traceEvents``.
        n_steps (int): The steps the trace holds.

    Returns:
        dict: ``{'phases': {phase: {...}}, 'per_step': {...}, 'events': counts by
        category}``: every count and ms divided by ``n_steps``.
    """
    ranges = []
    categories = {}
    for e in events:
        cat = e.get('cat', '')
        categories[cat] = categories.get(cat, 0) + 1
        if cat == 'user_annotation' and str(e.get('name', '')).startswith(RANGE):
            ranges.append((e['ts'], e['ts'] + e.get('dur', 0), e['name'][len(RANGE):]))
    ranges.sort()

    def phase_at(ts):
        for start, stop, name in ranges:
            if start <= ts <= stop:
                return name
        return None

    keys = ('calls', 'launches', 'syncs', 'kernels', 'kernel_ms', 'copies', 'copy_ms',
            'memsets')
    phases = {}
    correlation = {}
    for e in events:
        if e.get('cat') not in ('cuda_runtime', 'cuda_driver'):
            continue
        phase = phase_at(e.get('ts', -1))
        if phase is None:
            continue
        p = phases.setdefault(phase, dict.fromkeys(keys, 0))
        name = str(e.get('name', ''))
        p['calls'] += 1
        p['launches'] += bool(LAUNCH.search(name))
        p['syncs'] += bool(SYNC.search(name))
        c = (e.get('args') or {}).get('correlation')
        if c is not None:
            correlation[c] = phase
    unattributed = dict.fromkeys(keys, 0)
    for e in events:
        cat = e.get('cat')
        kind = {'kernel': 'kernel', 'gpu_memcpy': 'copy', 'gpu_memset': 'memset'}.get(cat)
        if kind is None:
            continue
        phase = correlation.get((e.get('args') or {}).get('correlation'))
        p = phases.setdefault(phase, dict.fromkeys(keys, 0)) if phase else unattributed
        count = kind + 's' if kind != 'copy' else 'copies'
        p[count] += 1
        if kind != 'memset':
            p[kind + '_ms'] += e.get('dur', 0) / 1e3
    per_step = dict.fromkeys(keys, 0)
    for p in list(phases.values()) + [unattributed]:
        for k in keys:
            per_step[k] += p[k]
    scale = 1.0 / max(1, n_steps)
    return {'steps': n_steps, 'events': categories,
            'phases': {k: {m: v * scale for m, v in p.items()} for k, p in phases.items()},
            'unattributed': {m: v * scale for m, v in unattributed.items()},
            'per_step': {m: v * scale for m, v in per_step.items()}}


# The parts


def run_json_worker(cmd, timeout, env=None):
    """Runs ``cmd`` (which writes a JSON file, its last argument's value); returns
    ``(figures or {'error': ...}, console tail)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'out.json')
        try:
            proc = subprocess.run(cmd + [path], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b'')
            out = out.decode(errors='replace') if isinstance(out, bytes) else out
            return {'error': 'stopped at its {:.0f} s'.format(timeout)}, out[-3000:]
        tail = (proc.stdout + proc.stderr)[-3000:]
        if proc.returncode != 0 or not os.path.exists(path):
            return {'error': 'exit status {}'.format(proc.returncode)}, tail
        with open(path) as f:
            return json.load(f), tail


def train_py_cmd(args, epochs, host_data=False, cupti=None, n_train=None, n_test=None):
    cmd = [sys.executable, os.path.abspath(__file__), '-g', str(args.gpu),
           '--train-epochs', str(epochs), '--device-steps', str(args.device_steps)]
    cmd += bench_gpu.data_flags(argparse.Namespace(
        data_dir=args.data_dir, n_train=n_train or args.n_train, n_test=n_test or args.n_test))
    if host_data:
        cmd.append('--host-data')
    cmd += ['--paths', ','.join(args.paths_on) or 'none']
    if args.precision:
        cmd += ['--precision', args.precision]
    if cupti:
        cmd += ['--cupti-steps', '{}:{}'.format(*cupti)]
    return cmd + ['--worker-json']


def part_train_py(args, timeout, host_data=False):
    epochs = args.host_epochs if host_data else args.train_epochs
    figures, tail = run_json_worker(train_py_cmd(args, epochs, host_data), timeout)
    figures['console_tail'] = tail[-1500:]
    return figures


def part_cupti(args, timeout):
    """A one-epoch run long enough for a few steps before the recorded ones (CuPy
    compiles its kernels in the first) and a few after."""
    first, n = 6, args.cupti_steps
    n_train = min(args.n_train or N_TRAIN, BATCH * (first + n + 2))
    steps = -(-n_train // BATCH)
    if steps < first + n:  # a small --n-train: as many as there are
        first, n = 1 + steps // 3, max(1, steps - 1 - steps // 3)
    figures, tail = run_json_worker(
        train_py_cmd(args, 1, cupti=(first, first + n - 1), n_train=n_train,
                     n_test=min(args.n_test or N_TEST, 1000)), timeout)
    figures.pop('records', None)
    figures['console_tail'] = tail[-1500:]
    return figures


def bench_variant(variant, paths_off):
    """``(the variant to run, None)``: ``variant`` with the paths of ``paths_off``
    (``{name: why}``) switched off too, so that a path left off in ``train_py`` is off
    in the benchmark's parts as well; or ``(None, why)`` where ``variant`` measures
    the deferred check and that is off."""
    names = variant.split('+')
    if 'deferred_check' in paths_off and 'deferred-check' in names:
        return None, 'skipped: deferred_check is off ({})'.format(paths_off['deferred_check'])
    names += [BENCH_OFF[p] for p in BENCH_OFF if p in paths_off and BENCH_OFF[p] not in names]
    return '+'.join(names), None


def part_bench(args, variant, timeout):
    run, why = bench_variant(variant, args.paths_off)
    if run is None:
        return {'variant': variant, 'error': why}
    ns = argparse.Namespace(gpu=args.gpu, seed=bench_gpu.SEED, repeat=args.repeat,
                            epochs=args.bench_epochs, data_dir=args.data_dir,
                            n_train=args.n_train, n_test=args.n_test)
    r = bench_gpu.run_worker(ns, run, timeout=timeout)
    return r if r is not None else {'variant': run, 'error': 'failed (console above)'}


EPOCH_LINE = re.compile(r'epoch (\d+): ([\d.]+) s \(training ([\d.]+) s, test ([\d.]+) s\), '
                        r'test accuracy ([\d.]+)%')


def part_peer(args, mode, timeout):
    if not args.peer:
        return {'error': 'no --peer'}
    if not args.data_dir:
        return {'error': 'the peer reads --data-dir, which was not given'}
    cmd = [sys.executable, args.peer, '--device', 'cuda' if args.gpu >= 0 else 'cpu',
           '--data', args.data_dir, '--epochs', str(args.peer_epochs), '--batch', str(BATCH),
           '--test-batch', str(TEST_BATCH)] + PEER_MODES[mode]
    for flag, value in (('--n-train', args.n_train), ('--n-test', args.n_test)):
        if value:
            cmd += [flag, str(value)]
    env = dict(os.environ)
    if args.gpu >= 0:
        visible = os.environ.get('CUDA_VISIBLE_DEVICES')
        env['CUDA_VISIBLE_DEVICES'] = visible.split(',')[args.gpu] if visible else str(
            args.gpu)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else (
            e.stdout or '')
        result = peer_figures(out)
        result['error'] = 'stopped at its {:.0f} s'.format(timeout)
        return result
    result = peer_figures(proc.stdout)
    result['wall_s'] = time.perf_counter() - start
    if proc.returncode != 0:
        result['error'] = (proc.stderr.strip().splitlines() or ['failed'])[-1]
    result['command'] = ' '.join(os.path.basename(c) if c == args.peer else c for c in cmd)
    return result


def peer_figures(stdout):
    """The peer's epochs from its console, and those after the first in spread."""
    epochs = []
    out = {'output': stdout.strip().splitlines()[-12:]}
    for line in stdout.splitlines():
        m = EPOCH_LINE.search(line)
        if m:
            epochs.append({'epoch': int(m.group(1)), 'epoch_s': float(m.group(2)),
                           'train_s': float(m.group(3)), 'test_s': float(m.group(4)),
                           'test_accuracy': float(m.group(5)) / 100})
        m = re.search(r'peak GPU memory: ([\d.]+) MiB', line)
        if m:
            out['peak_mib'] = float(m.group(1))
    out['epochs'] = epochs
    later = bench_gpu.spread(e['epoch_s'] for e in epochs[1:])
    if later:
        out['epoch_s'] = later
    return out


def part_ceilings(args, timeout):
    cmd = [sys.executable, '-c', 'import json, sys, bench_gpu; json.dump(bench_gpu.'
           'ceilings({}), open(sys.argv[1], "w"))'.format(args.gpu)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__)), REPO]))
    figures, tail = run_json_worker(cmd, timeout, env=env)
    if 'gemm_tflops' in figures:
        epoch, figures['floor_float32_s'] = bench_gpu.epoch_floor(
            figures['gemm_tflops'], args.n_train, args.n_test)
        figures['epoch_tflop'] = epoch / 1e12
        figures['epoch_images'] = [args.n_train or N_TRAIN, args.n_test or N_TEST]
    else:
        figures['console_tail'] = tail
    return figures


def run_parts(args, report, write):
    """Runs :data:`PARTS` until the deadline, writing ``report`` after each."""
    sampler = SmiSampler(args.gpu)
    sampler.start()
    start = time.perf_counter()
    report['parts'] = {}
    for label, cap, least in part_labels(args.variants, args.peer_modes):
        if args.parts and label not in args.parts:
            continue
        kind, _, which = label.partition(':')
        left = args.deadline_s - (time.perf_counter() - start)
        if left < least:
            report['parts'][label] = {'error': 'skipped: {:.0f} s left of --deadline-s'
                                      .format(left)}
            print('== {}: skipped ({:.0f} s left)'.format(label, left), flush=True)
            continue
        timeout = min(cap, left)
        print('== [{:.0f} s] {} (at most {:.0f} s)'.format(
            time.perf_counter() - start, label, timeout), flush=True)
        sampler.part = label
        part_start = time.perf_counter()
        load = os.getloadavg()
        if kind == 'ceilings':
            figures = part_ceilings(args, timeout)
        elif kind == 'train_py':
            figures = part_train_py(args, timeout)
        elif kind == 'train_py_host':
            figures = part_train_py(args, timeout, host_data=True)
        elif kind == 'cupti':
            figures = part_cupti(args, timeout)
        elif kind == 'bench':
            figures = part_bench(args, which, timeout)
        else:
            figures = part_peer(args, which, timeout)
        figures['part_s'] = time.perf_counter() - part_start
        figures['load_average_before'] = load
        figures['load_average_after'] = os.getloadavg()
        report['parts'][label] = figures
        sampler.part = 'between'
        report['smi'] = sampler.by_part()
        report['elapsed_s'] = time.perf_counter() - start
        write(report)
        error = figures.get('error')
        print('   {:.0f} s{}'.format(figures['part_s'], ', ' + error if error else ''),
              flush=True)
    sampler.stopped.set()
    report['smi'] = sampler.by_part()
    report['smi_end'] = read_smi()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    bench_gpu.add_data_arguments(parser)
    parser.add_argument('--train-epochs', type=int, default=5)
    parser.add_argument('--host-epochs', type=int, default=3)
    parser.add_argument('--device-steps', type=int, default=20)
    parser.add_argument('--cupti-steps', default=10,
                        help='steps recorded by CUPTI (a worker takes FIRST:LAST)')
    parser.add_argument('--bench-epochs', type=int, default=5)
    parser.add_argument('--variants',
                        default='default,deferred-check,no-finite-check+no-type-check',
                        help="bench_gpu.py's variants, comma-separated, at most {}"
                        .format(BENCH_SLOTS))
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--peer', default=None, help='torch_capsnet.py')
    parser.add_argument('--peer-epochs', type=int, default=6)
    parser.add_argument('--peer-modes', default=','.join(PEER_MODES))
    parser.add_argument('--deadline-s', type=float, default=480)
    parser.add_argument('--parts', default=None,
                        help='only these parts, comma-separated (ceilings, train_py, '
                             'cupti, bench:VARIANT, peer:MODE, train_py_host)')
    parser.add_argument('--json', default=None, help='write the figures here')
    parser.add_argument('--precision', default=None,
                        help='train.py --precision (float32, tf32) for its parts')
    parser.add_argument('--paths', default=','.join(GPU_PATHS),
                        help='the GPU paths train_py switches on (comma-separated, of {}; '
                             'none: none); the bench parts run with the others off too'
                        .format(', '.join(GPU_PATHS)))
    parser.add_argument('--tests-xml', default=None,
                        help="the gpu tests' JUnit file: paths whose tests failed stay "
                             'off (all of them where the file is missing)')
    parser.add_argument('--host-data', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--worker-json', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paths == 'none':
        args.paths = ''
    if args.worker_json:
        args.epochs = args.train_epochs
        if isinstance(args.cupti_steps, str) and ':' in args.cupti_steps:
            args.cupti_steps = tuple(int(v) for v in args.cupti_steps.split(':'))
            args.trace = args.worker_json + '.trace.json'
        else:
            args.cupti_steps = None
        train_py_worker(args)
        return
    args.cupti_steps = int(args.cupti_steps)
    args.variants, args.peer_modes, args.parts = (
        [v for v in names.split(',') if v] if names else []
        for names in (args.variants, args.peer_modes, args.parts))
    try:
        check_choices(args.variants, args.peer_modes, args.parts)
    except ValueError as e:
        parser.error(str(e))
    if args.peer:
        args.peer = os.path.abspath(args.peer)
    if args.data_dir:
        args.data_dir = os.path.abspath(args.data_dir)

    def write(report):
        if args.json:
            from capsnet_chainer.fileio import write_atomic
            write_atomic(args.json, lambda f: f.write(json.dumps(report, indent=1).encode()))

    try:
        args.paths_on, args.paths_off = paths_on(args.paths, args.tests_xml)
    except ValueError as e:
        parser.error(str(e))
    report = {'what': 'bench/profile_gpu.py', 'argv': sys.argv[1:],
              'host': host_record(args.gpu), 'smi_start': read_smi(),
              'paths_on': args.paths_on, 'paths_off': args.paths_off}
    print('Host: ' + json.dumps(report['host']), flush=True)
    print('GPU paths on in train_py and the bench parts: {}; off: {}'.format(
        ', '.join(args.paths_on) or 'none',
        '; '.join('{} ({})'.format(k, v) for k, v in args.paths_off.items()) or 'none'),
        flush=True)
    write(report)
    run_parts(args, report, write)
    write(report)
    print('== done in {:.0f} s{}'.format(report.get('elapsed_s', 0),
                                         ': ' + args.json if args.json else ''))


if __name__ == '__main__':
    main()
