"""The non-finite check: a NaN or infinite loss, gradient or weight stops training.

:class:`NonFiniteCheck` is an optimizer hook that Chainer calls between the backward
pass and the update (``timing='pre'``); :meth:`NonFiniteCheck.watch` wraps the loss
function the updater calls, so that the hook sees the loss too. One float64 sum of the
loss and every gradient, one device sync per step, tells a finite step; a diverged step
never reaches the weights, a snapshot or the best model. The error names the epoch and
iteration from the optimizer's own counts (``epoch``, updates ``t``), which a resumed
run restores.
"""

import chainer
import numpy

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
    for name, a in params:
        if not numpy.isfinite(to_float(a.sum(dtype=numpy.float64))):
            return name.lstrip('/')
    return 'the parameters'  # finite one by one, but the sum overflowed float64


def _position(optimizer):
    """``(epoch, iteration)`` of the update in progress, both 1-based."""
    return optimizer.epoch + 1, optimizer.t + 1


class NonFiniteCheck(object):
    """Optimizer hook: raises :class:`NonFiniteError` before an update from a non-finite
    loss or gradients. Register it with ``optimizer.add_hook(NonFiniteCheck(),
    timing='pre')``, and pass the updater ``check.watch(loss_func)`` so that it checks
    the loss as well (a NaN loss is named as such, not as the gradients it gave).
    """

    name = 'NonFiniteCheck'
    timing = 'pre'
    call_for_each_param = False

    def __init__(self):
        self.loss = None  # the array of the loss of the step in progress

    def watch(self, loss_func):
        """``loss_func`` that keeps the loss it returns for the check (no sync)."""

        def watched(*args, **kwargs):
            loss = loss_func(*args, **kwargs)
            self.loss = loss.array
            return loss
        return watched

    def __call__(self, optimizer):
        loss, self.loss = self.loss, None
        arrays = [p.grad for p in optimizer.target.params() if p.grad is not None]
        if loss is not None:
            arrays.append(loss)
        if numpy.isfinite(to_float(float64_sum(arrays))):  # the one sync
            return
        if loss is not None and not numpy.isfinite(to_float(loss)):
            raise NonFiniteError('loss ({})'.format(to_float(loss)), *_position(optimizer))
        bad = first_non_finite(optimizer.target, 'grad')
        if bad is not None:
            raise NonFiniteError('gradient of {}'.format(bad), *_position(optimizer))
