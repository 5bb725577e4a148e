r"""The activation store: LM activations written once as raw fp32, read many times, shuffled.

Gemma Scope generated activations once, stored them as raw fp32 in large shards and trained
many SAEs from them (storing was over 10x cheaper than regenerating). This module is that
storage layer, on tensorstore (zarr v3, sharded) so the same code writes a local folder, GCS or
S3.

On-disk layout under a root (a local path or a ``file://``, ``gs://``, ``s3://``, ``memory://``
URL; see :func:`kvstore_spec`)::

    <root>/store.json          written first: format, version, sites {name: d_in, chunk_rows,
                               shard_rows}, the caller's metadata (model, tokenizer, corpus, ...)
    <root>/progress.json       batches done and, per site, rows written and sum of ||x||^2;
                               rewritten after the data it describes is durable
    <root>/<site>/zarr.json    one zarr v3 array per site: float32 [n_rows, d_in], chunk grid
                               [shard_rows, d_in] with the ``sharding_indexed`` codec holding inner
                               chunks [chunk_rows, d_in], raw little-endian bytes, no compression
    <root>/<site>/c/<i>/0      shard i: rows [i * shard_rows, (i + 1) * shard_rows)
    <root>/<site>/site.json    per-site metadata, written by finalize (see ActivationWriter)
    <root>/COMPLETE            written last; readers refuse a store without it

Rows of a site are in generation order (batch 0's rows first); one row per non-special token.

Writing (crash safe)::

    with ActivationWriter(root, {"res_L12": 2304, "mlp_L12": 2304}, metadata) as w:
        for b in range(w.resume_from_batch, n_batches):   # skips batches a killed run finished
            w.write_batch(b, lm_activations(batch(b)))     # {site: float32 [n_rows, d_in]}
    # leaving the block cleanly calls finalize(); an exception leaves the store resumable

Reading (shuffled, prefetched, resumable)::

    r = ActivationReader(root, "res_L12", batch_size=4096, seed=0)
    x = next(r)                  # float32 [4096, d_in]
    state = r.get_state()        # small JSON dict; ActivationReader(..., state=state) continues
                                 # with exactly the batches this reader would have yielded next

The shuffled stream of one process is defined by pure functions of ``(seed, epoch, window)``:
epoch ``e`` permutes all inner chunks of the site with ``rng(seed, e)``; process ``p`` of ``P``
takes every ``P``-th chunk of that permutation (``perm[p::P]``, disjoint and covering); those are
cut into windows of ``window_chunks`` consecutive chunks (the shuffle buffer), each read in
chunk-index order into one buffer; the rows of a window are permuted with ``rng(seed, e, w, p)``.
The stream is the concatenation of all windows of all epochs, and batches are consecutive
``batch_size`` slices of it (a batch may span windows and epochs). So the position is three
integers ``(epoch, window, row)`` and resuming is exact. The next window loads (tensorstore's own
threads) while the current one is served; a background thread prepares ``prefetch`` batches.
"""
from __future__ import annotations

import json
import math
import os
import queue
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import tensorstore as ts

FORMAT = "gemmascope.activation_store"
VERSION = 1
STORE_JSON = "store.json"
PROGRESS_JSON = "progress.json"
COMPLETE = "COMPLETE"
SITE_JSON = "site.json"

DEFAULT_CHUNK_BYTES = 2 << 20          # inner chunk ~2 MiB: one read unit
DEFAULT_CHUNKS_PER_SHARD = 16          # shard ~32 MiB: one write unit, one file/object
DEFAULT_CAPACITY_ROWS = 1 << 40        # the array is made this long and resized on finalize
DEFAULT_SHUFFLE_BUFFER_BYTES = 256 << 20

# One context for every open: in-process ``memory://`` stores persist between opens (tests), and
# the file driver's defaults hold (``file_io_sync`` true: writes are fsynced before they resolve).
_CONTEXT = ts.Context()

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SITE_PARTS = re.compile(r"^(?P<kind>[A-Za-z]+)_L(?P<layer>\d+)$")
_RESERVED_NAMES = {STORE_JSON, PROGRESS_JSON, COMPLETE, "c"}
# Keys computed by the writer for site.json; caller metadata may not use them.
_SITE_KEYS = ("format", "version", "site", "kind", "layer", "d_in", "dtype", "n_rows", "n_tokens",
              "n_batches", "norm_scale", "mean_squared_norm", "chunk_rows", "shard_rows", "array")


class StoreError(ValueError):
    """A missing, incomplete, mismatched or corrupt activation store; the message names the path."""


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
        raise StoreError(f"{path}: unsupported URL scheme {scheme!r} (use a local path, file://, gs://, "
                         "s3:// or memory://)")
    return {"driver": "file", "path": folder(os.path.abspath(os.path.expanduser(path)))}


def _join(root: str, key: str) -> str:
    return root.rstrip("/") + "/" + key


class _Root:
    """Small JSON files under a root, through tensorstore's kvstore (same code for every backend)."""

    def __init__(self, root: str):
        self.root = root
        self.spec = kvstore_spec(root)
        self.kv = ts.KvStore.open(self.spec, context=_CONTEXT).result()

    def read_json(self, key: str) -> dict | None:
        res = self.kv.read(key).result()
        if res.state != "value":
            return None
        try:
            return json.loads(res.value.decode("utf-8"))
        except ValueError as e:
            raise StoreError(f"{_join(self.root, key)}: not valid JSON ({e})") from None

    def write_json(self, key: str, obj: Any) -> None:
        # The file driver writes a temporary file and renames it, fsynced: a kill never leaves half
        # a file. Object stores replace objects atomically.
        self.kv.write(key, json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")).result()

    def exists(self, key: str) -> bool:
        return self.kv.read(key).result().state == "value"

    def list(self, prefix: str) -> list[str]:
        keys = self.kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))).result()
        return [k.decode("utf-8") for k in keys]

    def delete(self, key: str) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()

    def array_spec(self, site: str) -> dict[str, Any]:
        kv = dict(self.spec)
        kv["path"] = kv["path"] + site + "/"
        return {"driver": "zarr3", "kvstore": kv}


def default_chunk_rows(d_in: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per inner chunk: the power of two nearest ``chunk_bytes / (4 d_in)`` (576 -> 1024)."""
    rows = chunk_bytes / (4.0 * d_in)
    return int(2 ** max(0, round(math.log2(rows)))) if rows >= 1 else 1


def _array_metadata(d_in: int, chunk_rows: int, shard_rows: int, capacity: int) -> dict[str, Any]:
    raw = [{"name": "bytes", "configuration": {"endian": "little"}}]
    return {
        "shape": [capacity, d_in],
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, d_in]}},
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [chunk_rows, d_in],
            "codecs": raw,
            "index_codecs": raw + [{"name": "crc32c"}],
            "index_location": "end",
        }}],
        "fill_value": 0.0,
        "dimension_names": ["row", "feature"],
    }


def _check_finite(x: np.ndarray) -> np.ndarray | None:
    """Indices of rows with a NaN or inf, or None when all finite (a sum first: one fast pass)."""
    if x.size == 0 or np.isfinite(x.sum(dtype=np.float32)):
        return None
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    return bad if bad.size else None  # the sum overflowed on finite values


def _ranges(rows: np.ndarray) -> str:
    """``[3, 4, 5, 9]`` -> ``"3..5, 9"`` (at most a few ranges)."""
    out, start, prev = [], int(rows[0]), int(rows[0])
    for r in map(int, rows[1:]):
        if r != prev + 1:
            out.append(f"{start}..{prev}" if prev > start else str(start))
            start = r
        prev = r
    out.append(f"{start}..{prev}" if prev > start else str(start))
    return ", ".join(out[:5]) + (f", ... ({len(out)} ranges)" if len(out) > 5 else "")


# ------------------------------------------------------------------------------------------------
# Writer
# ------------------------------------------------------------------------------------------------

@dataclass
class _SiteBuffer:
    name: str
    d_in: int
    chunk_rows: int
    shard_rows: int
    array: Any = None
    buf_start: int = 0                  # shard-aligned row where the in-memory tail starts
    parts: list = field(default_factory=list)
    buf_rows: int = 0
    sum_sq: float = 0.0                 # sum of ||x||^2 over all rows appended (float64)
    durable_rows: int = 0
    durable_sum_sq: float = 0.0

    @property
    def rows(self) -> int:
        return self.buf_start + self.buf_rows


class ActivationWriter:
    """Writes activations ``{site: float32 [n_rows, d_in]}`` batch by batch; resumable after a kill.

    Args:
      root: local path or URL (see :func:`kvstore_spec`).
      sites: ``{site name: d_in}``, e.g. ``{"res_L12": 2304, "att_L12": 2048}``. Names like
        ``<kind>_L<layer>`` get ``kind`` and ``layer`` in their metadata.
      metadata: JSON-serialisable store-level description copied into every site's ``site.json``:
        model, tokenizer, corpus identity, sequence length, ... It must be the same on a rerun
        (no timestamps), since a rerun is checked against the store it resumes.
      rows_per_flush: rows buffered per site before the data is written and progress recorded
        (default: one shard of the site with the most rows per shard). A kill loses at most this
        much work.
      chunk_rows: rows per inner chunk (the read unit), an int or ``{site: int}``; default about
        2 MiB per chunk (:func:`default_chunk_rows`). Ignored when resuming (the store's is used).
      chunks_per_shard: inner chunks per shard (the write unit and one file/object).
      capacity_rows: the array length before finalize resizes it to the rows written.

    ``resume_from_batch``: the first batch index the outer loop must still produce (0 for a new
    store, the number of batches durably written for a killed one, all of them for a complete one).
    ``write_batch`` takes batches in order; indices below the next expected one are skipped
    (returns False), so an outer loop may also simply start from 0.

    Crash safety: data is written (fsynced, whole shards from memory) before ``progress.json``
    records it; on restart rows beyond the recorded count are overwritten and the in-memory tail of
    the last, partly filled shard is read back so writes stay shard aligned. ``finalize`` resizes
    the arrays, writes ``site.json`` per site and then the ``COMPLETE`` marker, last.
    """

    def __init__(self, root: str, sites: Mapping[str, int], metadata: Mapping[str, Any] | None = None, *,
                 rows_per_flush: int | None = None, chunk_rows: int | Mapping[str, int] | None = None,
                 chunks_per_shard: int = DEFAULT_CHUNKS_PER_SHARD, capacity_rows: int = DEFAULT_CAPACITY_ROWS):
        self.root = root
        self._kv = _Root(root)
        if not sites:
            raise StoreError(f"{root}: ActivationWriter needs at least one site")
        metadata = dict(metadata or {})
        try:
            metadata = json.loads(json.dumps(metadata))
        except (TypeError, ValueError) as e:
            raise StoreError(f"{root}: store metadata must be JSON-serialisable ({e})") from None
        clash = sorted(set(metadata) & set(_SITE_KEYS))
        if clash:
            raise StoreError(f"{root}: metadata keys {clash} are reserved (the writer computes them)")
        for name, d_in in sites.items():
            if not _SITE_NAME.match(name) or name in _RESERVED_NAMES:
                raise StoreError(f"{root}: invalid site name {name!r} (letters, digits, '_', '.', '-')")
            if int(d_in) < 1:
                raise StoreError(f"{root}: site {name} has d_in {d_in}; it must be positive")
        if chunks_per_shard < 1:
            raise StoreError(f"{root}: chunks_per_shard must be >= 1, got {chunks_per_shard}")

        stored = self._kv.read_json(STORE_JSON)
        if stored is None:
            layout = {}
            for name, d_in in sites.items():
                cr = chunk_rows.get(name) if isinstance(chunk_rows, Mapping) else chunk_rows
                cr = int(cr) if cr else default_chunk_rows(int(d_in))
                layout[name] = {"d_in": int(d_in), "chunk_rows": cr, "shard_rows": cr * int(chunks_per_shard),
                                "dtype": "float32"}
            self._config = {"format": FORMAT, "version": VERSION, "sites": layout, "metadata": metadata,
                            "capacity_rows": int(capacity_rows)}
            self._kv.write_json(STORE_JSON, self._config)
        else:
            self._config = self._check_resumable(stored, sites, metadata)

        done = self._kv.read_json(COMPLETE)
        self.complete = done is not None
        progress = done if done is not None else (self._kv.read_json(PROGRESS_JSON) or {})
        self._durable_batches = int(progress.get("batches_done", 0))
        self._next_batch = self._durable_batches
        self._sites: dict[str, _SiteBuffer] = {}
        for name, lay in self._config["sites"].items():
            s = _SiteBuffer(name, lay["d_in"], lay["chunk_rows"], lay["shard_rows"])
            p = progress.get("sites", {}).get(name, {})
            s.durable_rows = int(p.get("rows", 0))
            s.durable_sum_sq = s.sum_sq = float(p.get("sum_sq", 0.0))
            s.buf_start = s.durable_rows
            self._sites[name] = s
        self.rows_per_flush = int(rows_per_flush or max(s.shard_rows for s in self._sites.values()))
        if not self.complete:
            self._open_arrays()

    # -- setup ----------------------------------------------------------------------------------
    def _check_resumable(self, stored: dict, sites: Mapping[str, int], metadata: dict) -> dict:
        where = _join(self.root, STORE_JSON)
        if stored.get("format") != FORMAT:
            raise StoreError(f"{where}: not an activation store (format {stored.get('format')!r})")
        if stored.get("version") != VERSION:
            raise StoreError(f"{where}: store version {stored.get('version')} but this code writes {VERSION}")
        have = {k: v["d_in"] for k, v in stored["sites"].items()}
        want = {k: int(v) for k, v in sites.items()}
        if have != want:
            raise StoreError(f"{where}: the existing store has sites {have}, this run asks for {want}; "
                             "rerun with the same command, or write to a new root")
        if stored.get("metadata") != metadata:
            raise StoreError(f"{where}: the existing store was started with metadata {stored.get('metadata')}, "
                             f"this run passes {metadata}; rerun with the same command, or write to a new root")
        return stored

    def _open_arrays(self) -> None:
        capacity = int(self._config["capacity_rows"])
        for name, s in self._sites.items():
            s.array = self._open_array(name, s, capacity)
            # Read back the durable rows of the last, partly filled shard, so that every later write
            # starts on a shard boundary and comes whole from memory.
            s.buf_start = (s.durable_rows // s.shard_rows) * s.shard_rows
            if s.durable_rows > s.buf_start:
                tail = s.array[s.buf_start:s.durable_rows].read().result()
                s.parts, s.buf_rows = [tail], tail.shape[0]

    def _open_array(self, name: str, s: _SiteBuffer, capacity: int):
        spec = self._kv.array_spec(name)
        try:
            arr = ts.open(spec, open=True, context=_CONTEXT).result()
        except ValueError:  # not created yet (NOT_FOUND surfaces as ValueError)
            spec["metadata"] = _array_metadata(s.d_in, s.chunk_rows, s.shard_rows, capacity)
            return ts.open(spec, create=True, open=True, context=_CONTEXT).result()
        layout = arr.chunk_layout
        if (arr.dtype != ts.float32 or arr.shape[1] != s.d_in
                or list(layout.read_chunk.shape) != [s.chunk_rows, s.d_in]
                or list(layout.write_chunk.shape) != [s.shard_rows, s.d_in]):
            raise StoreError(f"{_join(self.root, name)}: existing array (dtype {arr.dtype}, shape {arr.shape}, "
                             f"chunks {layout.read_chunk.shape}/{layout.write_chunk.shape}) does not match "
                             f"store.json; delete the store and regenerate it")
        if arr.shape[0] < capacity:  # killed inside finalize, after the resize: grow it back
            arr = arr.resize(exclusive_max=[capacity, None], resize_metadata_only=True).result()
        return arr

    # -- writing ---------------------------------------------------------------------------------
    @property
    def resume_from_batch(self) -> int:
        """First batch index not yet durably written (== batches of a complete store)."""
        return self._durable_batches

    @property
    def next_batch(self) -> int:
        """The batch index ``write_batch`` expects next (buffered batches count as written)."""
        return self._next_batch

    def rows_written(self) -> dict[str, int]:
        """Rows per site accepted so far (durable or buffered)."""
        return {n: s.rows for n, s in self._sites.items()}

    def write_batch(self, batch_index: int, activations: Mapping[str, Any]) -> bool:
        """Appends one batch: ``{site: float32 [n_rows, d_in]}`` for every site of the store.

        Returns False (and writes nothing) for a batch already written; raises StoreError for a
        batch out of order, a missing or unknown site, a wrong shape or dtype, or NaN/inf values.
        Nothing is buffered unless every site of the batch is valid.
        """
        batch_index = int(batch_index)
        if batch_index < self._next_batch:
            return False
        if self.complete:
            raise StoreError(f"{self.root}: the store is complete ({self._durable_batches} batches); "
                             f"batch {batch_index} cannot be added. Write to a new root to regenerate")
        if batch_index > self._next_batch:
            raise StoreError(f"{self.root}: batches must be written in order; expected batch "
                             f"{self._next_batch}, got {batch_index}")
        missing = sorted(set(self._sites) - set(activations))
        extra = sorted(set(activations) - set(self._sites))
        if missing or extra:
            raise StoreError(f"{self.root}: batch {batch_index} has sites missing {missing} / unknown {extra}; "
                             f"the store's sites are {sorted(self._sites)}")
        checked = {}
        for name, s in self._sites.items():
            x = np.asarray(activations[name])
            if not (x.dtype.kind == "f" or "float" in x.dtype.name):
                raise StoreError(f"{self.root}: site {name}, batch {batch_index}: dtype {x.dtype} is not a float type")
            if x.ndim != 2 or x.shape[1] != s.d_in:
                raise StoreError(f"{self.root}: site {name}, batch {batch_index}: shape {x.shape}, "
                                 f"expected [n_rows, {s.d_in}]")
            x = np.array(x, dtype=np.float32, order="C", copy=True)  # the caller may reuse its buffer
            bad = _check_finite(x)
            if bad is not None:
                raise StoreError(f"{self.root}: site {name}, batch {batch_index}: NaN or inf in rows "
                                 f"{_ranges(bad)} of the batch; refusing to store them")
            checked[name] = x
        for name, x in checked.items():
            s = self._sites[name]
            if x.shape[0]:
                s.parts.append(x)
                s.buf_rows += x.shape[0]
                s.sum_sq += float(np.einsum("ij,ij->i", x, x).sum(dtype=np.float64))
        self._next_batch += 1
        if max(s.rows - s.durable_rows for s in self._sites.values()) >= self.rows_per_flush:
            self.flush()
        return True

    def flush(self, _final: bool = False) -> None:
        """Writes every buffered batch (whole shards from memory), waits until durable, records progress."""
        if self.complete or (self._next_batch == self._durable_batches and not _final):
            return
        writes = []
        for s in self._sites.values():
            if s.rows == s.durable_rows and not _final:
                continue
            data = np.concatenate(s.parts) if len(s.parts) > 1 else (s.parts[0] if s.parts else
                                                                      np.zeros((0, s.d_in), np.float32))
            s.parts = [data]
            end = s.buf_start + data.shape[0]
            if _final and end % s.shard_rows:
                # Pad the last shard with zeros (fill-value chunks are not stored) so no stale rows of
                # an earlier, killed run survive in it beyond the end.
                pad = s.shard_rows - end % s.shard_rows
                data = np.concatenate([data, np.zeros((pad, s.d_in), np.float32)])
            if data.shape[0]:
                writes.append(s.array[s.buf_start:s.buf_start + data.shape[0]].write(data))
        for w in writes:
            w.result()  # resolves once committed (fsynced for files)
        for s in self._sites.values():
            s.durable_rows, s.durable_sum_sq = s.rows, s.sum_sq
        self._durable_batches = self._next_batch
        self._write_progress()
        for s in self._sites.values():  # keep only the tail of the last, partly filled shard
            keep_from = (s.rows // s.shard_rows) * s.shard_rows
            if keep_from > s.buf_start:
                data = s.parts[0]
                tail = data[keep_from - s.buf_start:]
                s.parts = [tail.copy()] if tail.shape[0] else []
                s.buf_rows, s.buf_start = tail.shape[0], keep_from

    def _progress(self) -> dict[str, Any]:
        return {"format": FORMAT, "batches_done": self._durable_batches,
                "sites": {n: {"rows": s.durable_rows, "sum_sq": s.durable_sum_sq} for n, s in self._sites.items()}}

    def _write_progress(self) -> None:
        self._kv.write_json(PROGRESS_JSON, self._progress())

    def finalize(self, extra_metadata: Mapping[str, Any] | None = None) -> "StoreInfo":
        """Flushes, trims the arrays to the rows written, writes ``site.json`` per site and then
        ``COMPLETE``. A no-op (returning the info) on a store already complete."""
        if not self.complete:
            extra = json.loads(json.dumps(dict(extra_metadata or {})))
            clash = sorted(set(extra) & set(_SITE_KEYS))
            if clash:
                raise StoreError(f"{self.root}: metadata keys {clash} are reserved (the writer computes them)")
            self.flush(_final=True)
            for name, s in self._sites.items():
                n = s.durable_rows
                s.array = s.array.resize(exclusive_max=[n, None], resize_metadata_only=True).result()
                last_shard = -(-n // s.shard_rows)
                for key in self._kv.list(name + "/c/"):
                    parts = key[len(name) + 3:].split("/")
                    if parts and parts[0].isdigit() and int(parts[0]) >= last_shard:
                        self._kv.delete(key)  # stale shards of an earlier, longer run
            for name, s in self._sites.items():
                self._kv.write_json(f"{name}/{SITE_JSON}", self._site_metadata(name, s, extra))
            self._kv.write_json(COMPLETE, {**self._progress(), "finished_unix": time.time()})
            self.complete = True
            for s in self._sites.values():
                s.parts, s.buf_rows = [], 0
        return open_store(self.root)

    def _site_metadata(self, name: str, s: _SiteBuffer, extra: Mapping[str, Any]) -> dict[str, Any]:
        m = _SITE_PARTS.match(name)
        n = s.durable_rows
        mean_sq = s.durable_sum_sq / n if n else 0.0
        return {**self._config["metadata"], **extra,
                "format": FORMAT, "version": VERSION, "site": name,
                "kind": m.group("kind") if m else name, "layer": int(m.group("layer")) if m else None,
                "d_in": s.d_in, "dtype": "float32", "n_rows": n, "n_tokens": n,
                "n_batches": self._durable_batches,
                "mean_squared_norm": mean_sq, "norm_scale": math.sqrt(mean_sq),
                "chunk_rows": s.chunk_rows, "shard_rows": s.shard_rows, "array": name + "/"}

    def close(self) -> None:
        """Flushes buffered batches without finalizing (the store stays resumable)."""
        self.flush()

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            try:  # keep the work of whole, validated batches; the store stays incomplete
                self.flush()
            except Exception:  # noqa: BLE001 - never mask the original error
                pass


# ------------------------------------------------------------------------------------------------
# Opening
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreInfo:
    """A complete store: ``sites`` maps each site to its ``site.json`` (d_in, n_rows, norm_scale, ...)."""

    root: str
    sites: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    n_batches: int


def _incomplete_message(root: str, kv: _Root) -> str:
    progress = kv.read_json(PROGRESS_JSON) or {}
    done = int(progress.get("batches_done", 0))
    return (f"activation store at {root} is incomplete (no {COMPLETE} marker; {done} batches recorded in "
            f"{PROGRESS_JSON}): its writer was killed or has not finished. To finish it, rerun the "
            f"generate command that created it (same arguments); it resumes from batch {done}")


def open_store(root: str) -> StoreInfo:
    """Opens a complete store's metadata. StoreError for a missing or incomplete store."""
    kv = _Root(root)
    config = kv.read_json(STORE_JSON)
    if config is None:
        raise StoreError(f"no activation store at {root}: {_join(root, STORE_JSON)} does not exist")
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise StoreError(f"{_join(root, STORE_JSON)}: not a version-{VERSION} activation store "
                         f"(format {config.get('format')!r}, version {config.get('version')!r})")
    done = kv.read_json(COMPLETE)
    if done is None:
        raise StoreError(_incomplete_message(root, kv))
    sites = {}
    for name in config["sites"]:
        meta = kv.read_json(f"{name}/{SITE_JSON}")
        if meta is None:
            raise StoreError(f"{_join(root, name + '/' + SITE_JSON)} is missing although the store is marked "
                             "complete; the store is corrupt: regenerate it")
        sites[name] = meta
    return StoreInfo(root=root, sites=sites, metadata=config.get("metadata", {}),
                     n_batches=int(done.get("batches_done", 0)))


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class ActivationReader:
    """A shuffled, prefetched, resumable stream of ``float32 [batch_size, d_in]`` batches of one site.

    Args:
      root, site: the store and the site to read (``open_store(root).sites`` lists them).
      batch_size: rows per batch.
      seed: the stream is a deterministic function of the seed (and the process slice).
      shuffle_buffer_rows: rows mixed in memory at a time, rounded up to whole chunks (one window);
        default about 256 MiB. Memory use is about twice this (the next window loads in advance).
      expected_d_in: if given, StoreError unless the site's d_in matches.
      epochs: None for an endless stream, else the number of passes; the last batch of a finite
        stream may be short unless ``drop_remainder``.
      prefetch: batches prepared ahead on the background thread.
      process_index, process_count: this process's disjoint slice of the chunks (multi-host).
      state: a ``get_state()`` dict to continue from.

    Every row of the process's slice appears exactly once per epoch. Each batch is a fresh array
    (gathered in shuffled order), the caller's to keep or modify.
    """

    def __init__(self, root: str, site: str, batch_size: int, seed: int, *, shuffle_buffer_rows: int | None = None,
                 expected_d_in: int | None = None, epochs: int | None = None, prefetch: int = 2,
                 process_index: int = 0, process_count: int = 1, state: Mapping[str, Any] | None = None,
                 drop_remainder: bool = False):
        info = open_store(root)
        if site not in info.sites:
            raise StoreError(f"activation store at {root} has no site {site!r}; it has {sorted(info.sites)}")
        meta = info.sites[site]
        self.root, self.site, self.info, self.meta = root, site, info, meta
        self.d_in = int(meta["d_in"])
        if expected_d_in is not None and int(expected_d_in) != self.d_in:
            raise StoreError(f"site {site} of activation store {root} has d_in {self.d_in}, but "
                             f"expected_d_in is {int(expected_d_in)}")
        self.n_rows = int(meta["n_rows"])
        self.chunk_rows = int(meta["chunk_rows"])
        self.n_chunks = -(-self.n_rows // self.chunk_rows)
        if self.n_rows == 0:
            raise StoreError(f"site {site} of activation store {root} has no rows")
        if batch_size < 1:
            raise StoreError(f"{root}: batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0:
            raise StoreError(f"{root}: seed must be >= 0, got {seed}")
        if not (0 <= process_index < process_count):
            raise StoreError(f"{root}: process_index {process_index} not in [0, {process_count})")
        if process_count > self.n_chunks:
            raise StoreError(f"site {site} of {root} has {self.n_chunks} chunks, fewer than "
                             f"{process_count} processes; each process needs at least one")
        if epochs is not None and epochs < 1:
            raise StoreError(f"{root}: epochs must be None or >= 1, got {epochs}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epochs = epochs
        self.prefetch = max(1, int(prefetch))
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.drop_remainder = bool(drop_remainder)
        if shuffle_buffer_rows is None:
            shuffle_buffer_rows = DEFAULT_SHUFFLE_BUFFER_BYTES // (4 * self.d_in)
        self.window_chunks = max(1, -(-int(shuffle_buffer_rows) // self.chunk_rows))

        spec = _Root(root).array_spec(site)
        self._array = ts.open(spec, open=True, read=True, context=_CONTEXT).result()
        if self._array.dtype != ts.float32 or tuple(self._array.shape) != (self.n_rows, self.d_in):
            raise StoreError(f"{_join(root, site)}: array is {self._array.dtype} {self._array.shape}, "
                             f"site.json says float32 {(self.n_rows, self.d_in)}; the store is corrupt")

        self._pos = (0, 0, 0)        # (epoch, window, row) of the next row handed to the consumer
        self._batches = 0
        self._rows = 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._done = False
        if state is not None:
            self.set_state(state)

    # -- the stream, as pure functions ------------------------------------------------------------
    def epoch_chunks(self, epoch: int) -> np.ndarray:
        """This process's chunk indices in epoch ``epoch``, in read order."""
        perm = np.random.default_rng([self.seed, 0, epoch]).permutation(self.n_chunks)
        return perm[self.process_index::self.process_count]

    def _n_windows(self, epoch_chunks: np.ndarray) -> int:
        return -(-len(epoch_chunks) // self.window_chunks)

    def _window_chunks(self, epoch: int, window: int) -> np.ndarray:
        """The chunks of one window, in index order (its rows are permuted anyway; sorted reads are
        closer to sequential and neighbours in a shard can be coalesced)."""
        c = self.epoch_chunks(epoch)
        return np.sort(c[window * self.window_chunks:(window + 1) * self.window_chunks])

    def _chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n_rows)

    def _row_perm(self, epoch: int, window: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, epoch, window, self.process_index]).permutation(n)

    def _start_window(self, epoch: int, window: int):
        """Issues the reads of one window's chunks into one buffer; returns a handle to finish."""
        chunks = self._window_chunks(epoch, window)
        ranges = [self._chunk_range(int(c)) for c in chunks]
        n = sum(b - a for a, b in ranges)
        buf = np.empty((n, self.d_in), np.float32)
        dst = ts.array(buf, copy=False, write=True, context=_CONTEXT)
        futures, off = [], 0
        for a, b in ranges:
            futures.append(dst[off:off + b - a].write(self._array[a:b]))
            off += b - a
        return epoch, window, ranges, buf, futures

    def _finish_window(self, handle):
        epoch, window, ranges, buf, futures = handle
        off = 0
        for (a, b), f in zip(ranges, futures):
            f.result()
            bad = _check_finite(buf[off:off + b - a])  # checked per chunk as it is loaded
            if bad is not None:
                raise StoreError(f"site {self.site} of activation store {self.root}: NaN or inf in rows "
                                 f"{_ranges(bad + a)} (chunk rows [{a}, {b})); the store is corrupt: "
                                 "regenerate it")
            off += b - a
        buf.flags.writeable = False
        return buf, self._row_perm(epoch, window, buf.shape[0])

    def _next_window(self, epoch: int, window: int) -> tuple[int, int] | None:
        if window + 1 < self._n_windows(self.epoch_chunks(epoch)):
            return epoch, window + 1
        if self.epochs is not None and epoch + 1 >= self.epochs:
            return None
        return epoch + 1, 0

    # -- background production ---------------------------------------------------------------------
    @staticmethod
    def _produce(ref: "weakref.ref[ActivationReader]", start: tuple[int, int, int], q: queue.Queue,
                 stop: threading.Event) -> None:
        """The background thread. It holds the reader only weakly between batches, so a reader
        that is dropped without ``close()`` is collected and its thread ends."""
        def put(item) -> bool:
            while not stop.is_set() and ref() is not None:
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            r = ref()
            if r is None:
                return
            epoch, window, row = start
            if r.epochs is not None and epoch >= r.epochs:
                del r
                put(_END)
                return
            pending = r._start_window(epoch, window)
            data, perm = r._finish_window(pending)
            nxt = r._next_window(epoch, window)
            pending = r._start_window(*nxt) if nxt else None
            del r
            while not stop.is_set():
                r = ref()
                if r is None:
                    return
                parts, need = [], r.batch_size
                while need:
                    if row >= len(perm):
                        if nxt is None:
                            break
                        (epoch, window), row = nxt, 0
                        data, perm = r._finish_window(pending)
                        nxt = r._next_window(epoch, window)
                        pending = r._start_window(*nxt) if nxt else None
                        continue
                    take = min(need, len(perm) - row)
                    parts.append(data[perm[row:row + take]])
                    row += take
                    need -= take
                drop = r.drop_remainder
                del r
                if need and (not parts or drop):
                    put(_END)
                    return
                batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
                pos = (epoch, window, row)
                if row >= len(perm) and nxt is not None:
                    pos = (nxt[0], nxt[1], 0)
                elif row >= len(perm):
                    pos = (epoch + 1, 0, 0)  # the end of a finite stream
                if not put((batch, pos)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            r = None
            put(_Failure(e))

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=ActivationReader._produce,
                                            args=(weakref.ref(self), self._pos, self._queue, self._stop),
                                            name=f"ActivationReader[{self.site}]", daemon=True)
            self._thread.start()

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join()
            self._thread = self._queue = self._stop = None

    # -- the consumer's interface ----------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        self._ensure_started()
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._halt()
            raise StopIteration
        if isinstance(item, _Failure):
            self._halt()
            raise item.exc
        batch, self._pos = item
        self._batches += 1
        self._rows += batch.shape[0]
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch handed out (not the prefetched ones); JSON-serialisable.

        ``{"version", "site", "seed", "process_index", "process_count", "window_chunks", "n_rows",
        "epoch", "window", "row", "batches", "rows"}``: the next row is row ``row`` (in shuffled
        order) of window ``window`` of epoch ``epoch``; the rest identifies the stream (checked on
        restore) or counts what was consumed (informative). Independent of ``batch_size``.
        """
        epoch, window, row = self._pos
        return {"version": VERSION, "site": self.site, "seed": self.seed, "process_index": self.process_index,
                "process_count": self.process_count, "window_chunks": self.window_chunks,
                "n_rows": self.n_rows, "epoch": int(epoch), "window": int(window), "row": int(row),
                "batches": self._batches, "rows": self._rows}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from a ``get_state()`` dict: the next batches are those the saved reader would
        have yielded. StoreError if the state belongs to a different stream."""
        mine = self.get_state()
        for key in ("version", "site", "seed", "process_index", "process_count", "window_chunks", "n_rows"):
            if key not in state:
                raise StoreError(f"{self.root}: reader state lacks {key!r}: {dict(state)}")
            if state[key] != mine[key]:
                raise StoreError(f"{self.root}: reader state has {key}={state[key]!r} but this reader has "
                                 f"{key}={mine[key]!r}; it belongs to a different stream")
        self._halt()
        self._pos = (int(state["epoch"]), int(state["window"]), int(state["row"]))
        self._batches, self._rows = int(state.get("batches", 0)), int(state.get("rows", 0))
        self._done = False

    def rows_per_epoch(self, epoch: int = 0) -> int:
        """Rows this process reads in ``epoch`` (processes can differ by up to one chunk)."""
        return sum(b - a for a, b in map(self._chunk_range, map(int, self.epoch_chunks(epoch))))

    def sample(self, n_rows: int, seed: int = 0) -> np.ndarray:
        """``float32 [n_rows, d_in]`` rows drawn without replacement from random chunks of the whole
        site (all processes' chunks), e.g. to estimate the normalisation constant. Independent of the
        stream's position."""
        n_rows = min(int(n_rows), self.n_rows)
        rng = np.random.default_rng([int(seed), 2])
        order = rng.permutation(self.n_chunks)
        # Up to 4 chunks per requested chunk-worth of rows (rows from more sequences), while the
        # chunks read stay under ~256 MiB.
        factor = max(1, min(4, (256 << 20) // max(1, n_rows * self.d_in * 4)))
        k = min(self.n_chunks, max(factor * -(-n_rows // self.chunk_rows), 1))
        while True:
            ranges = [self._chunk_range(int(c)) for c in order[:k]]
            if sum(b - a for a, b in ranges) >= n_rows or k == self.n_chunks:
                break
            k = min(self.n_chunks, 2 * k)
        futures = [self._array[a:b].read() for a, b in ranges]
        blocks = []
        for (a, b), f in zip(ranges, futures):
            x = f.result()
            bad = _check_finite(x)
            if bad is not None:
                raise StoreError(f"site {self.site} of activation store {self.root}: NaN or inf in rows "
                                 f"{_ranges(bad + a)} (chunk rows [{a}, {b})); the store is corrupt: regenerate it")
            blocks.append(x)
        rows = np.concatenate(blocks)
        return rows[rng.choice(rows.shape[0], n_rows, replace=False)]

    def close(self) -> None:
        """Stops the background thread."""
        self._halt()

    def __enter__(self) -> "ActivationReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._halt()
        except Exception:  # noqa: BLE001
            pass


def estimate_norm_scale(root: str, site: str, n_rows: int | None = None, seed: int = 0) -> float:
    """C with ``E||x / C||^2 = 1``, i.e. ``sqrt(mean ||x||^2)``.

    ``n_rows=None``: the writer's exact value over every row (from site.json). Otherwise an estimate
    from ``n_rows`` sampled rows (:meth:`ActivationReader.sample`).
    """
    if n_rows is None:
        info = open_store(root)
        if site not in info.sites:
            raise StoreError(f"activation store at {root} has no site {site!r}; it has {sorted(info.sites)}")
        return float(info.sites[site]["norm_scale"])
    reader = ActivationReader(root, site, batch_size=1, seed=seed)
    x = reader.sample(n_rows, seed)
    return float(np.sqrt(np.mean(np.einsum("ij,ij->i", x, x, dtype=np.float64))))
