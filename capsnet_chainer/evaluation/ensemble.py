"""An ensemble of models scored together (``analyze.py --load A B C ...``): the paper's
CIFAR-10 figure is "an ensemble of 7 models" (Sec. 7 of Sabour et al. [#]_).

Each image's class is the one with the largest mean of the models' class scores, the
capsules' lengths (the official code sums them, which chooses the same class). The
models must have been trained on the same data, the same way: the same ``--dataset``,
classes, input shape, test-time preprocessing (crop, held-out split) and kind of network
(capsule lengths and the baseline CNN's logits do not average).

.. [#] Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NIPS 2017.
"""

import numpy

from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.fileio import file_digest
from capsnet_chainer.inference import predict

#: What the members of an ensemble must share: a description of each, and how to read
#: it from a model's configuration and its file's metadata.
SHARED = (
    ('--dataset', lambda config, meta: meta.get('dataset', 'mnist')),
    ('classes', lambda config, meta: meta.get('class_names')),
    ('input shape', lambda config, meta: list(config['in_shape'])),
    ('test set', lambda config, meta: meta.get('test_set') or {}),
    ('network', lambda config, meta: config.get('model', 'capsnet')),
)


class EnsembleError(CapsNetError):
    """Models that cannot be scored together."""


def check_members(members):
    """Refuses members ``[(path, model, meta), ...]`` that differ in what :data:`SHARED`
    names, naming the first two files that differ."""
    first_path, first, first_meta = members[0]
    for path, model, meta in members[1:]:
        for what, read in SHARED:
            a, b = read(first.config, first_meta), read(model.config, meta)
            if a != b and not (what == 'classes' and None in (a, b)):  # older files
                raise EnsembleError(
                    '--load: {} and {} differ in their {} ({} and {}): an ensemble averages '
                    'models of one data set, trained the same way'.format(
                        first_path, path, what, _shown(a), _shown(b)))


def _shown(value):
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return '[{}, ...]'.format(', '.join(map(str, value[:6])))
    return 'not recorded' if value is None else value


def evaluate(members, x, t, n_test=None, batchsize=100, device=None, progress=None,
             known=None):
    """Scores each model and their mean on images ``x`` with labels ``t``.

    Args:
        members (list): ``[(path, model, meta), ...]``: the models (any device) and what
            their files record.
        x (array): Test images ``(B, C, H, W)``; t (array): labels ``(B,)``.
        n_test (int): Score the first ``n_test`` only (``None``: all).
        batchsize (int): Images per forward pass.
        device: Where to run each model (``None``: where it is).
        progress (callable): ``progress(label)`` -> a ``(done, total)`` callback.
        known (dict): ``{k: scores}``: member ``k``'s scores of these images, already
            computed (``analyze.py`` has the first model's), not computed again.

    Returns:
        dict: ``members`` (``path``, ``sha256``, ``n_correct``, ``accuracy`` of each),
        ``n_models``, ``n_test``, ``n_correct``, ``accuracy``, ``error_rate`` of the
        ensemble, and ``rule``.

    Raises:
        EnsembleError: Models that cannot be scored together, or labels of pairs.
    """
    check_members(members)
    t = numpy.asarray(t)[:n_test]
    if t.ndim != 1:
        raise EnsembleError('--load: ensembles score one label per image; MultiMNIST '
                            'pairs are not supported')
    x = x[:n_test]
    total, report = 0, []
    known = known or {}
    for k, (path, model, _) in enumerate(members):
        if k in known:
            scores = numpy.asarray(known[k])[:len(t)]
        else:
            if device is not None:
                model.to_device(device)
            scores = predict(model, x, batchsize, progress and progress(
                'scoring model {} of {}'.format(k + 1, len(members))))
        total = total + scores
        correct = int((scores.argmax(axis=1) == t).sum())
        report.append({'path': path, 'sha256': file_digest(path), 'n_correct': correct,
                       'accuracy': correct / max(len(t), 1)})
    correct = int(((total / len(members)).argmax(axis=1) == t).sum())
    accuracy = correct / max(len(t), 1)
    return {'members': report, 'n_models': len(members), 'n_test': int(len(t)),
            'n_correct': correct, 'accuracy': accuracy, 'error_rate': 1 - accuracy,
            'rule': 'the class of the largest mean score ({}) over the models'.format(
                getattr(members[0][1], 'score_name', 'score'))}


def summary(result):
    """Lines for the console: each member's accuracy, then the ensemble's."""
    lines = ['model {}: test accuracy {:.2%} ({})'.format(k + 1, m['accuracy'], m['path'])
             for k, m in enumerate(result['members'])]
    lines.append('ensemble of {} models: test accuracy {:.2%} (error {:.2%}) on {} test '
                 'images'.format(result['n_models'], result['accuracy'],
                                 result['error_rate'], result['n_test']))
    return '\n'.join(lines)
