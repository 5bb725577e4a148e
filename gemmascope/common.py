"""Small helpers every layer shares, written once: atomic file writes and FVU.

This module imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any


def atomic_write(path: str, write_fn: Callable[[Any], None], mode: str = "wb") -> None:
    """Writes ``path`` through a temp file in the same folder, then renames it into place, so a
    kill never leaves half a file (a reader sees the old file or the new one)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as fh:
            write_fn(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj: Any, **dump_kw: Any) -> None:
    """``json.dump(obj)`` to ``path`` atomically (see :func:`atomic_write`); indent 2 by default."""
    dump_kw.setdefault("indent", 2)
    atomic_write(path, lambda fh: json.dump(obj, fh, **dump_kw), mode="w")


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
