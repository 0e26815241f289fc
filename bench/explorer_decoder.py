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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import capsnet_chainer  # noqa: E402,F401  (before chainer: restores numpy.sctypes)
import chainer  # noqa: E402
import numpy  # noqa: E402

from capsnet_chainer import load_model  # noqa: E402
from capsnet_chainer.datasets.mnist import get_mnist  # noqa: E402
from capsnet_chainer.evaluation import explorer  # noqa: E402
from capsnet_chainer.evaluation.metrics import decode  # noqa: E402
from capsnet_chainer.evaluation.metrics import digit_capsules  # noqa: E402


# Each encoding of a weight matrix: (the weights the page would decode with, the arrays
# it would hold for them, each encoded apart as explorer.decoder_data does)


def float16(W):
    return W.astype(numpy.float16).astype(numpy.float64), [W.astype(numpy.float16)]


def int16_rows(W):
    q, scale = explorer.quantize_int16(W, block=W.shape[1])
    return explorer.dequantize_int16(q, scale, W.shape[1]), [q, scale]


def int16_blocks(W):
    q, scale = explorer.quantize_int16(W)
    return explorer.dequantize_int16(q, scale), [q, scale]


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
    offsets = numpy.random.RandomState(0).uniform(-0.25, 0.25, v.shape).astype(numpy.float32)
    links = (model.decoder.fc1, model.decoder.fc2, model.decoder.fc3)
    for name, encode in ENCODINGS.items():
        layers, size = [], 0
        for link in links:
            W, arrays = encode(link.W.array)
            b = numpy.asarray(link.b.array, numpy.float32)  # the page's biases
            layers.append((W, b))
            # the base64 text the page holds for the layer (without its JSON)
            size += sum(len(explorer.encode(a)['data']) for a in arrays + [b])
        worst = {}
        for label, vv in (('own', v), ('offset', v + offsets)):
            worst[label] = 0.0
            for j in range(v.shape[1]):
                h = explorer.decode_like_page(layers, vv, j)
                expected = decode(model, vv, numpy.full(len(vv), j, numpy.int32))
                worst[label] = max(worst[label], float(numpy.abs(
                    h - expected.reshape((len(vv), -1))).max()))
        print('{:45s} largest difference {:.1e} (own capsules), {:.1e} (offset); '
              '{:.2f} MB in the page'.format(name, worst['own'], worst['offset'], size / 1e6))


if __name__ == '__main__':
    main()
