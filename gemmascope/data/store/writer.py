"""Writing the activation store: batches in, whole shards out, crash safe and resumable."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorstore as ts

from gemmascope.common import disk_full_as_error, disk_full_error
from gemmascope.data.store.layout import (
    COMPLETE,
    CONTEXT,
    DEFAULT_CAPACITY_ROWS,
    DEFAULT_CHUNKS_PER_SHARD,
    FORMAT,
    KEPT,
    PROGRESS_JSON,
    RESERVED_NAMES,
    SITE_JSON,
    SITE_KEYS,
    SITE_NAME,
    SITE_PARTS,
    STORE_JSON,
    VERSION,
    Root,
    StoreError,
    array_metadata,
    check_finite,
    chunks_checksummed,
    default_chunk_rows,
    format_ranges,
    join_path,
    read_error,
    repair_fix,
    warn_unchecked,
)
from gemmascope.data.store.meta import StoreInfo, check_store_json, open_store


@dataclass(kw_only=True)
class _SiteBuffer:
    name: str
    d_in: int
    chunk_rows: int
    shard_rows: int
    array: Any = None
    buf_start: int = 0  # shard-aligned row where the in-memory tail starts
    parts: list = field(default_factory=list)
    buf_rows: int = 0
    sum_sq: float = 0.0  # sum of ||x||^2 over all rows appended (float64)
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
      chunk_checksums: write a ``crc32c`` after every inner chunk (the default). False writes the
        format of stores made before per-chunk checksums: only for benchmarks and compatibility tests.

    ``resume_from_batch``: the first batch index the outer loop must still produce (0 for a new
    store, the number of batches durably written for a killed one, all of them for a complete one).
    ``write_batch`` takes batches in order; indices below the next expected one are skipped
    (returns False), so an outer loop may also simply start from 0.

    Crash safety: data is written (fsynced, whole shards from memory) before ``progress.json``
    records it; on restart rows beyond the recorded count are overwritten and the in-memory tail of
    the last, partly filled shard is read back so writes stay shard aligned. ``finalize`` resizes
    the arrays, writes ``site.json`` per site and then the ``COMPLETE`` marker, last. Every JSON
    file carries a checksum of its content; ``progress.json`` keeps one record per flush, so that a
    damaged store can be rolled back to its last durable point before the damage
    (:func:`gemmascope.data.store.rollback`) and the rerun rewrites only what follows.

    A full disk (ENOSPC, EDQUOT) raises :class:`gemmascope.common.DiskFullError` naming the file
    and the bytes of the write (a flush: about its data plus shard indices); what progress.json
    records stays, and the rerun resumes as after a kill.
    """

    def __init__(
        self,
        root: str,
        sites: Mapping[str, int],
        metadata: Mapping[str, Any] | None = None,
        *,
        rows_per_flush: int | None = None,
        chunk_rows: int | Mapping[str, int] | None = None,
        chunks_per_shard: int = DEFAULT_CHUNKS_PER_SHARD,
        capacity_rows: int = DEFAULT_CAPACITY_ROWS,
        chunk_checksums: bool = True,
    ):
        self.root = root
        self._kv = Root(root)
        if not sites:
            raise StoreError(f"{root}: ActivationWriter needs at least one site")
        metadata = dict(metadata or {})
        try:
            metadata = json.loads(json.dumps(metadata))
        except (TypeError, ValueError) as e:
            raise StoreError(f"{root}: store metadata must be JSON-serialisable ({e})") from None
        clash = sorted(set(metadata) & set(SITE_KEYS))
        if clash:
            raise StoreError(f"{root}: metadata keys {clash} are reserved (the writer computes them)")
        for name, d_in in sites.items():
            if not SITE_NAME.match(name) or name in RESERVED_NAMES:
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
                layout[name] = {
                    "d_in": int(d_in),
                    "chunk_rows": cr,
                    "shard_rows": cr * int(chunks_per_shard),
                    "dtype": "float32",
                }
            self._config = {
                "format": FORMAT,
                "version": VERSION,
                "sites": layout,
                "metadata": metadata,
                "capacity_rows": int(capacity_rows),
            }
            if chunk_checksums:
                self._config["chunk_checksum"] = "crc32c"
            self._kv.write_json(STORE_JSON, self._config)
        else:
            self._config = self._check_resumable(stored, sites, metadata)

        done = self._kv.read_json(COMPLETE)
        self.complete = done is not None
        progress = done if done is not None else (self._kv.read_json(PROGRESS_JSON) or {})
        self._history = [list(h) for h in progress.get("history", [])]
        self._durable_batches = int(progress.get("batches_done", 0))
        self._next_batch = self._durable_batches
        self._sites: dict[str, _SiteBuffer] = {}
        for name, lay in self._config["sites"].items():
            s = _SiteBuffer(name=name, d_in=lay["d_in"], chunk_rows=lay["chunk_rows"], shard_rows=lay["shard_rows"])
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
        where = join_path(self.root, STORE_JSON)
        check_store_json(self.root, stored)
        have = {k: v["d_in"] for k, v in stored["sites"].items()}
        want = {k: int(v) for k, v in sites.items()}
        if have != want:
            raise StoreError(
                f"{where}: the existing store has sites {have}, this run asks for {want}; "
                "rerun with the same command, or write to a new root"
            )
        if stored.get("metadata") != metadata:
            raise StoreError(
                f"{where}: the existing store was started with metadata {stored.get('metadata')}, "
                f"this run passes {metadata}; rerun with the same command, or write to a new root"
            )
        return stored

    def _open_arrays(self) -> None:
        capacity = int(self._config["capacity_rows"])
        for name, s in self._sites.items():
            s.array = self._open_array(name, s, capacity)
            # Read back the durable rows of the last, partly filled shard, so that every later write
            # starts on a shard boundary and comes whole from memory.
            s.buf_start = (s.durable_rows // s.shard_rows) * s.shard_rows
            if s.durable_rows > s.buf_start:
                try:
                    tail = s.array[s.buf_start : s.durable_rows].read().result()
                except ValueError as e:
                    raise read_error(e, self._kv, name, (s.buf_start, s.durable_rows), s.shard_rows) from None
                s.parts, s.buf_rows = [tail], tail.shape[0]

    def _open_array(self, name: str, s: _SiteBuffer, capacity: int):
        spec = self._kv.array_spec(name)
        try:
            arr = ts.open(spec, open=True, context=CONTEXT).result()
        except ValueError:  # not created yet (NOT_FOUND surfaces as ValueError)
            spec["metadata"] = array_metadata(
                s.d_in,
                s.chunk_rows,
                s.shard_rows,
                capacity,
                checksums=self._config.get("chunk_checksum") == "crc32c",
            )
            try:
                with disk_full_as_error(join_path(self.root, f"{name}/zarr.json"), None, what="store file", kept=KEPT):
                    return ts.open(spec, create=True, open=True, context=CONTEXT).result()
            except ValueError as e:  # a zarr.json that exists but cannot be parsed
                path = join_path(self.root, f"{name}/zarr.json")
                raise StoreError(
                    f"{path}: cannot open or create the site's array ({e})",
                    path=path,
                    site=name,
                    fault="malformed metadata",
                    fix=repair_fix(self.root),
                ) from None
        if not chunks_checksummed(arr):
            warn_unchecked(self.root, name)
        layout = arr.chunk_layout
        if (
            arr.dtype != ts.float32
            or arr.shape[1] != s.d_in
            or list(layout.read_chunk.shape) != [s.chunk_rows, s.d_in]
            or list(layout.write_chunk.shape) != [s.shard_rows, s.d_in]
        ):
            raise StoreError(
                f"{join_path(self.root, name)}: existing array (dtype {arr.dtype}, shape {arr.shape}, "
                f"chunks {layout.read_chunk.shape}/{layout.write_chunk.shape}) does not match "
                f"store.json; delete the store and regenerate it"
            )
        if arr.shape[0] < capacity:  # killed inside finalize, after the resize: grow it back
            with disk_full_as_error(join_path(self.root, f"{name}/zarr.json"), None, what="store file", kept=KEPT):
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
            raise StoreError(
                f"{self.root}: the store is complete ({self._durable_batches} batches); "
                f"batch {batch_index} cannot be added. Write to a new root to regenerate"
            )
        if batch_index > self._next_batch:
            raise StoreError(
                f"{self.root}: batches must be written in order; expected batch {self._next_batch}, got {batch_index}"
            )
        missing = sorted(set(self._sites) - set(activations))
        extra = sorted(set(activations) - set(self._sites))
        if missing or extra:
            raise StoreError(
                f"{self.root}: batch {batch_index} has sites missing {missing} / unknown {extra}; "
                f"the store's sites are {sorted(self._sites)}"
            )
        checked = {}
        for name, s in self._sites.items():
            x = np.asarray(activations[name])
            if not (x.dtype.kind == "f" or "float" in x.dtype.name):
                raise StoreError(f"{self.root}: site {name}, batch {batch_index}: dtype {x.dtype} is not a float type")
            if x.ndim != 2 or x.shape[1] != s.d_in:
                raise StoreError(
                    f"{self.root}: site {name}, batch {batch_index}: shape {x.shape}, expected [n_rows, {s.d_in}]"
                )
            x = np.array(x, dtype=np.float32, order="C", copy=True)  # the caller may reuse its buffer
            bad = check_finite(x)
            if bad is not None:
                raise StoreError(
                    f"{self.root}: site {name}, batch {batch_index}: NaN or inf in rows "
                    f"{format_ranges(bad)} of the batch; refusing to store them"
                )
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
            data = (
                np.concatenate(s.parts)
                if len(s.parts) > 1
                else (s.parts[0] if s.parts else np.zeros((0, s.d_in), np.float32))
            )
            s.parts = [data]
            end = s.buf_start + data.shape[0]
            if _final and end % s.shard_rows:
                # Pad the last shard with zeros (fill-value chunks are not stored) so no stale rows of
                # an earlier, killed run survive in it beyond the end.
                pad = s.shard_rows - end % s.shard_rows
                data = np.concatenate([data, np.zeros((pad, s.d_in), np.float32)])
            if data.shape[0]:
                shards = -(-data.shape[0] // s.shard_rows)
                nbytes = data.nbytes + shards * (s.shard_rows // s.chunk_rows) * (16 + 4) + 4  # + shard index, crc
                writes.append((s.name, nbytes, s.array[s.buf_start : s.buf_start + data.shape[0]].write(data)))
        self._wait(writes)
        for s in self._sites.values():
            s.durable_rows, s.durable_sum_sq = s.rows, s.sum_sq
        self._durable_batches = self._next_batch
        names = sorted(self._sites)
        entry = [
            self._durable_batches,
            [self._sites[n].durable_rows for n in names],
            [self._sites[n].durable_sum_sq for n in names],
        ]
        if not self._history or self._history[-1] != entry:
            self._history.append(entry)
        self._write_progress()
        for s in self._sites.values():  # keep only the tail of the last, partly filled shard
            keep_from = (s.rows // s.shard_rows) * s.shard_rows
            if keep_from > s.buf_start:
                data = s.parts[0]
                tail = data[keep_from - s.buf_start :]
                s.parts = [tail.copy()] if tail.shape[0] else []
                s.buf_rows, s.buf_start = tail.shape[0], keep_from

    def _wait(self, writes: list) -> None:
        """Waits for every shard write of a flush (each resolves once committed: fsynced for files),
        all of them also when one fails, so nothing is in flight when the error is raised. A full
        disk raises DiskFullError naming the site's array (and the shard file tensorstore names) and
        the bytes of the whole flush (about: chunk data plus shard indices)."""
        failed = None
        for name, _, w in writes:
            try:
                w.result()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other writes
                failed = failed or (name, e)
        if failed is None:
            return
        name, e = failed
        err = disk_full_error(
            e,
            join_path(self.root, name),
            sum(n for _, n, _ in writes),
            what=self._flush_name() + " (one flush, every site) to",
            kept=KEPT,
            bound="about ",
        )
        if err is None:
            raise e
        raise err from e

    def _flush_name(self) -> str:
        a, b = self._durable_batches, self._next_batch - 1
        return f"batch {a}" if a == b else f"batches {a}..{b}" if b > a else "the last shards"

    def _progress(self) -> dict[str, Any]:
        # history: [batches_done, [rows], [sum_sq]] per flush, sites in sorted order (for rollback)
        return {
            "format": FORMAT,
            "batches_done": self._durable_batches,
            "history": self._history,
            "sites": {n: {"rows": s.durable_rows, "sum_sq": s.durable_sum_sq} for n, s in self._sites.items()},
        }

    def _write_progress(self) -> None:
        self._kv.write_json(PROGRESS_JSON, self._progress())

    def finalize(self, extra_metadata: Mapping[str, Any] | None = None) -> StoreInfo:
        """Flushes, trims the arrays to the rows written, writes ``site.json`` per site and then
        ``COMPLETE``. A no-op (returning the info) on a store already complete."""
        if not self.complete:
            extra = json.loads(json.dumps(dict(extra_metadata or {})))
            clash = sorted(set(extra) & set(SITE_KEYS))
            if clash:
                raise StoreError(f"{self.root}: metadata keys {clash} are reserved (the writer computes them)")
            self.flush(_final=True)
            for name, s in self._sites.items():
                n = s.durable_rows
                with disk_full_as_error(join_path(self.root, f"{name}/zarr.json"), None, what="store file", kept=KEPT):
                    s.array = s.array.resize(exclusive_max=[n, None], resize_metadata_only=True).result()
                last_shard = -(-n // s.shard_rows)
                for i in self._kv.shard_list(name):
                    if i >= last_shard:
                        self._kv.delete(f"{name}/c/{i}/0")  # stale shards of an earlier, longer run
            for name, s in self._sites.items():
                self._kv.write_json(f"{name}/{SITE_JSON}", self._site_metadata(name, s, extra))
            self._kv.write_json(COMPLETE, {**self._progress(), "finished_unix": time.time()})
            self.complete = True
            for s in self._sites.values():
                s.parts, s.buf_rows = [], 0
        return open_store(self.root)

    def _site_metadata(self, name: str, s: _SiteBuffer, extra: Mapping[str, Any]) -> dict[str, Any]:
        m = SITE_PARTS.match(name)
        n = s.durable_rows
        mean_sq = s.durable_sum_sq / n if n else 0.0
        return {
            **self._config["metadata"],
            **extra,
            "format": FORMAT,
            "version": VERSION,
            "site": name,
            "kind": m.group("kind") if m else name,
            "layer": int(m.group("layer")) if m else None,
            "d_in": s.d_in,
            "dtype": "float32",
            "n_rows": n,
            "n_tokens": n,
            "n_batches": self._durable_batches,
            "mean_squared_norm": mean_sq,
            "norm_scale": math.sqrt(mean_sq),
            "chunk_rows": s.chunk_rows,
            "shard_rows": s.shard_rows,
            "array": name + "/",
        }

    def close(self) -> None:
        """Flushes buffered batches without finalizing (the store stays resumable)."""
        self.flush()

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            try:  # keep the work of whole, validated batches; the store stays incomplete
                self.flush()
            except Exception:  # noqa: BLE001 - never mask the original error
                pass
