"""Training curves as PNG from ``metrics.jsonl``, for those without TensorBoard.

:func:`plot_metrics` draws one figure per location (``<out_dir>/<location>.png``, default
``out_dir = <workdir>/curves``): a panel per metric (loss, L0, FVU, dead fraction, threshold
mean, sparsity coefficient or k, learning rate; the ones the rows carry), one line per SAE of the sweep against
the training step. A resumed run logs some steps twice (those after its last checkpoint); the
last row of a step wins, as it is the one the resumed state continued from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from gemmascope.train.writers import iter_metrics, run_name

PANELS = (
    ("loss", "loss", True),
    ("l0", "L0", True),
    ("fvu", "FVU (training batch)", False),
    ("dead_fraction", "dead fraction", False),
    ("threshold_mean", "threshold mean", True),
    ("sparsity_coefficient", "sparsity coefficient (warm-up; k for TopK)", False),
    ("lr", "learning rate", False),
)


def series(rows: Iterable[dict[str, Any]]) -> dict[str, dict[int, dict[int, dict[str, Any]]]]:
    """``{location: {sae: {step: row}}}``, the last row of a repeated step kept."""
    out: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for r in rows:
        out.setdefault(r["location"], {}).setdefault(int(r["sae"]), {})[int(r["step"])] = r
    return out


def sweep_labels(saes: dict[int, dict[int, dict[str, Any]]]) -> dict[int, str]:
    """``{sae: "sae0_lambda0.001"}`` (``sae0_k32``, ``sae0_target40``) from the rows' own
    ``sweep_kind`` and ``sweep_value``."""
    out = {}
    for i, by_step in saes.items():
        row = next(iter(by_step.values()))
        if "sweep_kind" in row:
            out[i] = run_name(i, row["sweep_value"], row["sweep_kind"])
    return out


def plot_metrics(workdir: str, out_dir: str | None = None, dpi: int = 90) -> list[str]:
    """Writes one PNG per location from ``<workdir>/metrics.jsonl``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no metrics (train into this workdir first: launch/train.py)")
    out_dir = out_dir or os.path.join(workdir, "curves")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for location, saes in sorted(series(iter_metrics(workdir)).items()):
        first = next(iter(next(iter(saes.values())).values()))
        panels = [p for p in PANELS if p[0] in first]
        labels = sweep_labels(saes)
        cols = min(4, len(panels))
        nrows = -(-len(panels) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows), squeeze=False)
        for ax, (key, title, log) in zip(axes.flat, panels):
            for i, by_step in sorted(saes.items()):
                steps = sorted(by_step)
                ax.plot(steps, [by_step[s][key] for s in steps], label=labels.get(i, f"sae{i}"))
            if log and all(v > 0 for by_step in saes.values() for v in (r[key] for r in by_step.values())):
                ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6)
        fig.suptitle(location, fontsize=10)
        fig.tight_layout()
        png = os.path.join(out_dir, f"{location}.png")
        fig.savefig(png, dpi=dpi)
        plt.close(fig)
        written.append(png)
    return written
