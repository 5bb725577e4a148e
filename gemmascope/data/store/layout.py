"""The store's on-disk layout: names, kvstore specs, checksummed JSON files, array metadata, errors.

Everything here is shared by the writer, the reader and ``verify``: one definition of each file,
of the zarr array format (``crc32c`` over every inner chunk and over the shard index) and of the
error a storage fault raises (:class:`StoreError`, carrying path, site, rows and what to do).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from typing import Any

import numpy as np
import tensorstore as ts

from gemmascope.common import disk_full_as_error

FORMAT = "gemmascope.activation_store"
VERSION = 1
STORE_JSON = "store.json"
PROGRESS_JSON = "progress.json"
COMPLETE = "COMPLETE"
SITE_JSON = "site.json"
CHECKSUM_KEY = "checksum"  # in every JSON file we write: sha256 of the rest, canonical

DEFAULT_CHUNK_BYTES = 2 << 20  # inner chunk ~2 MiB: one read unit
DEFAULT_CHUNKS_PER_SHARD = 16  # shard ~32 MiB: one write unit, one file/object
DEFAULT_CAPACITY_ROWS = 1 << 40  # the array is made this long and resized on finalize
DEFAULT_SHUFFLE_BUFFER_BYTES = 256 << 20

# One context for every open: in-process ``memory://`` stores persist between opens (tests), and
# the file driver's defaults hold (``file_io_sync`` true: writes are fsynced before they resolve).
# No cache pool: every read goes to the bytes on disk, so damage after open is still seen.
CONTEXT = ts.Context()

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SITE_PARTS = re.compile(r"^(?P<kind>[A-Za-z][A-Za-z_]*)_L(?P<layer>\d+)$")  # mlp_in_L15: kind mlp_in
RESERVED_NAMES = {STORE_JSON, PROGRESS_JSON, COMPLETE, "c"}
# Keys computed by the writer for site.json; caller metadata may not use them.
SITE_KEYS = (
    "format",
    "version",
    "site",
    "kind",
    "layer",
    "d_in",
    "dtype",
    "n_rows",
    "n_tokens",
    "n_batches",
    "norm_scale",
    "mean_squared_norm",
    "chunk_rows",
    "shard_rows",
    "array",
    CHECKSUM_KEY,
)


class StoreError(ValueError):
    """A missing, incomplete, mismatched or corrupt activation store.

    The message names the path; for storage faults the attributes carry the whole story, also
    appended to the message: ``path`` (the file or folder at fault), ``site``, ``rows`` (a
    ``(start, stop)`` range of the site's rows affected, or None), ``fix`` (what to do) and
    ``fault`` (a short kind: "corrupt chunk", "missing shard", "metadata", ...).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        site: str | None = None,
        rows: tuple[int, int] | None = None,
        fix: str | None = None,
        fault: str | None = None,
    ):
        self.message, self.path, self.site, self.rows, self.fix, self.fault = (
            message,
            path,
            site,
            rows,
            fix,
            fault,
        )
        lines = [message]
        if fault is not None:
            lines.append(f"  fault: {fault}")
        if path is not None:
            lines.append(f"  path: {path}")
        if site is not None:
            lines.append(f"  site: {site}")
        if rows is not None:
            lines.append(f"  rows affected: [{rows[0]}, {rows[1]}) ({rows[1] - rows[0]} rows)")
        if fix is not None:
            lines.append(f"  what to do: {fix}")
        super().__init__("\n".join(lines))


class StoreWarning(UserWarning):
    """A store that can be read but not fully checked (written before per-chunk checksums)."""


# What a full disk leaves (gemmascope.common.disk_full_error's ``kept``): data is written before
# progress.json records it, and tensorstore writes each file to a temp file renamed when complete.
KEPT = (
    "Every batch recorded in progress.json is intact (a shard or JSON file is written to a temp file "
    "and renamed when complete, so none is left truncated); the batches after it are regenerated."
)


def repair_fix(root: str) -> str:
    """What to do about damaged data or metadata in a store (the text every fault carries)."""
    return (
        f"run `python launch/verify_store.py --store={root} --repair` (lists every fault, then rolls the "
        "store back to its last durable point before the first damaged shard), then rerun the generate "
        "command that created the store: it resumes there and rewrites only what follows. If the store "
        "is a copy, copy it again from its source instead"
    )


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


def kvstore_spec(path: str) -> dict[str, Any]:
    """Maps a root (local path or URL) to a tensorstore kvstore spec whose ``path`` ends in ``/``.

    ``/a/b`` or ``a/b`` (made absolute), ``file:///a/b`` -> ``{"driver": "file", "path": "/a/b/"}``;
    ``gs://bucket/p`` -> ``{"driver": "gcs", "bucket": "bucket", "path": "p/"}``;
    ``s3://bucket/p`` -> ``{"driver": "s3", "bucket": "bucket", "path": "p/"}``;
    ``memory://p`` -> ``{"driver": "memory", "path": "p/"}`` (in-process, for tests).
    """
    if not isinstance(path, str) or not path:
        raise StoreError(f"activation store root must be a non-empty string, got {path!r}")

    def folder(p: str) -> str:
        return p if not p or p.endswith("/") else p + "/"

    if "://" in path:
        scheme, rest = path.split("://", 1)
        scheme = scheme.lower()
        if scheme == "file":
            if not rest.startswith("/"):
                raise StoreError(f"{path}: a file:// URL needs an absolute path (file:///abs/path)")
            return {"driver": "file", "path": folder(rest)}
        if scheme in ("gs", "s3"):
            bucket, _, p = rest.partition("/")
            if not bucket:
                raise StoreError(f"{path}: the URL names no bucket")
            return {"driver": "gcs" if scheme == "gs" else "s3", "bucket": bucket, "path": folder(p)}
        if scheme == "memory":
            return {"driver": "memory", "path": folder(rest)}
        raise StoreError(
            f"{path}: unsupported URL scheme {scheme!r} (use a local path, file://, gs://, s3:// or memory://)"
        )
    return {"driver": "file", "path": folder(os.path.abspath(os.path.expanduser(path)))}


def join_path(root: str, key: str) -> str:
    return root.rstrip("/") + "/" + key


def shard_key(site: str, shard: int) -> str:
    """The key of shard ``shard`` of a site (zarr v3 default chunk keys, 2-D grid [shard, 0])."""
    return f"{site}/c/{int(shard)}/0"


def json_checksum(obj: dict) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``obj`` without its checksum key."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class Root:
    """Small JSON files under a root, through tensorstore's kvstore (same code for every backend)."""

    def __init__(self, root: str):
        self.root = root
        self.spec = kvstore_spec(root)
        self.kv = ts.KvStore.open(self.spec, context=CONTEXT).result()

    def read_json(self, key: str, site: str | None = None) -> dict | None:
        """The object in ``key`` (its checksum checked and removed), None if the file is absent.

        StoreError for a file that is not a JSON object or whose checksum does not match (files of
        stores written before checksums have none and are taken as they are)."""
        res = self.kv.read(key).result()
        if res.state != "value":
            return None
        path = join_path(self.root, key)
        try:
            obj = json.loads(res.value.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise StoreError(
                f"{path}: not valid JSON ({e})",
                path=path,
                site=site,
                fault="malformed metadata",
                fix=repair_fix(self.root),
            ) from None
        if not isinstance(obj, dict):
            raise StoreError(
                f"{path}: holds a {type(obj).__name__}, not a JSON object",
                path=path,
                site=site,
                fault="malformed metadata",
                fix=repair_fix(self.root),
            )
        if CHECKSUM_KEY in obj:
            if obj[CHECKSUM_KEY] != json_checksum(obj):
                raise StoreError(
                    f"{path}: its content does not match its checksum (changed after it was written)",
                    path=path,
                    site=site,
                    fault="corrupt metadata",
                    fix=repair_fix(self.root),
                )
            obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        return obj

    def write_json(self, key: str, obj: dict) -> None:
        # The file driver writes a temporary file and renames it, fsynced: a kill never leaves half
        # a file. Object stores replace objects atomically.
        obj = dict(obj)
        obj[CHECKSUM_KEY] = json_checksum(obj)
        data = json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")
        with disk_full_as_error(join_path(self.root, key), len(data), what="store file", kept=KEPT):
            self.kv.write(key, data).result()

    def exists(self, key: str) -> bool:
        return self.kv.read(key).result().state == "value"

    def size(self, key: str) -> int | None:
        res = self.kv.read(key).result()
        return len(res.value) if res.state == "value" else None

    def list(self, prefix: str) -> list[str]:
        keys = self.kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result()
        return [k.decode("utf-8") for k in keys]

    def delete(self, key: str) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()

    def array_spec(self, site: str) -> dict[str, Any]:
        """The site's zarr3 spec. Missing chunks are an error on read, never the fill value, and
        every written chunk is stored (also all-zero ones), so a missing chunk is always a fault."""
        kv = dict(self.spec)
        kv["path"] = kv["path"] + site + "/"
        return {
            "driver": "zarr3",
            "kvstore": kv,
            "fill_missing_data_reads": False,
            "store_data_equal_to_fill_value": True,
        }

    def shard_list(self, site: str) -> set[int]:
        """Indices of the shard files present for a site."""
        out = set()
        for key in self.list(site + "/c/"):
            parts = key[len(site) + 3 :].split("/")
            if len(parts) == 2 and parts[0].isdigit():
                out.add(int(parts[0]))
        return out


# ------------------------------------------------------------------------------------------------
# The array format
# ------------------------------------------------------------------------------------------------


def default_chunk_rows(d_in: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per inner chunk: the power of two nearest ``chunk_bytes / (4 d_in)`` (576 -> 1024)."""
    rows = chunk_bytes / (4.0 * d_in)
    return int(2 ** max(0, round(math.log2(rows)))) if rows >= 1 else 1


def array_metadata(
    d_in: int, chunk_rows: int, shard_rows: int, capacity: int, checksums: bool = True
) -> dict[str, Any]:
    """zarr v3 metadata: shards of ``shard_rows`` rows holding inner chunks of ``chunk_rows`` rows,
    raw little-endian fp32 followed by a ``crc32c`` of each chunk (``checksums=False``: the format
    of stores written before per-chunk checksums, kept for tests and the benchmark)."""
    raw = [{"name": "bytes", "configuration": {"endian": "little"}}]
    return {
        "shape": [capacity, d_in],
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, d_in]}},
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [chunk_rows, d_in],
                    "codecs": raw + ([{"name": "crc32c"}] if checksums else []),
                    "index_codecs": raw + [{"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "fill_value": 0.0,
        "dimension_names": ["row", "feature"],
    }


def chunks_checksummed(array) -> bool:
    """Whether an opened site array carries a ``crc32c`` over every inner chunk."""
    for codec in array.spec().to_json().get("metadata", {}).get("codecs", []):
        if codec.get("name") == "sharding_indexed":
            return any(c.get("name") == "crc32c" for c in codec.get("configuration", {}).get("codecs", []))
    return False


def warn_unchecked(root: str, site: str) -> None:
    """The warning for a site written before per-chunk checksums (read anyway)."""
    warnings.warn(
        f"{join_path(root, site)}: this store was written before per-chunk checksums (its zarr.json has "
        "no crc32c in the chunk codecs), so a corrupted byte inside its chunk data cannot be detected; "
        "missing shards and a damaged shard index still are. Reading it anyway. Regenerate it (into a "
        "new root) to get checksums",
        StoreWarning,
        stacklevel=3,
    )


def open_site_array(kv: Root, site: str, n_rows: int, d_in: int):
    """Opens a complete site's array for reading and checks its shape against ``site.json``."""
    path = join_path(kv.root, site)
    try:
        arr = ts.open(kv.array_spec(site), open=True, read=True, context=CONTEXT).result()
    except ValueError as e:
        raise StoreError(
            f"{path}/zarr.json: cannot open the site's array ({e})",
            path=f"{path}/zarr.json",
            site=site,
            fault="malformed metadata",
            fix=repair_fix(kv.root),
        ) from None
    if arr.dtype != ts.float32 or tuple(arr.shape) != (n_rows, d_in):
        raise StoreError(
            f"{path}: array is {arr.dtype} {tuple(arr.shape)}, site.json says float32 "
            f"{(n_rows, d_in)}; the store is corrupt",
            path=f"{path}/zarr.json",
            site=site,
            rows=(min(n_rows, int(arr.shape[0])), max(n_rows, int(arr.shape[0]))),
            fault="row count mismatch",
            fix=repair_fix(kv.root),
        )
    if not chunks_checksummed(arr):
        warn_unchecked(kv.root, site)
    return arr


def check_shards(kv: Root, site: str, n_rows: int, shard_rows: int) -> None:
    """StoreError naming the first missing shard file (and how many are missing) of a site."""
    want = set(range(-(-n_rows // shard_rows)))
    missing = sorted(want - kv.shard_list(site))
    if missing:
        i = missing[0]
        more = (
            f" ({len(missing)} of {len(want)} shards missing: {format_ranges(np.array(missing))})"
            if len(missing) > 1
            else ""
        )
        raise StoreError(
            f"site {site} of activation store {kv.root}: shard file {shard_key(site, i)} is missing{more}",
            path=join_path(kv.root, shard_key(site, i)),
            site=site,
            rows=(i * shard_rows, min((i + 1) * shard_rows, n_rows)),
            fault="missing shard",
            fix=repair_fix(kv.root),
        )


def read_error(exc: Exception, kv: Root, site: str, rows: tuple[int, int], shard_rows: int) -> StoreError:
    """A tensorstore read failure of rows ``[a, b)`` (within one shard) as a StoreError."""
    shard = rows[0] // shard_rows
    key = shard_key(site, shard)
    text = str(exc)
    fix = repair_fix(kv.root)
    access = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED")
    if any(code in text for code in access):  # the bytes could not be fetched: nothing known to be damaged
        fault, what = "read failed", "could not be read (access or network)"
        fix = "check access to the store (credentials, network, disk) and retry; nothing is known damaged"
    elif not kv.exists(key):
        fault, what = "missing shard", "is missing"
    elif "NOT_FOUND" in text:
        fault, what = "missing chunk", "lacks a chunk (its index records no data for these rows)"
    elif "Digest mismatch" in text and "shard index" in text:
        fault, what = "corrupt shard", "has a corrupt or truncated index (checksum mismatch)"
    elif "Digest mismatch" in text:
        fault, what = "corrupt chunk", "holds a corrupt chunk (checksum mismatch)"
    else:
        fault, what = "corrupt shard", "cannot be decoded (truncated or corrupt)"
    return StoreError(
        f"site {site} of activation store {kv.root}: shard file {key} {what}; tensorstore: {text}",
        path=join_path(kv.root, key),
        site=site,
        rows=rows,
        fault=fault,
        fix=fix,
    )


def check_finite(x: np.ndarray) -> np.ndarray | None:
    """Indices of rows with a NaN or inf, or None when all finite (a sum first: one fast pass)."""
    if x.size == 0 or np.isfinite(x.sum(dtype=np.float32)):
        return None
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    return bad if bad.size else None  # the sum overflowed on finite values


def nonfinite_error(kv: Root, site: str, x: np.ndarray, *, a: int, b: int, shard_rows: int) -> StoreError | None:
    """StoreError if chunk rows ``x = rows [a, b)`` hold a NaN or inf, else None."""
    bad = check_finite(x)
    if bad is None:
        return None
    return StoreError(
        f"site {site} of activation store {kv.root}: NaN or inf in rows {format_ranges(bad + a)} "
        f"(chunk rows [{a}, {b})); the store is corrupt",
        site=site,
        rows=(a, b),
        path=join_path(kv.root, shard_key(site, a // shard_rows)),
        fault="non-finite values",
        fix=repair_fix(kv.root),
    )


def format_ranges(rows: np.ndarray) -> str:
    """``[3, 4, 5, 9]`` -> ``"3..5, 9"`` (at most a few ranges)."""
    out, start, prev = [], int(rows[0]), int(rows[0])
    for r in map(int, rows[1:]):
        if r != prev + 1:
            out.append(f"{start}..{prev}" if prev > start else str(start))
            start = r
        prev = r
    out.append(f"{start}..{prev}" if prev > start else str(start))
    return ", ".join(out[:5]) + (f", ... ({len(out)} ranges)" if len(out) > 5 else "")
