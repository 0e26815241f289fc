"""GPU benchmark: one MNIST epoch of CapsNet on CuPy, where its time goes, and the peer.

Usage::

    python bench/bench_gpu.py -g 0 --data-dir DIR --peer ../shared/peers/torch_capsnet.py
    python bench/bench_gpu.py -g 0 --variants default,chainer-conv --no-train-py

It prints, in float32 on one GPU:

1. the machine (GPU, driver, CUDA, CuPy, NumPy, Chainer, Python) and two ceilings
   measured on it: the float32 matrix-product rate (cuBLAS through CuPy, 8192^3) and the
   device-to-device copy bandwidth; from them the floor of an epoch, its floating-point
   operations (``bench_cpu.flop_per_image``) over the product rate;
2. for each variant (:data:`VARIANTS`), in a fresh process: ``--epochs`` epochs (their
   median, min and max) as the Trainer runs them (235 updates of batch 256 with
   reconstruction, shift augmentation, Adam and the non-finite check, then the 10,000
   test images through the Evaluator at batch 100), after a warm-up; training and
   inference images/s; the peak memory of CuPy's pool (bytes in use, and held);
3. where a training step's time goes: each Chainer function's GPU time (CUDA events,
   with the GPU kept busy beforehand so that no launch gap is counted) and host time
   (the Python that issues it), grouped as convolutions, decoder products, routing and
   the rest; Adam's update, the non-finite check, the batch (iterator, shift, copy to
   the GPU); the step's wall time, host time and GPU time side by side. Where the host
   time exceeds the GPU time the step is bound by Python overhead, not by the GPU;
4. the primary-capsule convolution (batch 256) cut into its parts: im2col, the matrix
   product, Chainer's whole forward and backward, and the same for our kernel;
5. ``train.py -g 0 -e 2`` itself: the second epoch's time from its log (the first one
   compiles CuPy's kernels), extensions and snapshots included;
6. the PyTorch peer on the same GPU, eager and ``--compile``, as it reports itself.

``-g -1`` runs everything but the peer on the CPU with a small data set
(``--n-train``), to check the script. It is a benchmark, not a test: it prints measured
figures and asserts nothing. Times are medians unless a line says otherwise.
"""

import argparse
import collections
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: Variant name -> settings: ``fast_on_gpu`` (our convolution kernel on the GPU, the
#: default; ``False``: Chainer's im2col convolution), ``check_finite`` (the non-finite
#: check: one sync per step), ``defer_check`` (the check without a sync: GatedAdam
#: skips a diverged step on the device, the host reads the verdict a step late),
#: ``type_check`` (Chainer's checks of every function's
#: input types, on the host: ``'once'``, in the first update only, as ``train.py``
#: does; ``'always'``; ``False``: never), ``env`` (environment variables:
#: ``CUPY_TF32=1`` lets cuBLAS round float32 products to TF32), ``conv_cuda`` (our
#: convolution's im2col and col2im as one CUDA kernel each, the default; ``False``:
#: CuPy's strided copy and slice additions), ``routing_cuda`` (the routing's softmax,
#: squash and their gradients as one CUDA kernel each, the default; ``False``: CuPy's
#: array operations), ``margin_loss`` (the capsules' lengths and margin loss in one
#: node, the default; ``False``: the plain equations).
VARIANTS = {
    'default': {},
    'im2col-copy': {'conv_cuda': False},
    'routing-ops': {'routing_cuda': False},
    'plain-loss': {'margin_loss': False},
    'chainer-conv': {'fast_on_gpu': False},
    'no-finite-check': {'check_finite': False},
    'deferred-check': {'defer_check': True},
    'type-check-always': {'type_check': 'always'},
    'no-type-check': {'type_check': False},
    'tf32': {'env': {'CUPY_TF32': '1'}},
}


def settings_of(variant):
    """The settings of ``variant``: a name of :data:`VARIANTS`, or several joined by
    ``+`` (e.g. ``no-finite-check+no-type-check``)."""
    settings = {'env': {}}
    for name in variant.split('+'):
        part = dict(VARIANTS[name])
        settings['env'].update(part.pop('env', {}))
        settings.update(part)
    return settings


def check_variants(variants):
    """Raises ``ValueError`` naming the unknown names among ``variants`` (a list of
    :func:`settings_of`'s names)."""
    unknown = {n for v in variants for n in v.split('+')} - set(VARIANTS)
    if unknown:
        raise ValueError('unknown --variants {}; choose from {}'.format(
            ', '.join(sorted(unknown)), ', '.join(VARIANTS)))


#: Function labels -> the group their time is shown in.
GROUPS = (
    ('convolutions (im2col + matrix products)', (
        'Convolution2DFunction', 'Convolution2DGradW', 'Deconvolution2DFunction',
        'Convolution2DFunctionGrad')),
    ('decoder matrix products', ('LinearFunction', 'LinearGradData', 'LinearGradWeight')),
    ('routing and predictions', (
        'SharedRouting', 'SharedRoutingGrad', 'Routing', 'RoutingGrad',
        'PredictionVectors', 'PredictionVectorsGrad')),
)
OTHER = 'the rest (elementwise, reductions, reshapes, losses)'

BATCH, TEST_BATCH, N_TRAIN, N_TEST = 256, 100, 60000, 10000
#: The seed of ``--seed``'s default, profile_gpu's too.
SEED = 789


def group_of(label):
    for name, labels in GROUPS:
        if label in labels:
            return name
    return OTHER


def group_totals(functions):
    """``{group: [GPU ms, host ms, calls]}`` of ``functions`` (``{label: [GPU ms, host
    ms, calls]}``), the groups in the order of :data:`GROUPS`, then :data:`OTHER`."""
    groups = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for label, figures in functions.items():
        g = groups[group_of(label)]
        for i in range(3):
            g[i] += figures[i]
    return {name: groups[name] for name in [n for n, _ in GROUPS] + [OTHER]
            if name in groups}


# Timing on either device


class Clock(object):
    """Device timing: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, gpu):
        self.gpu = gpu
        if gpu:
            import cupy
            self.cupy = cupy

    def sync(self):
        if self.gpu:
            self.cupy.cuda.Device().synchronize()

    def mark(self):
        if self.gpu:
            event = self.cupy.cuda.Event()
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, stop):
        """Milliseconds between two marks (call :meth:`sync` first on a GPU)."""
        if self.gpu:
            return self.cupy.cuda.get_elapsed_time(start, stop)
        return 1e3 * (stop - start)

    def busy(self, host_ms, floor_ms=50.0):
        """Queues GPU work ahead of what the host takes ``host_ms`` to issue next, so
        that its events time the GPU alone (the library's ``BusyWork``)."""
        if not self.gpu:
            return
        if not hasattr(self, '_busy'):
            from capsnet_chainer.training.profile import BusyWork
            self._busy = BusyWork(self.cupy)
        self._busy.ahead_of(host_ms, floor_ms)

    def time(self, fn, repeat=10, warmup=2):
        """Median milliseconds of ``fn()`` on the device, each run timed alone."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            self.sync()
            start = self.mark()
            fn()
            stop = self.mark()
            self.sync()
            times.append(self.ms(start, stop))
        return statistics.median(times)


def function_timer(clock):
    """A Chainer function hook that marks the device and host time of each function.

    Nested functions (the gradient nodes a backward pass applies) are subtracted from
    the function that runs them, so each time is counted once. Call :meth:`totals`
    after a device sync.
    """
    import chainer

    class FunctionTimer(chainer.FunctionHook):
        name = 'FunctionTimer'

        def __init__(self):
            self.stack = []
            self.records = []  # (label, start, stop, host_s, children)

        def _pre(self, function):
            self.stack.append([function.label, clock.mark(), time.perf_counter(), []])

        def _post(self):
            label, start, host_start, children = self.stack.pop()
            stop = clock.mark()
            record = (label, start, stop, time.perf_counter() - host_start, children)
            if self.stack:
                self.stack[-1][3].append(record)
            else:
                self.records.append(record)

        def forward_preprocess(self, function, in_data):
            self._pre(function)

        def forward_postprocess(self, function, in_data):
            self._post()

        def backward_preprocess(self, function, in_data, out_grad):
            self._pre(function)

        def backward_postprocess(self, function, in_data, out_grad):
            self._post()

        def totals(self):
            """``{label: [device ms, host ms, calls]}``, self times."""
            out = collections.defaultdict(lambda: [0.0, 0.0, 0])

            def add(record):
                label, start, stop, host, children = record
                device_ms, host_ms = clock.ms(start, stop), 1e3 * host
                for child in children:
                    c_dev, c_host = add(child)
                    device_ms -= c_dev
                    host_ms -= c_host
                entry = out[label]
                entry[0] += device_ms
                entry[1] += host_ms
                entry[2] += 1
                return clock.ms(start, stop), 1e3 * host

            for record in self.records:
                add(record)
            return dict(out)

    return FunctionTimer()


# One variant, in its own process


def load_data(args):
    from capsnet_chainer.datasets import protocols
    from capsnet_chainer.datasets.mnist import get_mnist
    data_dir = args.data_dir or os.environ.get('CAPSNET_MNIST_DIR')
    train, test = get_mnist(data_dir=data_dir, n_train=args.n_train, n_test=args.n_test)
    return protocols.protocol('mnist').make_data(train, None, test, seed=args.seed)


def worker(args, variant):
    """Measures one variant; returns a dict of figures."""
    import capsnet_chainer  # noqa: F401  (adapts Chainer before its import)
    import chainer
    from chainer.iterators import SerialIterator
    import numpy
    from capsnet_chainer import CapsNet
    from capsnet_chainer import links
    from capsnet_chainer.kernels import conv_cuda
    from capsnet_chainer.kernels import margin_loss as margin_kernel
    from capsnet_chainer.kernels import routing_cuda
    from capsnet_chainer.training import distributed
    from capsnet_chainer.training.gated_adam import GatedAdam
    from capsnet_chainer.training.nonfinite import first_non_finite
    from capsnet_chainer.training.nonfinite import to_float
    from capsnet_chainer.training.iterators import SeededShuffleIterator
    from capsnet_chainer.training.updater import ConverterStateUpdater

    settings = settings_of(variant)
    links.Convolution2D.fast_on_gpu = settings.get('fast_on_gpu', True)
    conv_cuda.ENABLED = settings.get('conv_cuda', True)
    routing_cuda.ENABLED = settings.get('routing_cuda', True)
    margin_kernel.ENABLED = settings.get('margin_loss', True)
    type_check = settings.get('type_check', 'once')
    chainer.config.type_check = bool(type_check)
    gpu = args.gpu >= 0
    device = chainer.get_device('@cupy:{}'.format(args.gpu) if gpu else '@numpy')
    device.use()
    clock = Clock(gpu)
    data = load_data(args)
    numpy.random.seed(args.seed)
    model = CapsNet(reconstruct=True)
    model.to_device(device)
    optimizer = GatedAdam(alpha=1e-3)  # train.py's: Chainer's Adam unless gated
    optimizer.setup(model)
    train_iter = SeededShuffleIterator(data.train, BATCH, args.seed)
    updater = ConverterStateUpdater(train_iter, optimizer, converter=data.converter,
                                    device=device,
                                    check_finite=settings.get('check_finite', True),
                                    defer_check=settings.get('defer_check', False),
                                    check_types_once=type_check == 'once')
    test_iter = SerialIterator(data.test, TEST_BATCH, repeat=False, shuffle=False)
    evaluator = distributed.evaluator(test_iter, model, device, None)
    # The Trainer's reporter: the model reports its loss and accuracy into it
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    reporter.add_observers('main', model.namedlinks(skipself=True))

    def update():
        with reporter.scope({}):
            updater.update()

    n_step = -(-len(data.train) // BATCH)
    result = {'variant': variant, 'n_train': len(data.train), 'n_test': len(data.test),
              'steps': n_step}

    # Warm-up: compiles CuPy's kernels and fills its memory pool
    start = time.perf_counter()
    for _ in range(3):
        update()
    warm_eval = distributed.evaluator(
        SerialIterator(data.test[:2 * TEST_BATCH], TEST_BATCH, repeat=False, shuffle=False),
        model, device, None)
    with reporter.scope({}):
        warm_eval.evaluate()
    clock.sync()
    result['warmup_s'] = time.perf_counter() - start

    # --epochs epochs: the updates, then the test set through the Evaluator
    epochs = []
    for _ in range(args.epochs):
        clock.sync()
        start = time.perf_counter()
        for _ in range(n_step):
            update()
        clock.sync()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        with reporter.scope({}):
            observation = evaluator.evaluate()
        clock.sync()
        test_s = time.perf_counter() - start
        accuracy = [v for k, v in observation.items() if k.endswith('main/accuracy')][0]
        epochs.append({'train_s': train_s, 'test_s': test_s,
                       'test_accuracy': to_float(accuracy)})
    result['epochs'] = epochs
    result['epoch_s'] = spread([e['train_s'] + e['test_s'] for e in epochs])
    result['train_s'] = statistics.median(e['train_s'] for e in epochs)
    result['test_s'] = statistics.median(e['test_s'] for e in epochs)
    result['test_accuracy'] = epochs[-1]['test_accuracy']

    # Peak memory of one step and one test batch, and what the pool holds
    batch = data.converter(train_iter.next(), device)
    test_x, test_t = chainer.dataset.concat_examples(data.test[:TEST_BATCH], device)
    if gpu:
        import cupy
        pool = cupy.get_default_memory_pool()

        class Peak(cupy.cuda.MemoryHook):
            name = 'Peak'
            peak = 0

            def malloc_postprocess(self, **kwargs):
                self.peak = max(self.peak, pool.used_bytes())

        hook = Peak()
        with hook:
            optimizer.update(model, *batch)
            with chainer.using_config('train', False), chainer.no_backprop_mode():
                model(test_x, test_t)
        clock.sync()
        result['peak_used_mib'] = hook.peak / 2 ** 20
        result['pool_held_mib'] = pool.total_bytes() / 2 ** 20

    # Where a step's time goes. Host time: issuing a step (no sync inside it, so the
    # non-finite check is off here and timed apart); GPU time: the same step queued
    # behind busy work.
    if settings.get('check_finite', True):
        optimizer.remove_hook('NonFiniteCheck')
        optimizer.set_gate(None)
    if type_check == 'once':
        chainer.config.type_check = False  # as the updater after its first update

    def step():
        with reporter.scope({}):
            optimizer.update(model, *batch)

    def infer():
        with chainer.using_config('train', False), chainer.no_backprop_mode(), \
                reporter.scope({}):
            model(test_x, test_t)

    for name, fn in (('train', step), ('infer', infer)):
        walls, hosts, devices, tables = [], [], [], []
        for _ in range(args.repeat):
            clock.sync()
            t0 = time.perf_counter()
            fn()
            hosts.append(1e3 * (time.perf_counter() - t0))
            clock.sync()
            walls.append(1e3 * (time.perf_counter() - t0))
            clock.busy(hosts[-1])
            start = clock.mark()
            fn()
            stop = clock.mark()
            clock.sync()
            devices.append(clock.ms(start, stop) if gpu else walls[-1])
            timer = function_timer(clock)
            clock.busy(hosts[-1])
            with timer:
                fn()
            clock.sync()
            tables.append(timer.totals())
        labels = sorted({k for t in tables for k in t})
        per_label = {k: [statistics.median(t.get(k, [0, 0, 0])[i] for t in tables)
                         for i in range(3)] for k in labels}
        result[name] = {'wall_ms': statistics.median(walls),
                        'host_ms': statistics.median(hosts),
                        'device_ms': statistics.median(devices),
                        'functions': per_label}

    # The parts outside Chainer's functions
    result['adam_ms'] = clock.time(optimizer.update, args.repeat)
    result['finite_check_ms'] = clock.time(
        lambda: first_non_finite(model, 'grad'), args.repeat)

    def next_batch():
        data.converter(train_iter.next(), device)

    result['batch_ms'] = clock.time(next_batch, args.repeat)
    result['conv'] = primary_conv_parts(clock, gpu, args.repeat)
    return result


def spread(values):
    """``{'median', 'min', 'max', 'n'}`` of ``values``, or ``None`` where there are none."""
    values = list(values)
    if not values:
        return None
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values),
            'n': len(values)}


def primary_conv_parts(clock, gpu, repeat):
    """The primary-capsule convolution of a batch of 256, in parts (ms)."""
    import chainer
    import chainer.functions as F
    import numpy
    from capsnet_chainer.kernels import conv as conv_kernel
    xp = numpy
    if gpu:
        import cupy as xp
    rng = numpy.random.default_rng(0)
    h = xp.asarray(rng.random((BATCH, 256, 20, 20), dtype=numpy.float32))
    W = xp.asarray(rng.uniform(-0.05, 0.05, (256, 256, 9, 9)).astype(numpy.float32))
    b = xp.zeros(256, numpy.float32)
    out = {}
    if gpu:
        im2col = chainer.utils.conv.im2col_gpu
    else:
        im2col = chainer.utils.conv.im2col_cpu
    col = im2col(h, 9, 9, 2, 2, 0, 0)  # (B, C, 9, 9, 6, 6)
    out['chainer im2col'] = clock.time(lambda: im2col(h, 9, 9, 2, 2, 0, 0), repeat)
    out['chainer tensordot (im2col layout)'] = clock.time(
        lambda: xp.tensordot(col, W, ((1, 2, 3), (1, 2, 3))), repeat)
    a = xp.asarray(rng.random((BATCH * 36, 256 * 81), dtype=numpy.float32))
    w = xp.asarray(rng.random((256 * 81, 256), dtype=numpy.float32))
    out['matrix product alone (9216 x 20736 x 256)'] = clock.time(
        lambda: xp.matmul(a, w), repeat)
    col = a = w = None  # free them before the next measurement

    def chainer_conv():
        x = chainer.Variable(h)
        y = F.convolution_2d(x, W, b, stride=2)
        y.grad = xp.ones_like(y.array)
        y.backward()

    h_nhwc = xp.ascontiguousarray(h.transpose(0, 2, 3, 1))

    def kernel_conv():
        x = chainer.Variable(h_nhwc)
        y = conv_kernel.convolution_2d(x, W, b, 2)
        y.grad = xp.ones_like(y.array)
        y.backward()

    out['chainer forward + backward'] = clock.time(chainer_conv, repeat)
    out['kernel forward + backward'] = clock.time(kernel_conv, repeat)
    out['gflop'] = 3 * 2 * BATCH * 36 * 256 * 256 * 81 / 1e9
    return out


def add_data_arguments(parser):
    """The flags of the GPU and the data, which :func:`data_flags` passes on."""
    parser.add_argument('--gpu', '-g', type=int, default=0)
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--n-train', type=int, default=None)
    parser.add_argument('--n-test', type=int, default=None)


def data_flags(args):
    """The data flags given to this script (:func:`add_data_arguments`), to pass on to
    a worker or train.py."""
    return [str(a) for flag, value in (('--data-dir', args.data_dir),
                                       ('--n-train', args.n_train),
                                       ('--n-test', args.n_test))
            if value is not None for a in (flag, value)]


def run_worker(args, variant, timeout=None):
    """Measures ``variant`` in a process of its own (``timeout`` seconds at most): its
    figures, or ``None`` where it failed or ran out of time (said on the console)."""
    env = dict(os.environ, **settings_of(variant)['env'])
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', variant,
           '-g', str(args.gpu), '--seed', str(args.seed), '--repeat', str(args.repeat),
           '--epochs', str(args.epochs)]
    cmd += data_flags(args)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print('variant {} ran out of its {:.0f} s'.format(variant, timeout))
        return None
    if proc.returncode != 0:
        print('variant {} failed:\n{}'.format(variant, proc.stderr[-4000:]))
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The machine and its ceilings


def machine(gpu):
    """The versions, and GPU ``gpu``'s name and memory and the driver (the CPU where -1)."""
    import capsnet_chainer  # noqa: F401
    import chainer
    import numpy
    info = {'python': platform.python_version(), 'numpy': numpy.__version__,
            'chainer': chainer.__version__}
    if gpu >= 0:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(gpu)
        name = props['name']
        info.update(gpu=name.decode() if isinstance(name, bytes) else name,
                    cupy=cupy.__version__,
                    driver=cupy.cuda.runtime.driverGetVersion(),
                    runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    memory_gib=props['totalGlobalMem'] / 2 ** 30)
        try:
            info['driver_version'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                capture_output=True, text=True, timeout=30).stdout.strip().split('\n')[0]
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        info['cpu'] = platform.processor() or platform.machine()
    return info


def ceilings(gpu):
    """Float32 matrix-product TFLOP/s (n^3, median of 10) and copy GB/s (bytes read plus
    written) on GPU ``gpu``, the one the workers use: n = 8192 and 1 GiB copied; on the
    CPU (-1), n = 1024 and 64 MiB."""
    import numpy
    if gpu < 0:
        return _ceilings(numpy, Clock(False), 1024, 2 ** 24)
    import cupy
    with cupy.cuda.Device(gpu):
        out = _ceilings(cupy, Clock(True), 8192, 2 ** 28)
        cupy.get_default_memory_pool().free_all_blocks()
    return out


def _ceilings(xp, clock, n, size):
    import numpy
    a = xp.asarray(numpy.random.default_rng(0).random((n, n), dtype=numpy.float32))
    b = xp.asarray(numpy.random.default_rng(1).random((n, n), dtype=numpy.float32))
    c = xp.empty_like(a)
    ms = clock.time(lambda: xp.matmul(a, b, out=c), 10)
    out = {'gemm_tflops': 2 * n ** 3 / ms / 1e9}
    a = b = c = None
    src = xp.ones(size, numpy.float32)
    dst = xp.empty_like(src)
    ms = clock.time(lambda: xp.copyto(dst, src), 10)
    out['copy_gbs'] = 2 * src.nbytes / ms / 1e6
    return out


def epoch_floor(gemm_tflops, n_train=None, n_test=None):
    """``(FLOP, seconds)`` of an epoch, ``n_train`` training images with reconstruction
    and ``n_test`` test images (:data:`N_TRAIN`, :data:`N_TEST` where ``None``), and
    its floor: those FLOP at the matrix-product rate ``gemm_tflops``."""
    from bench_cpu import flop_per_image
    flop = flop_per_image()
    epoch = flop['train'] * (n_train or N_TRAIN) + flop['forward'] * (n_test or N_TEST)
    return epoch, epoch / (gemm_tflops * 1e12)


def train_py_epoch(args):
    """Seconds of the second epoch of ``train.py -e 2``, from its log."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(REPO, 'train.py'), '-g', str(args.gpu),
               '-e', '2', '--reconstruct', '-o', os.path.join(tmp, 'result'),
               '--save', os.path.join(tmp, 'model')] + data_flags(args)
        env = dict(os.environ, MPLBACKEND='Agg')
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print('train.py failed:\n' + proc.stderr[-3000:])
            return None
        with open(os.path.join(tmp, 'result', 'log')) as f:
            log = json.load(f)
    return {'epoch1_s': log[0]['elapsed_time'],
            'epoch2_s': log[1]['elapsed_time'] - log[0]['elapsed_time'],
            'wall_s': wall, 'test_accuracy': log[1]['validation/main/accuracy']}


def run_peer(path, gpu, compile_):
    """The peer's figures on GPU ``gpu``, the one our workers use: it sees only that GPU,
    since its ``torch.cuda.synchronize()`` waits for the current device alone."""
    cmd = [sys.executable, path, '--device', 'cuda', '--batch', str(BATCH),
           '--epoch-images', str(N_TRAIN)] + (['--compile'] if compile_ else [])
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')  # -g counts within it where set
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible.split(',')[gpu] if visible
               else str(gpu))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {'error': proc.stderr.strip().splitlines()[-1:] or ['failed']}
    out = {}
    for line in proc.stdout.splitlines():
        m = re.search(r'train B=\d+: ([\d.]+) ms/iter, ([\d.]+) img/s', line)
        if m:
            out['train_img_s'] = float(m.group(2))
        m = re.search(r'eval B=\d+: ([\d.]+) ms/iter, ([\d.]+) img/s', line)
        if m:
            out['infer_img_s'] = float(m.group(2))
        m = re.search(r'epoch .*: ([\d.]+) s', line)
        if m:
            out['epoch_s'] = float(m.group(1))
    out['output'] = proc.stdout.strip().splitlines()
    return out


# Report


def print_breakdown(r):
    for name, batch in (('train', BATCH), ('infer', TEST_BATCH)):
        part = r[name]
        print('\n{} step, batch {} ({}): wall {:.2f} ms, host (issuing it) {:.2f} ms, '
              'GPU {:.2f} ms{}'.format(
                  'Training' if name == 'train' else 'Inference', batch, r['variant'],
                  part['wall_ms'], part['host_ms'], part['device_ms'],
                  ' -> bound by the host (Python)' if part['host_ms'] > part['device_ms']
                  else ' -> bound by the GPU'))
        print('| part | GPU ms | host ms | functions |')
        print('|---|---|---|---|')
        for group, (dev, host, calls) in group_totals(part['functions']).items():
            print('| {} | {:.2f} | {:.2f} | {:g} |'.format(group, dev, host, calls))
        if name == 'train':
            print('| Adam update (outside the functions) | {:.2f} | | |'.format(r['adam_ms']))
            print('| non-finite check of the gradients (a sync) | {:.2f} | | |'.format(
                r['finite_check_ms']))
            print('| next batch (iterator, shift, copy to the device) | {:.2f} | | |'.format(
                r['batch_ms']))
        top = sorted(part['functions'].items(), key=lambda kv: -kv[1][0])[:8]
        print('Largest functions (GPU ms / host ms / calls): ' + ', '.join(
            '{} {:.2f}/{:.2f}/{:g}'.format(k, v[0], v[1], v[2]) for k, v in top))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_data_arguments(parser)
    parser.add_argument('--seed', type=int, default=SEED)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--epochs', type=int, default=1,
                        help='epochs per variant (median, min and max of them)')
    parser.add_argument('--variants', default=','.join(VARIANTS),
                        help='comma-separated; join names with + to combine them')
    parser.add_argument('--peer', default=None, help='torch_capsnet.py to time beside')
    parser.add_argument('--no-train-py', action='store_true')
    parser.add_argument('--json', default=None, help='also write every figure here')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return
    variants = [v for v in args.variants.split(',') if v]
    try:
        check_variants(variants)
    except ValueError as e:
        parser.error(str(e))
    report = {'machine': machine(args.gpu), 'ceilings': ceilings(args.gpu)}
    print('Machine: ' + json.dumps(report['machine']))
    c = report['ceilings']
    n_train = args.n_train or N_TRAIN
    n_test = args.n_test or N_TEST
    epoch_flop, floor_s = epoch_floor(c['gemm_tflops'], n_train, n_test)
    print('Ceilings: float32 matrix products {:.1f} TFLOP/s, copy {:.0f} GB/s. An epoch '
          '({} + {} images) is {:.1f} TFLOP: at least {:.2f} s at that rate.'.format(
              c['gemm_tflops'], c['copy_gbs'], n_train, n_test, epoch_flop / 1e12, floor_s))
    report['floor_s'] = floor_s
    results = []
    for variant in variants:
        r = run_worker(args, variant)
        if r is None:
            continue
        results.append(r)
        e = r['epoch_s']
        print('\n== variant {}: epoch {:.2f} s (median of {}, {:.2f} to {:.2f}; train {:.2f} '
              's + test {:.2f} s), warm-up {:.1f} s, test accuracy after it {:.2%}'.format(
                  variant, e['median'], e['n'], e['min'], e['max'], r['train_s'],
                  r['test_s'], r['warmup_s'], r['test_accuracy']))
        print_breakdown(r)
        conv = r['conv']
        print('Primary-capsule convolution, batch 256 ({:.0f} GFLOP forward + backward), '
              'ms: '.format(conv['gflop']) + ', '.join(
                  '{} {:.2f}'.format(k, v) for k, v in conv.items() if k != 'gflop'))
    report['variants'] = results
    if not args.no_train_py:
        report['train_py'] = train_py_epoch(args)
    if args.peer and args.gpu >= 0:
        report['peer'] = {'eager': run_peer(args.peer, args.gpu, False),
                          'compile': run_peer(args.peer, args.gpu, True)}

    print('\n## Summary ({}, {})'.format(report['machine'].get('gpu', 'CPU'),
                                         time.strftime('%Y-%m-%d')))
    print('| run | epoch s | train img/s | test img/s | peak GPU MiB (pool held) |')
    print('|---|---|---|---|---|')
    for r in results:
        print('| variant {} | {:.2f} | {:.0f} | {:.0f} | {} |'.format(
            r['variant'], r['epoch_s']['median'], r['n_train'] / r['train_s'],
            r['n_test'] / r['test_s'],
            '{:.0f} ({:.0f})'.format(r['peak_used_mib'], r['pool_held_mib'])
            if 'peak_used_mib' in r else 'n/a'))
    t = report.get('train_py')
    if t:
        print('| train.py -e 2, epoch 2 (epoch 1: {:.1f} s) | {:.2f} | | | |'.format(
            t['epoch1_s'], t['epoch2_s']))
    for mode, p in report.get('peer', {}).items():
        if 'epoch_s' in p:
            print('| PyTorch peer, {} | {:.2f} | {:.0f} | {:.0f} | |'.format(
                mode, p['epoch_s'], p.get('train_img_s', 0), p.get('infer_img_s', 0)))
        else:
            print('| PyTorch peer, {} | failed: {} | | | |'.format(mode, p.get('error')))
    print('| floor: the FLOP at the measured matrix-product rate | {:.2f} | | | |'.format(
        floor_s))
    if args.json:
        from capsnet_chainer.fileio import write_atomic
        write_atomic(args.json, lambda f: f.write(json.dumps(report, indent=1).encode()))


if __name__ == '__main__':
    main()
