#!/usr/bin/env python
"""How far explorer.html's decoder (JavaScript, float64) can be from the float32 decoder,
for each way of storing its weights in the page (docs/explorer.md).

    python bench/explorer_decoder.py --data-dir ../shared/data/mnist

For the first ``--n`` test images, every class capsule with random offsets over the
sliders' range, [-0.25, 0.25] per dimension (and with none), is decoded in float64 from
the stored weights and compared with the model's float32 decoder; prints the largest
pixel difference of each encoding and its size in the page.
"""

import argparse
import base64
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import capsnet_chainer  # noqa: E402,F401  (before chainer: restores numpy.sctypes)
import chainer  # noqa: E402
import numpy  # noqa: E402

from capsnet_chainer import load_model  # noqa: E402
from capsnet_chainer.datasets.mnist import get_mnist  # noqa: E402
from capsnet_chainer.evaluation import explorer  # noqa: E402
from capsnet_chainer.evaluation.metrics import decode  # noqa: E402
from capsnet_chainer.evaluation.metrics import digit_capsules  # noqa: E402


def float16(W):
    return W.astype(numpy.float16).astype(numpy.float64), W.astype(numpy.float16).tobytes()


def int16_rows(W):
    q, scale = explorer.quantize_int16(W, block=W.shape[1])
    return explorer.dequantize_int16(q, scale, W.shape[1]), q.tobytes() + scale.tobytes()


def int16_blocks(W):
    q, scale = explorer.quantize_int16(W)
    return explorer.dequantize_int16(q, scale), q.tobytes() + scale.tobytes()


ENCODINGS = {'float16': float16, 'int16, one scale per row': int16_rows,
             'int16, one scale per {} inputs (the page)'.format(explorer.BLOCK): int16_blocks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--load', default='models/capsnet_mnist.npz')
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--n', type=int, default=200, help='test images')
    args = parser.parse_args()
    model, _ = load_model(args.load)
    _, test = get_mnist(data_dir=args.data_dir, n_test=args.n)
    x, _ = chainer.dataset.concat_examples(test)
    v = digit_capsules(model, x)
    J, D = v.shape[1:]
    offsets = numpy.random.RandomState(0).uniform(-0.25, 0.25, v.shape).astype(numpy.float32)
    links = (model.decoder.fc1, model.decoder.fc2, model.decoder.fc3)
    for name, encode in ENCODINGS.items():
        layers, size = [], 0
        for link in links:
            W, data = encode(link.W.array)
            layers.append((W, link.b.array.astype(numpy.float64)))
            size += len(base64.b64encode(zlib.compress(data, 9)))
        worst = {}
        for label, vv in (('own', v), ('offset', v + offsets)):
            worst[label] = 0.0
            for j in range(J):
                h = numpy.zeros((len(vv), J * D))
                h[:, j * D:(j + 1) * D] = vv[:, j]
                for k, (W, b) in enumerate(layers):
                    h = h @ W.T + b
                    h = numpy.maximum(h, 0) if k < 2 else 1 / (1 + numpy.exp(-h))
                expected = decode(model, vv, numpy.full(len(vv), j, numpy.int32))
                worst[label] = max(worst[label], float(numpy.abs(
                    h - expected.reshape((len(vv), -1))).max()))
        print('{:45s} largest difference {:.1e} (own capsules), {:.1e} (offset); '
              '{:.2f} MB in the page'.format(name, worst['own'], worst['offset'], size / 1e6))


if __name__ == '__main__':
    main()
