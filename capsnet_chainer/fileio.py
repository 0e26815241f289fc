"""Files that are either the old version or the complete new one, never half-written."""

import hashlib
import os
import tempfile


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


def file_sha256(path):
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()
