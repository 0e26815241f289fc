#!/usr/bin/env python
"""Analyzes a model written by ``train.py``: figures of its capsules and a test-set score.

    python analyze.py -g 0 --load saved_model

Writes into ``--out``: ``vis.png`` (inputs and reconstructions), ``vis_all.png`` (the
masking grid), ``vis_tweaked0.png`` .. ``vis_tweaked9.png`` (dimension perturbations),
``metrics.json`` (accuracy on the test set, no augmentation), ``confusion.png`` and
``misclassified.png`` (the most confident mistakes beside their reconstructions).
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

from capsnet_chainer import cli  # noqa: E402
from capsnet_chainer import figures  # noqa: E402
from capsnet_chainer import metrics  # noqa: E402
from capsnet_chainer import snapshots  # noqa: E402
from capsnet_chainer.cli import non_negative_int  # noqa: E402
from capsnet_chainer.cli import positive_int  # noqa: E402
from capsnet_chainer.mnist import DATASETS  # noqa: E402
from capsnet_chainer.mnist import get_dataset  # noqa: E402
from capsnet_chainer.modelfile import load_model  # noqa: E402
from capsnet_chainer.modelfile import ModelFileError  # noqa: E402
from capsnet_chainer.fileio import file_sha256  # noqa: E402
from capsnet_chainer.fileio import write_atomic  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        description='Figures and test-set metrics of a CapsNet model written by train.py',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--load', required=True,
                        help='model written by train.py --save (also: a train.py '
                             'snapshot, or a model saved by the reference implementation)')
    parser.add_argument('--out', '-o', default='analyze_result',
                        help='folder for the figures and metrics.json')
    parser.add_argument('--dataset', choices=tuple(DATASETS), default=None,
                        help='the data set to score on (default: the one the model file '
                             'records, else mnist)')
    parser.add_argument('--n-test', type=positive_int, default=None,
                        help='score only the first N test images (None: all 10,000); '
                             'the sample figures always use the full test set')
    parser.add_argument('--perturbation', choices=sorted(figures.PERTURBATIONS),
                        default='reference',
                        help='vis_tweaked*.png: the reference (9 rows of steps of 0.075 '
                             'in [-0.3, 0.3], x 16 dimensions) or the paper\'s Fig. 4 '
                             '(16 dimensions x 11 steps of 0.05 in [-0.25, 0.25])')
    parser.add_argument('--top-k', type=non_negative_int, default=10,
                        help='misclassified test images to show in misclassified.png')
    parser.add_argument('--batchsize', '-b', type=positive_int, default=metrics.BATCHSIZE,
                        help='images per forward pass when scoring')
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
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


def snapshot_dataset(path, meta):
    """The ``--dataset`` of the run a trainer snapshot comes from, or ``None``."""
    if meta.get('source') != 'trainer snapshot':
        return None
    try:
        settings = snapshots.read_settings(path)
    except ModelFileError:  # unreadable settings: the default applies
        return None
    return settings.get('dataset') if settings else None


class Progress(object):
    """Prints ``label: 45% (4500/10000)`` to stderr, in place on a terminal."""

    def __init__(self, label, stream=sys.stderr):
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = -1

    def __call__(self, done, total):
        percent = 100 * done // max(total, 1)
        if self.tty or percent // 10 > self.shown // 10 or done == total:
            end = ('\n' if done == total else '') if self.tty else '\n'
            line = '{}: {:3d}% ({}/{})'.format(self.label, percent, done, total)
            print(('\r' if self.tty else '') + line, end=end, file=self.stream, flush=True)
            self.shown = percent


def analyze(argv=None):
    start = time.time()
    args = parse_args(argv)
    print(json.dumps(vars(args), indent=2))
    device = cli.get_device(args.gpu, args.device)
    print('Device: {}'.format(cli.describe_device(device)))

    # Load the model
    model, meta = load(args.load)
    sha256 = file_sha256(args.load)
    print('# model: {} (sha256 {}), epoch {}, test accuracy when saved {}'.format(
        args.load, sha256[:12], meta.get('epoch', '?'),
        meta.get('validation/main/accuracy', '?')))
    print('# configuration: {}'.format(json.dumps(model.config)))
    if meta.get('selection'):
        print('# chosen by: {}'.format(meta['selection']['rule']))
    if meta.get('note'):
        print('# note: {}'.format(meta['note']))
    if not model.reconstruct:
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
    if dataset not in DATASETS:
        raise cli.CLIError('{} records the data set {!r}, which this version does not know; '
                           'pass --dataset'.format(args.load, dataset))
    spec = DATASETS[dataset]
    print('# dataset: {} ({})'.format(spec.title, 'from --dataset' if args.dataset else
                                      'as the model file records' if recorded
                                      else 'the default: the model file records none'))
    # A DatasetError is one line in cli.run
    _, test = get_dataset(dataset, data_dir=args.data_dir, data_dir_name='--data-dir')
    x, t = chainer.dataset.concat_examples(test[:])
    n_test = args.n_test or len(t)
    if n_test > len(t):
        raise cli.CLIError('--n-test {} exceeds the {} test images'.format(n_test, len(t)),
                           cli.EXIT_USAGE)
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, 'args.json'),
                 lambda f: f.write(json.dumps(vars(args), indent=2).encode()))

    # Figures of the first two test images of each digit
    tic = time.time()
    index = figures.select_samples(t, 2, model.config['n_class'])
    steps, layout = figures.PERTURBATIONS[args.perturbation]
    written = figures.write_sample_figures(model, x[index], t[index], args.out, steps,
                                           layout)
    for path in written:
        print('wrote {}'.format(path))
    print('# sample figures: {:.1f} s'.format(time.time() - tic))

    # Score the test set, no augmentation
    tic = time.time()
    scores = metrics.score(model, x[:n_test], args.batchsize,
                           progress=Progress('scoring {} test images'.format(n_test)))
    t = t[:n_test]
    results = metrics.classification_metrics(t, scores)
    errors = metrics.most_confident_errors(t, scores, args.top_k)
    results.update({
        'evaluation': {'dataset': dataset,
                       'images': 'the first {} of the {} test set'.format(n_test, spec.title),
                       'class_names': list(spec.class_names),
                       'augmentation': 'none', 'batchsize': args.batchsize,
                       'data_dir': args.data_dir, 'device': str(device)},
        'config': model.config,
        'selection': meta.get('selection', {'rule': 'not recorded in the model file'}),
        'source': {'path': os.path.abspath(args.load), 'sha256': sha256, 'meta': meta},
        'misclassified': [
            {'index': int(i), 'true': int(t[i]), 'pred': int(scores[i].argmax()),
             'score': float(scores[i].max()), 'true_score': float(scores[i, t[i]])}
            for i in errors],
    })
    path = os.path.join(args.out, 'metrics.json')
    write_atomic(path, lambda f: f.write(json.dumps(results, indent=2).encode()))
    print('wrote {}'.format(path))
    path = os.path.join(args.out, 'confusion.png')
    figures.save_figure(figures.plot_confusion(results['confusion_matrix']), path)
    print('wrote {}'.format(path))
    path = os.path.join(args.out, 'misclassified.png')
    figures.save_figure(figures.plot_misclassified(model, x[:n_test], t, scores, errors),
                        path)
    print('wrote {}'.format(path))
    print('# scoring and evaluation figures: {:.1f} s'.format(time.time() - tic))

    print('test accuracy {:.2%} (error {:.2%}) on {} {} test images, no augmentation'.format(
        results['accuracy'], results['error_rate'], n_test, spec.title))
    if dataset != 'mnist':
        names = ['{} {}'.format(k, name) for k, name in enumerate(spec.class_names)]
        print('# classes: {}'.format(', '.join(names)))
    print('# total: {:.1f} s'.format(time.time() - start))


def main(argv=None):
    sys.exit(cli.run(analyze, argv))


if __name__ == '__main__':
    main()
