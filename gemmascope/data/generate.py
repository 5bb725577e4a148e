"""Generate the activation store once: one LM pass writes every configured (layer, site).

Two stores under the root: ``train`` (the training split of the text, or its first
``store.max_tokens`` rows) and ``heldout`` (``store.heldout_rows`` rows of the held-out split, for
evaluation). Each is crash safe: a killed run, rerun with the same command, skips the batches it
already wrote and finishes with every row present exactly once (see
:class:`gemmascope.data.store.ActivationWriter`); a damaged store rolled back by
``launch/verify_store.py --repair`` is resumed the same way, rewriting only what follows the
damage. BOS, EOS and padding positions are never
stored. The norm distribution of what is stored (percentiles of ``||x||``) goes into each
site's metadata and is printed, since a few early positions can carry huge norms.

A transcoder pair in ``store.sites`` (``"transcoder"``) writes its two components (``mlp_in_L<L>``,
``mlp_L<L>``) as ordinary arrays, shared with SAEs on those sites, but with one joint outlier mask
and equal chunk rows, so row ``i`` of both is the same token; the store metadata lists them under
``paired_arrays`` (absent, and the store unchanged, when no pair is asked for).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from gemmascope import config as config_lib
from gemmascope import lease as lease_lib
from gemmascope.data import store as store_lib
from gemmascope.data.activations import LMActivations, location_key
from gemmascope.progress import Progress, fmt_time
from gemmascope.sites import component_sites, site_pairs


def store_root(config, workdir: str) -> str:
    return config.store.path or os.path.join(workdir, "activations")


def part_root(root: str, part: str) -> str:
    if "://" in root:
        return root.rstrip("/") + "/" + part
    return os.path.join(root, part)


def store_sites(config) -> list[tuple[int, str]]:
    """Every ``(layer, LM site)`` written: ``store.sites`` at every layer, pairs expanded."""
    return [(int(layer), site) for layer in config.layers for site in component_sites(config.store.sites)]


def store_pairs(config) -> list[tuple[int, str, str]]:
    """``(layer, input_site, output_site)`` of every transcoder pair in ``store.sites``."""
    return [(int(layer), a, b) for layer in config.layers for a, b in site_pairs(config.store.sites)]


def paired_arrays(lm: LMActivations) -> list[list[str]]:
    """``[[input key, output key], ...]``: the arrays written with a joint row mask."""
    return [[location_key(a, layer), location_key(b, layer)] for layer, a, b in lm.pairs]


def _chunk_rows(lm: LMActivations) -> dict[str, int] | None:
    """Equal chunk rows for the two arrays of each pair (so their readers shuffle alike); None
    (the writer's defaults) without pairs."""
    if not lm.pairs:
        return None
    out: dict[str, int] = {}
    for a, b in paired_arrays(lm):
        out[a] = out[b] = min(store_lib.default_chunk_rows(lm.dims[a]), store_lib.default_chunk_rows(lm.dims[b]))
    return out


def _metadata(config, lm: LMActivations, part: str) -> dict[str, Any]:
    return {
        "model": lm.model_name,
        "checkpoint": config.lm.checkpoint,
        "tokenizer": lm.tokenizer_name,
        "context_length": int(config.lm.context_length),
        "batch_sequences": int(config.lm.batch_sequences),
        "corpus": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.text.to_dict().items()},
        "split": part,
        "special_tokens_excluded": {"bos": lm.lm_cfg.bos_id, "eos": lm.lm_cfg.eos_id, "pad": lm.lm_cfg.pad_id},
        "lm_dtype": config.lm.dtype,
        **({"paired_arrays": paired_arrays(lm)} if lm.pairs else {}),
    }


def _norm_summary(norms: np.ndarray) -> dict[str, float]:
    if len(norms) == 0:
        return {}
    q = np.percentile(norms, [0, 1, 50, 99, 99.9, 100])
    return {
        "norm_min": float(q[0]),
        "norm_p1": float(q[1]),
        "norm_median": float(q[2]),
        "norm_p99": float(q[3]),
        "norm_p999": float(q[4]),
        "norm_max": float(q[5]),
        "norm_max_over_median": float(q[5] / max(q[2], 1e-12)),
    }


def write_part(config, lm: LMActivations, root: str, *, part: str, max_rows: int | None, log=print) -> dict:
    """Writes one split's store (resuming a killed run); returns its StoreInfo.sites."""
    path = part_root(root, part)
    writer = store_lib.ActivationWriter(
        path,
        lm.dims,
        _metadata(config, lm, part),
        rows_per_flush=int(config.store.rows_per_flush) or None,
        chunk_rows=_chunk_rows(lm),
    )
    if writer.complete:
        log(
            f"[generate:{part}] {path} is already complete; skipping (to check every chunk: "
            f"python launch/verify_store.py --store={path})"
        )
        return store_lib.open_store(path).sites
    start = writer.resume_from_batch
    if start:
        log(f"[generate:{part}] resuming {path} at batch {start}")
    norms: dict[str, list[np.ndarray]] = {k: [] for k in lm.dims}
    dropped: dict[str, dict] = {}
    rows_total, t0, done_tokens = 0, time.time(), 0
    target = max_rows or None
    bar = Progress(f"generate:{part}", target, "tok", log=log, lines_every=10)
    for i, (toks, mask) in enumerate(lm.packed_batches(part)):
        n = int(mask.sum())
        if target is not None and rows_total >= target:
            break
        rows_total += n
        if i < start:
            continue
        acts = lm.activations(toks, mask, dropped)
        for k, v in acts.items():
            norms[k].append(np.linalg.norm(v, axis=-1).astype(np.float32))
        writer.write_batch(i, acts)
        done_tokens += n
        dt = max(time.time() - t0, 1e-9)
        eta = f" ETA {fmt_time((target - rows_total) * dt / max(done_tokens, 1))}" if target else ""
        bar.report(
            rows_total, f"[generate:{part}] batch {i}: {rows_total:,} tokens ({done_tokens / dt:,.0f} tok/s){eta}"
        )
    bar.close()
    summaries = {k: _norm_summary(np.concatenate(v)) if v else {} for k, v in norms.items()}
    info = writer.finalize(
        {
            "norm_summary_this_run": summaries,
            "tokens_this_run": done_tokens,
            "outlier_norm_factor": float(config.lm.outlier_norm_factor),
            "norm_outliers_dropped_this_run": dropped,
            "resumed_from_batch": start,
        }
    )
    for k, meta in info.sites.items():
        s = summaries.get(k) or {}
        extra_txt = f" |x| median {s['norm_median']:.1f}, p99 {s['norm_p99']:.1f}, max {s['norm_max']:.1f}" if s else ""
        log(
            f"[generate:{part}] {k}: {meta['n_rows']:,} rows, d_in {meta['d_in']}, "
            f"C={meta['norm_scale']:.4g}{extra_txt}"
        )
        if k in dropped:
            d = dropped[k]
            top = sorted(d["dropped_at_position"].items(), key=lambda kv: -kv[1])[:3]
            log(
                f"[generate:{part}] {k}: dropped {d['dropped_rows']} rows with norm > "
                f"{config.lm.outlier_norm_factor:g}x the batch median (positions, count: {top})"
            )
        if s and s["norm_max_over_median"] > 50:
            log(f"[generate:{part}] warning: {k} has rows with norm {s['norm_max_over_median']:.0f}x the median")
    return info.sites


def generate(config, workdir: str, log=print, prepared: bool = False, force_unlock: bool = False) -> str:
    """Validates the config, takes the store's "generate" lease, then writes the held-out and train
    stores; returns the root.

    The lease (:mod:`gemmascope.lease`) is ``<root>/.lock-generate`` when the store is a local
    folder: two runs writing one store collide even from different workdirs (``config.store.path``).
    A store at a URL (``gs://``, ...) cannot hold a lock file, so the lease is the workdir's then.
    It is released at the end, also on error; ``force_unlock`` removes one left by a run known to
    be dead."""
    config = config if prepared else config_lib.prepare(config)
    if config.source == "toy":
        raise config_lib.ConfigError("config.source: the toy source needs no activation store")
    root = store_root(config, workdir)
    with lease_lib.acquire(workdir if "://" in root else root, "generate", force=force_unlock, log=log):
        lm = LMActivations(config, store_sites(config), log=log, pairs=store_pairs(config))
        write_part(config, lm, root, part="heldout", max_rows=int(config.store.heldout_rows), log=log)
        write_part(config, lm, root, part="train", max_rows=int(config.store.max_tokens) or None, log=log)
    log(f"[generate] activation store complete at {root}")
    return root
