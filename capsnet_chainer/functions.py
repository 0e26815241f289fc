"""The paper's equations in :mod:`chainer.functions`: squash, routing, the losses.

Every function here is built from :mod:`chainer.functions`, so autograd gives the
backward pass and double backpropagation. They are the definition the fast kernels
(:mod:`capsnet_chainer.kernels`) are tested against, and the network runs them when
it is built with ``CapsNet(fast_kernels=False)``. Shape letters are those of
:mod:`capsnet_chainer`.

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import chainer
import chainer.functions as F
import numpy

#: Added inside the square root of every norm, so that the norm and its gradient stay
#: finite at zero length (the exact norm has an infinite derivative there).
EPS = 1e-8


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


def prediction_vectors(u, W, b=None, n_class=10, n_cell=1):
    """Prediction vectors ``u_hat[j|i] = W_ij u_i (+ b_ij)`` (Eq. 2 of the paper [#]_).

    Capsule ``i`` uses map ``i // n_cell``: ``n_cell`` consecutive capsules (the grid
    cells of one capsule type) share a map with ``n_cell > 1`` (the reference), every
    capsule has its own with ``n_cell = 1`` (the paper). Column ``j * D + d`` of a map
    is dimension ``d`` of digit ``j``.

    Args:
        u (~chainer.Variable): Primary capsules ``(B, I, P)``.
        W (~chainer.Variable): Maps ``(M, P, J * D)``, ``M = I // n_cell``.
        b (~chainer.Variable): Biases ``(M, J * D)`` or ``None``.
        n_class (int): ``J``.
        n_cell (int): Consecutive capsules that share a map.

    Returns:
        ~chainer.Variable: ``u_hat`` ``(B, J, I, D)``.
    """
    B, I, P = u.shape
    M, _, JD = W.shape
    N, J, D = n_cell, n_class, W.shape[2] // n_class
    if M * N != I or J * D != JD:
        raise ValueError('W {} does not fit u {} with n_class {} and n_cell {}'.format(
            W.shape, u.shape, n_class, n_cell))
    u = F.reshape(u, (B, M, N, P))  # (B, M, N, P): capsule i = (m, n) uses map m
    u_hat = F.einsum('bmnp,mpk->bmnk', u, W)  # (B, M, N, J * D): Eq. 2, W_ij u_i
    if b is not None:
        u_hat = u_hat + F.broadcast_to(b[None, :, None, :], u_hat.shape)  # (B, M, N, J * D)
    u_hat = F.reshape(u_hat, (B, I, J, D))  # (B, I, J, D)
    return F.transpose(u_hat, (0, 2, 1, 3))  # (B, J, I, D)


def routing(u_hat, n_iteration=3, grad_all_iterations=True, none_of_the_above=False):
    """Routing by agreement, Procedure 1 of the paper [#]_.

    Logits ``b`` start at zero; each iteration takes ``c = softmax(b)`` over the digits,
    ``s_j = sum_i c_ij u_hat[j|i]``, ``v_j = squash(s_j)``, and between iterations
    ``b_ij += v_j . u_hat[j|i]``.

    Args:
        u_hat (~chainer.Variable): Predictions ``(B, J, I, D)``.
        n_iteration (int): Routing iterations (at least 1).
        grad_all_iterations (bool): ``True`` (the reference) backpropagates through
            every iteration. ``False`` treats the coupling coefficients as constants:
            the iterations that only update the logits see ``u_hat`` detached, so
            gradients reach ``u_hat`` only through the last weighted sum.
        none_of_the_above (bool): Route through :func:`coupling`'s extra category (Sec. 7
            of the paper, for CIFAR-10): a primary capsule that fits no class can send
            its output nowhere.

    Returns:
        ~chainer.Variable: Digit capsules ``v`` ``(B, J, D)``.
    """
    for c, v in routing_iterations(u_hat, n_iteration, grad_all_iterations,
                                   none_of_the_above):
        pass
    return v


def coupling(b, none_of_the_above=False):
    """The coupling coefficients ``c = softmax(b)`` over the classes (axis 1) of logits
    ``b`` ``(B, J, I)``.

    With ``none_of_the_above``, a "none-of-the-above" category joins the classes with a
    logit fixed at zero, and its coupling is dropped: each primary capsule's couplings
    to the classes then sum to less than 1 (the official code's "leaky routing").
    """
    if not none_of_the_above:
        return F.softmax(b, axis=1)
    xp = chainer.backend.get_array_module(b)
    leak = xp.zeros((b.shape[0], 1, b.shape[2]), b.dtype)  # (B, 1, I): its logit, 0
    return F.softmax(F.concat((leak, b), axis=1), axis=1)[:, 1:]  # (B, J, I)


def routing_iterations(u_hat, n_iteration=3, grad_all_iterations=True,
                       none_of_the_above=False):
    """:func:`routing`, iteration by iteration: yields the coupling coefficients ``c``
    ``(B, J, I)`` of each iteration and the capsules ``v`` ``(B, J, D)`` they give.

    What a trained network's routing does can be read from them
    (:mod:`capsnet_chainer.evaluation`); the arguments are those of :func:`routing`.
    """
    if int(n_iteration) < 1:
        raise ValueError('n_iteration must be at least 1, got {}'.format(n_iteration))
    u_hat = chainer.as_variable(u_hat)
    B, J, I, D = u_hat.shape
    xp = chainer.backend.get_array_module(u_hat)
    # What the logits are computed from: u_hat itself, or a constant copy of it.
    u_agree = u_hat if grad_all_iterations else chainer.Variable(
        u_hat.array, requires_grad=False)  # (B, J, I, D)
    b = xp.zeros((B, J, I), u_hat.dtype)  # (B, J, I)
    for r in range(n_iteration):
        last = r == n_iteration - 1
        u = u_hat if last else u_agree  # (B, J, I, D)
        c = coupling(b, none_of_the_above)  # (B, J, I), over the digits
        s = F.sum(F.broadcast_to(c[:, :, :, None], u.shape) * u, axis=2)  # (B, J, D)
        v = squash(s)  # (B, J, D)
        yield c, v
        if not last:
            b = b + F.sum(u * F.broadcast_to(v[:, :, None, :], u.shape), axis=3)  # (B, J, I)


def shared_routing(u, W, b=None, n_class=10, n_iteration=3, grad_all_iterations=True,
                   none_of_the_above=False):
    """Predictions from maps shared by the cells of each capsule type, then routing.

    Plain :func:`prediction_vectors` with ``n_cell = N`` followed by :func:`routing`;
    :func:`capsnet_chainer.kernels.routing.shared_routing` computes the same without
    forming ``u_hat``.

    Args:
        u (~chainer.Variable): Primary capsules ``(B, T, N, P)``: T types on N cells.
        W (~chainer.Variable): Maps ``(T, P, J * D)``.
        b (~chainer.Variable): Biases ``(T, J * D)`` or ``None``.
        n_class (int): ``J``.
        n_iteration (int): Routing iterations.
        grad_all_iterations, none_of_the_above (bool): See :func:`routing`.

    Returns:
        ~chainer.Variable: Digit capsules ``v`` ``(B, J, D)``.
    """
    B, T, N, P = u.shape
    u = F.reshape(u, (B, T * N, P))  # (B, I, P)
    u_hat = prediction_vectors(u, W, b, n_class, N)  # (B, J, I, D)
    return routing(u_hat, n_iteration, grad_all_iterations, none_of_the_above)  # (B, J, D)


def per_image_standardization(x):
    """Each image scaled to zero mean and unit variance over its pixels and channels:
    ``(x - mean) / max(std, 1 / sqrt(C * H * W))`` (TensorFlow's
    ``per_image_standardization``, which the official code applies to CIFAR-10 and
    smallNORB).

    Args:
        x (~chainer.Variable): Images ``(B, C, H, W)``.

    Returns:
        ~chainer.Variable: ``(B, C, H, W)``.
    """
    n = x.shape[1] * x.shape[2] * x.shape[3]
    mean = F.broadcast_to(F.mean(x, axis=(1, 2, 3), keepdims=True), x.shape)
    h = x - mean
    var = F.mean(h * h, axis=(1, 2, 3), keepdims=True)  # (B, 1, 1, 1)
    # max(std, 1 / sqrt(n)) as sqrt(max(var, 1 / n)): a flat image's gradient stays finite
    floor = chainer.backend.get_array_module(var).full(var.shape, 1.0 / n, var.dtype)
    return h / F.broadcast_to(F.sqrt(F.maximum(var, floor)), x.shape)


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


def two_digit_margin_loss(lengths, labels2, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    """The margin loss (Eq. 4) with two digits present (MultiMNIST, Sec. 6 of [#]_).

    ``T_k = 1`` for the two classes of ``labels2``, 0 for the others; summed over
    classes, mean over the batch. With two equal labels the class counts once.

    Args:
        lengths (~chainer.Variable): Capsule lengths ``(B, J)``.
        labels2 (array): Classes of the two digits ``(B, 2)``, int.

    Returns:
        ~chainer.Variable: Scalar loss.
    """
    B, J = lengths.shape
    xp = chainer.backend.get_array_module(labels2)
    present = xp.minimum(one_hot(labels2[:, 0], J, lengths.dtype)
                         + one_hot(labels2[:, 1], J, lengths.dtype), 1)  # (B, J)
    loss = (present * F.relu(m_plus - lengths) ** 2
            + lambda_ * (1 - present) * F.relu(lengths - m_minus) ** 2)
    return F.sum(loss) / B


def two_digit_reconstruction_loss(x_rec, digits):
    """Sum of squared errors of each digit's reconstruction against that digit alone,
    summed over the two digits, mean over the batch (unweighted).

    Args:
        x_rec (~chainer.Variable): Reconstructions ``(B, 2, C, H, W)``: digit ``k``'s
            from the capsule of its own label at ``[:, k]``.
        digits (~chainer.Variable or array): The shifted single digits, same shape.

    Returns:
        ~chainer.Variable: Scalar loss.
    """
    return F.sum(F.squared_difference(x_rec, digits)) / x_rec.shape[0]


def top_two(scores):
    """The two classes an image of two digits is read as: its two longest capsules (its
    two highest scores), ``(B, 2)``, the higher first.

    Ties go to the lower class (the order of a stable sort of ``-scores``). Runs on the
    device of ``scores`` (NumPy or CuPy).
    """
    xp = chainer.backend.get_array_module(scores)
    first = scores.argmax(axis=1)  # (B,): argmax takes the first of equal maxima
    rest = scores.copy()
    rest[xp.arange(len(scores)), first] = -xp.inf
    second = rest.argmax(axis=1)  # (B,)
    return xp.stack([first, second], axis=1)


def pair_hits(scores, labels2):
    """Which of each image's two labels are among its two top classes, ``(B, 2)`` bool,
    on the device of ``scores``: an image is read right when both are."""
    top2 = top_two(scores)  # (B, 2)
    return (top2[:, :, None] == labels2[:, None, :]).any(axis=1)  # (B, 2): label k found


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
