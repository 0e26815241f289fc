"""Capsule functions: squash, dynamic routing and the two losses.

All but :func:`routing` are built from :mod:`chainer.functions`, so autograd gives
the backward pass (and double backward); :func:`routing` is a FunctionNode with a
hand-written backward (:mod:`capsnet_chainer.kernels`). Shapes use ``B`` batch,
``J`` digit capsules (10), ``I`` primary capsules (1152) and ``D`` capsule dimensions
(16).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import chainer.functions as F
import numpy

from capsnet_chainer import kernels

#: Added inside the square root of every norm, so that the norm and its gradient stay
#: finite at zero length (the exact norm has an infinite derivative there).
EPS = kernels.EPS


def squared_norm(x, axis=-1):
    """Sum of squares along ``axis``, dimension kept."""
    return F.sum(x * x, axis=axis, keepdims=True)


def capsule_length(v, axis=-1):
    """Length of each capsule vector, finite in value and gradient at zero.

    Args:
        v (~chainer.Variable): Capsules, e.g. ``(B, J, D)``.
        axis (int): The axis that holds the capsule's dimensions.

    Returns:
        ~chainer.Variable: ``sqrt(|v|^2 + EPS)``, with ``axis`` removed, e.g. ``(B, J)``.
    """
    return F.sqrt(F.sum(v * v, axis=axis) + EPS)


def squash(s, axis=-1):
    """The capsule non-linearity, Eq. 1 of the paper [#]_.

    .. math::
        v = \\frac{\\|s\\|^2}{1 + \\|s\\|^2} \\frac{s}{\\|s\\|}
          = \\frac{s \\, \\|s\\|}{1 + \\|s\\|^2}

    The second form (the reference's) needs no division by the norm; the norm carries
    ``EPS`` so that the gradient is finite at ``s = 0``.

    Args:
        s (~chainer.Variable): Total inputs, any shape; ``axis`` holds the vector.
        axis (int): The capsule-dimension axis.

    Returns:
        ~chainer.Variable: ``v``, same shape as ``s``, every vector shorter than 1.
    """
    sq = squared_norm(s, axis)
    scale = F.sqrt(sq + EPS) / (1 + sq)
    return s * F.broadcast_to(scale, s.shape)


def routing(u_hat, n_iteration=3, grad_all_iterations=True):
    """Routing by agreement, Procedure 1 of the paper [#]_.

    Logits ``b`` start at zero; each iteration takes ``c = softmax(b)`` over the digits,
    ``s_j = sum_i c_ij u_hat[j|i]``, ``v_j = squash(s_j)``, and between iterations
    ``b_ij += v_j . u_hat[j|i]``.

    Args:
        u_hat (~chainer.Variable): Predictions ``(B, J, I, D)``.
        n_iteration (int): Routing iterations (at least 1).
        grad_all_iterations (bool): ``True`` (the reference) backpropagates through
            every iteration. ``False`` treats the coupling coefficients as constants,
            so gradients reach ``u_hat`` only through the last weighted sum.

    Returns:
        ~chainer.Variable: Digit capsules ``v`` ``(B, J, D)``. Its backward is written by
        hand (:class:`~capsnet_chainer.kernels.Routing`): first-order gradients only.
    """
    if n_iteration < 1:
        raise ValueError('n_iteration must be at least 1, got {}'.format(n_iteration))
    return kernels.routing(u_hat, n_iteration, grad_all_iterations)


def margin_loss(lengths, t, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    """Margin loss, Eq. 4 of the paper [#]_, summed over classes, mean over the batch.

    .. math::
        L = \\sum_k T_k \\max(0, m^+ - \\|v_k\\|)^2
            + \\lambda (1 - T_k) \\max(0, \\|v_k\\| - m^-)^2

    Args:
        lengths (~chainer.Variable): Capsule lengths ``(B, J)``.
        t (numpy.ndarray or cupy.ndarray): Labels ``(B,)``, int32.

    Returns:
        ~chainer.Variable: Scalar loss.
    """
    B, J = lengths.shape
    present = one_hot(t, J, lengths.dtype)  # (B, J)
    loss = (present * F.relu(m_plus - lengths) ** 2
            + lambda_ * (1 - present) * F.relu(lengths - m_minus) ** 2)
    return F.sum(loss) / B


def reconstruction_loss(x_rec, x):
    """Sum of squared pixel errors per image, mean over the batch (unweighted).

    Args:
        x_rec (~chainer.Variable): Reconstructions ``(B, C, H, W)``.
        x (~chainer.Variable or array): Inputs, same shape.

    Returns:
        ~chainer.Variable: Scalar loss.
    """
    return F.sum(F.squared_difference(x_rec, x)) / x_rec.shape[0]


def mask(v, labels):
    """Keeps the capsule of ``labels`` in each example and zeroes the others.

    Args:
        v (~chainer.Variable): Digit capsules ``(B, J, D)``.
        labels (array): Which capsule to keep ``(B,)``, int32.

    Returns:
        ~chainer.Variable: ``(B, J, D)``.
    """
    keep = one_hot(labels, v.shape[1], v.dtype)  # (B, J)
    return v * F.broadcast_to(keep[:, :, None], v.shape)


def one_hot(labels, n_class, dtype=numpy.float32):
    """One-hot rows ``(B, n_class)`` for int labels ``(B,)``, on the labels' device."""
    xp = chainer.backend.get_array_module(labels)
    return xp.eye(n_class, dtype=dtype)[labels]
