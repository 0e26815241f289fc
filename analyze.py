#!/usr/bin/env python
"""Analyzes a model written by ``train.py``: figures of its capsules and a test-set score.

    python analyze.py -g 0 --load saved_model

Writes into ``--out``: ``vis.png`` (inputs and reconstructions), ``vis_all.png`` (the
masking grid), ``vis_tweaked0.png`` .. ``vis_tweaked9.png`` (dimension perturbations),
``metrics.json`` (accuracy on the test set, no augmentation), ``confusion.png`` and
``misclassified.png`` (the most confident mistakes beside their reconstructions),
``routing.png`` (what routing does; numbers in ``metrics.json``, ``routing``) and
``explorer.html`` (a page to play with the capsules: docs/explorer.md).

A model of the affNIST protocol (``--dataset affnist``) is scored on the expanded MNIST
test set (the digits centred on 40x40), and on the official affNIST test files of
``--affnist-dir`` or, without them, on an affine-transformed MNIST test set that stands
in for affNIST (and is named so): ``metrics.json`` gives both (``transformed``).
Other data sets' figures name the classes, and draw colour images in colour;
``--load A B C`` also scores the models as an ensemble (``ensemble``; not MultiMNIST's
pairs, which have two labels each).

A MultiMNIST model gets the paper's Figure 5 instead: ``multimnist.png`` (the first
test pairs), ``multimnist_right.png`` and ``multimnist_wrong.png``, each pair beside its
two reconstructions overlaid in red and green; ``metrics.json`` gives the accuracy
(both digits right) and the accuracy of at least one digit.

The baseline CNN (``train.py --model cnn``) has no capsules and no decoder: it gets
``metrics.json``, ``confusion.png`` and ``misclassified.png`` (the inputs alone, titled
with the true and the predicted digit and the logit), and no ``vis*.png`` nor Figure 5.
"""

import argparse
import json
import os
import sys
import time

import matplotlib
matplotlib.use('Agg')

import capsnet_chainer  # noqa: E402,F401  (before chainer: restores numpy.sctypes)
import chainer  # noqa: E402
import numpy  # noqa: E402

from capsnet_chainer import cli  # noqa: E402
from capsnet_chainer.cli import non_negative_int  # noqa: E402
from capsnet_chainer.cli import positive_int  # noqa: E402
from capsnet_chainer.datasets import affnist  # noqa: E402
from capsnet_chainer.datasets import protocols  # noqa: E402
from capsnet_chainer.device import describe_device  # noqa: E402
from capsnet_chainer.device import get_device  # noqa: E402
from capsnet_chainer.evaluation import ensemble  # noqa: E402
from capsnet_chainer.evaluation import explorer  # noqa: E402
from capsnet_chainer.evaluation import figures  # noqa: E402
from capsnet_chainer.evaluation import metrics  # noqa: E402
from capsnet_chainer.evaluation import pair_figures  # noqa: E402
from capsnet_chainer.evaluation import plots  # noqa: E402
from capsnet_chainer.evaluation import routing_diagnostics  # noqa: E402
from capsnet_chainer.evaluation import transformed  # noqa: E402
from capsnet_chainer.fileio import file_digest  # noqa: E402
from capsnet_chainer.fileio import write_atomic  # noqa: E402
from capsnet_chainer.functions import pair_hits  # noqa: E402
from capsnet_chainer.functions import top_two  # noqa: E402
from capsnet_chainer.io.modelfile import load_model  # noqa: E402
from capsnet_chainer.io.modelfile import model_kind  # noqa: E402
from capsnet_chainer.io.modelfile import ModelFileError  # noqa: E402
from capsnet_chainer.training import snapshots  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        description='Figures and test-set metrics of a CapsNet model written by train.py',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--load', required=True, nargs='+', metavar='PATH',
                        help='model written by train.py --save (also: a train.py '
                             'snapshot, or a model saved by the reference implementation); '
                             'several: also score them as an ensemble, the mean of their '
                             'class capsules\' lengths (the figures are the first\'s; not '
                             'for multimnist)')
    parser.add_argument('--out', '-o', default='analyze_result',
                        help='folder for the figures and metrics.json')
    parser.add_argument('--dataset', choices=tuple(protocols.PROTOCOLS), default=None,
                        help='the data set to score on (default: the one the model file '
                             'records, else mnist)')
    parser.add_argument('--n-test', type=positive_int, default=None,
                        help='score only the first N test images (None: all 10,000; '
                             'multimnist: the first N of the pairs the model was tested '
                             'on, or N pairs from the same seed); the sample figures '
                             'always use the full test set')
    parser.add_argument('--affnist-dir', default=None, metavar='DIR',
                        help='affnist models: the official affNIST test files (test.mat, '
                             '1.mat .. 32.mat, or their zips; see docs/affnist.md); '
                             'without it, a stand-in affine-transformed MNIST test set')
    parser.add_argument('--n-transformed', type=positive_int, default=None, metavar='N',
                        help='affnist models: score the first N transformed images (None: '
                             'all: 320,000 affNIST images, or 10,000 stand-in images)')
    parser.add_argument('--perturbation', choices=sorted(figures.PERTURBATIONS),
                        default='reference',
                        help='vis_tweaked*.png: the reference (9 rows of steps of 0.075 '
                             'in [-0.3, 0.3], x 16 dimensions) or the paper\'s Fig. 4 '
                             '(16 dimensions x 11 steps of 0.05 in [-0.25, 0.25])')
    parser.add_argument('--top-k', type=non_negative_int, default=10,
                        help='misclassified test images to show in misclassified.png')
    parser.add_argument('--batchsize', '-b', type=positive_int, default=metrics.BATCHSIZE,
                        help='images per forward pass when scoring')
    parser.add_argument('--no-explorer', action='store_true',
                        help='do not write explorer.html (routing.png is written anyway)')
    parser.add_argument('--log', default=None, metavar='PATH',
                        help="the log of the model's training run (train.py's OUT/log): "
                             'also draws its error per epoch, test_error.png')
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.load, args.ensemble = args.load[0], args.load[1:]
    try:
        cli.check_output_folder(args.out, '--out')
    except cli.CLIError as e:
        parser.error(str(e))
    return args


def load(path):
    """Rebuilds the model stored at ``path``; a bad file raises :class:`cli.CLIError`.

    Returns:
        tuple: ``(model, meta)``.
    """
    try:
        return load_model(path)
    except ModelFileError as e:
        raise cli.CLIError('--load: {}'.format(' '.join(str(e).split()))) from None


def read_log(path):
    """The entries of a ``train.py`` log (``--log``), or a :class:`cli.CLIError` that
    names the file and what is wrong with it."""
    try:
        with open(path, 'rb') as f:
            log = json.loads(f.read().decode('utf-8'))
    except OSError as e:
        raise cli.CLIError('--log {}: cannot read it ({})'.format(path, e.strerror or e))
    except ValueError as e:
        raise cli.CLIError('--log {}: not a JSON file ({}); pass the log that train.py '
                           'writes into its --out folder'.format(path, e))
    if not (isinstance(log, list) and log
            and all(isinstance(e, dict) and 'epoch' in e for e in log)):
        raise cli.CLIError('--log {}: not a train.py log (a JSON list of entries, one per '
                           'epoch, each with its "epoch")'.format(path))
    try:
        curves = plots.error_curves(log)
    except TypeError:
        raise cli.CLIError('--log {}: an accuracy in it is not a number'.format(path)) from None
    if not curves:
        raise cli.CLIError('--log {}: no accuracy in its entries ({}): nothing to '
                           'plot'.format(path, ', '.join(k for k, _ in plots.ERROR_CURVES)))
    return log


def plot_log(log, meta, dataset, args):
    """``test_error.png``: the error per epoch of ``--log``, the kept model marked, and
    for MNIST the paper's and the reference's errors."""
    selection = meta.get('selection', {}).get('key')
    kept = (selection, meta['epoch']) if selection and 'epoch' in meta else None
    if kept is not None:
        entry = next((e for e in log if e['epoch'] == kept[1]), {})
        if selection not in meta or abs(entry.get(selection, -1) - meta[selection]) > 1e-6:
            print('warning: --log {}: its epoch {} does not record the {} {} of --load {}: '
                  'is it the log of another run?'.format(
                      args.log, kept[1], selection, meta.get(selection, '?'), args.load),
                  file=sys.stderr)
            kept = None
    targets = plots.MNIST_ERRORS if dataset == 'mnist' else ()
    save(plots.plot_error_curves(log, kept, targets),
         os.path.join(args.out, 'test_error.png'))


def snapshot_dataset(path, meta):
    """The ``--dataset`` of the run a trainer snapshot comes from, or ``None``."""
    if meta.get('source') != 'trainer snapshot':
        return None
    try:
        settings = snapshots.read_settings(path)
    except ModelFileError:  # unreadable settings: the default applies
        return None
    return settings.get('dataset') if settings else None


def analyze(argv=None):
    start = time.time()
    args = parse_args(argv)
    print(json.dumps(vars(args), indent=2))
    device = get_device(args.gpu, args.device)
    print('Device: {}'.format(describe_device(device)))

    # Load the model (and the log of its run: a bad one fails here, not after the scoring)
    model, meta = load(args.load)
    members = [(args.load, model, meta)] + [(p,) + load(p) for p in args.ensemble]
    ensemble.check_members(members)
    log = read_log(args.log) if args.log else None
    sha256 = file_digest(args.load)
    print('# model: {} (sha256 {}), epoch {}, test accuracy when saved {}'.format(
        args.load, sha256[:12], meta.get('epoch', '?'),
        meta.get('validation/main/accuracy', '?')))
    print('# configuration: {}'.format(json.dumps(model.config)))
    if meta.get('selection'):
        print('# chosen by: {}'.format(meta['selection']['rule']))
    if meta.get('note'):
        print('# note: {}'.format(meta['note']))
    capsules = model_kind(model.config) == 'capsnet'
    if not capsules:
        print('# no capsule figures: the baseline CNN has no capsules, routing or decoder, '
              'so no vis*.png, Figure 5, reconstructions, routing.png or explorer.html (there '
              'is nothing to explore); the metrics as for CapsNet')
    elif not model.reconstruct:
        how = ('judging by its all-zero decoder biases' if meta.get('note')
               else 'says its configuration')
        print('warning: {} was trained without --reconstruct ({}): its decoder is '
              'untrained, so every reconstruction in the figures is meaningless'.format(
                  args.load, how), file=sys.stderr, flush=True)
    model.to_device(device)
    device.use()

    # Load the data
    recorded = meta.get('dataset', snapshot_dataset(args.load, meta))
    dataset = args.dataset or recorded or 'mnist'
    if dataset not in protocols.PROTOCOLS:
        raise cli.CLIError('{} records the data set {!r}, which this version does not know; '
                           'pass --dataset'.format(args.load, dataset))
    protocol = protocols.protocol(dataset)
    if protocol.pairs and args.ensemble:  # refused before the pairs are made and scored
        raise cli.CLIError('--load: {} models as an ensemble, but --dataset {} has two labels '
                           'per image, and an ensemble scores one; pass one model'.format(
                               1 + len(args.ensemble), dataset), cli.EXIT_USAGE)
    print('# dataset: {} ({})'.format(protocol.title, 'from --dataset' if args.dataset else
                                      'as the model file records' if recorded
                                      else 'the default: the model file records none'))
    # A DatasetError is one line in cli.run; the training images are not needed
    _, digits = protocol.load(args.data_dir, data_dir_name='--data-dir', test_only=True,
                              **protocol.recorded_settings(meta))
    test_set = protocol.recorded_test_set(meta, args.n_test)
    test = protocol.make_test_set(digits, test_set)
    names = protocol.run_class_names(meta, digits)
    arrays = chainer.dataset.concat_examples(test[:])
    if tuple(arrays[0].shape[1:]) != tuple(model.config['in_shape']):
        raise cli.CLIError('--load {} takes images of shape {}, but --dataset {} has {}; '
                           'pass the --dataset it was trained on'.format(
                               args.load, tuple(model.config['in_shape']), dataset,
                               tuple(arrays[0].shape[1:])), cli.EXIT_USAGE)
    n_test = args.n_test or len(arrays[0])
    if n_test > len(arrays[0]):
        raise cli.CLIError('--n-test {} exceeds the {} test images'.format(
            n_test, len(arrays[0])), cli.EXIT_USAGE)
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, 'args.json'),
                 lambda f: f.write(json.dumps(vars(args), indent=2).encode()))

    evaluation = {'dataset': dataset, 'augmentation': 'none', 'batchsize': args.batchsize,
                  'data_dir': args.data_dir, 'device': str(device),
                  'scores': model.score_name + 's', 'class_names': list(names)}
    if protocol.pairs:
        results, traced = analyze_pairs(model, arrays, n_test, test_set, args, evaluation,
                                        capsules)
    else:
        results, traced, scores = analyze_digits(model, arrays, n_test, protocol, args,
                                                 evaluation, capsules)
    if args.ensemble:  # --load A B C ...: the class of their mean capsule lengths
        results['ensemble'] = ensemble.evaluate(members, *arrays[:2], n_test, args.batchsize,
                                                device, cli.Progress, known={0: scores})
        print(ensemble.summary(results['ensemble']))
    if capsules:  # routing.png and explorer.html
        results['routing'] = explorer.write_views(
            model, arrays[0][:n_test], arrays[1][:n_test], args.out,
            explorer.class_names(names, model.config['n_class']),
            '{} on {}'.format(os.path.basename(args.load), protocol.title), args.batchsize,
            not args.no_explorer, traced=traced)
    if dataset == 'affnist':
        results['transformed'] = score_transformed(model, digits, args)
    elif args.affnist_dir or args.n_transformed:
        raise cli.CLIError('--affnist-dir and --n-transformed apply to models of --dataset '
                           'affnist; this one is {}'.format(dataset), cli.EXIT_USAGE)
    if log is not None:
        plot_log(log, meta, dataset, args)
    results.update({
        'config': model.config,
        'selection': meta.get('selection', {'rule': 'not recorded in the model file'}),
        'source': {'path': os.path.abspath(args.load), 'sha256': sha256, 'meta': meta},
    })
    path = os.path.join(args.out, 'metrics.json')
    write_atomic(path, lambda f: f.write(json.dumps(results, indent=2).encode()))
    print('wrote {}'.format(path))
    print('# total: {:.1f} s'.format(time.time() - start))


def save(fig_or_ax, path):
    figures.save_figure(fig_or_ax, path)
    print('wrote {}'.format(path))


def analyze_digits(model, arrays, n_test, protocol, args, evaluation, capsules=True):
    """Sample figures (``capsules``), the score, the confusion matrix and the worst
    mistakes (beside their reconstructions with ``capsules``). Returns the results, the
    routing traced (:func:`score`) and the class scores."""
    x, t = arrays
    names = evaluation['class_names']
    labels = None if names == [str(k) for k in range(len(names))] else names  # not digits
    # Figures of the first two test images of each digit
    if capsules:
        tic = time.time()
        index = figures.select_samples(t, 2, model.config['n_class'])
        steps, layout = figures.PERTURBATIONS[args.perturbation]
        written = figures.write_sample_figures(model, x[index], t[index], args.out, steps,
                                               layout, labels)
        for path in written:
            print('wrote {}'.format(path))
        print('# sample figures: {:.1f} s'.format(time.time() - tic))

    # Score the test set, no augmentation
    tic = time.time()
    t = t[:n_test]
    scores, traced = score(model, x[:n_test], t, args, capsules, 'images')
    results = metrics.classification_metrics(t, scores)
    errors = metrics.most_confident_errors(t, scores, args.top_k)
    title = affnist.EXPANDED_TITLE if protocol.canvas else protocol.title
    evaluation.update(images='the first {} of the {} test set'.format(n_test, title))
    results.update({
        'evaluation': evaluation,
        'misclassified': [
            {'index': int(i), 'true': int(t[i]), 'pred': int(scores[i].argmax()),
             'score': float(scores[i].max()), 'true_score': float(scores[i, t[i]])}
            for i in errors],
    })
    save(plots.plot_confusion(results['confusion_matrix'], class_names=labels),
         os.path.join(args.out, 'confusion.png'))
    save(plots.plot_misclassified(model, x[:n_test], t, scores, errors,
                                  reconstructions=capsules, class_names=labels),
         os.path.join(args.out, 'misclassified.png'))
    print('# scoring and evaluation figures: {:.1f} s'.format(time.time() - tic))
    print('test accuracy {:.2%} (error {:.2%}) on {} {} test images, no augmentation'.format(
        results['accuracy'], results['error_rate'], n_test, title))
    if protocol.source != 'mnist':
        print('# classes: {}'.format(', '.join('{} {}'.format(*c) for c in enumerate(names))))
    return results, traced, scores


def score(model, x, t, args, capsules, what):
    """``(scores, traced)``: the class scores ``(B, J)`` of the test images, no
    augmentation, and for a CapsNet its routing traced in the same pass (what
    ``routing.png`` and ``explorer.html`` show; ``None`` for the CNN)."""
    progress = cli.Progress('scoring {} test {}'.format(len(x), what))
    if not capsules:
        return metrics.score(model, x, args.batchsize, progress=progress), None
    traced = routing_diagnostics.diagnose(model, x, t, args.batchsize, progress)
    return traced[1], traced


def score_transformed(model, digits, args):
    """affNIST protocol: the accuracy on affNIST, or on its stand-in (named as such)."""
    tic = time.time()
    result = transformed.score_transformed(model, digits, args.affnist_dir, args.n_transformed,
                                           args.batchsize, cli.Progress)
    print('# {}: {:.1f} s'.format(result['title'], time.time() - tic))
    print('{} accuracy {:.2%} (error {:.2%}) on {} images'.format(
        result['title'], result['accuracy'], 1 - result['accuracy'], result['n_test']))
    return result


def analyze_pairs(model, arrays, n_test, test_set, args, evaluation, capsules=True):
    """MultiMNIST: the pair accuracies and (``capsules``) the paper's Figure 5."""
    x, t2 = arrays[0][:n_test], arrays[1][:n_test]
    tic = time.time()
    scores, traced = score(model, x, t2, args, capsules, 'pairs')
    both, one = metrics.pair_accuracy(scores, t2)
    right = pair_hits(scores, t2).all(axis=1)  # (N,)
    k = max(args.top_k, 1)
    shown = {'multimnist.png': (numpy.arange(min(k, n_test)), 'the first test pairs'),
             'multimnist_right.png': (numpy.flatnonzero(right)[:k], 'right: both digits'),
             'multimnist_wrong.png': (numpy.flatnonzero(~right)[:k], 'wrong')}
    for name, (index, title) in shown.items():
        if capsules:
            save(pair_figures.plot_pairs(model, x[index], t2[index], title=title),
                 os.path.join(args.out, name))
    evaluation.update(images='the first {} of {} MultiMNIST test pairs (seed {}, shifts up '
                             'to {} px)'.format(n_test, test_set['pairs'], test_set['seed'],
                                                test_set['max_shift']),
                      test_set=test_set)
    print('# scoring and figures: {:.1f} s'.format(time.time() - tic))
    print('test accuracy {:.2%} (error {:.2%}; at least one digit right {:.2%}) on {} '
          'MultiMNIST test pairs'.format(both, 1 - both, one, n_test))
    return {'accuracy': both, 'error_rate': 1 - both, 'accuracy_at_least_one': one,
            'n_test': int(n_test), 'n_correct': int(right.sum()), 'evaluation': evaluation,
            'wrong': [{'index': int(i), 'true': [int(a) for a in t2[i]],
                       'pred': [int(a) for a in top_two(scores[i:i + 1])[0]]}
                      for i in numpy.flatnonzero(~right)[:k]]}, traced


def main(argv=None):
    sys.exit(cli.run(analyze, argv))


if __name__ == '__main__':
    main()
