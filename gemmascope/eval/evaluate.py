"""Evaluate every exported SAE under ``workdir/saes`` on held-out text.

Writes ``eval.json`` (and ``fire_counts.npy``, each latent's firing count) beside each
``params.npz`` (skipping SAEs that already have one, so a stopped run continues where it was),
then ``workdir/eval/table.{csv,md}`` and the frontier plots ``workdir/eval/l0_vs_delta_loss.png``
and ``l0_vs_fvu.png`` (log-scaled L0, one series per architecture; transcoders are a series per
site, ``transcoder`` and ``transcoder_affine``: :func:`series_of`).

Transcoders (``metadata.json`` site ``transcoder``/``transcoder_affine``) are evaluated beside the
SAEs (:mod:`gemmascope.eval.metrics`: FVU of the MLP output, delta loss with the MLP output
replaced by the prediction from the real MLP input); plain and affine ones of a layer share one
pass. When a workdir holds transcoders, ``workdir/eval/transcoders_vs_saes.md`` and
``transcoders_vs_saes_layer_<L>.png`` compare, per layer, the plain and affine transcoders with
the SAEs on that layer's MLP output at matched L0: how much fidelity replacing the MLP's
computation costs against reconstructing its output.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from typing import Any

import numpy as np

from gemmascope.common import write_bytes_atomic, write_json_atomic
from gemmascope.data.activations import LMActivations
from gemmascope.eval.metrics import evaluate_saes, firing_histogram, read_write_sites
from gemmascope.progress import Progress
from gemmascope.sae.files import io as sae_io
from gemmascope.sites import PAIR_SITES, pair_of

# The L0s the frontier compares series at
MATCHED_L0S = (20.0, 40.0, 80.0, 160.0)
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
# Sparse probing's mean test accuracies (gemmascope.eval.probing, launch/evaluate.py --probing), SAEBench's
# names: k latents of the SAE, k dimensions of the raw activations ("llm") at its site; empty when not run
SPARSE_PROBING = (
    "sae_top_1_test_accuracy",
    "sae_top_5_test_accuracy",
    "llm_top_1_test_accuracy",
    "llm_top_5_test_accuracy",
)
COLUMNS = (
    (
        "architecture",
        "site",
        "layer",
        "d_sae",
        "sparsity_coefficient",
        "k",
        "target_l0",
        "l0",
        "fvu",
        "delta_loss",
        "ce_clean",
        "ce_sae",
        "ce_zero",
        "dead_fraction",
    )
    + SAEBENCH_CORE
    + SPARSE_PROBING
    + ("n_tokens", "path")
)


def find_saes(workdir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True))


def pass_site(site: str) -> str:
    """The site an SAE is evaluated under: itself, or for a transcoder the first paired-site name
    reading and writing the same sites (``transcoder_affine`` -> ``transcoder``), so plain and
    affine transcoders of a layer share one pass and one baseline cache."""
    pair = pair_of(site)
    if pair is None:
        return site
    return next(
        n for n, p in PAIR_SITES.items() if (p.input_site, p.output_site) == (pair.input_site, pair.output_site)
    )


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
        pending.setdefault((int(meta["layer"]), pass_site(meta["site"])), []).append((path, meta))
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
            lm = LMActivations(config, [(layer, read_write_sites(site)[0])], log=log)  # an LM site
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
                saes=saes,
                layer=layer,
                site=site,
                outlier_norm_factor=float(config.lm.outlier_norm_factor),
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
                _write_npy(os.path.join(os.path.dirname(path), "fire_counts.npy"), r["fire_counts"])
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
    row = {k: meta.get(k) for k in ("architecture", "site", "layer", "d_sae", "sparsity_coefficient", "k", "target_l0")}
    # The training variant (jumprelu_quadratic, matryoshka_batchtopk ...) is its own series in the
    # tables and frontier plots, not merged into its base architecture's.
    row["architecture"] = meta.get("variant") or meta.get("architecture")
    if pair_of(str(meta.get("site"))) is not None:  # a transcoder: where it reads and writes
        row.update({k: meta.get(k) for k in ("input_site", "output_site", "affine_skip")})
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


def _write_npy(path: str, array) -> None:
    """``np.save`` to ``path`` atomically (a full disk: DiskFullError naming it and its size)."""
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())


def _write_text(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def series_of(row: dict[str, Any]) -> str:
    """A row's series in the frontier plots and matched-L0 tables: its architecture for an SAE, its
    site for a transcoder (``transcoder``, ``transcoder_affine``: plain and affine apart)."""
    site = str(row.get("site"))
    return site if pair_of(site) is not None else str(row.get("architecture"))


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
    # every file written whole (temp file + rename, gemmascope/common.py): a full disk leaves the
    # previous file, never half of one, and raises DiskFullError naming it and its size
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    _write_text(os.path.join(out_dir, "table.csv"), buf.getvalue())
    lines = ["| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS[:-1]) + " |")
    _write_text(os.path.join(out_dir, "table.md"), "\n".join(lines) + "\n")
    _write_text(os.path.join(out_dir, "matched_l0.md"), matched_l0_report(rows))
    for ykey, ylabel, name in (
        ("delta_loss", "delta LM loss (nats)", "l0_vs_delta_loss.png"),
        ("fvu", "FVU", "l0_vs_fvu.png"),
    ):
        _frontier_plot([(rows, series_of, ykey, ylabel, None)], os.path.join(out_dir, name))
    by_layer = transcoder_comparisons(rows)
    if by_layer:
        parts = [
            "Transcoders (MLP input -> MLP output) against SAEs on the same layer's MLP output, at matched L0 "
            "(linear in log L0 between a series' two nearest points; n/a outside its range). FVU is of the MLP "
            "output for both; delta loss replaces the MLP output with the prediction (transcoder) or the "
            "reconstruction (SAE). Ratios are to the JumpReLU SAE on mlp (else to the plain transcoder); a "
            "second table gives the ratios to the plain transcoder (affine against plain).\n"
        ]
        for layer, (sub, series, ref) in by_layer.items():
            parts.append(
                f"\n## Layer {layer}\n\nRatios to {ref}:\n\n" + matched_l0_markdown(sub, ref=ref, series=series)
            )
            if ref != "transcoder" and any(series(r) == "transcoder" for r in sub):
                parts.append("\nRatios to transcoder:\n\n" + matched_l0_markdown(sub, ref="transcoder", series=series))
            _frontier_plot(
                [
                    (sub, series, k, label, f"layer {layer}")
                    for k, label in (("delta_loss", "delta LM loss (nats)"), ("fvu", "FVU of the MLP output"))
                ],
                os.path.join(out_dir, f"transcoders_vs_saes_layer_{layer}.png"),
            )
        _write_text(os.path.join(out_dir, "transcoders_vs_saes.md"), "".join(parts))


def transcoder_comparisons(rows: list[dict[str, Any]]) -> dict[int, tuple[list[dict[str, Any]], Any, str]]:
    """``{layer: (rows, series, ref)}`` for every layer holding transcoders: its transcoders and the
    SAEs on the site they write (the MLP output) at that layer; ``series`` labels a row
    (:func:`comparison_series`) and ``ref`` is the reference
    series for ratios (the JumpReLU SAE when present, else the plain transcoder, else the first)."""
    out = {}
    tcs = [r for r in rows if pair_of(str(r.get("site"))) is not None]
    for layer in sorted({int(r["layer"]) for r in tcs}):
        here = [r for r in tcs if int(r["layer"]) == layer]
        writes = {read_write_sites(str(r["site"]))[1] for r in here}
        saes = [r for r in rows if r.get("layer") is not None and int(r["layer"]) == layer and r.get("site") in writes]
        sub = here + saes
        names = [comparison_series(r) for r in sub]
        # the JumpReLU SAE (any training variant: jumprelu_quadratic_batch ...) on the written site
        ref = next(
            (
                n
                for w in sorted(writes)
                for n in sorted(set(names))
                if n.startswith("jumprelu") and n.endswith(f" SAE on {w}")
            ),
            None,
        )
        ref = ref or ("transcoder" if "transcoder" in names else sorted(names)[0])
        out[layer] = (sub, comparison_series, ref)
    return out


def comparison_series(row: dict[str, Any]) -> str:
    """A row's series in the transcoder comparison: its site for a transcoder, ``"<architecture>
    SAE on <site>"`` for an SAE."""
    if pair_of(str(row.get("site"))) is not None:
        return series_of(row)
    return f"{row.get('architecture')} SAE on {row.get('site')}"


def _frontier_plot(panels, path: str) -> None:
    """One figure, one panel per ``(rows, series, ykey, ylabel, title)``: ``ykey`` against
    log-scaled L0, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=110, squeeze=False)
    for ax, (rows, series, ykey, ylabel, title) in zip(axes[0], panels):
        for name in sorted({series(r) for r in rows}):
            pts = sorted((r["l0"], r[ykey]) for r in rows if series(r) == name and r["l0"] > 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        log_l0_axis(ax, ylabel)
        if title:
            ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def log_l0_axis(ax, ylabel: str) -> None:
    """A frontier axis: log-scaled L0 with plain numbers at powers of two (the log axis's default
    minor labels overlap), ``ylabel``, a light grid."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=2))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("L0 (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def matched_l0(
    rows: list[dict[str, Any]], l0s=(20.0, 40.0, 80.0), keys=("delta_loss", "fvu"), series=series_of
) -> dict[str, dict[float, dict[str, float | None]]]:
    """Each series' (:func:`series_of`: architecture, or transcoder site) metrics interpolated at
    common L0 values (linear in log L0 between its two nearest points; None outside its measured
    range, never extrapolated)."""
    out: dict[str, dict[float, dict[str, float | None]]] = {}
    for name in sorted({series(r) for r in rows}):
        pts = sorted(((r["l0"], r) for r in rows if series(r) == name and r["l0"] > 0), key=lambda p: p[0])
        xs = np.log([p[0] for p in pts])
        out[name] = {}
        for l0 in l0s:
            x = np.log(l0)
            if len(pts) < 2 or x < xs[0] or x > xs[-1]:
                out[name][l0] = {k: None for k in keys}
                continue
            out[name][l0] = {k: float(np.interp(x, xs, [p[1][k] for p in pts])) for k in keys}
    return out


def matched_l0_markdown(
    rows: list[dict[str, Any]], l0s=(20.0, 40.0, 80.0), ref: str = "jumprelu", series=series_of
) -> str:
    """A table of :func:`matched_l0` with each series' ratio to the series ``ref``."""
    m = matched_l0(rows, l0s, series=series)
    head = "| series | " + " | ".join(f"delta loss @ L0 {l0:g} | FVU @ L0 {l0:g}" for l0 in l0s) + " |"
    lines = [head, "|---|" + "---|---|" * len(l0s)]
    for name, by in m.items():
        cells = []
        for l0 in l0s:
            for k in ("delta_loss", "fvu"):
                v, r = by[l0][k], (m.get(ref) or {}).get(l0, {}).get(k)
                if v is None:
                    cells.append("n/a")
                elif name != ref and r:
                    cells.append(f"{v:.4g} ({v / r:.2f}x)")
                else:
                    cells.append(f"{v:.4g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matched_l0_report(rows: list[dict[str, Any]], l0s=MATCHED_L0S) -> str:
    """``matched_l0.md``: every series at matched L0 with its ratios to JumpReLU (the lambda
    sweep), then once more against each TopK-type series present (``topk``, ``batchtopk_centred``
    ...), the baselines the frontier is stated against."""
    head = "Metrics at matched L0 (linear in log L0 between each series' two nearest SAEs; n/a outside its range)\n\n"
    parts = [head + "Ratios to jumprelu:\n\n" + matched_l0_markdown(rows, l0s)]
    # series swept over k (TopK-type): their rows carry k (metadata.json's sweep key for a k axis)
    k_series = {series_of(r) for r in rows if r.get("k") not in (None, "") and r.get("k") == r.get("k")}
    for ref in sorted(k_series):
        parts.append(f"\nRatios to {ref}:\n\n" + matched_l0_markdown(rows, l0s, ref=ref))
    return "".join(parts)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
