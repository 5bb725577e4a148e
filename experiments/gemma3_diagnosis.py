r"""Diagnosis of spliced SAEs on a residual site: where the LM loss comes from (docs/gemma3.md).

    python experiments/gemma3_diagnosis.py --config=configs/gemma_demo.py \
        --saes=workdirs/g9/saes/res/layer_9/width_2k/*/average_l0_*/params.npz --out=docs/gemma3_probe

For each SAE: the delta LM loss and KL of the variants of :func:`gemmascope.eval.probe.variant_library`
(the SAE's error kept only in the massive dimensions, only outside them, the reconstruction
rescaled to the input's norm, random noise of the same size outside them), where the error sits,
how much each later layer's attention, MLP and residual change, and which later attention heads
the splice moves (total-variation distance of their patterns, and their attention on the BOS
sink, clean against spliced). Writes ``<out>/probe.json``, ``<out>/probe.md`` and three plots.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gemmascope import config as config_lib
from gemmascope.config import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config naming the LM and text.", lock_config=True)
_SAES = flags.DEFINE_list("saes", None, "params.npz files (globs allowed), all at one res site.")
_OUT = flags.DEFINE_string("out", None, "Folder for probe.json, probe.md and plots.")
_TOKENS = flags.DEFINE_integer("max_tokens", 4096, "Held-out tokens per SAE.")
_MASSIVE = flags.DEFINE_float("massive_factor", 10.0, "A dimension is massive above this x the median RMS.")
flags.mark_flags_as_required(["config", "saes", "out"])


def main(argv):
    del argv
    import jax.numpy as jnp

    from gemmascope.data.activations import LMActivations
    from gemmascope.eval import probe as probe_lib
    from gemmascope.lm.model import forward
    from gemmascope.sae.files import io as sae_io

    config = config_lib.prepare(_CONFIG.value)
    paths = sorted(p for pat in _SAES.value for p in glob.glob(pat))
    if not paths:
        raise app.UsageError(f"--saes matched no file: {_SAES.value}")
    metas = [sae_io.load_metadata(p) for p in paths]
    layers = {int(m["layer"]) for m in metas}
    if len(layers) != 1 or {m["site"] for m in metas} != {"res"}:
        raise app.UsageError(
            f"--saes must all be 'res' SAEs of one layer; got {[(m['site'], m['layer']) for m in metas]}"
        )
    layer = layers.pop()
    lm = LMActivations(config, [(layer, "res")])
    tokens, mask = next(iter(lm.packed_batches("heldout")))
    x = forward(lm.params, jnp.asarray(tokens), lm.lm_cfg, capture=[(layer, "res")], stop_after=layer).captures
    rows = np.asarray(x[(layer, "res")], np.float32)[np.asarray(mask)]
    dims = probe_lib.massive_dims(rows, _MASSIVE.value)
    print(f"[probe] massive dimensions of res layer {layer} (RMS > {_MASSIVE.value}x median): {dims.tolist()}")
    facts = _variance_facts(rows)
    print(f"[probe] {facts}")
    variants = probe_lib.variant_library(dims, rows.shape[-1])
    os.makedirs(_OUT.value, exist_ok=True)
    results = []
    for path, meta in zip(paths, metas):
        sae = sae_io.load_params(path)
        r = probe_lib.probe(
            lm.params,
            lm.lm_cfg,
            lm.packed_batches("heldout"),
            sae=sae,
            layer=layer,
            variants=variants,
            dims=dims,
            outlier_norm_factor=float(config.lm.outlier_norm_factor),
            max_tokens=_TOKENS.value,
        )
        r.update(path=path, l0=meta.get("l0"), variant=meta.get("variant", meta.get("architecture")))
        r["per_dim"] = _per_dim_fvu(sae, rows, dims)
        results.append(r)
        print(
            f"[probe] {path}: L0 {meta.get('l0')}: "
            + ", ".join(f"{k} {v['delta_loss']:.3f}" for k, v in r["variants"].items())
        )
    with open(os.path.join(_OUT.value, "probe.json"), "w") as fh:
        json.dump({"facts": facts, "saes": results}, fh, indent=1)
    _write_md(results, os.path.join(_OUT.value, "probe.md"), facts)
    _plots(results, _OUT.value, layer)


def _variance_facts(rows: np.ndarray) -> dict:
    """Where the variance of the rows ``[n, d]`` sits: the top dimensions' shares, how many
    dimensions reach 90%, and the share of the 10 rows farthest from the mean."""
    x = rows.astype(np.float64)
    var = x.var(axis=0)
    order = np.argsort(-var)
    dev = np.sum((x - x.mean(axis=0)) ** 2, axis=-1)
    return {
        "rows": int(len(x)),
        "top_dims": [int(d) for d in order[:5]],
        "top_dim_variance_share": [round(float(v), 4) for v in var[order[:5]] / var.sum()],
        "dims_for_90pct": int(np.searchsorted(np.cumsum(var[order]) / var.sum(), 0.9) + 1),
        "median_dim_std": float(np.median(np.sqrt(var))),
        "top_dim_mean_std": [float(x[:, order[0]].mean()), float(np.sqrt(var[order[0]]))],
        "top10_rows_variance_share": float(np.sort(dev)[-10:].sum() / dev.sum()),
    }


def _per_dim_fvu(sae, rows: np.ndarray, dims) -> dict:
    """Each dimension's own FVU (its squared error over its variance) on ``rows [n, d]``: the
    massive dimensions', the median dimension's, and how many dimensions have FVU over 0.5."""
    p = {k: np.asarray(v, np.float64) for k, v in sae.items()}
    x = rows.astype(np.float64)
    pre = x @ p["W_enc"] + p["b_enc"]
    x_hat = (pre * (pre > p["threshold"])) @ p["W_dec"] + p["b_dec"]
    f = ((x - x_hat) ** 2).mean(axis=0) / x.var(axis=0)
    return {
        "massive_dims_fvu": [round(float(f[d]), 4) for d in dims],
        "median_dim_fvu": float(np.median(f)),
        "dims_fvu_over_half": int(np.sum(f > 0.5)),
    }


def _write_md(results, path, facts):
    names = list(results[0]["variants"])
    lines = [
        "| SAE | L0 | variant | delta loss | KL | FVU | err in massive dims | err on top-1% rows |",
        "|---" * 8 + "|",
    ]
    for r in results:
        for n in names:
            v = r["variants"][n]
            lines.append(
                f"| {r['variant']} | {r['l0']:.1f} | {n} | {v['delta_loss']:.3f} | {v['kl']:.3f} | {v['fvu']:.3f} | "
                f"{v['err_share_massive_dims']:.3f} | {v['err_share_big_rows']:.3f} |"
            )
    lines.append(
        f"\nClean loss {results[0]['clean_loss']:.3f} on {results[0]['n_tokens']} targets; "
        f"massive dims {results[0]['massive_dims']}."
    )
    lines.append(
        "\n| SAE | L0 | FVU of the massive dims | median dimension's FVU | dims with FVU > 0.5 |\n|---|---|---|---|---|"
    )
    for r in results:
        d = r["per_dim"]
        lines.append(
            f"| {r['variant']} | {r['l0']:.1f} | {d['massive_dims_fvu']} | {d['median_dim_fvu']:.3f} | "
            f"{d['dims_fvu_over_half']} |"
        )
    lines.append(
        "\nLater attention heads, variant `sae` (mean over query rows): total-variation distance between "
        "the spliced and clean patterns; attention on the BOS sink clean -> spliced.\n"
    )
    layers = sorted(results[0]["variants"]["sae"]["attention"], key=int)
    lines.append("| SAE | L0 | " + " | ".join(f"layer {l}" for l in layers) + " |")
    lines.append("|---|---" + "|---" * len(layers) + "|")
    for r in results:
        att = r["variants"]["sae"]["attention"]
        cells = []
        for l in layers:
            a = att[l]
            cells.append(
                "<br>".join(
                    f"h{h}: TV {tv:.2f}, sink {c:.2f}->{sp:.2f}"
                    for h, (tv, c, sp) in enumerate(zip(a["tv"], a["sink_clean"], a["sink_spliced"]))
                )
            )
        lines.append(f"| {r['variant']} | {r['l0']:.1f} | " + " | ".join(cells) + " |")
    lines.append(f"\nRows of the first held-out batch: {facts}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def _plots(results, out, layer):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["variants"])
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.8 / len(results)
    for i, r in enumerate(results):
        ax.bar(
            np.arange(len(names)) + i * w,
            [r["variants"][n]["delta_loss"] for n in names],
            w,
            label=f"{r['variant']} L0 {r['l0']:.0f}",
        )
    ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names, rotation=20, fontsize=8)
    ax.set_ylabel("delta LM loss (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "variants_delta_loss.png"), dpi=120)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), sharey=True)
    r = results[len(results) // 2]
    for ax, site in zip(axes, ("att", "mlp", "res")):
        for n in names:
            ls = sorted((int(k.split("_")[0]), v) for k, v in r["variants"][n]["later"].items() if k.endswith(site))
            ax.semilogy([a for a, _ in ls], [b for _, b in ls], marker="o", label=n)
        ax.set_title(f"{site}: relative squared change")
        ax.set_xlabel(f"layer (SAE at {layer})")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "later_layers.png"), dpi=120)
    # which later heads move: TV distance per (layer, head), and the sink's share clean -> spliced
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for r in results:
        att = r["variants"]["sae"]["attention"]
        ls = sorted(att, key=int)
        n_heads = len(att[ls[0]]["tv"])
        xs = [int(l) + h / (n_heads + 1) for l in ls for h in range(n_heads)]
        label = f"{r['variant']} L0 {r['l0']:.0f}"
        axes[0].plot(xs, [att[l]["tv"][h] for l in ls for h in range(n_heads)], marker="o", ls="", label=label)
        axes[1].scatter(
            [att[l]["sink_clean"][h] for l in ls for h in range(n_heads)],
            [att[l]["sink_spliced"][h] for l in ls for h in range(n_heads)],
            label=label,
            s=14,
        )
    axes[0].set_xlabel(f"layer (heads side by side; SAE at {layer})")
    axes[0].set_ylabel("pattern TV distance, spliced vs clean")
    axes[1].plot([0, 1], [0, 1], color="grey", lw=0.8)
    axes[1].set_xlabel("attention on the BOS sink, clean")
    axes[1].set_ylabel("spliced")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "attention_heads.png"), dpi=120)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser())
