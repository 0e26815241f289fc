"""What the command-line scripts share: flag types, device choice, one-line errors.

Every error a user can cause (a wrong flag, a missing or corrupt file, a GPU that is not
there, a training run that diverged) ends the script with one line on stderr,
``error: ...``, and a non-zero exit status: 2 when the command line itself is wrong, 1
for everything else. ``--debug`` adds the traceback. Anything else is a bug and keeps
its traceback.
"""

import argparse
import os
import sys
import traceback

import chainer

from capsnet_chainer.idx import DatasetError
from capsnet_chainer.modelfile import ModelFileError

#: Exit status for a wrong command line (argparse's own choice).
EXIT_USAGE = 2
#: Exit status for every other known failure.
EXIT_FAILURE = 1

CUPY_HELP = ('install the CuPy wheel that matches your CUDA: pip install cupy-cuda13x '
             '(CUDA 13) or pip install cupy-cuda12x (CUDA 12); or pass -g -1 to use the '
             'CPU')


class CLIError(Exception):
    """A failure the user can fix; printed as one ``error:`` line.

    Args:
        message (str): What went wrong and, where possible, what to do.
        exit_code (int): :data:`EXIT_USAGE` or :data:`EXIT_FAILURE`.
    """

    def __init__(self, message, exit_code=EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


class DeviceError(CLIError):
    """The requested device cannot be used (no CuPy, no such GPU)."""


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
                             'dataset-fashion-mnist or the official host)')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error')


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


# Devices


def get_device(gpu=-1, device=None):
    """Returns the Chainer device for ``-g GPU`` or ``--device SPEC``, or raises.

    Args:
        gpu (int): GPU id; negative for the CPU.
        device (str): A Chainer device specifier (``@numpy``, ``@cupy:0``); overrides
            ``gpu``.

    Raises:
        DeviceError: CuPy is missing or broken, or there is no such GPU. The message
            says which package to install.
    """
    if device is not None:
        spec, flag = device, '--device {}'.format(device)
    else:
        spec = '@cupy:{}'.format(gpu) if gpu >= 0 else '@numpy'
        flag = '-g {}'.format(gpu)
    if spec.startswith('@cupy'):
        from chainer.backends import cuda
        if not cuda.available:
            cause = getattr(cuda, '_resolution_error', None)
            if isinstance(cause, ImportError) and getattr(cause, 'name', '') == 'cupy':
                raise DeviceError('{}: CuPy is not installed, so no GPU can be used; {}'
                                  .format(flag, CUPY_HELP))
            if 'libcu' in str(cause) or 'libnvrtc' in str(cause):
                raise DeviceError(
                    '{}: CuPy is installed but the CUDA libraries are not found ({}); '
                    'install them with CuPy\'s [ctk] extra: pip install '
                    '"cupy-cuda13x[ctk]" (CUDA 13) or "cupy-cuda12x[ctk]" (CUDA 12)'
                    .format(flag, ' '.join(str(cause).split())))
            raise DeviceError('{}: CuPy is installed but cannot be imported ({}); {}'
                              .format(flag, ' '.join(str(cause).split()), CUPY_HELP))
        try:
            device_id = int(spec.partition(':')[2])
        except ValueError:
            raise DeviceError('{}: not a device specifier; use @cupy:N or @numpy'
                              .format(flag)) from None
        try:
            n_gpu = cuda.cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, no device: CUDARuntimeError and others
            raise DeviceError('{}: CuPy cannot reach a GPU ({}: {}); check the NVIDIA '
                              'driver with nvidia-smi, or pass -g -1 to use the CPU'
                              .format(flag, type(e).__name__, e)) from None
        if not 0 <= device_id < n_gpu:
            raise DeviceError('{}: no such GPU; this machine has {} GPU{}{}'.format(
                flag, n_gpu, '' if n_gpu == 1 else 's',
                ' (ids 0..{})'.format(n_gpu - 1) if n_gpu else ''))
    try:
        return chainer.get_device(spec)
    except Exception as e:
        raise DeviceError('{}: cannot use this device ({}: {})'.format(
            flag, type(e).__name__, e)) from None


def describe_device(device):
    """One line naming ``device``; for a GPU, its name and CuPy, and whether cuDNN is used.

    CuPy 14 has no cuDNN: our convolution kernel then runs the model's (valid)
    convolutions, and Chainer runs others (and all of them without
    ``Convolution2D.fast_on_gpu``) through im2col and a matrix product, which is
    expected (see :mod:`capsnet_chainer.compat`), so this says so once instead of
    Chainer's warning.
    """
    from chainer.backends import cuda
    from capsnet_chainer.links import Convolution2D
    xp = getattr(device, 'xp', None)
    if not cuda.available or xp is not cuda.cupy:
        return str(device)
    cupy = cuda.cupy
    try:
        props = cupy.cuda.runtime.getDeviceProperties(device.device.id)
        name = props['name']
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an unusual driver: the name is only for the user's eyes
        name = 'GPU'
    # The links' own choice (Convolution2D.kernel_on_gpu), so that the line cannot
    # disagree with what runs
    if Convolution2D.kernel_on_gpu():
        conv = 'valid convolutions run as our kernel, others as im2col + matrix products'
    elif chainer.should_use_cudnn('>=auto'):
        conv = 'cuDNN'
    else:
        conv = 'convolutions run as im2col + matrix products'
    if not cuda.cudnn_enabled:
        conv = 'no cuDNN in this CuPy: ' + conv
    return '{} ({}, CuPy {}; {})'.format(device, name, cupy.__version__, conv)


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


# The entry point wrapper


def describe(error):
    """The one-line message of a known error, or ``None`` for an unexpected one."""
    if isinstance(error, CLIError):
        return str(error)
    if isinstance(error, (DatasetError, ModelFileError)):
        return ' '.join(str(error).split())
    if isinstance(error, OSError):  # a full disk, a read-only folder, ...
        if error.filename:
            return '{}: {}'.format(error.filename, error.strerror or error)
        return str(error)
    return None


def exit_code(error):
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
