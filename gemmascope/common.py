"""Small helpers every layer shares, written once: atomic file writes, the disk-full error, FVU.

This module imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

# ------------------------------------------------------------------------------------------------
# Disk full
# ------------------------------------------------------------------------------------------------

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# tensorstore (the store, orbax's arrays) raises ValueError("RESOURCE_EXHAUSTED: ... No space left
# on device [os_error_code='28']") rather than an OSError: its errno is read from the message.
_TS_ERRNO = re.compile(r"os_error_code='?(\d+)")
_TS_FILE = re.compile(r'(?:Error writing local file|at local file|Failed writing:) "([^"]+?)(?:\.__lock)?"')


class DiskFullError(OSError):
    """A write failed for lack of space (``ENOSPC``) or quota (``EDQUOT``).

    ``errno`` is the original one (28 or 122), ``filename``/``path`` the file or folder being
    written, ``needed`` the bytes that write needs (None when unknown; see each stage's message for
    whether it is exact, an estimate or a lower bound), ``free`` the bytes free there when it
    failed. The message says what was kept and that rerunning the same command, once space is
    freed, resumes. Every stage raises it through :func:`disk_full_error`.
    """

    def __init__(self, errno_: int, message: str, path: str, needed: int | None = None, free: int | None = None):
        super().__init__(errno_, message, path)
        self.path, self.needed, self.free = path, needed, free

    def __reduce__(self):  # picklable across processes despite the extra arguments
        return (type(self), (self.errno, self.strerror, self.filename, self.needed, self.free))


def disk_full_errno(exc: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT if ``exc`` (or an exception it was raised from) is a disk-full failure:
    an ``OSError`` with that errno, or a tensorstore error whose message carries it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        m = _TS_ERRNO.search(str(exc))
        if m and int(m.group(1)) in DISK_FULL_ERRNOS:
            return int(m.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path: str) -> int | None:
    """Bytes available to this user on the filesystem of ``path`` (its nearest existing folder)."""
    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def disk_full_error(
    exc: BaseException, path: str, needed: int | None, *, what: str = "file", kept: str = "", bound: str = ""
) -> DiskFullError | None:
    """The one conversion of a disk-full failure (see :func:`disk_full_errno`) into
    :class:`DiskFullError`; None when ``exc`` is something else (the caller re-raises it).

    ``path``: what was being written (the file, or the store / checkpoint folder); a more precise
    file named in the underlying error is added. ``needed``: the bytes the write needs; ``bound``
    says how it is known ("", "about ", "at least "). ``kept``: what the stage left intact.
    """
    if isinstance(exc, DiskFullError):
        return exc
    code = disk_full_errno(exc)
    if code is None:
        return None
    free = free_bytes(path)
    m = _TS_FILE.search(str(exc))
    file_txt = f" (the file being written: {m.group(1)})" if m and m.group(1) != path else ""
    need_txt = "an unknown number of bytes"
    if needed is not None:
        need_txt = f"{bound}{needed:,} bytes ({human_bytes(needed)})"
    free_txt = f"{free:,} bytes free there" if free is not None else "free space unknown"
    cause = "no space left on device (ENOSPC)" if code == errno.ENOSPC else "disk quota exceeded (EDQUOT)"
    message = (
        f"disk full: {cause} writing {what} {path}{file_txt}; it needs {need_txt}, {free_txt}. "
        f"{kept + ' ' if kept else ''}Free space (or raise the quota) and rerun the same command: it resumes."
    )
    return DiskFullError(code, message, path, needed, free)


@contextlib.contextmanager
def disk_full_as_error(path: str, needed: int | None, **kw: Any) -> Iterator[None]:
    """Runs the block; a disk-full failure inside it leaves as :class:`DiskFullError`
    (:func:`disk_full_error`, same keywords), anything else unchanged."""
    try:
        yield
    except Exception as e:
        err = disk_full_error(e, path, needed, **kw)
        if err is None or err is e:
            raise
        raise err from e


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def atomic_write(path: str, write_fn: Callable[[Any], None], mode: str = "wb", size: int | None = None) -> None:
    """Writes ``path`` through a temp file in the same folder, fsyncs it, then renames it into
    place, so a kill or a full disk never leaves half a file (a reader sees the old file or the
    new one). A full disk raises :class:`DiskFullError` naming ``path`` and ``size`` (the bytes
    to write, when the caller knows them; else the bytes written before it failed, as a lower
    bound); the temp file is removed and an existing ``path`` is unchanged.

    Why the fsync: some filesystems (NFS, delayed allocation) report a full disk only when the data
    is flushed; it must fail here, before the rename, never after it."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        with os.fdopen(fd, mode) as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if tmp is not None and os.path.exists(tmp) else 0
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        err = disk_full_error(
            e,
            path,
            size if size is not None else written,
            bound="" if size is not None else "at least ",
            kept="The temp file was removed; an existing file at that path is unchanged.",
        )
        if err is None or err is e:
            raise
        raise err from e


def write_bytes_atomic(path: str, data: bytes) -> None:
    """``data`` to ``path`` atomically (:func:`atomic_write`); a full disk names ``len(data)``."""
    atomic_write(path, lambda fh: fh.write(data), size=len(data))


def write_json_atomic(path: str, obj: Any, **dump_kw: Any) -> None:
    """``json.dump(obj)`` to ``path`` atomically (see :func:`atomic_write`); indent 2 by default."""
    dump_kw.setdefault("indent", 2)
    write_bytes_atomic(path, json.dumps(obj, **dump_kw).encode("utf-8"))


def fvu(sq_err_sum, x):
    """Fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``, with the
    mean over the rows of ``x [n, d]`` (the dataset mean per dimension, docs/SPEC.md section 4).

    ``sq_err_sum``: the summed squared error (a scalar, or ``[K]`` for a stack of SAEs). Works on
    NumPy and JAX arrays alike (the trainer calls it inside its jitted step).
    """
    return sq_err_sum / ((x - x.mean(axis=0)) ** 2).sum()


def fvu_from_sums(sq_err_sum, x_sum, x_sq_sum, n):
    """:func:`fvu` from streamed sums (evaluation accumulates them over batches in float64):
    ``x_sum [d]`` the sum of rows, ``x_sq_sum`` the sum of squared norms, ``n`` the row count;
    the total variance is ``x_sq_sum - n ||x_sum / n||^2``."""
    mean = x_sum / n
    return sq_err_sum / (x_sq_sum - n * float(mean @ mean))
