"""What dynamic routing does in a trained CapsNet: the coupling coefficients and the
agreements of every routing iteration, statistics of them over a test set, and
``routing.png``.

The routing is recomputed from the network's own primary capsules ``u`` (the input of
its class capsules, :func:`primary_capsules`) and predictions ``u_hat[j|i]``
(:meth:`~capsnet_chainer.links.DigitCapsules.predict_vectors`) by :func:`routing_trace`,
Procedure 1 of the paper [#]_ in array operations that also keep what each iteration
computed: the coupling coefficients ``c`` (``c_ij``, a softmax over the classes ``j``
for each primary capsule ``i``), the capsules ``v`` and the agreements ``a_ij =
u_hat[j|i] . v_j``, which the next iteration adds to the logits. It computes what
:func:`capsnet_chainer.functions.routing_iterations` computes (the tests compare them),
ten times faster on the CPU, where the Chainer graph's temporaries are the cost. With
the "none-of-the-above" category (:func:`leaks`), ``J`` below counts it as a class.

The statistics (:func:`diagnose`), over the images given (``analyze.py``: the scored
test images):

* **entropy**: for each primary capsule ``i``, the entropy ``H_i = -sum_j c_ij ln c_ij``
  (nats) of its coupling coefficients; the mean over the primary capsules and the
  images, per iteration, beside the uniform distribution's ``ln J``. The first
  iteration's couplings are uniform (``b = 0``), so its entropy is ``ln J``.
* **largest coupling**: ``max_j c_ij`` of each primary capsule, per iteration: its mean
  and its histogram over :data:`N_BINS` bins on [0, 1] (counts over images x primary
  capsules); ``1 / J`` where routing leaves the couplings uniform, 1 where a primary
  capsule sends everything to one class.
* **class maps**: for each class ``j``, the mean over the images of class ``j`` (for
  image pairs: the images of which ``j`` is one of the two labels) of the last
  iteration's ``c_ij``, per primary capsule ``i``: on the grid of the primary capsules
  (types x rows x columns), which primary capsules send their vote to ``j`` when a ``j``
  is there.
* **top share**: for the class of the longest capsule (for pairs, each of the two
  longest), each primary capsule's contribution ``c_ij u_hat[j|i]`` (last iteration)
  projected onto the direction of ``v_j``, ``p_i = c_ij (u_hat[j|i] . v_j) / |v_j|``.
  They sum to ``|s_j|`` (``s_j`` is parallel to ``v_j``, whose length is a function of
  ``|s_j|``). The top share is the sum of the :data:`TOP_FRACTION` largest ``p_i``
  (ranked by ``p_i``) over ``|s_j|``: above 1 where other primary capsules pull
  against ``v_j`` (negative ``p_i``).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017,
   Procedure 1.
"""

import math

import chainer
import numpy

from capsnet_chainer.functions import EPS
from capsnet_chainer.functions import top_two
from capsnet_chainer.inference import batched
from capsnet_chainer.inference import BATCHSIZE
from capsnet_chainer.kernels.routing import softmax
from capsnet_chainer.model import primary_grid

#: Share of the primary capsules whose contributions the top share counts (10%).
TOP_FRACTION = 0.1
#: Bins of the largest-coupling histogram on [0, 1].
N_BINS = 20
#: Primary capsule types per row where grids are drawn (types, then rows x columns).
TYPES_PER_ROW = 8


class _Captured(Exception):
    """Ends the forward pass at the class capsules (:func:`primary_capsules`)."""


class _CaptureInput(chainer.LinkHook):
    """Keeps the input of the link it is added to; with ``stop``, ends the forward pass
    there, before the link runs."""

    name = 'capture_input'

    def __init__(self, stop=False):
        self.input = None
        self.stop = stop

    def forward_preprocess(self, args):
        self.input = args.args[0]
        if self.stop:
            raise _Captured


def _capture(model, x, stop):
    """``(scores, u)`` of images ``x`` from ``model.scores``; with ``stop`` the pass ends
    at the class capsules, and the scores are ``None``."""
    hook = _CaptureInput(stop)
    model.digits.add_hook(hook)
    try:
        scores = model.scores(x)
    except _Captured:
        scores = None
    finally:
        model.digits.delete_hook(hook.name)
    if hook.input is None:
        raise RuntimeError('the network never called its class capsules')
    return scores, chainer.as_variable(hook.input)


def scores_and_primary_capsules(model, x):
    """The class scores ``(B, J)`` of images ``x``, exactly as ``model.scores`` gives
    them, and their primary capsules ``u`` ``(B, I, P)`` (the input of the class
    capsules' link), from one forward pass."""
    return _capture(model, x, stop=False)


def primary_capsules(model, x):
    """The primary capsules ``u`` ``(B, I, P)`` of images ``x``: the input of the class
    capsules' link in :meth:`CapsNet.digit_capsules
    <capsnet_chainer.model.CapsNet.digit_capsules>`, where the pass stops (no routing).
    """
    return _capture(model, x, stop=True)[1]


def leaks(model):
    """Whether the network routes with the "none-of-the-above" category (Sec. 7 of the
    paper): an extra logit fixed at 0 whose coupling is dropped."""
    return bool(getattr(model.digits, 'none_of_the_above', False))


def routing_trace(u_hat, n_iteration, none_of_the_above=False):
    """Procedure 1 on predictions ``u_hat`` ``(B, J, I, D)`` (an array, NumPy or CuPy),
    iteration by iteration.

    Args:
        u_hat (array): The predictions.
        n_iteration (int): Routing iterations.
        none_of_the_above (bool): The softmax also takes a logit fixed at 0 whose share
            is dropped (:func:`leaks`).

    Returns:
        list: One ``(c, v, a)`` per iteration: the couplings ``c`` ``(B, J, I)``, the
        capsules ``v`` ``(B, J, D)`` and the agreements ``a = u_hat . v`` ``(B, J, I)``
        (the last iteration's too, which the routing itself does not use).
    """
    xp = chainer.backend.get_array_module(u_hat)
    B, J, I, D = u_hat.shape
    b = xp.zeros((B, J, I), u_hat.dtype)
    steps = []
    for r in range(n_iteration):
        c = softmax(b, 1, none_of_the_above)  # (B, J, I): over the classes
        s = xp.einsum('bji,bjid->bjd', c, u_hat)  # (B, J, D)
        sq = (s * s).sum(axis=2, keepdims=True)
        v = s * (xp.sqrt(sq + EPS) / (1 + sq))  # (B, J, D): squash
        a = xp.einsum('bjid,bjd->bji', u_hat, v)  # (B, J, I)
        steps.append((c, v, a))
        b = b + a
    return steps


def trace(model, x, u=None):
    """The routing of images ``x`` on the model's device (call it under
    :func:`~capsnet_chainer.inference.batched`, or in test mode).

    Args:
        u (~chainer.Variable): Their primary capsules, where the caller has them.

    Returns:
        tuple: ``(u, steps)``: the primary capsules ``(B, I, P)`` and
        :func:`routing_trace`'s list.
    """
    u = primary_capsules(model, x) if u is None else u
    u_hat = model.digits.predict_vectors(u).array  # (B, J, I, D)
    return u.array, routing_trace(u_hat, model.config['n_iteration'], leaks(model))


def n_top(n_primary):
    """How many primary capsules the top share counts: :data:`TOP_FRACTION` of them,
    rounded up."""
    return max(1, int(math.ceil(TOP_FRACTION * n_primary - 1e-9)))


def projections(c, v, a):
    """The contributions ``p_ij = c_ij (u_hat[j|i] . v_j) / |v_j|`` ``(B, J, I)`` of
    the last iteration's couplings ``c`` ``(B, J, I)``, capsules ``v`` ``(B, J, D)``
    and agreements ``a`` ``(B, J, I)``: summed over ``i``, ``|s_j|``."""
    xp = chainer.backend.get_array_module(v)
    length = xp.sqrt((v * v).sum(axis=2) + EPS)  # (B, J)
    return c * a / length[:, :, None]


def top_share(p, k):
    """The sum of the ``k`` largest of each row of ``p`` ``(..., I)`` over the row's
    sum."""
    xp = chainer.backend.get_array_module(p)
    top = -xp.sort(-p, axis=-1)[..., :k]
    return top.sum(axis=-1) / p.sum(axis=-1)


def grid_shape(model):
    """``(T, rows, columns)`` of the primary capsules: ``i = (type * rows + row) *
    columns + column``: the grid the network was built on."""
    return (model.digits.n_type,) + primary_grid(*model.config['in_shape'][1:])


def _statistics(model, x, labels):
    """Per-image statistics of a batch, packed into ``(B, K)`` for
    :func:`~capsnet_chainer.inference.batched` (see :func:`_layout`)."""
    xp = chainer.backend.get_array_module(x)
    scores, u = scores_and_primary_capsules(model, x)  # one pass: the scores are exact
    _, steps = trace(model, x, u)
    B = len(x)
    # float64: the couplings move little from uniform, less than float32 sums keep
    c = xp.stack([step[0] for step in steps], axis=1).astype(xp.float64)  # (B, R, J, I)
    entropy = -(c * xp.log(xp.maximum(c, 1e-30))).sum(axis=2)  # (B, R, I)
    if leaks(model):  # the dropped category counts in the distribution
        rest = xp.maximum(1 - c.sum(axis=2), 1e-30)
        entropy -= rest * xp.log(rest)
    largest = c.max(axis=2)  # (B, R, I)
    bins = xp.minimum((largest * N_BINS).astype(xp.int32), N_BINS - 1)  # (B, R, I)
    hist = (bins[..., None] == xp.arange(N_BINS)).sum(axis=2)  # (B, R, N_BINS)
    c_last, v, a = steps[-1]
    lengths = scores.array  # (B, J), the capsule lengths
    rows = xp.arange(B)[:, None]
    labels = labels.reshape((B, -1))  # (B, L)
    own = c_last[rows, labels]  # (B, L, I): the labels' couplings
    top = lengths.argmax(axis=1)[:, None] if labels.shape[1] == 1 else top_two(lengths)
    p = projections(c_last, v, a)[rows, top]  # (B, K, I)
    share = top_share(p, n_top(p.shape[2]))  # (B, K)
    parts = (entropy.mean(axis=2), largest.mean(axis=2), hist, own, share, lengths)
    return xp.concatenate([q.reshape((B, -1)).astype(xp.float32) for q in parts], axis=1)


def _layout(R, L, n_primary, K, J):
    """The parts of :func:`_statistics`'s rows: ``(name, shape)``."""
    return (('entropy', (R,)), ('largest', (R,)), ('hist', (R, N_BINS)),
            ('own', (L, n_primary)),
            ('share', (K,)), ('scores', (J,)))


def diagnose(model, x, labels, batchsize=BATCHSIZE, progress=None):
    """The routing statistics of images (see the module's docstring).

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        x (array): Images ``(B, C, H, W)``.
        labels (array): Their labels ``(B,)``, or ``(B, 2)`` for images of two digits.
        batchsize (int): Images per forward pass.
        progress (callable): ``progress(done, total)`` after each batch.

    Returns:
        tuple: ``(stats, scores, shares)``: the statistics, a dict of plain numbers
        and lists for ``metrics.json`` (``class_maps`` an array ``(J, T, rows,
        columns)``, which :func:`summary` turns into numbers); the capsule lengths
        ``(B, J)``; the top shares ``(B, K)``.
    """
    labels = numpy.asarray(chainer.backend.CpuDevice().send(labels)).astype(numpy.int32)
    J, R = model.config['n_class'], model.config['n_iteration']
    T, rows, cols = grid_shape(model)
    I, L = T * rows * cols, 1 if labels.ndim == 1 else labels.shape[1]
    layout = _layout(R, L, I, L, J)
    width = sum(int(numpy.prod(shape)) for _, shape in layout)
    packed = batched(model, lambda x, t: _statistics(model, x, t), (x, labels), (width,),
                     batchsize, progress)
    parts, start = {}, 0
    for name, shape in layout:
        n = int(numpy.prod(shape))
        parts[name] = packed[:, start:start + n].reshape((-1,) + shape)
        start += n
    labels = labels.reshape((len(labels), -1))
    sums = numpy.zeros((J, I), numpy.float64)
    counts = numpy.zeros(J, numpy.int64)
    for k in range(L):
        numpy.add.at(sums, labels[:, k], parts['own'][:, k])
        numpy.add.at(counts, labels[:, k], 1)
    class_maps = sums / numpy.maximum(counts, 1)[:, None]
    class_maps[counts == 0] = numpy.nan
    for name in ('entropy', 'largest', 'share'):
        parts[name] = parts[name].astype(numpy.float64)
    share = parts['share'].reshape(-1)
    hist = numpy.rint(parts['hist']).astype(numpy.int64).sum(axis=0)  # (R, N_BINS)
    K = J + 1 if leaks(model) else J  # the categories of the softmax
    stats = {
        'images': int(len(x)), 'n_iteration': R, 'n_class': J,
        'none_of_the_above': leaks(model),
        'primary_grid': {'types': T, 'rows': rows, 'columns': cols},
        'entropy': {'unit': 'nats', 'uniform': math.log(K),
                    'mean_per_iteration': _floats(parts['entropy'].mean(axis=0))},
        'largest_coupling': {
            'uniform': 1 / K, 'mean_per_iteration': _floats(parts['largest'].mean(axis=0)),
            'bins': _floats(numpy.linspace(0, 1, N_BINS + 1)),
            'counts_per_iteration': hist.tolist(),
            'share_at_least_half_per_iteration': _floats(
                hist[:, N_BINS // 2:].sum(axis=1) / numpy.maximum(hist.sum(axis=1), 1))},
        'top_share': {'fraction_of_primary_capsules': TOP_FRACTION, 'top': n_top(I),
                      'classes': 'the longest capsule' if L == 1 else
                                 'each of the two longest capsules',
                      **_quantiles(share), 'share_above_1': _share_above(share, 1)},
        'class_maps': class_maps.reshape((J, T, rows, cols)),
        'class_map_images': counts.tolist(),
    }
    return stats, parts['scores'], parts['share']


def _floats(a):
    return [float(f) for f in numpy.asarray(a).reshape(-1)]


def _quantiles(a):
    if not len(a):
        return {'mean': None, 'quantiles': {}}
    q = numpy.percentile(a, [10, 50, 90])
    return {'mean': float(a.mean()),
            'quantiles': {'10%': float(q[0]), '50%': float(q[1]), '90%': float(q[2])}}


def _share_above(a, limit):
    return float((a > limit).mean()) if len(a) else None


def summary(stats):
    """``stats`` as :func:`diagnose` returns them, for JSON: the class maps as, per
    class, their mean, their largest cell (its value and ``[type, row, column]``) and
    the mean of each type."""
    out = dict(stats)
    maps = stats['class_maps']
    out['class_maps'] = []
    for j, m in enumerate(maps):
        if numpy.isnan(m).all():
            out['class_maps'].append(None)
            continue
        where = numpy.unravel_index(int(numpy.nanargmax(m)), m.shape)
        out['class_maps'].append({
            'class': j, 'mean': float(numpy.nanmean(m)), 'max': float(numpy.nanmax(m)),
            'max_at_type_row_column': [int(w) for w in where],
            'mean_per_type': _floats(m.reshape((len(m), -1)).mean(axis=1))})
    return out
