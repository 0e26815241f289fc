#!/usr/bin/env python
"""Trains CapsNet on MNIST (or Fashion-MNIST, MultiMNIST, the affNIST protocol, one's own
images, CIFAR-10, SVHN, smallNORB) and keeps the best model.

    python train.py -g 0 --save saved_model --reconstruct
    python train.py -g 0 --dataset folder --data-dir my_images --save my_model --reconstruct
    python train.py -g 0 --model cnn --save cnn_model     # the paper's baseline CNN
    mpiexec -n 4 python train.py -g 0 --communicator pure_nccl ...   # 4 GPUs (ChainerMN)

Every default is the reference implementation's behaviour; the flags under "paper
variants" switch to the paper's choices where the two differ.
"""

import argparse
import json
import sys

import matplotlib
matplotlib.use('Agg')

import capsnet_chainer  # noqa: E402,F401  (before chainer: restores numpy.sctypes)
from chainer import training  # noqa: E402
from chainer.training import extensions  # noqa: E402
import numpy  # noqa: E402

from capsnet_chainer.baseline_cnn import BaselineCNN  # noqa: E402
from capsnet_chainer import cli  # noqa: E402
from capsnet_chainer.cli import non_negative_int  # noqa: E402
from capsnet_chainer.cli import positive_int  # noqa: E402
from capsnet_chainer.cli import split_heldout  # noqa: E402
from capsnet_chainer.datasets import protocols  # noqa: E402
from capsnet_chainer.device import describe_device  # noqa: E402
from capsnet_chainer.device import get_device  # noqa: E402
from capsnet_chainer.device import PRECISIONS  # noqa: E402
from capsnet_chainer.device import set_precision  # noqa: E402
from capsnet_chainer.fileio import BackgroundWriter  # noqa: E402
from capsnet_chainer.io.provenance import provenance  # noqa: E402
from capsnet_chainer.model import CapsNet  # noqa: E402
from capsnet_chainer.random_state import set_random_seed  # noqa: E402
from capsnet_chainer.training import distributed  # noqa: E402
from capsnet_chainer.training import output  # noqa: E402
from capsnet_chainer.training import snapshots  # noqa: E402
from capsnet_chainer.training.extensions import AtomicLogReport  # noqa: E402
from capsnet_chainer.training.extensions import BestModelSaver  # noqa: E402
from capsnet_chainer.training.extensions import EpochLimit  # noqa: E402
from capsnet_chainer.training.extensions import EpochTimes  # noqa: E402
from capsnet_chainer.training.extensions import HELDOUT_ACCURACY  # noqa: E402
from capsnet_chainer.training.extensions import log_keys  # noqa: E402
from capsnet_chainer.training.extensions import LogPlot  # noqa: E402
from capsnet_chainer.training.extensions import ReconstructionReport  # noqa: E402
from capsnet_chainer.training.extensions import RunTimeEstimate  # noqa: E402
from capsnet_chainer.training.extensions import selection_rule  # noqa: E402
from capsnet_chainer.training.extensions import TEST_ACCURACY  # noqa: E402
from capsnet_chainer.training.gated_adam import GatedAdam  # noqa: E402
from capsnet_chainer.training.nonfinite import NonFiniteError  # noqa: E402
from capsnet_chainer.training.updater import ConverterStateUpdater  # noqa: E402

#: The flags that configure CapsNet; ``--model cnn`` refuses them unless at their default.
CAPSNET_FLAGS = ('reconstruct', 'recon_weight', 'leaky_slope', 'n_iteration', 'unshared',
                 'squash_primary', 'routing_grad', 'mask_test', 'none_of_the_above')
#: Flags about the bookkeeping of a run, not about what it computes or where: left out
#: of the ``train_args`` that a model file records.
BOOKKEEPING_FLAGS = ('resume', 'debug', 'keep', 'snapshot_every', 'vis_every')
#: Flags that may change when a run is resumed: where, how long and how often it runs,
#: not what it computes (N processes train what one does: ``communicator`` too).
RESUMABLE_CHANGES = ('epoch', 'gpu', 'device', 'out', 'save', 'data_dir',
                     'communicator') + BOOKKEEPING_FLAGS
#: What to do about a long run on the CPU, said with the estimate of its time.
FASTER = ('To go faster: train on a GPU (-g 0), on fewer images (--n-train N) or for '
          'fewer epochs (-e N)')


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        description='CapsNet (Sabour et al., NIPS 2017), or the paper\'s baseline CNN, on '
                    'MNIST, Fashion-MNIST or MultiMNIST, in Chainer',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--dataset', choices=tuple(protocols.PROTOCOLS), default='mnist',
                        help='the data set to train and test on, from --data-dir '
                             '(docs/datasets.md; folder, npz: your own images)')
    parser.add_argument('--model', choices=('capsnet', 'cnn'), default='capsnet',
                        help='the network: CapsNet, or the paper\'s baseline CNN (Sec. 5; '
                             'docs/baseline_cnn.md), trained with the same Adam schedule')
    parser.add_argument('--batchsize', '-b', type=positive_int, default=256)
    parser.add_argument('--decay', '-d', type=cli.unit_interval, default=0.95,
                        help='learning-rate decay factor per epoch (or per --decay-every)')
    parser.add_argument('--epoch', '-e', type=positive_int, default=500)
    parser.add_argument('--seed', '-s', type=int, default=789)
    parser.add_argument('--reconstruct', '--recon', action='store_true',
                        help='add the decoder\'s reconstruction loss')
    parser.add_argument('--save', default=None,
                        help='where to write the best model (by test accuracy, or by '
                             'held-out accuracy with --validation)')
    parser.add_argument('--validation', type=non_negative_int, default=0, metavar='N',
                        help='hold out the last N training images, never trained on, and '
                             'keep the model best on them; the test set is then only '
                             'reported (0: the reference\'s rule, best test accuracy)')
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
    parser.add_argument('--alpha', type=cli.positive_float, default=1e-3,
                        help='Adam learning rate')
    parser.add_argument('--min-alpha', type=cli.non_negative_float, default=1e-5,
                        help='floor of the decayed learning rate')
    parser.add_argument('--decay-every', type=non_negative_int, default=0,
                        help='decay every N iterations instead of every epoch '
                             '(the other seed: --decay 0.96 --decay-every 2000)')
    parser.add_argument('--test-batchsize', type=positive_int, default=100)
    parser.add_argument('--recon-weight', type=cli.non_negative_float, default=0.0005)
    parser.add_argument('--precision', choices=PRECISIONS, default=None,
                        help='of the matrix products: float32 (the reference; the default), '
                             'or tf32 on a GPU\'s tensor cores (the model file records it)')

    variants = parser.add_argument_group('paper variants (the reference by default)')
    variants.add_argument('--leaky-slope', type=cli.non_negative_float, default=0.05,
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
    variants.add_argument('--none-of-the-above', action=argparse.BooleanOptionalAction,
                          help='route with an extra "none-of-the-above" class (Sec. 7; '
                               'default: on for cifar10 only)')
    cli.add_common_arguments(parser)
    cli.add_image_arguments(parser)
    parser.add_argument('--communicator', choices=tuple(distributed.COMMUNICATORS),
                        default=None,
                        help='train data-parallel with this ChainerMN communicator under '
                             'mpiexec -n N (naive: CPU, pure_nccl: GPUs); --batchsize is '
                             'the global batch, split among the N processes')
    return parser.parse_args(argv)


def check_args(args):
    """Checks what the flags say together, before anything is loaded or written; the
    protocol of ``--dataset`` checks its own (and sets ``--max-shift``'s default)."""
    if args.model != 'capsnet':
        if args.vis_every:
            raise cli.CLIError('--vis-every draws reconstructions, and --model {} has no '
                               'decoder'.format(args.model), cli.EXIT_USAGE)
        defaults = vars(parse_args([]))
        for name in CAPSNET_FLAGS:
            if getattr(args, name) != defaults[name]:
                raise cli.CLIError('--{} configures CapsNet; --model {} has no use for it'
                                   .format(name.replace('_', '-'), args.model),
                                   cli.EXIT_USAGE)
    args.max_shift = protocols.protocol(args.dataset).check(
        args.max_shift, args.shift_per_image, data_parallel=args.communicator is not None,
        **{k: getattr(args, k) for k in protocols.SETTINGS})
    cli.check_output_folder(args.out, '--out')
    if args.save:
        cli.check_output_file(args.save, '--save')


def build_model(args, in_shape, n_class=10, **adapted):  # adapted: Sec. 7's changes
    if args.model == 'cnn':
        return BaselineCNN(in_shape=in_shape, n_class=n_class)
    return CapsNet(in_shape=in_shape, n_class=n_class, reconstruct=args.reconstruct,
                   leaky_slope=args.leaky_slope, n_iteration=args.n_iteration,
                   shared_weights=not args.unshared, squash_primary=args.squash_primary,
                   grad_all_iterations=args.routing_grad == 'all',
                   mask_test=args.mask_test, recon_weight=args.recon_weight, **adapted)


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    # Several processes under mpiexec (ChainerMN): only rank 0 prints and writes
    comm = distributed.create_communicator(args.communicator, use_gpu=args.gpu >= 0)
    distributed.quiet_unless_writer(comm)
    writer = distributed.is_writer(comm)
    print(json.dumps(vars(args), indent=2))
    device = get_device(*distributed.rank_device(args.gpu, args.device, comm))
    set_precision(args.precision, device)  # tf32: refused on the CPU
    print('Device: {}'.format(describe_device(device)))
    print('# Minibatch-size: {}'.format(args.batchsize))
    if comm is not None:
        per_rank = distributed.local_batchsize(args.batchsize, comm)  # or refuses
        print('# processes: {} (--communicator {}), {} images of each batch per process'
              .format(comm.size, args.communicator, per_rank))
    print('# epoch: {}'.format(args.epoch))

    # Check what to resume from, and what --save would replace, before anything is
    # loaded or written
    settings = run_settings(args)
    resume = None
    if writer:
        output.check_save_target(args.save)
        resume = find_resume_snapshot(args, settings)
    resume = distributed.bcast(resume, comm)

    # Load the data: the source's images, then the protocol's sets
    protocol = protocols.protocol(args.dataset)
    train, test = protocol.load(args.data_dir, args.n_train, args.n_test, '--data-dir',
                                **{k: getattr(args, k) for k in protocol.settings})
    train, heldout = split_heldout(train, args)
    data = protocol.make_data(train, heldout, test, n_test=args.n_test,
                              max_shift=args.max_shift, shift_per_image=args.shift_per_image,
                              seed=args.seed, part=(comm.rank, comm.size) if comm else (0, 1))
    print('# dataset: {}'.format(protocol.describe(data)))

    # Set up a model
    set_random_seed(args.seed, device)
    model = build_model(args, **protocol.network(data, args.none_of_the_above))
    print('# parameters: {:,}'.format(model.count_params()))
    model.to_device(device)
    device.use()

    # Set up an optimizer (under MPI, one that averages the ranks' gradients): Adam,
    # which can skip a diverged step on the device
    optimizer = distributed.setup_optimizer(GatedAdam(alpha=args.alpha), model, comm)

    # Set up a trainer (under MPI, each rank trains on its slice of every global batch
    # and evaluates its part of the test set)
    train_iter, converter = distributed.train_pipeline(data, args.batchsize, args.seed, comm,
                                                       device)
    test_iter = distributed.test_iterator(data.test, args.test_batchsize, comm, device)
    updater = ConverterStateUpdater(train_iter, optimizer, converter=converter, device=device,
                                    defer_check=distributed.deferred_check(device, comm))
    trainer = training.Trainer(updater, EpochLimit(args.epoch), out=args.out)

    # Triggers
    epoch_trigger = (1, 'epoch')
    decay_trigger = (args.decay_every, 'iteration') if args.decay_every else epoch_trigger

    trainer.extend(distributed.evaluator(test_iter, model, device, comm))
    if data.heldout is not None:
        heldout_iter = distributed.test_iterator(data.heldout, args.test_batchsize, comm,
                                                 device)
        trainer.extend(distributed.evaluator(heldout_iter, model, device, comm),
                       name='heldout')
    trainer.extend(extensions.ExponentialShift('alpha', args.decay, target=args.min_alpha),
                   trigger=decay_trigger)
    if comm is not None:
        trainer.extend(distributed.MeanObservations(comm))

    # Rank 0 alone logs, plots and writes files
    if writer:
        key, rule = selection_rule(args.validation)
        print('# model selection: {}'.format(rule))
        meta = run_meta(args, data, device, comm, key, rule)
        # The best model and the snapshots are written on a thread, in order, while the
        # next epoch trains
        files = BackgroundWriter('capsnet-writer')
        sizes = {TEST_ACCURACY: len(data.test)}
        if data.heldout is not None:
            sizes[HELDOUT_ACCURACY] = len(data.heldout)
        trainer.extend(BestModelSaver(model, args.save, key=key, meta=meta, sizes=sizes,
                                      batchsize=args.test_batchsize,
                                      n_process=comm.size if comm else 1, writer=files))
        trainer.extend(snapshots.Snapshot(args.snapshot_every, args.keep, settings,
                                          writer=files))
        trainer.extend(EpochTimes())
        trainer.extend(extensions.observe_value('alpha', lambda t: optimizer.alpha),
                       trigger=epoch_trigger)
        trainer.extend(AtomicLogReport(trigger=epoch_trigger), name='LogReport')
        losses, accuracies = log_keys(model.reconstruct, protocol.pairs,
                                      data.heldout is not None)
        # The plots at most every 10 s and at the end, not every short GPU epoch
        trainer.extend(LogPlot(losses, 'loss.png', min_interval=10), name='LossPlot')
        trainer.extend(LogPlot(accuracies, 'accuracy.png', min_interval=10),
                       name='AccuracyPlot')
        trainer.extend(extensions.PrintReport(
            ['epoch'] + losses + accuracies + ['alpha', 'elapsed_time']))
        trainer.extend(extensions.ProgressBar(update_interval=10))
        if device.xp is numpy:
            trainer.extend(RunTimeEstimate(args.epoch, FASTER))
        if args.vis_every:
            if not args.reconstruct:
                print('warning: --vis-every without --reconstruct: the decoder is not '
                      'trained, so the reconstruction figures will show noise',
                      file=sys.stderr)
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

    # Run the training (from here on, files are written: under MPI, by rank 0 only)
    lock = output.open_output(args.out, args.save, vars(args)) if writer else None
    try:
        trainer.run(show_loop_exception_msg=args.debug)
    except NonFiniteError as e:
        last = snapshots.latest_snapshot(args.out)
        raise cli.CLIError('{}; training stopped. The last good snapshot is {}'.format(
            e, last or 'none (none was written yet)')) from e
    finally:
        if lock is not None:
            lock.release()


# Resuming: which flags must match, and which snapshot


def run_settings(args):
    """The settings of a run that a resumed run must share (a JSON-able dict): every
    flag except :data:`RESUMABLE_CHANGES` (a flag newer than a snapshot resumes it where
    not given: :func:`~capsnet_chainer.training.snapshots.check_snapshot`)."""
    settings = {k: v for k, v in vars(args).items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps(settings, sort_keys=True))


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
    snapshots.check_snapshot(path, settings, describe=cli.flag_and_value)
    return path


# What the run records


def run_meta(args, data, device, comm, key, rule):
    """What the best model's file records of its run."""
    protocol = protocols.protocol(args.dataset)
    meta = {'train_args': {k: v for k, v in vars(args).items()
                           if k not in BOOKKEEPING_FLAGS},
            'dataset': args.dataset, 'model': args.model, 'train_images': len(data.train),
            'heldout_images': len(data.heldout) if data.heldout is not None else 0,
            'test_images': len(data.test), 'provenance': provenance(device),
            'selection': {'key': key, 'rule': rule}, 'class_names': list(protocol.names(data)),
            'preprocessing': protocol.preprocessing(data, args.max_shift, args.shift_per_image)}
    if data.test_set:
        meta['test_set'] = data.test_set
    if comm is not None:
        meta['processes'] = comm.size
    return meta


if __name__ == '__main__':
    code = cli.run(main)
    distributed.abort_on_failure(code)  # under MPI: end the other ranks too
    sys.exit(code)
