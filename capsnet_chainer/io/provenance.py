"""Where a model file comes from: versions, device, date and the project's commit."""

import datetime
import os
import platform
import subprocess
import sys

import chainer
import numpy

from capsnet_chainer.device import describe_device

#: The checkout this package runs from.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_commit(repo=REPO):
    """The commit of the checkout at ``repo`` (``+dirty`` with uncommitted changes to
    tracked files), or ``None`` outside a git checkout."""
    def git(*args):
        return subprocess.run(['git', '-C', repo] + list(args), capture_output=True,
                              text=True, timeout=30)
    try:
        head = git('rev-parse', 'HEAD')
        if head.returncode != 0:
            return None
        dirty = git('status', '--porcelain', '--untracked-files=no').stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ('+dirty' if dirty else '')


def versions():
    """The versions that decide a run's numbers."""
    found = {'python': platform.python_version(), 'numpy': numpy.__version__,
             'chainer': chainer.__version__}
    from chainer.backends import cuda
    if cuda.available:
        found['cupy'] = cuda.cupy.__version__
    return found


def provenance(device):
    """A JSON-able record of the software, machine and code of a run on ``device``."""
    return {'device': describe_device(device), 'platform': platform.platform(),
            'versions': versions(), 'commit': git_commit(),
            'command': ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}


def utc_now():
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
