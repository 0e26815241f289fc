"""The updater of ``train.py``: a :class:`~chainer.training.updaters.StandardUpdater`
that saves every random state in snapshots, refuses a non-finite step, type-checks
once and counts its own time."""

import functools
import time

import chainer
import numpy
from chainer import training

from capsnet_chainer.random_state import serialize_python_random
from capsnet_chainer.random_state import serialize_random_state
from capsnet_chainer.training.nonfinite import NonFiniteCheck


class ConverterStateUpdater(training.updaters.StandardUpdater):
    """A :class:`StandardUpdater` that saves every random state and refuses NaN.

    Its snapshot state adds the converter's (the shift RNG's), the training dataset's
    where it has one (the pair sampler of MultiMNIST), NumPy's global generator and
    Python's :mod:`random`. With ``check_finite`` it registers the optimizer hook
    :class:`~capsnet_chainer.training.nonfinite.NonFiniteCheck`, which Chainer calls between the
    backward pass and the update, and lets it watch the loss: a NaN or infinite loss or
    gradient raises :class:`~capsnet_chainer.training.nonfinite.NonFiniteError` before it
    reaches the weights.

    With ``check_types_once``, Chainer's type checks (each function's checks of its
    inputs' dtypes and shapes, in Python) run in its first update only: every later step
    calls the same functions on batches of the same dtypes and ranks, and on a GPU the
    checks are a large part of the host's time per step (bench/README.md), where the host,
    not the GPU, bounds the step. Where
    ``chainer.config.type_check`` is off they never run.

    With ``defer_check`` the check takes no sync: the optimizer, a
    :class:`~capsnet_chainer.training.gated_adam.GatedAdam`, skips a diverged step's
    update on the device, and the error comes in the next update, or in this one where it
    ends an epoch (:meth:`settle`), before any extension sees the epoch's weights.

    Args:
        check_finite (bool): Check the loss and gradients (one device sync per step).
        defer_check (bool): Check them without a sync, a step late (``check_finite``
            only; the optimizer must have ``set_gate``).
        check_types_once (bool): Type-check the first update only (else every update,
            as ``chainer.config.type_check`` says).
        profile (~capsnet_chainer.training.profile.StepProfile): Runs each step,
            timing its phases (the same step: bench/profile_gpu.py); ``None``: Chainer's
            step, as it is.
        Others: As :class:`~chainer.training.updaters.StandardUpdater`.
    """

    def __init__(self, iterator, optimizer, check_finite=True, loss_func=None,
                 check_types_once=True, profile=None, defer_check=False, **kwargs):
        self._check = None
        if check_finite:
            self._check = check = NonFiniteCheck(defer=defer_check)
            if defer_check:
                if not hasattr(optimizer, 'set_gate'):
                    raise ValueError('defer_check needs an optimizer that skips a step on '
                                     'the device (GatedAdam), not {}'.format(
                                         type(optimizer).__name__))
                optimizer.set_gate(check)
            loss_func = check.watch(loss_func or optimizer.target)
            optimizer.add_hook(check, timing='pre')
        super().__init__(iterator, optimizer, loss_func=loss_func, **kwargs)
        self.check_types_once = check_types_once
        self._types_checked = False  # not in the snapshot: a resumed run checks again
        #: Seconds spent in updates so far (for :class:`EpochTimes`; not in the snapshot)
        self.update_seconds = 0.0
        self.profile = profile

    def update_core(self):
        start = time.perf_counter()
        step = (super().update_core if self.profile is None
                else functools.partial(self.profile.step, self))
        if self.check_types_once and self._types_checked:
            with chainer.using_config('type_check', False):
                step()
        else:
            step()
            self._types_checked = True
        if self.is_new_epoch:
            self.settle()  # the epoch's extensions see the weights of finite steps only
        self.update_seconds += time.perf_counter() - start

    def settle(self):
        """Raises :class:`~capsnet_chainer.training.nonfinite.NonFiniteError` now if a
        step whose check was deferred was not finite (see ``defer_check``)."""
        if self._check is not None:
            self._check.settle()

    def serialize(self, serializer):
        super().serialize(serializer)
        if hasattr(self.converter, 'serialize'):
            self.converter.serialize(serializer['converter'])
        dataset = getattr(self.get_iterator('main'), 'dataset', None)
        if hasattr(dataset, 'serialize'):
            dataset.serialize(serializer['dataset'])
        serialize_random_state(serializer['numpy_random'], numpy.random)
        serialize_python_random(serializer['python_random'])
