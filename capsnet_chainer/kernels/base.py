"""What the kernels share: a gradient node without double backpropagation, the bias of
a prediction map folded into the map, and how a CUDA kernel is built and launched.

Shape letters are those of :mod:`capsnet_chainer`; a map ``W`` ``(M, P, F)`` takes
``P``-dimensional capsules to ``F = J * D`` outputs.
"""

import numpy
from chainer import backend
from chainer import function_node
from chainer.backends import cuda
from chainer.utils import type_check


class NoDoubleBackprop(function_node.FunctionNode):
    """A gradient node: its own backward (double backpropagation) is not provided."""

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            '{} does not support double backpropagation'.format(self.label))


def with_bias(u, W, b):
    """``u`` ``(..., P)`` with a last column of ones and ``W`` ``(M, P, F)`` with the bias
    ``b`` ``(M, F)`` as an extra input row, so that ``u W + b = u_e W_e``."""
    if b is None:
        return u, W
    xp = backend.get_array_module(u)
    u_e = xp.empty(u.shape[:-1] + (u.shape[-1] + 1,), u.dtype)
    u_e[..., :-1] = u
    u_e[..., -1] = 1
    return u_e, xp.concatenate((W, b[:, None, :]), axis=1)


def check_map_inputs(in_types, u_ndim, n_cell=1):
    """Type checks of ``(u, W)`` or ``(u, W, b)`` for maps ``W`` ``(M, P, F)``: ``u`` has
    ``u_ndim`` axes, ``M * n_cell`` capsules on axis 1 and ``P`` dimensions last; ``b``
    is ``(M, F)``."""
    n_in = in_types.size()
    type_check.expect(2 <= n_in, n_in <= 3)
    u_type, w_type = in_types[:2]
    type_check.expect(
        u_type.dtype.kind == 'f',
        w_type.dtype == u_type.dtype,
        u_type.ndim == u_ndim,
        w_type.ndim == 3,
    )
    # The shapes only once the ranks are right: their axes exist then
    type_check.expect(
        w_type.shape[0] * n_cell == u_type.shape[1],
        w_type.shape[1] == u_type.shape[u_ndim - 1],
    )
    if type_check.eval(n_in) == 3:
        b_type = in_types[2]
        type_check.expect(b_type.dtype == u_type.dtype, b_type.ndim == 2,
                          b_type.shape[0] == w_type.shape[0],
                          b_type.shape[1] == w_type.shape[2])


# --- CUDA kernels (RawKernel sources with a grid-stride loop over ``n`` units) ------------

#: The C type of each dtype the CUDA kernels are built for.
C_TYPES = {numpy.dtype(numpy.float32): 'float', numpy.dtype(numpy.float64): 'double'}


def cuda_source(template, name, dtype):
    """``(source, name)`` of a kernel for ``dtype``: ``{T}`` in ``template`` replaced by
    its C type (:data:`C_TYPES`), which ends the kernel's name too."""
    ctype = C_TYPES[numpy.dtype(dtype)]
    return template.replace('{T}', ctype), '{}_{}'.format(name, ctype)


def on_cuda(enabled, *arrays):
    """Whether CUDA kernels take ``arrays``: ``enabled``, CuPy arrays, one dtype of
    :data:`C_TYPES`."""
    return (enabled and backend.get_array_module(arrays[0]) is not numpy
            and arrays[0].dtype in C_TYPES
            and all(a.dtype == arrays[0].dtype for a in arrays))


def element_strides(a):
    """The strides of ``a`` in elements, as the kernels index."""
    return tuple(s // a.itemsize for s in a.strides)


def launch(source, name, n, args, threads=256, max_blocks=2 ** 16):
    """Runs kernel ``name`` of ``source`` (CuPy compiles it once) over ``n`` units; a
    grid-stride loop in the kernel covers those beyond ``max_blocks`` blocks."""
    if n:
        blocks = max(1, min(-(-n // threads), max_blocks))
        cuda.raw(source, name)((blocks,), (threads,), args)
