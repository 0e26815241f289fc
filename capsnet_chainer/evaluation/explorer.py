"""``explorer.html``: one self-contained page to play with a trained CapsNet.

The page opens from disk (no server, no network, no library): it holds a few test
images, each with its class capsules ``v`` and the agreements of its routing, and the
decoder's weights; its own JavaScript (the package data file ``explorer.html`` beside
this module, the template :func:`render` fills) draws the image, its capsule lengths,
the reconstruction from the chosen capsule with 16 sliders that offset its dimensions
over the paper's range (Fig. 4, [-0.25, 0.25]), and the routing of the chosen class,
iteration by iteration, on the primary capsules' grid.

What the page holds (:func:`page_data`), every array compressed with zlib (the page
inflates it with the browser's ``DecompressionStream``) and base64-encoded:

* the images (:func:`select_images`): the first :data:`PER_CLASS` right ones of each
  class (for pairs, the first ``PER_CLASS * J`` right pairs), then the wrong ones, at
  most :data:`MAX_WRONG`, in test-set order; fewer where the page would exceed
  :data:`MAX_BYTES` (the page says how many it leaves out);
* per image, as uint8: the pixels, and the agreements ``a_ij = u_hat[j|i] . v_j`` of
  every iteration (:func:`~capsnet_chainer.evaluation.routing_diagnostics.routing_trace`),
  quantized over each class's range (:func:`quantize_uint8`); the page rebuilds the
  couplings from them as Procedure 1 does, ``c = softmax_j(sum of the earlier
  iterations' a)``, and the contributions ``c_ij a_ij / |v_j|`` of the last iteration;
  as float32: ``v`` and the top shares (:mod:`~capsnet_chainer.evaluation.routing_diagnostics`);
* the decoder's weights as int16 with one float32 scale per :data:`BLOCK` inputs of a
  row (:func:`quantize_int16`), its biases as float32. The page decodes in float64; on
  the shipped model its pixels stay within 1.7e-4 of the float32 decoder's over the
  sliders' range (float16 weights: 1.1e-3; ``bench/explorer_decoder.py``). A model
  trained without ``--reconstruct`` (an untrained decoder), or whose decoder does not
  fit in the page, gets the page without the sliders, which says why.
"""

import base64
import json
import os
import time
import zlib

import numpy

from capsnet_chainer.evaluation import routing_diagnostics as routing
from capsnet_chainer.evaluation import routing_figures
from capsnet_chainer.evaluation.figures import PAPER_STEPS
from capsnet_chainer.evaluation.figures import save_figure
from capsnet_chainer.fileio import write_atomic
from capsnet_chainer.functions import pair_hits
from capsnet_chainer.inference import batched
from capsnet_chainer.inference import BATCHSIZE

#: The page's largest size in bytes.
MAX_BYTES = 8 * 10 ** 6
#: Right images shown per class.
PER_CLASS = 2
#: Wrong images shown at most.
MAX_WRONG = 50
#: Images the decoder must leave room for, else it is left out.
MIN_IMAGES = 10
#: Inputs of a decoder row that share one scale.
BLOCK = 32
#: The template, a package data file.
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'explorer.html')
#: Where the template takes the data.
PLACEHOLDER = '__EXPLORER_DATA__'


def select_images(labels, scores, per_class=PER_CLASS, max_wrong=MAX_WRONG):
    """Which images the page shows, and how many are wrong in all.

    Args:
        labels (array): ``(B,)``, or ``(B, 2)`` for pairs.
        scores (array): Capsule lengths ``(B, J)``.

    Returns:
        tuple: ``(index, right, n_wrong)``: the indices (the right ones, by class, then
        the wrong ones, in test-set order), whether each is right, and the number of
        wrong images among all.
    """
    labels, scores = numpy.asarray(labels), numpy.asarray(scores)
    J = scores.shape[1]
    if labels.ndim == 2:
        right = pair_hits(scores, labels).all(axis=1)
        chosen = list(numpy.flatnonzero(right)[:per_class * J])
    else:
        right = scores.argmax(axis=1) == labels
        chosen = [i for k in range(J) for i in numpy.flatnonzero(right & (labels == k))
                  [:per_class]]
    wrong = numpy.flatnonzero(~right)
    index = numpy.array(chosen + list(wrong[:max_wrong]), numpy.int64)
    return index, right[index], int(len(wrong))


def quantize_int16(W, block=BLOCK):
    """A matrix ``(O, I)`` as int16 with one float32 scale per ``block`` inputs of a
    row: ``W ~ q * scale[:, i // block]``.

    Returns:
        tuple: ``(q, scale)``: ``(O, I)`` int16 and ``(O, ceil(I / block))`` float32.
    """
    W = numpy.asarray(W, numpy.float32)
    n_out, n_in = W.shape
    n = -(-n_in // block)
    padded = numpy.zeros((n_out, n * block), numpy.float32)
    padded[:, :n_in] = W
    scale = numpy.abs(padded.reshape((n_out, n, block))).max(axis=2) / 32767
    scale[scale == 0] = 1
    scale = scale.astype(numpy.float32)
    q = numpy.round(W / numpy.repeat(scale, block, axis=1)[:, :n_in])
    return q.astype(numpy.int16), scale


def dequantize_int16(q, scale, block=BLOCK):
    """:func:`quantize_int16` undone, in float64, as the page computes it."""
    full = numpy.repeat(scale.astype(numpy.float64), block, axis=1)[:, :q.shape[1]]
    return q.astype(numpy.float64) * full


def decode_like_page(layers, v, j):
    """What the page's decoder computes, in NumPy (its reference): capsule vectors
    ``v`` ``(B, J, D)`` masked to class ``j``, through ``layers`` (``[(W, b), ...]``,
    e.g. :func:`dequantize_int16`'s weights) in float64, ReLU between the layers and
    the logistic function after the last. Returns ``(B, C * H * W)`` float64."""
    v = numpy.asarray(v)
    B, J, D = v.shape
    h = numpy.zeros((B, J * D))
    h[:, j * D:(j + 1) * D] = v[:, j]
    for k, (W, b) in enumerate(layers):
        h = h @ numpy.asarray(W, numpy.float64).T + numpy.asarray(b, numpy.float64)
        h = numpy.maximum(h, 0) if k < len(layers) - 1 else 1 / (1 + numpy.exp(-h))
    return h


def quantize_uint8(a):
    """Values ``(..., n)`` as uint8 over the range of each row.

    Returns:
        tuple: ``(codes, lo, hi)``: ``a ~ lo + codes / 255 * (hi - lo)``, ``lo`` and
        ``hi`` ``(...)`` float32.
    """
    a = numpy.asarray(a, numpy.float64)
    lo, hi = a.min(axis=-1), a.max(axis=-1)
    span = numpy.where(hi > lo, hi - lo, 1)
    codes = numpy.round((a - lo[..., None]) / span[..., None] * 255)
    return codes.astype(numpy.uint8), lo.astype(numpy.float32), hi.astype(numpy.float32)


def encode(a):
    """An array for the page: ``{'dtype', 'shape', 'data'}``, the data little-endian,
    zlib-compressed and base64-encoded."""
    a = numpy.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder('<'))
    return {'dtype': a.dtype.name, 'shape': list(a.shape),
            'data': base64.b64encode(zlib.compress(a.tobytes(), 9)).decode('ascii')}


def decoder_data(model):
    """The decoder's layers, ``[{'q', 'scale', 'b', 'block'}, ...]``, encoded."""
    layers = []
    for link in (model.decoder.fc1, model.decoder.fc2, model.decoder.fc3):
        q, scale = quantize_int16(link.W.array)
        layers.append({'q': encode(q), 'scale': encode(scale), 'block': BLOCK,
                       'b': encode(numpy.asarray(link.b.array, numpy.float32))})
    return layers


def _trace_images(model, x):
    """``v`` ``(B, J, D)``, the agreements ``(B, R, J, I)`` and the top shares of every
    class ``(B, J)`` of images ``x``, packed for :func:`batched`."""
    xp = model.xp
    _, steps = routing.trace(model, x)
    c, v, a = steps[-1]
    p = routing.projections(c, v, a)  # (B, J, I)
    share = routing.top_share(p, routing.n_top(p.shape[2]))  # (B, J)
    agreements = xp.stack([step[2] for step in steps], axis=1)  # (B, R, J, I)
    B = len(x)
    return xp.concatenate([v.reshape((B, -1)), agreements.reshape((B, -1)), share],
                          axis=1)


def trace_images(model, x):
    """What the page shows of images ``x``: ``v`` ``(B, J, D)``, the agreements
    ``(B, R, J, I)`` and the top shares of every class ``(B, J)``, NumPy."""
    J, R = model.config['n_class'], model.config['n_iteration']
    T, rows, cols = routing.grid_shape(model)
    I, D = T * rows * cols, model.digits.out_dim
    width = J * D + R * J * I + J
    packed = batched(model, lambda x: _trace_images(model, x), (x,), (width,))
    return (packed[:, :J * D].reshape((-1, J, D)),
            packed[:, J * D:J * D + R * J * I].reshape((-1, R, J, I)), packed[:, -J:])


def image_data(x, labels, right, test_index, traced):
    """The images' part of the page (see the module's docstring), encoded; ``traced``
    is :func:`trace_images` of ``x``."""
    v, agreements, share = traced
    codes, lo, hi = quantize_uint8(agreements)
    pixels = numpy.round(numpy.clip(numpy.asarray(x), 0, 1) * 255).astype(numpy.uint8)
    labels = numpy.asarray(labels).reshape((len(x), -1))
    return {'n': int(len(x)), 'index': [int(i) for i in test_index],
            'labels': labels.astype(int).tolist(), 'right': [bool(r) for r in right],
            'x': encode(pixels), 'v': encode(v.astype(numpy.float32)),
            'agreement': encode(codes), 'agreement_lo': encode(lo),
            'agreement_hi': encode(hi), 'top_share': encode(share.astype(numpy.float32))}


def page_data(model, x, labels, scores, class_names, title, max_bytes=MAX_BYTES):
    """What the page shows, as a JSON-ready dict, and its notes.

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        x (array): The scored images ``(B, C, H, W)``.
        labels (array): Their labels ``(B,)`` or ``(B, 2)``.
        scores (array): Their capsule lengths ``(B, J)`` (to choose the images).
        class_names (list of str): The classes' names.
        title (str): The page's title.
        max_bytes (int): The page's largest size.

    Returns:
        dict: The data; ``data['notes']`` are the sentences the page and the log say
        about what it leaves out.
    """
    x, labels = numpy.asarray(x), numpy.asarray(labels)
    index, right, n_wrong = select_images(labels, scores)
    T, rows, cols = routing.grid_shape(model)
    notes = []
    data = {
        'title': title, 'classes': [str(c) for c in class_names], 'pairs': labels.ndim == 2,
        'in_shape': list(model.config['in_shape']), 'n_iteration': model.config['n_iteration'],
        'dims': model.digits.out_dim, 'offset_range': [float(PAPER_STEPS[0]),
                                                       float(PAPER_STEPS[-1])],
        'grid': {'types': T, 'rows': rows, 'columns': cols,
                 'types_per_row': min(T, routing.TYPES_PER_ROW), 'top': routing.n_top(
                     T * rows * cols)},
        'none_of_the_above': routing.leaks(model),
        'scored': {'images': int(len(x)), 'wrong': n_wrong},
        'decoder': None, 'no_sliders': None, 'notes': notes,
    }
    if not model.reconstruct:
        data['no_sliders'] = ('no sliders: the model was trained without --reconstruct, '
                              'so its decoder is untrained and its reconstructions mean '
                              'nothing')
    else:
        data['decoder'] = decoder_data(model)
    traced = trace_images(model, x[index])
    n = len(index)
    while True:
        data['images'] = image_data(x[index[:n]], labels[index[:n]], right[:n], index[:n],
                                    [a[:n] for a in traced])
        size = len(render(data).encode('utf-8'))
        if size <= max_bytes or n <= 1:
            break
        images = len(_json(data['images']))
        room = max_bytes - (size - images)
        fits = int(room // (images / n)) if room > 0 else 0
        if data['decoder'] is not None and fits < min(MIN_IMAGES, len(index)):
            data['no_sliders'] = (
                'no sliders: the decoder\'s weights ({:.1f} MB) leave too little room for '
                'images in a page of at most {:.0f} MB'.format(
                    len(_json(data['decoder'])) / 1e6, max_bytes / 1e6))
            data['decoder'] = None
            continue
        n = max(1, min(n - 1, fits))
    if n < len(index):
        notes.append('{} of the {} chosen images are left out to keep the page under '
                     '{:.0f} MB'.format(len(index) - n, len(index), max_bytes / 1e6))
    shown = int((~right[:n]).sum())
    if shown < n_wrong:
        notes.append('{} of the {} wrong images are shown, the first ones'.format(
            shown, n_wrong))
    if data['no_sliders']:
        notes.append(data['no_sliders'])
    return data


def _json(data):
    """JSON as the page holds it: compact, ``<`` escaped (so that no string ends the
    script element)."""
    return json.dumps(data, separators=(',', ':')).replace('<', '\\u003c')


def _template():
    with open(TEMPLATE, encoding='utf-8') as f:
        return f.read()


def render(data):
    """The page: the template with ``data`` in it (:func:`_json`)."""
    template = _template()
    if template.count(PLACEHOLDER) != 1:
        raise ValueError('{} must hold {} once'.format(TEMPLATE, PLACEHOLDER))
    return template.replace(PLACEHOLDER, _json(data))


def write_explorer(path, model, x, labels, scores, class_names, title,
                   max_bytes=MAX_BYTES):
    """Writes the page to ``path`` atomically.

    Args: see :func:`page_data`.

    Returns:
        dict: ``bytes``, ``images`` (how many it shows), ``sliders`` (bool) and
        ``notes`` (sentences for the log).
    """
    data = page_data(model, x, labels, scores, class_names, title, max_bytes)
    page = render(data).encode('utf-8')
    write_atomic(path, lambda f: f.write(page))
    return {'bytes': len(page), 'images': data['images']['n'],
            'sliders': data['decoder'] is not None, 'notes': list(data['notes'])}


def class_names(names, n_class):
    """The classes' names: ``names`` where it names ``n_class`` classes, else the class
    numbers."""
    names = list(names or ())
    return [str(n) for n in names] if len(names) == n_class else [
        str(k) for k in range(n_class)]


def write_views(model, x, labels, out, names, title, batchsize=BATCHSIZE, page=True,
                progress=None, log=print, traced=None):
    """What ``analyze.py`` writes of the routing: ``routing.png`` and, with ``page``,
    ``explorer.html``, into ``out``; their paths, times and notes go to ``log``.

    Args:
        model (~capsnet_chainer.CapsNet): The network, on any device.
        x (array): The scored images ``(B, C, H, W)``.
        labels (array): Their labels ``(B,)`` or ``(B, 2)``.
        out (str): The folder.
        names (list of str): The classes' names (:func:`class_names`).
        title (str): The page's title.
        batchsize (int): Images per forward pass.
        page (bool): Write the page.
        progress (callable): ``progress(done, total)`` while the routing is traced.
        log (callable): Takes each line.
        traced (tuple): What :func:`~capsnet_chainer.evaluation.routing_diagnostics.diagnose`
            returned for ``x`` and ``labels``, where the caller scored the images with it
            (``analyze.py`` does: one pass gives the scores and the routing); ``None``:
            traced here.

    Returns:
        dict: The routing statistics for ``metrics.json``
        (:func:`~capsnet_chainer.evaluation.routing_diagnostics.summary`), with ``explorer``:
        the page's size, images and notes (``None`` without the page).
    """
    tic = time.time()
    if traced is None:
        traced = routing.diagnose(model, x, labels, batchsize, progress)
    stats, scores, shares = traced
    path = os.path.join(out, 'routing.png')
    save_figure(routing_figures.plot_routing(stats, shares.reshape(-1), names), path)
    log('wrote {}'.format(path))
    log('# routing.png: {:.1f} s'.format(time.time() - tic))
    result = routing.summary(stats)
    result['explorer'] = None
    if page:
        tic = time.time()
        path = os.path.join(out, 'explorer.html')
        info = write_explorer(path, model, x, labels, scores, names, title)
        log('wrote {}'.format(path))
        for note in info['notes']:
            log('# explorer.html: {}'.format(note))
        log('# explorer.html: {} images, {:.1f} MB, {:.1f} s'.format(
            info['images'], info['bytes'] / 1e6, time.time() - tic))
        result['explorer'] = info
    return result
