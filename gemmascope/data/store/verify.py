"""Checking a whole store after copying it: every chunk of every site read, checksums, row counts,
finiteness; and the repair that rolls a damaged store back so that generation rewrites the rest."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from gemmascope.data.store.layout import (
    PROGRESS_JSON,
    Root,
    StoreError,
    StoreWarning,
    check_shards,
    chunks_checksummed,
    nonfinite_error,
    open_site_array,
    read_error,
)
from gemmascope.data.store.meta import open_store, rollback

# Faults that damage rows (the rollback must go back before them); the others damage metadata only.
DATA_FAULTS = (
    "corrupt chunk",
    "corrupt shard",
    "missing shard",
    "missing chunk",
    "non-finite values",
    "row count mismatch",
)


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: per-site rows/bytes/checksum flag, and every fault."""

    root: str
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[StoreError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def bytes_read(self) -> int:
        return sum(s["bytes"] for s in self.sites.values())

    def summary(self) -> str:
        lines = []
        for name, s in sorted(self.sites.items()):
            lines.append(
                f"  {name}: {s['rows']:,} rows x {s['d_in']} fp32, {s['shards']} shards, "
                f"{s['bytes'] / 1e9:.3f} GB, chunk checksums: "
                f"{'crc32c' if s['checksummed'] else 'NONE (written before checksums)'}"
            )
        rate = self.bytes_read / max(self.seconds, 1e-9) / 1e9
        head = (
            f"{self.root}: {len(self.sites)} sites, {sum(s['rows'] for s in self.sites.values()):,} rows, "
            f"{self.bytes_read / 1e9:.3f} GB read in {self.seconds:.1f} s ({rate:.2f} GB/s)"
        )
        if self.ok:
            return "\n".join([f"OK {head}"] + lines)
        faults = [f"FAULT {i + 1}/{len(self.faults)}: {e}" for i, e in enumerate(self.faults)]
        word = "INCOMPLETE" if self.incomplete else "DAMAGED"
        return "\n".join([f"{word} {head}; {len(self.faults)} fault(s)"] + lines + faults)

    @property
    def incomplete(self) -> bool:
        """True when the only fault is an unfinished writer (rerun generation; nothing to repair)."""
        return bool(self.faults) and all(f.fault == "incomplete" for f in self.faults)


def verify_store(root: str, max_faults: int = 100) -> VerifyReport:
    """Reads every chunk of every site of a complete store; returns the report (never raises for
    a storage fault: each becomes a :class:`StoreError` in ``report.faults``, up to ``max_faults``)."""
    report = VerifyReport(root)
    t0 = time.perf_counter()
    try:
        info = open_store(root)
    except StoreError as e:
        report.faults.append(e)
        report.seconds = time.perf_counter() - t0
        return report
    kv = Root(root)
    try:
        kv.read_json(PROGRESS_JSON)
    except StoreError as e:
        report.faults.append(e)
    for name, meta in sorted(info.sites.items()):
        n, d, cr, sr = (int(meta[k]) for k in ("n_rows", "d_in", "chunk_rows", "shard_rows"))
        entry = {"rows": n, "d_in": d, "shards": -(-n // sr), "bytes": 0, "checksummed": False}
        report.sites[name] = entry
        try:
            with warnings.catch_warnings():  # the summary says it instead
                warnings.simplefilter("ignore", StoreWarning)
                arr = open_site_array(kv, name, n, d)
            entry["checksummed"] = chunks_checksummed(arr)
        except StoreError as e:
            report.faults.append(e)
            continue
        try:
            check_shards(kv, name, n, sr)
            present = set(range(entry["shards"]))
        except StoreError as e:
            report.faults.append(e)
            present = kv.shard_list(name)
        for shard in range(entry["shards"]):
            if shard not in present:
                continue
            ranges = [(a, min(a + cr, n)) for a in range(shard * sr, min((shard + 1) * sr, n), cr)]
            futures = [arr[a:b].read() for a, b in ranges]
            for (a, b), f in zip(ranges, futures):
                try:
                    x = f.result()
                except ValueError as e:
                    report.faults.append(read_error(e, kv, name, (a, b), sr))
                    continue
                err = nonfinite_error(kv, name, x, a=a, b=b, shard_rows=sr)
                if err is not None:
                    report.faults.append(err)
                entry["bytes"] += x.nbytes
            if len(report.faults) >= max_faults:
                break
    report.seconds = time.perf_counter() - t0
    return report


def repair_store(root: str, report: VerifyReport, log=print) -> int | None:
    """Rolls a damaged store back to before its first damaged shard per site (see
    :func:`gemmascope.data.store.rollback`); returns the batch to resume from, or None when the
    report holds no fault or only says the writer has not finished. StoreError if the store
    cannot be rolled back (its ``store.json``)."""
    if report.ok or report.incomplete:
        return None
    first_bad: dict[str, int] = {}
    for e in report.faults:
        if e.fault in DATA_FAULTS and e.site is not None and e.rows is not None:
            first_bad[e.site] = min(first_bad.get(e.site, e.rows[0]), e.rows[0])
    return rollback(root, first_bad, log=log)
