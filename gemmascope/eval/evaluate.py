"""Evaluate every exported SAE under ``workdir/saes`` on held-out text.

Writes ``eval.json`` (and ``fire_counts.npy``, each latent's firing count) beside each
``params.npz`` (skipping SAEs that already have one, so a stopped run continues where it was),
then ``workdir/eval/table.{csv,md}`` and the frontier plots ``workdir/eval/l0_vs_delta_loss.png``
and ``l0_vs_fvu.png`` (log-scaled L0, one series per architecture).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any

import numpy as np

from gemmascope.common import write_json_atomic
from gemmascope.data.activations import LMActivations
from gemmascope.eval.metrics import evaluate_saes, firing_histogram
from gemmascope.progress import Progress
from gemmascope.sae import io as sae_io

# SAEBench's core metrics (gemmascope.eval.metrics module doc), in eval.json and the tables
SAEBENCH_CORE = (
    "ce_loss_score",
    "kl_div_with_sae",
    "explained_variance",
    "cossim",
    "l2_ratio",
    "relative_reconstruction_bias",
    "frac_alive",
    "freq_over_1_percent",
    "freq_over_10_percent",
)
COLUMNS = (
    (
        "architecture",
        "site",
        "layer",
        "d_sae",
        "sparsity_coefficient",
        "k",
        "l0",
        "fvu",
        "delta_loss",
        "ce_clean",
        "ce_sae",
        "ce_zero",
        "dead_fraction",
    )
    + SAEBENCH_CORE
    + ("n_tokens", "path")
)


def find_saes(workdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True))


def evaluate_workdir(config, workdir: str, max_tokens: int, log=print, saes_per_pass: int = 4) -> list[dict[str, Any]]:
    """Evaluates every SAE under ``workdir/saes`` that has no ``eval.json`` yet.

    SAEs at the same (layer, site) are evaluated ``saes_per_pass`` at a time in one pass over the
    held-out batches (the LM runs once up to the site); the clean and zero-ablation losses of
    each batch are cached in ``workdir/eval/baseline_cache.json`` and reused by later passes and
    later runs (the clean loss by every site: it does not depend on the site).
    """
    paths = find_saes(workdir)
    if not paths:
        raise FileNotFoundError(f"no SAEs under {os.path.join(workdir, 'saes')} (train first: launch/train.py)")
    rows, pending = {}, {}
    for path in paths:
        out = os.path.join(os.path.dirname(path), "eval.json")
        if os.path.exists(out):
            with open(out) as fh:
                rows[path] = json.load(fh)
            continue
        meta = sae_io.load_metadata(path)
        if "layer" not in meta or "site" not in meta:
            raise ValueError(f"{path}: metadata.json must give 'layer' and 'site' to evaluate it")
        pending.setdefault((int(meta["layer"]), meta["site"]), []).append((path, meta))
    log(
        f"[eval] {len(paths)} SAEs under {workdir}/saes: {len(rows)} already evaluated, "
        f"{sum(len(v) for v in pending.values())} to go"
    )
    cache_path = os.path.join(workdir, "eval", "baseline_cache.json")
    cache = _read_json(cache_path, {})
    lm = None
    done = len(rows)
    for (layer, site), items in sorted(pending.items()):
        if lm is None:
            lm = LMActivations(config, [(layer, site)], log=log)
        ckey = f"{lm.model_name}|layer={layer}|site={site}|outliers={float(config.lm.outlier_norm_factor)}"
        site_cache = cache.setdefault(ckey, {})
        clean_cache = cache.setdefault(f"{lm.model_name}|clean", {})
        for start in range(0, len(items), saes_per_pass):
            chunk = items[start : start + saes_per_pass]
            saes = [sae_io.load_params(path) for path, _ in chunk]
            label = f"[eval {done + 1}-{done + len(chunk)}/{len(paths)}] layer {layer} {site}"
            bar = Progress(label, max_tokens, "tok", log=log)  # a live bar on a terminal, else the lines
            results = evaluate_saes(
                lm.params,
                lm.lm_cfg,
                bar.iterate(lm.packed_batches("heldout"), _n_text),
                saes,
                layer,
                site,
                float(config.lm.outlier_norm_factor),
                max_tokens=max_tokens,
                log=bar.lines(lambda s, label=label: log(f"{label} {s}")),
                baseline_cache=site_cache,
                clean_cache=clean_cache,
            )
            bar.close()
            _write_json(cache_path, cache)
            for (path, meta), r in zip(chunk, results):
                row = _row(path, meta, r, lm.model_name)
                # per-latent firing counts beside eval.json: SAELens exports' sparsity.safetensors
                np.save(os.path.join(os.path.dirname(path), "fire_counts.npy"), r["fire_counts"])
                _write_json(os.path.join(os.path.dirname(path), "eval.json"), row)
                log(
                    f"{label} {os.path.relpath(path, workdir)}: L0 {r['l0']:.1f} FVU {r['fvu']:.4f} "
                    f"delta loss {r['delta_loss']:.4f} (clean {r['ce_clean']:.4f}, zero-ablation {r['ce_zero']:.4f})"
                )
                rows[path] = row
            done += len(chunk)
    rows = [rows[p] for p in paths]
    write_table_and_plots(rows, os.path.join(workdir, "eval"))
    return rows


def _n_text(batch) -> int:
    """Text tokens of a ``(tokens, mask)`` batch."""
    return int(np.sum(batch[1]))


def _row(path: str, meta: dict[str, Any], r: dict[str, Any], model_name: str) -> dict[str, Any]:
    counts, edges, dead = firing_histogram(r["fire_counts"], r["n_tokens"])
    row = {k: meta.get(k) for k in ("architecture", "site", "layer", "d_sae", "sparsity_coefficient", "k")}
    # The training variant (jumprelu_quadratic, matryoshka_batchtopk ...) is its own series in the
    # tables and frontier plots, not merged into its base architecture's.
    row["architecture"] = meta.get("variant") or meta.get("architecture")
    row.update(
        {
            k: r[k]
            for k in (
                "l0",
                "fvu",
                "delta_loss",
                "ce_clean",
                "ce_sae",
                "ce_zero",
                "dead_fraction",
                "n_tokens",
                "n_outliers_kept_clean",
                "tokens_per_second",
            )
        }
    )
    row.update({k: None if np.isnan(r[k]) else r[k] for k in SAEBENCH_CORE})  # NaN: undefined (JSON null)
    row.update(
        {
            "path": path,
            "model": model_name,
            "dead_window_tokens": r["n_tokens"],
            "err_by_position": [None if np.isnan(v) else float(v) for v in r["err_by_position"]],
            "firing_log10_histogram": {"counts": counts.tolist(), "edges": edges.tolist(), "never_fired": dead},
        }
    )
    return row


def _read_json(path: str, default):
    if not os.path.exists(path):
        return default
    with open(path) as fh:
        return json.load(fh)


_write_json = write_json_atomic  # gemmascope/common.py


def write_table_and_plots(rows: list[dict[str, Any]], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    rows = sorted(
        rows,
        key=lambda r: (
            str(r.get("architecture")),
            str(r.get("site")),
            r.get("layer") or 0,
            r.get("d_sae") or 0,
            r["l0"],
        ),
    )
    with open(os.path.join(out_dir, "table.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS[:-1]) + " |")
    with open(os.path.join(out_dir, "table.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "matched_l0.md"), "w") as fh:
        fh.write(
            "Metrics at matched L0 (linear in log L0 between each architecture's two nearest SAEs; "
            "n/a outside its range; ratios to JumpReLU)\n\n" + matched_l0_markdown(rows)
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for ykey, ylabel, name in (
        ("delta_loss", "delta LM loss (nats)", "l0_vs_delta_loss.png"),
        ("fvu", "FVU", "l0_vs_fvu.png"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
        for arch in sorted({str(r.get("architecture")) for r in rows}):
            pts = sorted((r["l0"], r[ykey]) for r in rows if str(r.get("architecture")) == arch and r["l0"] > 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=arch)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name))
        plt.close(fig)


def matched_l0(
    rows: list[dict[str, Any]], l0s=(20.0, 40.0, 80.0), keys=("delta_loss", "fvu")
) -> dict[str, dict[float, dict[str, float | None]]]:
    """Each architecture's metrics interpolated at common L0 values (linear in log L0 between its
    two nearest SAEs; None outside its measured range, never extrapolated)."""
    out: dict[str, dict[float, dict[str, float | None]]] = {}
    for arch in sorted({str(r.get("architecture")) for r in rows}):
        pts = sorted((r["l0"], r) for r in rows if str(r.get("architecture")) == arch and r["l0"] > 0)
        xs = np.log([p[0] for p in pts])
        out[arch] = {}
        for l0 in l0s:
            x = np.log(l0)
            if len(pts) < 2 or x < xs[0] or x > xs[-1]:
                out[arch][l0] = {k: None for k in keys}
                continue
            out[arch][l0] = {k: float(np.interp(x, xs, [p[1][k] for p in pts])) for k in keys}
    return out


def matched_l0_markdown(rows: list[dict[str, Any]], l0s=(20.0, 40.0, 80.0), ref: str = "jumprelu") -> str:
    """A table of :func:`matched_l0` with each architecture's ratio to ``ref``."""
    m = matched_l0(rows, l0s)
    head = "| architecture | " + " | ".join(f"delta loss @ L0 {l0:g} | FVU @ L0 {l0:g}" for l0 in l0s) + " |"
    lines = [head, "|---|" + "---|---|" * len(l0s)]
    for arch, by in m.items():
        cells = []
        for l0 in l0s:
            for k in ("delta_loss", "fvu"):
                v, r = by[l0][k], (m.get(ref) or {}).get(l0, {}).get(k)
                if v is None:
                    cells.append("n/a")
                elif arch != ref and r:
                    cells.append(f"{v:.4g} ({v / r:.2f}x)")
                else:
                    cells.append(f"{v:.4g}")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
