"""CPU benchmark: NumPy's GEMM rate, then CapsNet training and inference speed and memory.

Usage::

    python bench/bench_cpu.py                       # every switch, batch 100 and 256
    python bench/bench_cpu.py --variants reference --batch 100
    python bench/bench_cpu.py --compare /path/to/old/checkout .   # A B A B, interleaved

Each measurement runs in a fresh Python process, so that its peak resident memory
(``ru_maxrss``) is that of one configuration alone. The memory column is the *total* peak
RSS of that process, what ``top`` would show a user: the interpreter, NumPy, Chainer, the
model, Adam's state, the batch and every temporary of the step. The baseline column is the
RSS after the imports, the model and the optimizer are set up, before the first step.

Throughput is images per second from the median step time after a warm-up step, with
the best step's figure in parentheses. Training is ``optimizer.update(model, x, t)``
(Adam, the loss with reconstruction); inference is ``model(x, t)`` under
``train=False`` and :func:`chainer.no_backprop_mode`, as the Evaluator runs it. Achieved
GFLOP/s counts the multiply-adds of the network, computed from the layer shapes
(:func:`flop_per_image`), not those a kernel happens to do, and is also given as a share
of the GEMM rate measured first. The CPU column is the process's CPU time (all its
threads) per training image: it moves less than wall time when other jobs share the
cores, though BLAS threads that spin while waiting count too.

With ``--compare``, every measurement runs once for each checkout in turn (A B A B ...,
``--rounds`` times), so that a change in the machine's load hits all of them alike.

This is a benchmark, not a test: it prints figures and asserts nothing. The machine is
printed with them, and the load average (before, after, and at the start of each
measurement) to judge the noise.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Benchmark name -> CapsNet keyword arguments (reconstruction is always on).
VARIANTS = {
    'reference': {},
    'unshared': {'shared_weights': False},
    'relu': {'leaky_slope': 0.0},
    'squash-primary': {'squash_primary': True},
    'routing-grad-last': {'grad_all_iterations': False},
    'n-iteration-1': {'n_iteration': 1},
}


#: Environment variables that set the number of BLAS threads (``--threads``).
BLAS_THREAD_VARIABLES = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def flop_per_image(n_iteration=3, reconstruct=True, n_class=10, in_shape=(1, 28, 28)):
    """Floating-point operations (2 per multiply-add) for one image.

    Returns:
        dict: ``forward``, ``train`` (forward + backward), and per-stage forward counts.
            The backward pass costs two forward passes for every stage whose input needs a
            gradient, one (the weight gradient) for conv1, whose input is data.
    """
    C, H, W = in_shape
    h1 = H - 8  # conv1: 9x9, stride 1
    grid = (h1 - 9) // 2 + 1  # primary capsules: 9x9, stride 2
    n_primary, J, D = 32 * grid * grid, n_class, 16
    mac = {
        'conv1': h1 * h1 * 256 * C * 81,
        'primary': grid * grid * 256 * 256 * 81,
        'predictions': n_primary * 8 * J * D,
        # Each iteration's weighted sum, and the agreement between iterations.
        'routing': (2 * n_iteration - 1) * J * n_primary * D,
        'decoder': (J * D * 512 + 512 * 1024 + 1024 * C * H * W) if reconstruct else 0,
    }
    flop = {k: 2 * v for k, v in mac.items()}
    forward = sum(flop.values())
    flop['forward'] = forward
    flop['train'] = 3 * forward - flop['conv1']
    return flop


def gemm_rate(n=2048, repeat=10):
    """Best-of-``repeat`` float32 ``n x n x n`` matrix multiply rate, GFLOP/s."""
    import numpy
    rng = numpy.random.default_rng(0)
    a = rng.random((n, n), dtype=numpy.float32)
    b = rng.random((n, n), dtype=numpy.float32)
    c = numpy.empty((n, n), numpy.float32)
    numpy.matmul(a, b, out=c)
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        numpy.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def maxrss_mib():
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib():
    """Resident set size now, MiB (from /proc; falls back to the peak)."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20
    except (OSError, ValueError, IndexError):
        return maxrss_mib()


def child(kind, variant, batch, steps, seed=0):
    """One measurement in this (fresh) process; returns a dict of figures."""
    import capsnet_chainer  # noqa: F401  (restores numpy.sctypes before chainer)
    import chainer
    import numpy

    numpy.random.seed(seed)
    model = capsnet_chainer.CapsNet(reconstruct=True, **VARIANTS[variant])
    optimizer = chainer.optimizers.Adam()
    optimizer.setup(model)
    rng = numpy.random.default_rng(seed)
    x = rng.random((batch, 1, 28, 28), dtype=numpy.float32)
    t = (numpy.arange(batch) % 10).astype(numpy.int32)
    baseline = current_rss_mib()

    def train_step():
        optimizer.update(model, x, t)

    def infer_step():
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            model(x, t)

    step = train_step if kind == 'train' else infer_step
    step()  # warm-up (and Adam's state)
    times = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    return {'img_per_s': batch / statistics.median(times), 'best_img_per_s': batch / min(times),
            'cpu_ms_per_img': 1e3 * cpu / (steps * batch), 'step_s': times,
            'peak_rss_mib': maxrss_mib(), 'baseline_rss_mib': baseline}


def switch_costs(variants, batch, rounds, seed=0):
    """Training step time of every variant, measured in one process, round-robin.

    One step of each variant in turn, ``rounds`` times, so that a change in the
    machine's load falls on all of them alike. Returns ``{variant: [seconds, ...]}``.
    """
    import capsnet_chainer  # noqa: F401  (restores numpy.sctypes before chainer)
    import chainer
    import numpy

    numpy.random.seed(seed)
    rng = numpy.random.default_rng(seed)
    x = rng.random((batch, 1, 28, 28), dtype=numpy.float32)
    t = (numpy.arange(batch) % 10).astype(numpy.int32)
    steps = {}
    for variant in variants:
        model = capsnet_chainer.CapsNet(reconstruct=True, **VARIANTS[variant])
        optimizer = chainer.optimizers.Adam()
        optimizer.setup(model)
        optimizer.update(model, x, t)  # warm-up
        steps[variant] = (optimizer, model)
    times = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            optimizer, model = steps[variant]
            start = time.perf_counter()
            optimizer.update(model, x, t)
            times[variant].append(time.perf_counter() - start)
    return times


def run_child(tree, kind, variant, batch, steps, threads=None):
    """Runs :func:`child` in a fresh interpreter with ``tree`` first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [tree] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    if threads:
        for name in BLAS_THREAD_VARIABLES:
            env[name] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), '--child',
           json.dumps([kind, variant, batch, steps])]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError('child failed ({} {} {}):\n{}'.format(
            kind, variant, batch, proc.stderr[-3000:]))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result['load'] = load
    return result


def print_switch_costs(args, tree):
    """Runs :func:`switch_costs` in a fresh process and prints its table."""
    variants = list(dict.fromkeys(['reference'] + args.variants))
    batch = args.batch[0]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [tree] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    if args.threads:
        for name in BLAS_THREAD_VARIABLES:
            env[name] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), '--child',
           json.dumps(['switch-costs', variants, batch, args.steps])]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError('switch costs failed:\n' + proc.stderr[-3000:])
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = statistics.median(times['reference'])
    print('Training step, batch {}, {} rounds round-robin in one process:'.format(
        batch, args.steps))
    print()
    print('| variant | ms/img (median) | ms/img (best) | vs reference |')
    print('|---|---|---|---|')
    for variant in variants:
        median = statistics.median(times[variant])
        print('| {} | {:.2f} | {:.2f} | {:+.2f} ms/img ({:+.0f}%) |'.format(
            variant, 1e3 * median / batch, 1e3 * min(times[variant]) / batch,
            1e3 * (median - ref) / batch, 100 * (median - ref) / ref))
    print()


def machine_info():
    """A few lines that identify the machine and the software."""
    import capsnet_chainer  # noqa: F401
    import chainer
    import numpy
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        n_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        n_usable = os.cpu_count()
    blas = 'unknown'
    try:
        import threadpoolctl
        blas = '; '.join('{} {} ({} threads)'.format(
            i.get('internal_api'), i.get('version'), i.get('num_threads'))
            for i in threadpoolctl.threadpool_info() if i.get('user_api') == 'blas')
    except ImportError:
        try:
            deps = numpy.show_config(mode='dicts')['Build Dependencies']['blas']
            blas = '{} {}'.format(deps.get('name'), deps.get('version'))
        except Exception:  # show_config's layout is not a stable API
            pass
    return [
        'CPU: {} ({} usable cores of {})'.format(cpu, n_usable, os.cpu_count()),
        'Python {}, NumPy {}, Chainer {}, BLAS: {}'.format(
            platform.python_version(), numpy.__version__, chainer.__version__, blas),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, nargs='+', default=[100, 256])
    parser.add_argument('--steps', type=int, default=3,
                        help='timed training steps after the warm-up step')
    parser.add_argument('--infer-steps', type=int, default=5,
                        help='timed inference batches after the warm-up batch')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                        choices=list(VARIANTS), metavar='VARIANT',
                        help='switches to measure: ' + ', '.join(VARIANTS))
    parser.add_argument('--compare', nargs='+', metavar='DIR',
                        help='checkouts to compare, measured in turn (A B A B ...)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='with --compare: how many times to alternate')
    parser.add_argument('--no-infer', action='store_true', help='skip inference')
    parser.add_argument('--threads', type=int,
                        help='BLAS threads in the measurements (default: the BLAS default); '
                        '1 gives CPU times that other jobs on the machine disturb less')
    parser.add_argument('--switch-costs', action='store_true',
                        help='instead: time a training step of every variant in one '
                        'process, round-robin (--steps rounds, the first --batch)')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    parser.add_argument('--gemm-only', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.gemm_only:
        print(gemm_rate())
        return
    if args.child:
        kind = json.loads(args.child)[0]
        if kind == 'switch-costs':
            print(json.dumps(switch_costs(*json.loads(args.child)[1:])))
        else:
            print(json.dumps(child(*json.loads(args.child))))
        return

    trees = [os.path.abspath(d) for d in (args.compare or [REPO])]
    labels = dict(zip(trees, args.compare or ['.']))
    sys.path.insert(0, trees[-1])
    for line in machine_info():
        print(line)
    load_before = os.getloadavg()
    print('Load average before: {:.2f} {:.2f} {:.2f}'.format(*load_before))
    if args.threads:
        print('BLAS threads: {}'.format(args.threads))
        rate = float(subprocess.run(
            [sys.executable, os.path.abspath(__file__), '--gemm-only'], capture_output=True,
            text=True, check=True, env=dict(os.environ, **{
                name: str(args.threads) for name in BLAS_THREAD_VARIABLES})).stdout)
    else:
        rate = gemm_rate()
    print('NumPy float32 GEMM (2048^3, best of 10): {:.1f} GFLOP/s'.format(rate))
    print()

    if args.switch_costs:
        print_switch_costs(args, trees[-1])
        print('Load average after: {:.2f} {:.2f} {:.2f}'.format(*os.getloadavg()))
        return

    kinds = ['train'] + ([] if args.no_infer else ['infer'])
    results = {}
    for variant in args.variants:
        for batch in args.batch:
            for kind in kinds:
                steps = args.steps if kind == 'train' else args.infer_steps
                for _ in range(args.rounds if args.compare else 1):
                    for tree in trees:
                        r = run_child(tree, kind, variant, batch, steps, args.threads)
                        results.setdefault((tree, variant, batch, kind), []).append(r)

    header = ['variant', 'batch', 'train img/s (best)', 'infer img/s (best)',
              'train GFLOP/s', '% of GEMM', 'train CPU ms/img', 'train peak RSS MiB (baseline)',
              'load']
    if args.compare:
        header.insert(0, 'code')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    epoch = {}
    for variant in args.variants:
        flop = flop_per_image(**({'n_iteration': 1} if variant == 'n-iteration-1' else {}))
        for batch in args.batch:
            for tree in trees:
                train = results[(tree, variant, batch, 'train')]
                train_rate = statistics.median(r['img_per_s'] for r in train)
                train_best = max(r['best_img_per_s'] for r in train)
                infer_rate = infer_cell = None
                loads = [r['load'] for r in train]
                if 'infer' in kinds:
                    infer = results[(tree, variant, batch, 'infer')]
                    infer_rate = statistics.median(r['img_per_s'] for r in infer)
                    infer_cell = '{:.1f} ({:.1f})'.format(
                        infer_rate, max(r['best_img_per_s'] for r in infer))
                    loads += [r['load'] for r in infer]
                peak = max(r['peak_rss_mib'] for r in train)
                base = min(r['baseline_rss_mib'] for r in train)
                gflops = train_rate * flop['train'] / 1e9
                row = [variant, str(batch), '{:.1f} ({:.1f})'.format(train_rate, train_best),
                       infer_cell or '-',
                       '{:.1f}'.format(gflops), '{:.0f}%'.format(100 * gflops / rate),
                       '{:.1f}'.format(statistics.median(r['cpu_ms_per_img'] for r in train)),
                       '{:.0f} ({:.0f})'.format(peak, base),
                       '/'.join('{:.1f}'.format(x) for x in loads)]
                if args.compare:
                    row.insert(0, labels[tree])
                print('| ' + ' | '.join(row) + ' |')
                if variant == 'reference':
                    epoch.setdefault(tree, {})[batch] = (train_rate, infer_rate)
    print()
    flop = flop_per_image()
    print('FLOP per image (reference, reconstruction on): forward {:.3f} G '
          '(conv1 {:.1f} M, primary {:.1f} M, predictions {:.2f} M, routing {:.2f} M, '
          'decoder {:.2f} M), training step {:.3f} G'.format(
              flop['forward'] / 1e9, flop['conv1'] / 1e6, flop['primary'] / 1e6,
              flop['predictions'] / 1e6, flop['routing'] / 1e6, flop['decoder'] / 1e6,
              flop['train'] / 1e9))
    for tree, rates in epoch.items():
        if 256 in rates and 100 in rates and rates[100][1]:
            seconds = 60000 / rates[256][0] + 10000 / rates[100][1]
            print('{}one epoch (60,000 training images at batch 256, then 10,000 test '
                  'images at batch 100): {:.1f} min'.format(
                      labels[tree] + ': ' if args.compare else '', seconds / 60))
    print('Load average after: {:.2f} {:.2f} {:.2f}'.format(*os.getloadavg()))


if __name__ == '__main__':
    main()
