"""Opening a complete store (every metadata file checked against the others) and rolling a damaged
store back to its last durable point before the damage, so that the generate command rewrites
only what follows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tensorstore as ts

from gemmascope.data.store.layout import (
    COMPLETE,
    CONTEXT,
    FORMAT,
    PROGRESS_JSON,
    RESERVED_NAMES,
    SITE_JSON,
    SITE_NAME,
    STORE_JSON,
    VERSION,
    Root,
    StoreError,
    array_metadata,
    join_path,
    repair_fix,
    shard_key,
)


@dataclass(frozen=True)
class StoreInfo:
    """A complete store: ``sites`` maps each site to its ``site.json`` (d_in, n_rows, norm_scale, ...)."""

    root: str
    sites: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    n_batches: int


def _int(obj: Mapping, key: str, where: str, lo: int = 0) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise StoreError(f"{where}: field {key!r} must be an integer >= {lo}, got {v!r}")
    return v


def check_store_json(root: str, config: dict) -> dict:
    """Validates ``store.json``'s structure (format, version, per-site layout); returns it."""
    where = join_path(root, STORE_JSON)
    try:
        if config.get("format") != FORMAT or config.get("version") != VERSION:
            raise StoreError(
                f"{where}: not a version-{VERSION} activation store "
                f"(format {config.get('format')!r}, version {config.get('version')!r})"
            )
        sites = config.get("sites")
        if not isinstance(sites, dict) or not sites:
            raise StoreError(f"{where}: field 'sites' must be a non-empty object, got {sites!r}")
        for name, lay in sites.items():
            if not SITE_NAME.match(name) or name in RESERVED_NAMES:
                raise StoreError(f"{where}: site name {name!r} is not a valid site name")
            if not isinstance(lay, dict):
                raise StoreError(f"{where}: sites.{name} must be an object, got {lay!r}")
            _int(lay, "d_in", f"{where}: sites.{name}", 1)
            cr = _int(lay, "chunk_rows", f"{where}: sites.{name}", 1)
            if _int(lay, "shard_rows", f"{where}: sites.{name}", 1) % cr:
                raise StoreError(f"{where}: sites.{name}: shard_rows is not a multiple of chunk_rows")
        _int(config, "capacity_rows", where, 1)
        if not isinstance(config.get("metadata", {}), dict):
            raise StoreError(f"{where}: field 'metadata' must be an object, got {config['metadata']!r}")
    except StoreError as e:
        raise StoreError(
            e.message,
            path=where,
            fault="malformed metadata",
            fix=f"store.json defines the layout and cannot be rebuilt: delete {root} and rerun the "
            "generate command (or copy the store again from its source)",
        ) from None
    return config


def _incomplete_message(root: str, kv: Root) -> str:
    progress = kv.read_json(PROGRESS_JSON) or {}
    done = progress.get("batches_done", 0)
    done = done if isinstance(done, int) and not isinstance(done, bool) and done >= 0 else 0
    return (
        f"activation store at {root} is incomplete (no {COMPLETE} marker; {done} batches recorded in "
        f"{PROGRESS_JSON}): its writer was killed or has not finished. To finish it, rerun the "
        f"generate command that created it (same arguments); it resumes from batch {done}"
    )


def open_store(root: str) -> StoreInfo:
    """Opens a complete store's metadata, checking every file against the others.

    StoreError for a missing or incomplete store, a missing, malformed or checksum-failing
    ``store.json`` / ``COMPLETE`` / ``site.json``, and row counts that disagree between
    ``COMPLETE``, ``progress.json`` and ``site.json``."""
    kv = Root(root)
    config = kv.read_json(STORE_JSON)
    if config is None:
        raise StoreError(
            f"no activation store at {root}: {join_path(root, STORE_JSON)} does not exist",
            path=join_path(root, STORE_JSON),
            fault="missing store",
            fix="check the path, or create the store with the generate command; if this is a copy "
            "whose store.json was lost, copy it again from its source",
        )
    check_store_json(root, config)
    done = kv.read_json(COMPLETE)
    if done is None:
        raise StoreError(_incomplete_message(root, kv), fault="incomplete")
    where = join_path(root, COMPLETE)
    recorded = done.get("sites")
    if not isinstance(recorded, dict) or set(recorded) != set(config["sites"]):
        raise StoreError(
            f"{where}: records sites {sorted(recorded) if isinstance(recorded, dict) else recorded!r}, "
            f"store.json has {sorted(config['sites'])}",
            path=where,
            fault="malformed metadata",
            fix=repair_fix(root),
        )
    try:
        progress = kv.read_json(PROGRESS_JSON) or {}
    except StoreError:
        progress = {}  # not needed once complete; verify reports it
    n_batches = done.get("batches_done", 0)
    if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 0:
        raise StoreError(
            f"{where}: field 'batches_done' must be an integer >= 0, got {n_batches!r}",
            path=where,
            fault="malformed metadata",
            fix=repair_fix(root),
        )
    recorded_progress = progress.get("sites") if isinstance(progress.get("sites"), dict) else {}
    sites = {}
    for name, lay in config["sites"].items():
        key = f"{name}/{SITE_JSON}"
        meta = kv.read_json(key, site=name)
        if meta is None:
            raise StoreError(
                f"{join_path(root, key)} is missing although the store is marked complete",
                path=join_path(root, key),
                site=name,
                fault="missing metadata",
                fix=repair_fix(root),
            )
        try:
            n = _int(meta, "n_rows", join_path(root, key))
            for field in ("d_in", "chunk_rows", "shard_rows"):
                if _int(meta, field, join_path(root, key), 1) != lay[field]:
                    raise StoreError(
                        f"{join_path(root, key)}: {field} {meta.get(field)!r}, store.json says {lay[field]!r}"
                    )
        except StoreError as e:
            raise StoreError(
                e.message, path=join_path(root, key), site=name, fault="malformed metadata", fix=repair_fix(root)
            ) from None
        in_progress = recorded_progress.get(name)
        counts = {
            COMPLETE: recorded[name].get("rows") if isinstance(recorded[name], dict) else None,
            PROGRESS_JSON: in_progress.get("rows", n) if isinstance(in_progress, dict) else n,
        }
        for fname, rows in counts.items():
            if rows != n:
                raise StoreError(
                    f"site {name} of activation store {root}: {fname} records {rows!r} rows but site.json records {n}",
                    path=join_path(root, fname),
                    site=name,
                    rows=(min(n, rows), max(n, rows)) if isinstance(rows, int) else None,
                    fault="row count mismatch",
                    fix=repair_fix(root),
                )
        sites[name] = meta
    return StoreInfo(
        root=root,
        sites=sites,
        metadata=config.get("metadata", {}),
        n_batches=n_batches,
    )


def _durable_point(kv: Root, log) -> dict | None:
    """The newest readable record of durable progress (progress.json, else COMPLETE), or None."""
    for key in (PROGRESS_JSON, COMPLETE):
        try:
            p = kv.read_json(key)
        except StoreError as e:
            log(f"[repair] {join_path(kv.root, key)} is unreadable ({e.message}); not used")
            continue
        if p is not None and isinstance(p.get("sites"), dict):
            return p
    return None


def rollback(root: str, first_bad_row: Mapping[str, int] | None = None, log=print) -> int:
    """Rolls a store back to its last durable point before the damage; returns that batch count.

    ``first_bad_row``: ``{site: first row of its first damaged shard}`` (None or missing sites:
    only metadata is damaged). The point chosen is the newest recorded flush (``progress.json``
    keeps one per flush) at which every damaged site had no rows in or after its damaged shard.
    ``COMPLETE`` and the ``site.json`` files are removed, ``progress.json`` rewritten to that
    point, every shard past it deleted and an unreadable ``zarr.json`` rewritten from
    ``store.json``; the generate command, rerun, then resumes there. A store whose
    ``store.json`` is damaged cannot be rolled back (StoreError: delete it and regenerate).
    """
    kv = Root(root)
    config = kv.read_json(STORE_JSON)
    if config is None:
        raise StoreError(
            f"no activation store at {root}: nothing to repair",
            path=join_path(root, STORE_JSON),
            fault="missing store",
        )
    check_store_json(root, config)
    layout = config["sites"]
    names = sorted(layout)
    bad = dict(first_bad_row or {})
    point = _durable_point(kv, log)
    candidates = []
    if point is not None:
        for b, rows, sum_sq in point.get("history", []):
            candidates.append((b, dict(zip(names, rows)), dict(zip(names, sum_sq))))
        candidates.append(
            (
                int(point.get("batches_done", 0)),
                {n: int(point["sites"].get(n, {}).get("rows", 0)) for n in names},
                {n: float(point["sites"].get(n, {}).get("sum_sq", 0.0)) for n in names},
            )
        )
    chosen = (0, {n: 0 for n in names}, {n: 0.0 for n in names})
    for cand in sorted(candidates, key=lambda c: c[0]):
        b, rows, _ = cand
        if all(rows[s] <= (r // layout[s]["shard_rows"]) * layout[s]["shard_rows"] for s, r in bad.items()):
            chosen = cand
    b, rows, sum_sq = chosen
    history = [h for h in (point or {}).get("history", []) if h[0] <= b]
    kv.delete(COMPLETE)
    kv.write_json(
        PROGRESS_JSON,
        {
            "format": FORMAT,
            "batches_done": b,
            "history": history,
            "sites": {n: {"rows": rows[n], "sum_sq": sum_sq[n]} for n in names},
        },
    )
    for n in names:
        keep = -(-rows[n] // layout[n]["shard_rows"])  # shards below this hold durable rows
        for i in sorted(kv.shard_list(n)):
            if i >= keep:
                kv.delete(shard_key(n, i))
        kv.delete(f"{n}/{SITE_JSON}")
        _rewrite_zarr_json_if_unreadable(kv, n, layout[n], config)
    log(
        f"[repair] {root}: rolled back to batch {b} (rows {rows}); rerun the generate command that created "
        f"the store: it resumes at batch {b} and rewrites only what follows"
    )
    return b


def _rewrite_zarr_json_if_unreadable(kv: Root, site: str, lay: dict, config: dict) -> None:
    """A site's ``zarr.json`` is a pure function of ``store.json``: rewritten when it cannot be opened."""
    try:
        ts.open(kv.array_spec(site), open=True, context=CONTEXT).result()
        return
    except ValueError:
        pass
    meta = array_metadata(
        lay["d_in"],
        lay["chunk_rows"],
        lay["shard_rows"],
        int(config["capacity_rows"]),
        checksums=config.get("chunk_checksum") == "crc32c",
    )
    meta.update({"zarr_format": 3, "node_type": "array", "chunk_key_encoding": {"name": "default"}})
    kv.kv.write(f"{site}/zarr.json", json.dumps(meta).encode("utf-8")).result()
