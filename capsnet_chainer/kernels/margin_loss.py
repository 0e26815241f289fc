"""The margin loss on the digit capsules (Eq. 4 of the paper), one FunctionNode.

:class:`CapsNet`'s loss takes the capsules' lengths (:func:`~capsnet_chainer.functions.
capsule_length`) and their margin loss (:func:`~capsnet_chainer.functions.margin_loss`):
about 16 Chainer functions forward and as many backward, each with its own launches on
a GPU, where the host's time per step bounds the step. :func:`margin_loss` computes
both in one node: on CuPy arrays one CUDA kernel forward (a thread per image: its
lengths and its loss), a sum over the batch, and one kernel backward (a thread per
capsule); on NumPy arrays the same arithmetic in array operations (what the tests
check against the plain equations, and with Chainer's gradient check). The model uses
it on a GPU only, once :data:`ENABLED` is on; the CPU keeps the plain equations.

.. math::
    L = \\frac{1}{B} \\sum_b \\sum_k T_k \\max(0, m^+ - \\|v_k\\|)^2
        + \\lambda (1 - T_k) \\max(0, \\|v_k\\| - m^-)^2,
    \\qquad \\|v_k\\| = \\sqrt{|v_k|^2 + \\epsilon}

Its gradient, ``dL/dv_k = dL/d|v_k| * v_k / |v_k|``, is a second node; it supports
first-order gradients only.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
from chainer import backend
from chainer import function_node
from chainer.utils import type_check
import numpy

from capsnet_chainer.functions import EPS
from capsnet_chainer.kernels.base import cuda_source
from capsnet_chainer.kernels.base import element_strides
from capsnet_chainer.kernels.base import launch
from capsnet_chainer.kernels.base import NoDoubleBackprop
from capsnet_chainer.kernels.base import on_cuda

#: Use the node on CuPy arrays in :class:`~capsnet_chainer.model.CapsNet`'s loss
#: (``False``: the plain equations). Off until its gpu tests have passed on a GPU and
#: its speed is measured there (bench/README.md, "Prepared, not yet measured").
ENABLED = False

#: Thread ``b`` is image ``b`` of capsules ``v`` ``(B, J, D)`` (element strides ``sb,
#: sj, sd``) with label ``t[b]``: its ``J`` lengths, and its loss summed over the classes.
FORWARD_SOURCE = r'''
extern "C" __global__ void capsnet_margin_loss_{T}(
        const {T}* __restrict__ v, const int* __restrict__ t, {T}* __restrict__ lengths,
        {T}* __restrict__ per_image, long long B, int J, int D, long long sb,
        long long sj, long long sd, {T} m_plus, {T} m_minus, {T} lambda_, {T} eps) {
    for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < B;
         b += (long long)blockDim.x * gridDim.x) {
        int label = t[b];
        {T} total = 0;
        for (int j = 0; j < J; ++j) {
            const {T}* x = v + b * sb + j * sj;
            {T} q = 0;
            for (int d = 0; d < D; ++d) q += x[d * sd] * x[d * sd];
            {T} len = sqrt(q + eps);
            lengths[b * J + j] = len;
            if (j == label) {
                {T} r = m_plus - len;
                r = r > 0 ? r : 0;
                total += r * r;
            } else {
                {T} r = len - m_minus;
                r = r > 0 ? r : 0;
                total += lambda_ * (r * r);
            }
        }
        per_image[b] = total;
    }
}
'''
#: Thread ``i`` is capsule ``(b, j) = divmod(i, J)``: ``gv = (dL/d|v|) v / |v|``, with
#: ``dL/d|v|`` from the loss's gradient ``g_loss[0] / B`` and, with ``has_gl``, the
#: lengths' own gradient ``g_lengths[i]``.
BACKWARD_SOURCE = r'''
extern "C" __global__ void capsnet_margin_loss_grad_{T}(
        const {T}* __restrict__ v, const int* __restrict__ t,
        const {T}* __restrict__ lengths, const {T}* __restrict__ g_loss,
        const {T}* __restrict__ g_lengths, {T}* __restrict__ gv, long long n, int J,
        int D, long long sb, long long sj, long long sd, {T} m_plus, {T} m_minus,
        {T} lambda_, {T} inv_batch, int has_gl) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        long long b = i / J;
        int j = (int)(i % J);
        {T} len = lengths[i];
        {T} g = 0;
        if (j == t[b]) {
            {T} r = m_plus - len;
            if (r > 0) g = -2 * r;
        } else {
            {T} r = len - m_minus;
            if (r > 0) g = lambda_ * (2 * r);
        }
        g = g * (g_loss[0] * inv_batch);
        if (has_gl) g += g_lengths[i];
        {T} k = g / len;
        const {T}* x = v + b * sb + j * sj;
        for (int d = 0; d < D; ++d) gv[i * D + d] = x[d * sd] * k;
    }
}
'''


def kernel_source(which, dtype):
    """``(source, name)`` of ``'forward'`` or ``'backward'`` for ``dtype``."""
    if which == 'forward':
        return cuda_source(FORWARD_SOURCE, 'capsnet_margin_loss', dtype)
    return cuda_source(BACKWARD_SOURCE, 'capsnet_margin_loss_grad', dtype)


def supports(v):
    """Whether the model computes its loss with :func:`margin_loss`: CuPy capsules of a
    dtype of :data:`~capsnet_chainer.kernels.base.C_TYPES`, with :data:`ENABLED`."""
    return on_cuda(ENABLED, v)


def _strides(v):
    return tuple(numpy.int64(s) for s in element_strides(v))


class MarginLoss(function_node.FunctionNode):
    """``(loss, lengths)`` of capsules ``v`` ``(B, J, D)`` and labels ``t`` ``(B,)``."""

    def __init__(self, m_plus=0.9, m_minus=0.1, lambda_=0.5):
        self.constants = m_plus, m_minus, lambda_

    def check_type_forward(self, in_types):
        type_check.expect(in_types.size() == 2)
        v_type, t_type = in_types
        type_check.expect(v_type.dtype.kind == 'f', v_type.ndim == 3,
                          t_type.dtype == numpy.int32, t_type.ndim == 1,
                          t_type.shape[0] == v_type.shape[0])

    def forward(self, inputs):
        self.retain_inputs((0, 1))
        self.retain_outputs((1,))
        v, t = inputs
        xp = backend.get_array_module(v)
        B, J, D = v.shape
        m_plus, m_minus, lambda_ = (v.dtype.type(c) for c in self.constants)
        if xp is numpy:
            lengths = numpy.sqrt((v * v).sum(axis=2) + v.dtype.type(EPS))  # (B, J)
            present = numpy.arange(J) == t[:, None]
            absent = numpy.maximum(lengths - m_minus, 0)
            terms = numpy.where(present, numpy.maximum(m_plus - lengths, 0) ** 2,
                                lambda_ * (absent * absent))
            per_image = terms.sum(axis=1)
        else:
            lengths = xp.empty((B, J), v.dtype)
            per_image = xp.empty((B,), v.dtype)
            launch(*kernel_source('forward', v.dtype), B, (
                v, t, lengths, per_image, numpy.int64(B), numpy.int32(J),
                numpy.int32(D)) + _strides(v) + (m_plus, m_minus, lambda_,
                                                 v.dtype.type(EPS)), threads=128)
        loss = per_image.sum() / v.dtype.type(max(B, 1))
        return xp.asarray(loss, v.dtype), lengths

    def backward(self, indexes, grad_outputs):
        v, t = self.get_retained_inputs()
        lengths, = self.get_retained_outputs()
        g_loss, g_lengths = grad_outputs
        if g_loss is None and g_lengths is None:
            return None, None
        if g_loss is None:  # the lengths' gradient alone
            g_loss = chainer.Variable(v.xp.zeros((), v.dtype))
        inputs = (v, lengths, g_loss) + ((g_lengths,) if g_lengths is not None else ())
        return MarginLossGrad(t.array, self.constants).apply(inputs)[0], None


class MarginLossGrad(NoDoubleBackprop):
    """The gradient of :class:`MarginLoss` with respect to ``v``: inputs ``v``,
    ``lengths``, ``g_loss`` and, where given, ``g_lengths``."""

    def __init__(self, t, constants):
        self.t = t
        self.constants = constants

    def forward(self, inputs):
        v, lengths, g_loss = inputs[:3]
        g_lengths = inputs[3] if len(inputs) == 4 else None
        xp = backend.get_array_module(v)
        B, J, D = v.shape
        m_plus, m_minus, lambda_ = (v.dtype.type(c) for c in self.constants)
        inv_batch = v.dtype.type(1) / v.dtype.type(max(B, 1))
        if xp is numpy:
            present = numpy.arange(J) == self.t[:, None]
            g = numpy.where(present, -2 * numpy.maximum(m_plus - lengths, 0),
                            lambda_ * (2 * numpy.maximum(lengths - m_minus, 0)))
            g = g * (g_loss * inv_batch)
            if g_lengths is not None:
                g = g + g_lengths
            return v * (g / lengths)[:, :, None],
        gv = xp.empty((B, J, D), v.dtype)  # lengths: MarginLoss's own, C-contiguous
        has_gl = g_lengths is not None
        g_lengths = xp.ascontiguousarray(g_lengths) if has_gl else lengths
        launch(*kernel_source('backward', v.dtype), B * J, (
            v, self.t, lengths, g_loss, g_lengths, gv, numpy.int64(B * J),
            numpy.int32(J), numpy.int32(D)) + _strides(v) + (
            m_plus, m_minus, lambda_, inv_batch, numpy.int32(has_gl)), threads=128)
        return gv,


def margin_loss(v, t, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    """The margin loss of capsules ``v`` ``(B, J, D)`` for labels ``t`` ``(B,)`` int32,
    and their lengths: :func:`capsnet_chainer.functions.margin_loss` of
    :func:`capsnet_chainer.functions.capsule_length` in one node.

    Returns:
        tuple: ``(loss, lengths)``, a scalar and ``(B, J)`` Variables.
    """
    return MarginLoss(m_plus, m_minus, lambda_).apply((v, t))
