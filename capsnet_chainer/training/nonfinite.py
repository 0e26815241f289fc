"""The non-finite check: a NaN or infinite loss, gradient or weight stops training.

:class:`NonFiniteCheck` is an optimizer hook that Chainer calls between the backward
pass and the update (``timing='pre'``); :meth:`NonFiniteCheck.watch` wraps the loss
function the updater calls, so that the hook sees the loss too. One float64 sum of the
loss and every gradient, one device sync per step, tells a finite step; a diverged step
never reaches the weights, a snapshot or the best model. The error names the epoch and
iteration from the optimizer's own counts (``epoch``, updates ``t``), which a resumed
run restores.

With ``defer=True`` the check takes no sync: the verdict stays on the device, where
:class:`~capsnet_chainer.training.gated_adam.GatedAdam`'s update reads it and skips a
diverged step, and the host reads it in the next step (:meth:`NonFiniteCheck.settle`),
when its copy has arrived; the error is the same, one step later.
"""

import chainer
import numpy
from chainer import backend

from capsnet_chainer.errors import CapsNetError


class NonFiniteError(CapsNetError):
    """The loss, a gradient or a weight became NaN or infinite.

    Attributes:
        epoch (int): The epoch in progress (1-based).
        iteration (int): The iteration that produced it (1-based).
    """

    def __init__(self, what, epoch, iteration):
        super().__init__('non-finite {} at epoch {}, iteration {}'.format(
            what, epoch, iteration))
        self.epoch = epoch
        self.iteration = iteration


def to_float(array):
    """A scalar array, on any device, as a Python float."""
    return float(chainer.backend.CpuDevice().send(array))


def float64_sum(arrays):
    """The sum of every element of ``arrays`` in float64, on their device (no sync):
    finite only where every element is (NaN and infinities propagate), unless the sum
    itself overflows float64."""
    return sum(a.sum(dtype=numpy.float64) for a in arrays)


def _first_not_finite(named):
    """The name of the first of ``named`` ``[(name, array), ...]`` whose float64 sum is
    not finite (a sync for each array it reads), else ``'the parameters'``: finite one
    by one, but their sum overflowed float64."""
    for name, a in named:
        if not numpy.isfinite(to_float(a.sum(dtype=numpy.float64))):
            return name
    return 'the parameters'


def first_non_finite(link, attr='array'):
    """The name of the first parameter whose ``attr`` holds NaN or inf, else ``None``.

    One float64 sum over all arrays first (NaN and infinities propagate), so a finite
    model costs one device sync.
    """
    params = [(name, getattr(p, attr)) for name, p in link.namedparams()
              if getattr(p, attr) is not None]
    if not params:
        return None
    if numpy.isfinite(to_float(float64_sum(a for _, a in params))):
        return None
    return _first_not_finite([(name.lstrip('/'), a) for name, a in params])


def _culprit(loss, params, target):
    """What made a step's float64 sum not finite: ``'loss (nan)'``, else ``'gradient of
    NAME'``, the first of ``params`` ``[(param, grad), ...]`` of ``target`` that is not
    finite (a sync for each array it reads)."""
    if loss is not None and not numpy.isfinite(to_float(loss)):
        return 'loss ({})'.format(to_float(loss))
    names = {id(p): name.lstrip('/') for name, p in target.namedparams()}
    return 'gradient of ' + _first_not_finite([(names[id(p)], g) for p, g in params])


def _position(optimizer):
    """``(epoch, iteration)`` of the update in progress, both 1-based."""
    return optimizer.epoch + 1, optimizer.t + 1


class _Verdict(object):
    """A deferred step's verdict on its way to the host, and what names the culprit.

    On a GPU the verdict is copied into pinned host memory behind the step's work, and
    an event marks its arrival: :meth:`finite` waits for that event, not for the steps
    queued after it.
    """

    def __init__(self, ok, loss, params, target, position):
        self.loss, self.params, self.target, self.position = loss, params, target, position
        if backend.get_array_module(ok) is numpy:
            self._host, self._event = ok, None
        else:
            import cupy
            import cupyx
            self._host = cupyx.empty_pinned((1,), numpy.bool_)
            ok.get(out=self._host, blocking=False)
            self._event = cupy.cuda.Event(disable_timing=True)
            self._event.record()

    def finite(self):
        if self._event is not None:
            self._event.synchronize()
        return bool(self._host[0])

    def error(self):
        """The :class:`NonFiniteError` of this step (its loss, else the first of
        ``target``'s gradients that is not finite)."""
        return NonFiniteError(_culprit(self.loss, self.params, self.target), *self.position)


class NonFiniteCheck(object):
    """Optimizer hook: raises :class:`NonFiniteError` before an update from a non-finite
    loss or gradients. Register it with ``optimizer.add_hook(NonFiniteCheck(),
    timing='pre')``, and pass the updater ``check.watch(loss_func)`` so that it checks
    the loss as well (a NaN loss is named as such, not as the gradients it gave).

    Args:
        defer (bool): Keep each step's verdict on the device as :attr:`ok` for a
            :class:`~capsnet_chainer.training.gated_adam.GatedAdam` gated by this check,
            which skips the step's update there, and raise in the next step's call or in
            :meth:`settle` (no sync per step). Call :meth:`settle` before anything takes
            the weights or the counts as final (the updater does at each epoch's end).
    """

    name = 'NonFiniteCheck'
    timing = 'pre'
    call_for_each_param = False

    def __init__(self, defer=False):
        self.defer = defer
        self.loss = None  # the array of the loss of the step in progress
        #: The verdict on the step in progress (``defer``): a boolean array of one
        #: element on the device (the shape the gated kernel reads), true where its
        #: loss and gradients are all finite
        self.ok = None
        self._pending = None  # the last step's _Verdict (defer)

    def watch(self, loss_func):
        """``loss_func`` that keeps the loss it returns for the check (no sync)."""

        def watched(*args, **kwargs):
            loss = loss_func(*args, **kwargs)
            self.loss = loss.array
            return loss
        return watched

    def __call__(self, optimizer):
        loss, self.loss = self.loss, None
        if self.defer:
            self.settle()  # the last step's verdict, long arrived
        params = [(p, p.grad) for p in optimizer.target.params() if p.grad is not None]
        total = float64_sum([g for _, g in params] + ([loss] if loss is not None else []))
        if self.defer:
            self.ok = backend.get_array_module(total).isfinite(total).reshape(1)  # no sync
            self._pending = _Verdict(self.ok, loss, params, optimizer.target,
                                     _position(optimizer))
        elif not numpy.isfinite(to_float(total)):  # the one sync
            raise NonFiniteError(_culprit(loss, params, optimizer.target),
                                 *_position(optimizer))

    def settle(self):
        """Raises :class:`NonFiniteError` if the last deferred step was not finite (its
        update was skipped), waiting for that step's verdict only; else nothing (also
        without ``defer``, or with no step since the last call)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.finite():
            raise pending.error()
