#!/usr/bin/env python
"""Trains CapsNet on MNIST and keeps the best model.

    python train.py -g 0 --save saved_model --reconstruct

Every default is the reference implementation's behaviour; the flags under "paper
variants" switch to the paper's choices where the two differ.
"""

import argparse
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')

import capsnet_chainer  # noqa: E402,F401  (before chainer: restores numpy.sctypes)
import chainer  # noqa: E402
import numpy  # noqa: E402

from capsnet_chainer import training as capsnet_training  # noqa: E402
from capsnet_chainer.datasets import DatasetError  # noqa: E402
from capsnet_chainer.datasets import get_mnist  # noqa: E402
from capsnet_chainer.datasets import RandomShift  # noqa: E402
from capsnet_chainer.model import CapsNet  # noqa: E402
from capsnet_chainer.model import write_atomic  # noqa: E402


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError('must be a positive integer, got {}'.format(text))
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be >= 0, got {}'.format(text))
    return value


def finite_float(text):
    value = float(text)
    if not numpy.isfinite(value):
        raise argparse.ArgumentTypeError('must be a finite number, got {}'.format(text))
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='CapsNet (Sabour et al., NIPS 2017) on MNIST, in Chainer',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--batchsize', '-b', type=positive_int, default=256)
    parser.add_argument('--decay', '-d', type=finite_float, default=0.95,
                        help='learning-rate decay factor per epoch (or per --decay-every)')
    parser.add_argument('--epoch', '-e', type=positive_int, default=500)
    parser.add_argument('--gpu', '-g', type=int, default=-1,
                        help='GPU id (negative: CPU)')
    parser.add_argument('--device', default=None,
                        help='Chainer device specifier (e.g. @cupy:0, @numpy); '
                             'overrides --gpu')
    parser.add_argument('--seed', '-s', type=int, default=789)
    parser.add_argument('--reconstruct', '--recon', action='store_true',
                        help='add the decoder\'s reconstruction loss')
    parser.add_argument('--save', default=None,
                        help='where to write the best model (by test accuracy)')
    parser.add_argument('--out', '-o', default='result',
                        help='folder for snapshots, log and plots')
    parser.add_argument('--resume', '-r', nargs='?', const='auto', default=None,
                        help='resume from this snapshot; without a path, the newest in '
                             '--out')
    parser.add_argument('--keep', type=positive_int, default=1,
                        help='trainer snapshots to keep')
    parser.add_argument('--data-dir', default=None,
                        help='folder with the four MNIST IDX .gz files (default: the '
                             'cache under $CHAINER_DATASET_ROOT, filled from mirrors)')
    parser.add_argument('--n-train', type=positive_int, default=None,
                        help='use the first N training images')
    parser.add_argument('--n-test', type=positive_int, default=None,
                        help='use the first N test images')
    parser.add_argument('--alpha', type=finite_float, default=1e-3,
                        help='Adam learning rate')
    parser.add_argument('--min-alpha', type=finite_float, default=1e-5,
                        help='floor of the decayed learning rate')
    parser.add_argument('--decay-every', type=non_negative_int, default=0,
                        help='decay every N iterations instead of every epoch '
                             '(the other seed: --decay 0.96 --decay-every 2000)')
    parser.add_argument('--test-batchsize', type=positive_int, default=100)
    parser.add_argument('--recon-weight', type=finite_float, default=0.0005)

    variants = parser.add_argument_group('paper variants (the reference by default)')
    variants.add_argument('--leaky-slope', type=finite_float, default=0.05,
                          help='slope of the leaky ReLU after conv1; 0 gives ReLU')
    variants.add_argument('--n-iteration', type=positive_int, default=3,
                          help='routing iterations')
    variants.add_argument('--unshared', action='store_true',
                          help='one transformation matrix per primary capsule (paper)')
    variants.add_argument('--squash-primary', action='store_true',
                          help='squash the primary capsules (paper)')
    variants.add_argument('--routing-grad', choices=('all', 'last'), default='all',
                          help='backpropagate through every routing iteration, or '
                               'only the last weighted sum')
    variants.add_argument('--shift-per-image', action='store_true',
                          help='draw one +-2 px shift per image, not per batch (paper)')
    variants.add_argument('--max-shift', type=non_negative_int, default=2,
                          help='largest shift in pixels')
    variants.add_argument('--mask-test', choices=('label', 'prediction'), default='label',
                          help='decoder mask at test time: true label or prediction')
    args = parser.parse_args(argv)
    if args.leaky_slope < 0:
        parser.error('--leaky-slope must be >= 0, got {}'.format(args.leaky_slope))
    if not 0 < args.decay <= 1:
        parser.error('--decay must be in (0, 1], got {}'.format(args.decay))
    if args.alpha <= 0 or args.min_alpha < 0:
        parser.error('--alpha must be > 0 and --min-alpha >= 0')
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error('--out {} is a file, not a folder'.format(args.out))
    return args


def get_device(args):
    spec = args.device or ('@cupy:{}'.format(args.gpu) if args.gpu >= 0 else '@numpy')
    try:
        return chainer.get_device(spec)
    except Exception as e:  # CuPy missing or no such GPU
        sys.exit('error: cannot use device {} ({}: {}). For a GPU install CuPy for your '
                 'CUDA (pip install cupy-cuda13x or cupy-cuda12x); for the CPU pass -g -1.'
                 .format(spec, type(e).__name__, e))


def build_model(args):
    return CapsNet(reconstruct=args.reconstruct, leaky_slope=args.leaky_slope,
                   n_iteration=args.n_iteration, shared_weights=not args.unshared,
                   squash_primary=args.squash_primary,
                   grad_all_iterations=args.routing_grad == 'all',
                   mask_test=args.mask_test, recon_weight=args.recon_weight)


def main(argv=None):
    args = parse_args(argv)
    print(json.dumps(vars(args), indent=2))
    device = get_device(args)
    print('Device: {}'.format(device))
    print('# Minibatch-size: {}'.format(args.batchsize))
    print('# epoch: {}'.format(args.epoch))

    # Load the data
    try:
        train, test = get_mnist(data_dir=args.data_dir, n_train=args.n_train,
                                n_test=args.n_test)
    except (DatasetError, ValueError) as e:
        sys.exit('error: {}'.format(e))

    # Set up a model
    capsnet_training.set_random_seed(args.seed, device)
    model = build_model(args)
    print('# parameters: {:,}'.format(model.count_params()))
    model.to_device(device)
    device.use()

    # Set up a trainer
    converter = RandomShift(args.max_shift, per_image=args.shift_per_image, seed=args.seed)
    meta = {'train_args': vars(args)}
    trainer = capsnet_training.build_trainer(model, train, test, device, args, converter,
                                             meta=meta)
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, 'args.json'),
                 lambda f: f.write(json.dumps(vars(args), indent=2).encode()))

    if args.resume:
        path = args.resume
        if path == 'auto':
            path = capsnet_training.latest_snapshot(args.out)
            if path is None:
                sys.exit('error: --resume: no snapshot in {}'.format(args.out))
        if not os.path.isfile(path):
            sys.exit('error: --resume: no such snapshot file: {}'.format(path))
        print('Resuming from {}'.format(path))
        chainer.serializers.load_npz(path, trainer)

    # Run the training
    trainer.run()


if __name__ == '__main__':
    main()
