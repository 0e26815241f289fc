#!/usr/bin/env python
"""Trains CapsNet on MNIST (or Fashion-MNIST, or MultiMNIST) and keeps the best model.

    python train.py -g 0 --save saved_model --reconstruct
    python train.py -g 0 --dataset multimnist --unshared --save saved_model --reconstruct
    python train.py -g 0 --model cnn --save cnn_model     # the paper's baseline CNN
    mpiexec -n 4 python train.py -g 0 --communicator pure_nccl ...   # 4 GPUs (ChainerMN)

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
import filelock  # noqa: E402

from capsnet_chainer import cli  # noqa: E402
from capsnet_chainer import distributed  # noqa: E402
from capsnet_chainer import protocols  # noqa: E402
from capsnet_chainer import snapshots  # noqa: E402
from capsnet_chainer import training as capsnet_training  # noqa: E402
from capsnet_chainer.baseline_cnn import BaselineCNN  # noqa: E402
from capsnet_chainer.cli import finite_float  # noqa: E402
from capsnet_chainer.cli import non_negative_int  # noqa: E402
from capsnet_chainer.cli import positive_int  # noqa: E402
from capsnet_chainer.mnist import get_dataset  # noqa: E402
from capsnet_chainer.figures import ReconstructionReport  # noqa: E402
from capsnet_chainer.model import CapsNet  # noqa: E402
from capsnet_chainer.modelfile import inspect_model_file  # noqa: E402
from capsnet_chainer.modelfile import ModelFileError  # noqa: E402
from capsnet_chainer.nonfinite import NonFiniteError  # noqa: E402
from capsnet_chainer.fileio import write_atomic  # noqa: E402
from capsnet_chainer.provenance import provenance  # noqa: E402
from capsnet_chainer.random_state import set_random_seed  # noqa: E402


#: The flags that configure CapsNet; ``--model cnn`` refuses them unless at their default.
CAPSNET_FLAGS = ('reconstruct', 'recon_weight', 'leaky_slope', 'n_iteration', 'unshared',
                 'squash_primary', 'routing_grad', 'mask_test')


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        description='CapsNet (Sabour et al., NIPS 2017), or the paper\'s baseline CNN, on '
                    'MNIST, Fashion-MNIST or MultiMNIST, in Chainer',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--dataset', choices=tuple(protocols.PROTOCOLS), default='mnist',
                        help='the data set to train and test on (see --data-dir; '
                             'multimnist: pairs of overlaid MNIST digits, 36x36; affnist: '
                             'MNIST placed at random on 40x40, tested on the centred '
                             'digits, and by analyze.py on affNIST)')
    parser.add_argument('--model', choices=('capsnet', 'cnn'), default='capsnet',
                        help='the network: CapsNet, or the paper\'s baseline CNN (Sec. 5: '
                             'three 5x5 convolutions of 256, 256 and 128 channels, fully '
                             'connected 328 and 192, dropout, 10-way output; trained with '
                             'the same Adam schedule)')
    parser.add_argument('--batchsize', '-b', type=positive_int, default=256)
    parser.add_argument('--decay', '-d', type=finite_float, default=0.95,
                        help='learning-rate decay factor per epoch (or per --decay-every)')
    parser.add_argument('--epoch', '-e', type=positive_int, default=500)
    parser.add_argument('--seed', '-s', type=int, default=789)
    parser.add_argument('--reconstruct', '--recon', action='store_true',
                        help='add the decoder\'s reconstruction loss')
    parser.add_argument('--save', default=None,
                        help='where to write the best model (by test accuracy, or by '
                             'held-out accuracy with --validation)')
    parser.add_argument('--validation', type=non_negative_int, default=0, metavar='N',
                        help='hold out the last N training images (not trained on), '
                             'evaluate them every epoch and keep the model that is best '
                             'on them; the test set is then scored for the report only '
                             '(0: the reference\'s rule, best test accuracy)')
    parser.add_argument('--out', '-o', default='result',
                        help='folder for snapshots, log and plots')
    parser.add_argument('--resume', '-r', nargs='?', const='auto', default=None,
                        help='resume from this snapshot; without a path, from the newest '
                             'in --out (or from the start if it has none)')
    parser.add_argument('--keep', type=positive_int, default=1,
                        help='snapshots to keep in --out')
    parser.add_argument('--snapshot-every', type=non_negative_int, default=0,
                        help='also snapshot every N iterations (0: only at the end of '
                             'each epoch)')
    parser.add_argument('--vis-every', type=non_negative_int, default=0,
                        help='every N epochs, write the reconstructions of the first two '
                             'test images of each digit into --out (0: never)')
    parser.add_argument('--n-train', type=positive_int, default=None,
                        help='use the first N training images (multimnist: as the '
                             'digits pairs are drawn from)')
    parser.add_argument('--n-test', type=positive_int, default=None,
                        help='use the first N test images (multimnist: N test pairs, '
                             'default {:,})'.format(protocols.MULTIMNIST_TEST_PAIRS))
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
    variants.add_argument('--max-shift', type=non_negative_int, default=None,
                          help='largest shift in pixels (default: 2; multimnist: {}, '
                               'the paper; the official code uses 6; affnist: none)'.format(
                                   protocols.PROTOCOLS['multimnist'].max_shift))
    variants.add_argument('--mask-test', choices=('label', 'prediction'), default='label',
                          help='decoder mask at test time: true label or prediction')
    cli.add_common_arguments(parser)
    parser.add_argument('--communicator', choices=tuple(distributed.COMMUNICATORS),
                        default=None,
                        help='train data-parallel over MPI with this ChainerMN '
                             'communicator, under mpiexec -n N (naive on the CPU, '
                             'pure_nccl on GPUs); --batchsize is then the global batch, '
                             'split among the N processes (README: "Several processes")')
    args = parser.parse_args(argv)
    if args.leaky_slope < 0:
        parser.error('--leaky-slope must be >= 0, got {}'.format(args.leaky_slope))
    if not 0 < args.decay <= 1:
        parser.error('--decay must be in (0, 1], got {}'.format(args.decay))
    if args.alpha <= 0:
        parser.error('--alpha must be > 0, got {}'.format(args.alpha))
    if args.min_alpha < 0:
        parser.error('--min-alpha must be >= 0, got {}'.format(args.min_alpha))
    if args.recon_weight < 0:
        parser.error('--recon-weight must be >= 0, got {}'.format(args.recon_weight))
    if args.model != 'capsnet':
        for name in CAPSNET_FLAGS:
            if getattr(args, name) != parser.get_default(name):
                parser.error('--{} configures CapsNet; --model {} has no use for it'
                             .format(name.replace('_', '-'), args.model))
        if args.vis_every:
            parser.error('--vis-every draws reconstructions, and --model {} has no decoder'
                         .format(args.model))
    spec = protocols.protocol(args.dataset)
    if spec.max_shift is None and (args.max_shift is not None or args.shift_per_image):
        parser.error('--{}: --dataset {} places each digit at random on the {}x{} canvas '
                     'and shifts nothing'.format(
                         'max-shift' if args.max_shift is not None else 'shift-per-image',
                         args.dataset, spec.canvas, spec.canvas))
    if args.max_shift is None:
        args.max_shift = spec.max_shift
    if args.max_shift is not None and args.max_shift >= 28:
        parser.error('--max-shift {} would shift the whole 28x28 image out of view'
                     .format(args.max_shift))
    if spec.pairs and args.communicator:
        parser.error('--communicator: --dataset {} draws its training pairs in one '
                     'process (the pair stream is not yet split over processes); train it '
                     'without --communicator'.format(args.dataset))
    if spec.pairs and args.shift_per_image:
        parser.error('--shift-per-image: --dataset {} already shifts each digit of a pair '
                     'on its own'.format(args.dataset))
    try:
        cli.check_output_folder(args.out, '--out')
        if args.save:
            cli.check_output_file(args.save, '--save')
    except cli.CLIError as e:
        parser.error(str(e))
    return args


def build_model(args, in_shape=(1, 28, 28)):
    if args.model == 'cnn':
        return BaselineCNN(in_shape=tuple(in_shape))
    return CapsNet(in_shape=tuple(in_shape), reconstruct=args.reconstruct,
                   leaky_slope=args.leaky_slope, n_iteration=args.n_iteration,
                   shared_weights=not args.unshared, squash_primary=args.squash_primary,
                   grad_all_iterations=args.routing_grad == 'all',
                   mask_test=args.mask_test, recon_weight=args.recon_weight)


def find_resume_snapshot(args, settings):
    """The snapshot to resume from (checked against ``settings``), or ``None``."""
    found, unreadable = snapshots.list_snapshots(args.out)
    for path in unreadable:
        print('warning: {} is named like a snapshot but cannot be read; ignored'.format(
            path), file=sys.stderr)
    if not args.resume:
        if found:
            raise cli.CLIError(
                '--out {} already holds the snapshots of a run (newest: {}); pass --resume '
                'to continue it, or choose another --out to start a new run'.format(
                    args.out, found[-1][1]), cli.EXIT_USAGE)
        return None
    if args.resume == 'auto':
        if not found:
            print('No snapshot in {} yet: starting from the beginning'.format(args.out))
            return None
        path = found[-1][1]
    else:
        path = args.resume
    snapshots.check_snapshot(path, settings)
    return path


def split_heldout(train, args):
    """``(train, heldout)``: the last ``--validation`` images held out (``None``: none).

    Refuses a split that leaves fewer training images than one batch: an epoch would
    then be a fraction of an iteration, and the log would count epochs that were never
    asked for.
    """
    n_train = len(train) - args.validation
    subset = ' (--n-train {})'.format(args.n_train) if args.n_train else ''
    if n_train <= 0:
        raise cli.CLIError('--validation {} holds out all {} training images{}; choose a '
                           'smaller --validation'.format(args.validation, len(train), subset),
                           cli.EXIT_USAGE)
    if args.batchsize > n_train:
        kept = (' after --validation {} holds out {}'.format(args.validation, args.validation)
                if args.validation else '')
        raise cli.CLIError(
            '--batchsize {} exceeds the {} training images{}{}: one batch would take '
            'every image more than once. Choose --batchsize {} or less'.format(
                args.batchsize, n_train, subset, kept, n_train), cli.EXIT_USAGE)
    if not args.validation:
        return train, None
    return chainer.datasets.split_dataset(train, n_train)


def check_save_target(path):
    """Refuses a --save path that holds something other than a model."""
    if not path or not os.path.isfile(path):
        return
    try:
        kind = inspect_model_file(path)['kind']
    except ModelFileError:
        kind = None
    if kind not in ('model', 'reference'):
        raise cli.CLIError('--save {} exists and is not a model file; refusing to '
                           'overwrite it'.format(path), cli.EXIT_USAGE)


def train(argv=None):
    args = parse_args(argv)
    # Several processes under mpiexec (ChainerMN): only rank 0 prints and writes
    comm = None
    if args.communicator:
        comm = distributed.create_communicator(args.communicator, use_gpu=args.gpu >= 0)
        distributed.quiet_unless_writer(comm)
    writer = distributed.is_writer(comm)
    print(json.dumps(vars(args), indent=2))
    device = cli.get_device(*distributed.rank_device(args.gpu, args.device, comm))
    print('Device: {}'.format(cli.describe_device(device)))
    print('# Minibatch-size: {}'.format(args.batchsize))
    if comm is not None:
        per_rank = distributed.local_batchsize(args.batchsize, comm)  # or refuses
        print('# processes: {} (--communicator {}), {} images of each batch per process'
              .format(comm.size, args.communicator, per_rank))
    print('# epoch: {}'.format(args.epoch))

    # Check what to resume from, and what --save would replace, before anything is
    # loaded or written
    settings = snapshots.run_settings(args)
    resume = None
    if writer:
        check_save_target(args.save)
        resume = find_resume_snapshot(args, settings)
    resume = distributed.bcast(resume, comm)

    # Load the data: the digits of the source data set, then the protocol's sets
    spec = protocols.protocol(args.dataset)
    try:
        train, test = get_dataset(spec.source, data_dir=args.data_dir,
                                  n_train=args.n_train,
                                  n_test=protocols.source_n_test(args.dataset, args.n_test),
                                  data_dir_name='--data-dir')
    except ValueError as e:  # --n-train or --n-test larger than the data
        raise cli.CLIError(str(e).replace('n_train=', '--n-train ').replace(
            'n_test=', '--n-test '), cli.EXIT_USAGE) from None
    train, heldout = split_heldout(train, args)
    data = protocols.make_data(args.dataset, train, heldout, test, n_test=args.n_test,
                               max_shift=args.max_shift,
                               shift_per_image=args.shift_per_image, seed=args.seed,
                               part=(comm.rank, comm.size) if comm else (0, 1))
    print('# dataset: {}'.format(protocols.describe(args.dataset, data)))

    # Set up a model
    set_random_seed(args.seed, device)
    model = build_model(args, protocols.in_shape(data))
    print('# parameters: {:,}'.format(model.count_params()))
    model.to_device(device)
    device.use()

    # Set up a trainer
    run_args = {k: v for k, v in vars(args).items()
                if k not in snapshots.BOOKKEEPING_FLAGS}
    meta = {'train_args': run_args, 'dataset': args.dataset, 'model': args.model,
            'train_images': len(data.train),
            'heldout_images': len(data.heldout) if data.heldout is not None else 0,
            'test_images': len(data.test), 'provenance': provenance(device)}
    if data.test_set:
        meta['test_set'] = data.test_set
    if comm is not None:
        meta['processes'] = comm.size
    trainer = capsnet_training.build_trainer(
        model, data.train, data.test, device, data.converter, batchsize=args.batchsize,
        epoch=args.epoch,
        alpha=args.alpha, decay=args.decay, decay_every=args.decay_every,
        min_alpha=args.min_alpha, seed=args.seed, out=args.out, save=args.save,
        keep=args.keep, test_batchsize=args.test_batchsize,
        snapshot_every=args.snapshot_every, settings=settings, meta=meta,
        heldout=data.heldout, pairs=spec.pairs, comm=comm)
    print('# model selection: {}'.format(capsnet_training.selection_rule(
        args.validation)[1]))
    if args.vis_every and writer:
        if not args.reconstruct:
            print('warning: --vis-every without --reconstruct: the decoder is not trained, '
                  'so the reconstruction figures will show noise', file=sys.stderr)
        trainer.extend(ReconstructionReport.from_dataset(
            model, data.test, trigger=(args.vis_every, 'epoch')))
    if resume:
        print('Resuming from {}'.format(resume))
        if comm is None:
            snapshots.load_snapshot(resume, trainer)
        else:
            distributed.load_snapshot(resume, trainer, comm, snapshots.load_snapshot)
        if trainer.updater.epoch_detail >= args.epoch:
            print('{} is already at epoch {:g} of --epoch {}: nothing to do'.format(
                resume, trainer.updater.epoch_detail, args.epoch))
            return

    # From here on, files are written (under MPI, by rank 0 only)
    lock = open_output(args) if writer else None
    try:
        # Run the training
        try:
            trainer.run(show_loop_exception_msg=args.debug)
        except NonFiniteError as e:
            last = snapshots.latest_snapshot(args.out)
            raise cli.CLIError('{}; training stopped. The last good snapshot is {}'.format(
                e, last or 'none (none was written yet)')) from e
    finally:
        if lock is not None:
            lock.release()


def open_output(args):
    """Locks --out for this run, removes what interrupted writes left, writes args.json.

    Returns:
        filelock.FileLock: The acquired lock; release it when the run ends.
    """
    os.makedirs(args.out, exist_ok=True)
    lock = filelock.FileLock(os.path.join(args.out, '.train.lock'))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise cli.CLIError('another train.py is writing to --out {}; wait for it or '
                           'choose another --out'.format(args.out)) from None
    try:
        for path in snapshots.remove_stale_temp_files(args.out):
            print('Removed {}, left by an interrupted write'.format(path))
        if args.save:
            save_dir = os.path.dirname(os.path.abspath(args.save))
            os.makedirs(save_dir, exist_ok=True)
            snapshots.remove_stale_temp_files(save_dir, os.path.basename(args.save))
        write_atomic(os.path.join(args.out, 'args.json'),
                     lambda f: f.write(json.dumps(vars(args), indent=2).encode()))
    except BaseException:
        lock.release()
        raise
    return lock


def main(argv=None):
    code = cli.run(train, argv)
    distributed.abort_on_failure(code)  # under MPI: end the other ranks too
    sys.exit(code)


if __name__ == '__main__':
    main()
