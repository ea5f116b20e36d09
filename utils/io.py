"""Atomic file writes and the code revision, shared by the caches, the checkpoints and the ablation study.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the folder of ``path``, flushes it to disk
and renames it over ``path``: a kill never leaves a half-written file and the previous file stays intact until the
rename. The result gets the ordinary file mode (0666 minus the umask, 0644 usually), not mkstemp's 0600. A full
disk raises ``DiskFullError`` saying that the previous file is intact.

This module imports nothing of the project but ``utils.errors``.
"""
import errno
import os
import subprocess
import tempfile

from utils.errors import DiskFullError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, binary=True):
    """Write ``path`` atomically through ``write(f)`` (``f`` opened "wb", or "w" UTF-8 when not ``binary``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            kept = "the previous file is intact" if os.path.exists(path) else "nothing was written"
            raise DiskFullError(f"no space left on the device while writing {path}; {kept}") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def git_revision():
    """Short git SHA of the code (with '-dirty'), or 'unknown' outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")
