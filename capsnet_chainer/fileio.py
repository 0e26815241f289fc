"""Files that are either the old version or the complete new one, never half-written."""

import hashlib
import os
import re
import tempfile
import threading

#: The temporary files of :func:`write_atomic`: ``.NAME.XXXXXXXX.tmp``.
_TEMP_NAME = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')


def write_atomic(path, write):
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it.

    The temporary file (``.NAME.XXXXXXXX.tmp``) is flushed to disk before the rename and
    removed when ``write`` fails, so ``path`` is either the old file or the complete new
    one, even after a crash or on a full disk.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            # Name the file the caller asked for, not the temporary one.
            raise OSError(e.errno, e.strerror or str(e), path) from e
        raise
    _fsync_directory(directory)


def remove_stale_temp_files(folder, basename=None):
    """Removes the temporary files that a killed write left in ``folder``.

    Args:
        folder (str): A folder this program writes into.
        basename (str): Only remove the temporary files of this file name (for a
            folder shared with other files, such as that of ``--save``).

    Returns:
        list of str: The paths removed.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if not _TEMP_NAME.match(name):
            continue
        if basename is not None and not name.startswith('.' + basename + '.'):
            continue
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def _fsync_directory(directory):
    """Makes a rename in ``directory`` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path, algorithm='sha256'):
    """The hex digest of a file's bytes by ``algorithm`` (a :func:`hashlib.new` name:
    ``'sha256'``, ``'md5'``), read in chunks of 1 MiB (data sets' files are large)."""
    h = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


class BackgroundWriter(object):
    """:func:`write_atomic` on threads, one write after another in the order submitted,
    while the caller goes on: training need not wait while a snapshot or a model is
    compressed and flushed to disk (on a GPU, a large part of an epoch).

    Each write runs on a thread of its own that first waits for the one before. The
    threads are not daemons: a process that ends, by an error or Ctrl-C, first completes
    what was submitted; a process that is killed leaves at most a temporary file, as a
    killed :func:`write_atomic` does. The error of a write is raised by the next
    :meth:`submit`, :meth:`check` or :meth:`wait`; the writes queued after it are
    dropped.

    Args:
        name (str): The threads' name.
    """

    def __init__(self, name='writer'):
        self.name = name
        self._thread = None
        self._error = None

    def submit(self, path, write, then=None, error=None):
        """Queues ``write_atomic(path, write)``, then ``then()``.

        Args:
            path (str): The file to write.
            write (callable): ``write(file)``; it must only read data of its own (copies
                of anything that the caller goes on changing).
            then (callable): Runs after the file is in place (e.g. a clean-up).
            error (callable): Maps an ``OSError`` of the write to the exception raised.
        """
        self.check()
        previous = self._thread

        def run():
            if previous is not None:
                previous.join()
            if self._error is not None:
                return  # an earlier write failed: nothing after it
            try:
                ImmediateWriter().submit(path, write, then, error)
            except BaseException as e:
                self._error = e

        self._thread = threading.Thread(target=run, name=self.name)
        self._thread.start()

    def check(self):
        """Raises the error of a write that failed, once."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def wait(self):
        """Blocks until every submitted write is done; then :meth:`check`."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check()


class ImmediateWriter(object):
    """:class:`BackgroundWriter`'s interface, writing at once in the caller's thread:
    :meth:`submit` raises the error itself, and there is nothing to wait for."""

    def submit(self, path, write, then=None, error=None):
        """``write_atomic(path, write)``, then ``then()``; an ``OSError`` of the write
        raised as ``error(e)`` where ``error`` is given."""
        try:
            write_atomic(path, write)
        except OSError as e:
            if error is None:
                raise
            raise error(e) from None
        if then is not None:
            then()

    def check(self):
        pass

    def wait(self):
        pass
