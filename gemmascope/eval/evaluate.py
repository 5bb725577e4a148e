"""Evaluate every exported SAE under ``workdir/saes`` on held-out text.

Writes ``eval.json`` beside each ``params.npz`` (skipping SAEs that already have one, so a
stopped run continues where it was), then ``workdir/eval/table.{csv,md}`` and the frontier plots
``workdir/eval/l0_vs_delta_loss.png`` and ``l0_vs_fvu.png`` (log-scaled L0, one series per
architecture).
"""
from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any

import numpy as np

from gemmascope.data.activations import LMActivations
from gemmascope.eval.metrics import evaluate_sae, firing_histogram
from gemmascope.sae import io as sae_io

COLUMNS = ("architecture", "site", "layer", "d_sae", "sparsity_coefficient", "l0", "fvu", "delta_loss", "ce_clean",
           "ce_sae", "ce_zero", "dead_fraction", "n_tokens", "path")


def find_saes(workdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True))


def evaluate_workdir(config, workdir: str, max_tokens: int, log=print) -> list[dict[str, Any]]:
    paths = find_saes(workdir)
    if not paths:
        raise FileNotFoundError(f"no SAEs under {os.path.join(workdir, 'saes')} (train first: launch/train.py)")
    rows, lm = [], None
    for i, path in enumerate(paths):
        out = os.path.join(os.path.dirname(path), "eval.json")
        meta = sae_io.load_metadata(path)
        if os.path.exists(out):
            with open(out) as fh:
                rows.append(json.load(fh))
            log(f"[eval {i + 1}/{len(paths)}] {path}: already evaluated")
            continue
        if "layer" not in meta or "site" not in meta:
            raise ValueError(f"{path}: metadata.json must give 'layer' and 'site' to evaluate it")
        if lm is None:
            lm = LMActivations(config, [(int(meta["layer"]), meta["site"])], log=log)
        sae = sae_io.load_params(path)
        r = evaluate_sae(lm.params, lm.lm_cfg, lm.packed_batches("heldout"), sae, int(meta["layer"]), meta["site"],
                         float(config.lm.outlier_norm_factor), max_tokens=max_tokens,
                         log=lambda s, i=i: log(f"[eval {i + 1}/{len(paths)}] {s}"))
        counts, edges, dead = firing_histogram(r["fire_counts"], r["n_tokens"])
        row = {k: meta.get(k) for k in ("architecture", "site", "layer", "d_sae", "sparsity_coefficient")}
        row.update({k: r[k] for k in ("l0", "fvu", "delta_loss", "ce_clean", "ce_sae", "ce_zero", "dead_fraction",
                                      "n_tokens", "n_outliers_kept_clean")})
        row.update({"path": path, "model": lm.model_name, "dead_window_tokens": r["n_tokens"],
                    "err_by_position": [None if np.isnan(v) else float(v) for v in r["err_by_position"]],
                    "firing_log10_histogram": {"counts": counts.tolist(), "edges": edges.tolist(), "never_fired": dead}})
        tmp = out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(row, fh, indent=2)
        os.replace(tmp, out)
        log(f"[eval {i + 1}/{len(paths)}] L0 {r['l0']:.1f} FVU {r['fvu']:.4f} delta loss {r['delta_loss']:.4f} "
            f"(clean {r['ce_clean']:.4f}, zero-ablation {r['ce_zero']:.4f})")
        rows.append(row)
    write_table_and_plots(rows, os.path.join(workdir, "eval"))
    return rows


def write_table_and_plots(rows: list[dict[str, Any]], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    rows = sorted(rows, key=lambda r: (str(r.get("architecture")), str(r.get("site")), r.get("layer") or 0,
                                       r.get("d_sae") or 0, r["l0"]))
    with open(os.path.join(out_dir, "table.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS[:-1]) + " |")
    with open(os.path.join(out_dir, "table.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for ykey, ylabel, name in (("delta_loss", "delta LM loss (nats)", "l0_vs_delta_loss.png"),
                               ("fvu", "FVU", "l0_vs_fvu.png")):
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


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
