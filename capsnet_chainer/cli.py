"""What ``train.py`` and ``analyze.py`` share: flag types, one-line errors, and the
checks of ``train.py``'s own flags that the library has no use for.

Every error a user can cause (a wrong flag, a missing or corrupt file, a GPU that is not
there, a training run that diverged: a :class:`~capsnet_chainer.errors.CapsNetError`)
ends the script with one line on stderr, ``error: ...``, and a non-zero exit status: 2
when the command line itself is wrong (a :class:`~capsnet_chainer.errors.SettingError`
names the flag), 1 for everything else. ``--debug`` adds the traceback. Anything else is
a bug and keeps its traceback.

The library never imports this module: it is the scripts' own.
"""

import argparse
import os
import sys
import traceback

import chainer

from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError

#: Exit status for a wrong command line (argparse's own choice).
EXIT_USAGE = 2
#: Exit status for every other known failure.
EXIT_FAILURE = 1


class CLIError(CapsNetError):
    """A failure the user can fix; printed as one ``error:`` line.

    Args:
        message (str): What went wrong and, where possible, what to do.
        exit_code (int): :data:`EXIT_USAGE` or :data:`EXIT_FAILURE`.
    """

    def __init__(self, message, exit_code=EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one ``error:`` line."""

    def error(self, message):
        self.exit(EXIT_USAGE, 'error: {} (see {} --help)\n'.format(message, self.prog))


# Flag types


def add_common_arguments(parser):
    """Adds the flags ``train.py`` and ``analyze.py`` share: ``--gpu/-g``, ``--device``,
    ``--data-dir`` and ``--debug``."""
    parser.add_argument('--gpu', '-g', type=int, default=-1,
                        help='GPU id (negative: CPU)')
    parser.add_argument('--device', default=None,
                        help='Chainer device specifier (e.g. @cupy:0, @numpy); '
                             'overrides --gpu')
    parser.add_argument('--data-dir', default=None,
                        help='folder with the four IDX .gz files of the chosen --dataset '
                             '(default: the cache under $CHAINER_DATASET_ROOT, filled from '
                             'mirrors, or for Fashion-MNIST from Debian\'s '
                             'dataset-fashion-mnist or the official host); folder: the '
                             'folder of images; npz: the .npz file; cifar10, svhn, '
                             'smallnorb: the folder of the official files (docs/datasets.md)')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error')


def add_image_arguments(parser):
    """Adds ``train.py``'s flags for one's own images, which their protocols check:
    ``--image-size`` and ``--test-fraction``."""
    group = parser.add_argument_group("one's own images (--dataset folder or npz)")
    group.add_argument('--image-size', type=image_size, default=None, metavar='HxW',
                       help='resize every image to H x W pixels (needed where the sizes '
                            'differ; at least 17x17)')
    group.add_argument('--test-fraction', type=fraction, default=None, metavar='F',
                       help='folder without test/: hold out this fraction of each class '
                            'for testing (default 0.2; fixed seed, recorded)')


def image_size(text):
    """``HxW`` (or ``N`` for ``NxN``) as ``(H, W)``."""
    try:
        size = tuple(int(n) for n in text.lower().split('x'))
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError('must be HxW, e.g. 32x32, got {}'.format(text))
    return size


def fraction(text):
    """A fraction in (0, 1)."""
    value = finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError('must be in (0, 1), got {}'.format(text))
    return value


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
    if value != value or value in (float('inf'), float('-inf')):
        raise argparse.ArgumentTypeError('must be a finite number, got {}'.format(text))
    return value


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError('must be > 0, got {}'.format(text))
    return value


def non_negative_float(text):
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be >= 0, got {}'.format(text))
    return value


def unit_interval(text):
    """A factor in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError('must be in (0, 1], got {}'.format(text))
    return value


# Files


def check_output_folder(path, flag='--out'):
    """Refuses an output folder that is a file. Raises :class:`CLIError` (usage)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError('{} {} is a file, not a folder'.format(flag, path), EXIT_USAGE)


def check_output_file(path, flag):
    """Refuses an output file path that is a folder or lies in a file."""
    if os.path.isdir(path):
        raise CLIError('{} {} is a folder; give a file name'.format(flag, path), EXIT_USAGE)
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CLIError('{} {}: {} is a file, not a folder'.format(flag, path, parent),
                       EXIT_USAGE)


# Progress


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


# The entry point wrapper


def flag(setting):
    """The flag of a library setting: ``'max_shift'`` -> ``'--max-shift'``."""
    return '--' + setting.replace('_', '-')


def flag_and_value(name, value):
    """A setting as its flag: ``--max-shift 2``, ``--unshared on``."""
    if isinstance(value, bool):
        return '{} {}'.format(flag(name), 'on' if value else 'off')
    if value is None:
        return '{} (not given)'.format(flag(name))
    return '{} {}'.format(flag(name), value)


def describe(error):
    """The one-line message of a known error, or ``None`` for an unexpected one."""
    if isinstance(error, CLIError):
        return str(error)
    if isinstance(error, SettingError):
        shown = flag(error.setting)
        if error.has_value():
            shown += ' {}'.format(error.value)
        return '{}: {}'.format(shown, ' '.join(error.message.split()))
    if isinstance(error, CapsNetError):
        return ' '.join(str(error).split())
    if isinstance(error, OSError):  # a full disk, a read-only folder, ...
        if error.filename:
            return '{}: {}'.format(error.filename, error.strerror or error)
        return str(error)
    return None


def exit_code(error):
    if isinstance(error, SettingError):
        return EXIT_USAGE
    return getattr(error, 'exit_code', EXIT_FAILURE)


def run(main, argv=None):
    """Calls ``main(argv)``; turns a known error into one line and an exit status.

    ``--debug`` among the arguments prints the traceback as well.

    Returns:
        int: The exit status (0 on success).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = '--debug' in argv
    # Line by line even into a file or a pipe, so that the console log of a run that is
    # killed ends with its last line.
    if hasattr(sys.stdout, 'reconfigure'):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print('error: interrupted', file=sys.stderr)
        return 130
    except Exception as e:
        message = describe(e)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print('error: {}'.format(message), file=sys.stderr, flush=True)
        return exit_code(e)
    return 0


def split_heldout(train, args):
    """``(train, heldout)``: the last ``--validation`` images held out (``None``: none).
    Refuses a split that leaves fewer training images than one batch (an epoch would be a
    fraction of an iteration, and the log would count epochs never asked for)."""
    n_train = len(train) - args.validation
    subset = ' (--n-train {})'.format(args.n_train) if args.n_train else ''
    if n_train <= 0:
        raise CLIError('--validation {} holds out all {} training images{}; choose a '
                       'smaller --validation'.format(args.validation, len(train), subset),
                       EXIT_USAGE)
    if args.batchsize > n_train:
        kept = (' after --validation {} holds out {}'.format(args.validation, args.validation)
                if args.validation else '')
        raise CLIError(
            '--batchsize {} exceeds the {} training images{}{}: one batch would take '
            'every image more than once. Choose --batchsize {} or less'.format(
                args.batchsize, n_train, subset, kept, n_train), EXIT_USAGE)
    if not args.validation:
        return train, None
    return chainer.datasets.split_dataset(train, n_train)
