"""Where a training step's time goes: :class:`StepProfile`, which the updater hands its
step to when given one (``ConverterStateUpdater(..., profile=StepProfile(device))``),
and which times the Trainer's extensions between the steps. Without one the updater
runs Chainer's own step and pays nothing.

A profiled step is Chainer's ``StandardUpdater.update_core`` and
``GradientMethod.update`` written out, the same calls in the same order, with a mark
between the phases of :data:`PHASES`; the time from the end of one step to the start
of the next is ``extensions`` (the Trainer's loop, the extensions and their triggers).
At each mark it reads the host's clock (``perf_counter``, and the thread's CPU time)
and, on a GPU, records a CUDA event. Two kinds of steps:

* *natural* steps run as without the profile; each phase's wall and CPU time, and the
  GPU time between its events (the GPU's span, idle gaps included, since the host
  issues the work as it goes);
* *device* steps (the iterations in ``device_steps``) queue a few milliseconds of
  matrix products before each phase, so that the GPU is still busy when the host has
  issued the phase: the events then time the phase's GPU work alone (bench_gpu.py's
  method). Their wall times are not the run's, so they are left out of the host
  figures, and their epoch is marked.
"""

import statistics
import time

import chainer
import numpy
from chainer.dataset import convert

#: The phases of a step, in order: the iterator's batch; the converter's host part
#: (concatenation, shift, or the plan of a batch on the device); sending to the device
#: (and the converter's device part); the loss; the backward pass; the optimizer's
#: ``pre`` hooks (the non-finite check: one sync); Adam's update.
PHASES = ('batch', 'convert', 'to_device', 'forward', 'backward', 'check', 'update')
#: The time between steps, as a phase of the step before.
BETWEEN = 'extensions'
#: Each phase's successor.
NEXT = dict(zip(PHASES, PHASES[1:]))
#: The GPU work queued ahead of some work to time it alone: this many times the host's
#: time to issue that work, at least.
HOST_FACTOR = 3


class BusyWork(object):
    """Matrix products queued on the GPU (``xp``: CuPy) ahead of some work, long enough
    that the host has issued all of that work before the GPU starts it: CUDA events
    around the work then time the GPU alone, no launch gap counted (the device steps
    here, and ``bench/bench_gpu.py``'s GPU times)."""

    def __init__(self, xp):
        self.xp = xp
        self._product = None  # (a, out, ms of one product)

    def queue(self, ms):
        """Queues at least ``ms`` of matrix products."""
        xp = self.xp
        if self._product is None:
            a = xp.ones((2048, 2048), numpy.float32)
            out = xp.empty_like(a)
            xp.matmul(a, a, out=out)  # cuBLAS's set-up, outside the measurement
            start, stop = xp.cuda.Event(), xp.cuda.Event()
            start.record()
            for _ in range(10):
                xp.matmul(a, a, out=out)
            stop.record()
            stop.synchronize()
            self._product = (a, out, max(1e-3, xp.cuda.get_elapsed_time(start, stop) / 10))
        a, out, one = self._product
        for _ in range(max(1, int(ms / one) + 1)):
            xp.matmul(a, a, out=out)

    def ahead_of(self, host_ms, floor_ms):
        """Queues enough for work that the host takes ``host_ms`` to issue:
        :data:`HOST_FACTOR` times that, at least ``floor_ms``."""
        self.queue(max(floor_ms, HOST_FACTOR * host_ms))


class StepProfile(object):
    """Marks the phases of the training steps and the extensions' calls.

    Args:
        device (~chainer.backend.Device): The run's device (``None``: the CPU).
        device_steps (iterable of int): Iterations (1-based) timed as device steps.
        busy_ms (float): At least this much GPU work is queued before each phase of a
            device step (more where the phase takes longer to issue).
    """

    def __init__(self, device=None, device_steps=(), busy_ms=20.0):
        self.xp = numpy if device is None else device.xp
        self.gpu = self.xp is not numpy
        self.device_steps = set(device_steps)
        self.busy_ms = busy_ms
        self.steps = []  # one dict per step
        self.extension_calls = []  # (iteration, epoch, name, seconds)
        self._step = None
        self._busy = BusyWork(self.xp) if self.gpu else None
        self._host_ms = {}  # phase -> its wall ms in the last natural step

    # The clocks

    def _event(self):
        if not self.gpu:
            return None
        event = self.xp.cuda.Event()
        event.record()
        return event

    def _now(self):
        return time.perf_counter(), time.thread_time(), self._event()

    # The updater's calls

    def mark(self, phase):
        """Ends ``phase`` of the step in progress; the next one starts."""
        step = self._step
        end = self._now()
        start = end
        if not step['device']:
            self._host_ms[phase] = 1e3 * (end[0] - step['marks'][-1][2][0])
        elif self.gpu and phase != PHASES[-1]:
            start = self._busy_before(NEXT[phase])
        step['marks'].append((phase, end, start))

    def _busy_before(self, phase):
        """Queues GPU work for a device step's ``phase`` to start behind: more than the
        host takes to issue it (by its last natural time). Returns the clocks after."""
        self._busy.ahead_of(self._host_ms.get(phase, 0.0), self.busy_ms)
        return self._now()

    def step(self, updater):
        """Runs one step of ``updater`` (a ``StandardUpdater`` of a ``GradientMethod``
        that clears its gradients), marking its phases."""
        iterator = updater.get_iterator('main')
        optimizer = updater.get_optimizer('main')
        if (not isinstance(optimizer, chainer.optimizer.GradientMethod)
                or not getattr(optimizer, '_use_cleargrads', True)):
            raise ValueError('StepProfile times GradientMethod optimizers that clear '
                             'their gradients (Chainer\'s default)')
        iteration = updater.iteration + 1
        start = self._now()
        if self.steps:  # the Trainer's work since the last step
            self.steps[-1]['after'] = start
        device = iteration in self.device_steps
        self._step = {'iteration': iteration, 'epoch': updater.epoch + 1, 'device': device,
                      'marks': [('begin', start, self._busy_before(PHASES[0])
                                 if device and self.gpu else start)]}
        batch = iterator.next()
        self.mark('batch')
        converter = updater.converter
        if hasattr(converter, 'on_host') and hasattr(converter, 'to_device'):
            host = converter.on_host(batch)
            self.mark('convert')
            in_arrays = converter.to_device(host, updater.input_device)
        else:
            self.mark('convert')
            in_arrays = convert._call_converter(converter, batch, updater.input_device)
        self.mark('to_device')
        loss_func = updater.loss_func or optimizer.target
        if isinstance(in_arrays, tuple):
            loss = loss_func(*in_arrays)
        elif isinstance(in_arrays, dict):
            loss = loss_func(**in_arrays)
        else:
            loss = loss_func(in_arrays)
        self.mark('forward')
        optimizer.target.cleargrads()
        loss.backward(loss_scale=optimizer._loss_scale)
        del loss
        self.mark('backward')
        optimizer.reallocate_cleared_grads()
        optimizer.check_nan_in_grads()
        optimizer.call_hooks('pre')
        self.mark('check')
        optimizer.t += 1
        if optimizer.is_safe_to_update():
            for param in optimizer.target.params():
                param.update()
        optimizer.reallocate_cleared_grads()
        optimizer.call_hooks('post')
        optimizer.update_loss_scale()
        if updater.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)
        self.mark('update')
        self.steps.append(self._step)
        self._step = None

    def finish(self):
        """Ends the last step's ``extensions`` (call when ``trainer.run()`` returns)."""
        if self.steps and 'after' not in self.steps[-1]:
            self.steps[-1]['after'] = self._now()

    def wrap_extensions(self, trainer):
        """Times every extension of ``trainer`` when it runs (call before
        ``trainer.run()``)."""
        for name, entry in trainer._extensions.items():
            if not isinstance(entry.extension, _TimedExtension):
                entry.extension = _TimedExtension(entry.extension, name, self)

    # The figures

    def records(self):
        """Every step: ``{'iteration', 'epoch', 'device', 'begin', 'after'}`` (its
        start and the start of the next, host seconds) and, per phase, ``(wall ms, CPU
        ms, GPU ms or None)``, ``extensions`` where the next step or :meth:`finish`
        followed. Syncs the GPU."""
        if self.gpu:
            self.xp.cuda.Device().synchronize()
        out = []
        for step in self.steps:
            record = {k: step[k] for k in ('iteration', 'epoch', 'device')}
            marks = step['marks']
            record['begin'] = marks[0][1][0]
            for (_, _, start), (phase, end, _) in zip(marks, marks[1:]):
                record[phase] = self._span(start, end)
            if 'after' in step:
                record[BETWEEN] = self._span(marks[-1][2], step['after'])
                record['after'] = step['after'][0]
            out.append(record)
        return out

    def _span(self, start, end):
        """``(wall ms, CPU ms, GPU ms or None)`` between two readings of the clocks."""
        gpu = None
        if self.gpu:
            gpu = self.xp.cuda.get_elapsed_time(start[2], end[2])
        return 1e3 * (end[0] - start[0]), 1e3 * (end[1] - start[1]), gpu

    def summary(self, skip_epochs=1):
        """The figures of the steps after the first ``skip_epochs`` epochs (which
        compile CuPy's kernels): per phase the mean and median wall, CPU and GPU-span
        ms of natural steps and the median GPU-busy ms of device steps; per epoch its
        seconds; per extension its calls and seconds."""
        records = self.records()
        kept = [r for r in records if r['epoch'] > skip_epochs]
        natural = [r for r in kept if not r['device']]
        device = [r for r in records if r['device']]
        phases = {}
        for phase in PHASES + (BETWEEN,):
            rows = [r[phase] for r in natural if phase in r]
            if not rows:
                continue
            figures = {'steps': len(rows)}
            for i, key in enumerate(('wall_ms', 'cpu_ms', 'gpu_span_ms')):
                values = [row[i] for row in rows if row[i] is not None]
                if values:
                    figures[key] = statistics.fmean(values)
                    figures[key[:-3] + '_median_ms'] = statistics.median(values)
            busy = [r[phase][2] for r in device if phase in r and r[phase][2] is not None]
            if busy and phase != BETWEEN:
                figures['gpu_busy_ms'] = statistics.median(busy)
            phases[phase] = figures
        step_wall = [sum(r[p][0] for p in PHASES) for r in natural]
        epochs = {}
        for r in records:
            e = epochs.setdefault(r['epoch'], {'epoch': r['epoch'], 'steps': 0,
                                               'device_steps': 0, 'steps_s': 0.0,
                                               'extensions_s': 0.0})
            e['steps'] += 1
            e['device_steps'] += r['device']
            e['steps_s'] += sum(r[p][0] for p in PHASES) / 1e3
            e['extensions_s'] += r.get(BETWEEN, (0.0,))[0] / 1e3
            e.setdefault('begin', r['begin'])
            e['end'] = r.get('after', r['begin'])
        extensions = {}
        for _, epoch, name, seconds in self.extension_calls:
            x = extensions.setdefault(name, {'calls': 0, 'seconds': 0.0,
                                             'seconds_after_skip': 0.0})
            x['calls'] += 1
            x['seconds'] += seconds
            if epoch > skip_epochs:
                x['seconds_after_skip'] += seconds
        return {'gpu': self.gpu, 'skip_epochs': skip_epochs, 'natural_steps': len(natural),
                'device_steps': len(device), 'phases': phases,
                'step_wall_ms': statistics.fmean(step_wall) if step_wall else None,
                'step_wall_median_ms': statistics.median(step_wall) if step_wall else None,
                'epochs': [_epoch(epochs[k]) for k in sorted(epochs)],
                'extensions': extensions}


def _epoch(e):
    """An epoch's figures, with its wall seconds from its first step to the end of
    the extensions after its last."""
    e = dict(e)
    e['wall_s'] = e.pop('end') - e.pop('begin')
    return e


class _TimedExtension(object):
    """An extension that tells a :class:`StepProfile` how long each call took; every
    other attribute is the extension's."""

    def __init__(self, extension, name, profile):
        self.__dict__.update(_extension=extension, _name=name, _profile=profile)

    def __call__(self, trainer):
        start = time.perf_counter()
        try:
            return self._extension(trainer)
        finally:
            steps = self._profile.steps
            self._profile.extension_calls.append(
                (trainer.updater.iteration, steps[-1]['epoch'] if steps else 0, self._name,
                 time.perf_counter() - start))

    def __getattr__(self, name):
        return getattr(self._extension, name)
