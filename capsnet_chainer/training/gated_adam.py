"""Adam whose update a flag on the device can skip: the non-finite check without a sync.

The non-finite check decides whether a step may reach the weights. Read on the host,
that verdict costs a device sync per step: the host waits for the backward pass before
it issues the update and the next step, and the GPU idles meanwhile. With a gate
(:class:`~capsnet_chainer.training.nonfinite.NonFiniteCheck` with ``defer=True``), the
verdict stays on the device as a boolean array that the update itself reads: the kernel
leaves the weights and Adam's moments as they were where it is false, and the host reads
the verdict a step later, from a copy that has long arrived, to stop the run.

Without a gate, or with a gate whose verdict is ``None``, :class:`GatedAdam` is
Chainer's :class:`~chainer.optimizers.Adam` unchanged; with one, a step it lets through
is Chainer's update with the same arithmetic (the kernel below is Chainer's plain Adam
kernel inside one ``if``), so the weights are the same bit for bit.
"""

import chainer
from chainer.backends import cuda
from chainer.optimizers import adam


#: The update kernel's inputs, outputs and body: Chainer 7.8.1's plain Adam kernel
#: (``AdamRule._kernel``), its body inside ``if (ok[0])``, and the verdict ``ok``.
KERNEL_IN = ('P grad, T alpha_t, T one_minus_beta1, T one_minus_beta2, '
             'T eps, T eta, T weight_decay_rate, raw T dummy, raw bool ok')
KERNEL_OUT = 'P param, P m, P v'
KERNEL_BODY = '''if (ok[0]) {
                   T grad_ = static_cast<T>(grad);
                   T m_ = static_cast<T>(m);
                   T v_ = static_cast<T>(v);
                   m_ += one_minus_beta1 * (grad_ - m_);
                   v_ += one_minus_beta2 * (grad_ * grad_ - v_);
                   m = static_cast<P>(m_);
                   v = static_cast<P>(v_);
                   param -= eta * (alpha_t * m_ / (sqrt(v_) + eps) +
                                   weight_decay_rate * param);
               }'''


class GatedAdamRule(adam.AdamRule):
    """:class:`~chainer.optimizers.adam.AdamRule` that skips its update where its
    optimizer's gate says the step is not finite.

    Args:
        parent_hyperparam: As :class:`~chainer.optimizers.adam.AdamRule`.
        optimizer (GatedAdam): The optimizer whose ``gate`` it reads.
    """

    _gated_kernel = None

    def __init__(self, parent_hyperparam=None, optimizer=None):
        super().__init__(parent_hyperparam)
        self._optimizer = optimizer

    def _verdict(self):
        """The gate's verdict for this step: a boolean array of one element on the
        parameter's device, or ``None`` (no gate: update)."""
        gate = getattr(self._optimizer, 'gate', None)
        return None if gate is None else gate.ok

    def update_core_cpu(self, param):
        ok = self._verdict()
        if ok is None or bool(ok):  # NumPy: the verdict is on the host already
            super().update_core_cpu(param)

    def update_core_gpu(self, param):
        ok = self._verdict()
        if ok is None:
            return super().update_core_gpu(param)
        grad = param.grad
        if grad is None:
            return
        hp = self.hyperparam
        dtype = adam._get_intermediate_dtype(param.dtype.type)
        self._check_eps(dtype)
        if self._dummy is None:
            self._dummy = cuda.cupy.empty((0,), dtype=dtype)  # deduces T, as Chainer's
        if GatedAdamRule._gated_kernel is None:
            GatedAdamRule._gated_kernel = cuda.elementwise(
                KERNEL_IN, KERNEL_OUT, KERNEL_BODY, 'gated_adam')
        GatedAdamRule._gated_kernel(
            grad, self.alpha_t, 1 - hp.beta1, 1 - hp.beta2, hp.eps, hp.eta,
            hp.weight_decay_rate, self._dummy, ok,
            param.data, self.state['m'], self.state['v'])


class GatedAdam(chainer.optimizers.Adam):
    """Chainer's :class:`~chainer.optimizers.Adam`, whose update ``gate`` can skip.

    ``gate`` is ``None`` (Chainer's Adam) or an object whose ``ok``, read by every
    parameter's update, is ``None`` (update) or a boolean array of one element on the
    parameters' device that is false for a step that must not reach the weights; the updater sets
    it (:meth:`set_gate`). Snapshots hold what Adam's hold, so either optimizer resumes
    from the other's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = None

    def create_update_rule(self):
        return GatedAdamRule(self.hyperparam, optimizer=self)

    def set_gate(self, gate):
        """Gates the update by ``gate.ok`` (``None``: no gate). Plain Adam only: the
        AMSGrad and AdaBound variants have no gated kernel."""
        if gate is not None and (self.amsgrad or self.adabound):
            raise ValueError('GatedAdam gates plain Adam only, not amsgrad or adabound')
        self.gate = gate
