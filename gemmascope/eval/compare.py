"""Frontiers of several evaluated workdirs read together: seeds, budgets and peers side by side.

``launch/evaluate.py`` writes one ``eval/table.csv`` per workdir, and the run folders do not carry
the seed or the budget, so a second seed, a 4x run or SAELens's SAEs (``experiments/frontier_peers.py``,
``<workdir>/peers/eval/table.csv``) live in workdirs of their own. :func:`compare_tables` reads
several tables, each under a label, and writes

- ``compare.md``: every label at matched L0 (linear in log L0 between each run's two nearest SAEs,
  never extrapolated; the evaluator's :func:`~gemmascope.eval.evaluate.matched_l0`), as the
  **mean over the tables sharing that label** (seeds) with each table's own value beside it, and
  the ratio of each mean to the mean of a reference label;
- under it, for every series with two or more runs, the **standard error** of each mean and, against
  the reference, **Welch's t test** (two-sided; unequal variances, Welch-Satterthwaite degrees of
  freedom): whether a gap between two series is larger than their seed spread, the question a
  ratio of means alone cannot answer;
- ``l0_vs_delta_loss.png`` and ``l0_vs_fvu.png``: one curve per table (seeds of a label share a
  colour), so the spread between seeds is seen next to the gap between labels.

Why means of matched values rather than one pooled curve: two seeds' SAEs land at slightly
different L0s, and interpolating a zig-zag between them would mix the seed spread into the slope.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from gemmascope.eval.evaluate import MATCHED_L0S, log_l0_axis, matched_l0, series_of

_KEYS = ("delta_loss", "fvu", "dead_fraction")
_TESTED = ("delta_loss", "fvu")  # the keys compared with the reference by Welch's test
_NUMERIC = ("l0", "delta_loss", "fvu", "dead_fraction")


def read_table(path: str, label: str | None = None) -> list[dict[str, Any]]:
    """The rows of one ``eval/table.csv``, numeric columns as floats, each with ``series`` set to
    ``label`` (``"<label>: <series>"`` when the table holds several series; the table's own
    series, :func:`series_of`, without a label). Raises ``ValueError`` naming the file and the
    column when a needed column is missing or not a finite number, ``FileNotFoundError`` when absent."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such table (run launch/evaluate.py on its workdir first)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: the table has no rows")
    for col in _NUMERIC + ("architecture",):
        if col not in rows[0]:
            raise ValueError(f"{path}: column {col!r} missing (columns: {sorted(rows[0])})")
    out = []
    for i, r in enumerate(rows):
        row: dict[str, Any] = dict(r)
        for col in _NUMERIC:
            try:
                row[col] = float(r[col])
            except ValueError:
                row[col] = float("nan")
            if not np.isfinite(row[col]):  # a diverged or unfinished evaluation, not a frontier point
                raise ValueError(f"{path}: row {i + 2}, column {col!r} = {r[col]!r} is not a finite number")
        out.append(row)
    names = sorted({series_of(r) for r in out})
    for r in out:
        own = series_of(r)
        r["series"] = own if label is None else (label if len(names) == 1 else f"{label}: {own}")
    return out


def welch(a, b) -> dict[str, float] | None:
    """Welch's two-sample t test of mean(a) against mean(b), two-sided.

    ``t = (mean_a - mean_b) / sqrt(v_a + v_b)`` with ``v = s^2 / n`` (``s``: sample standard
    deviation, ddof 1), degrees of freedom ``(v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1))``
    (Welch-Satterthwaite), ``p = 2 * P(T_df > |t|)``. Returns ``{"t", "df", "p"}``, or None when
    either sample has fewer than two values or neither has any spread beyond float rounding
    (standard error under 1e-9 of the larger mean: t would be rounding noise over rounding noise)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if np.sqrt(va + vb) <= 1e-9 * max(abs(a.mean()), abs(b.mean()), np.finfo(float).tiny):
        return None
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return {"t": float(t), "df": float(df), "p": float(2 * stats.t.sf(abs(t), df))}


def compare_tables(
    tables: list[tuple[str, str | None]], out_dir: str, ref: str | None = None, l0s=MATCHED_L0S
) -> dict[str, dict[float, dict[str, Any]]]:
    """Reads each ``(path, label)`` (:func:`read_table`), writes ``out_dir/compare.md`` and the two
    plots (module doc) and returns ``{series: {l0: {key: mean or None, key + "_runs": [per table],
    key + "_se": standard error or None, "n": tables with a value}}}`` for ``key`` in delta_loss,
    fvu, dead_fraction. A series' mean at an L0 is None unless every table of that series covers it
    (a mean over fewer seeds would hide which one is missing); its standard error needs two runs.
    ``ref`` (a series name) adds ratios and, for delta_loss and fvu, ``key + "_welch"``:
    :func:`welch` of the series' runs against the reference's (None where undefined); it must be
    one of the series."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []  # (series, rows) per table and series
    for path, label in tables:
        rows = read_table(path, label)
        for name in sorted({r["series"] for r in rows}):
            runs.append((name, [r for r in rows if r["series"] == name]))
    names = list(dict.fromkeys(name for name, _ in runs))
    if ref is not None and ref not in names:
        raise ValueError(f"ref={ref!r} is none of the series read: {names}")
    result: dict[str, dict[float, dict[str, Any]]] = {}
    for name in names:
        per_run = [
            matched_l0(rows, l0s, keys=_KEYS, series=lambda r: r["series"])[name] for n, rows in runs if n == name
        ]
        result[name] = {}
        for l0 in l0s:
            cell: dict[str, Any] = {"n": sum(m[l0]["delta_loss"] is not None for m in per_run)}
            for k in _KEYS:
                vals = [m[l0][k] for m in per_run]
                cell[k + "_runs"] = vals
                full = all(v is not None for v in vals)
                cell[k] = float(np.mean(vals)) if full else None
                cell[k + "_se"] = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if full and len(vals) > 1 else None
            result[name][l0] = cell
    if ref is not None:
        for name in names:
            for l0 in l0s:
                for k in _TESTED:
                    mine, theirs = result[name][l0], result[ref][l0]
                    both = name != ref and mine[k] is not None and theirs[k] is not None
                    mine[k + "_welch"] = welch(mine[k + "_runs"], theirs[k + "_runs"]) if both else None
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "compare.md"), "w") as fh:
        fh.write(_markdown(result, tables, ref, l0s))
    _plots(runs, out_dir)
    return result


def _markdown(result, tables, ref, l0s) -> str:
    src = "\n".join(f"- `{path}`" + (f" as **{label}**" if label else "") for path, label in tables)
    lines = [
        "Matched L0 (linear in log L0 between each run's two nearest SAEs; n/a outside a run's range). "
        "Each cell: the mean over the runs (tables) of a series, each run's value in brackets"
        + (f", then the mean's ratio to **{ref}** (delta loss and FVU)" if ref else "")
        + ".\n\nTables:\n"
        + src
        + "\n",
    ]
    for key, title in (("delta_loss", "delta LM loss"), ("fvu", "FVU"), ("dead_fraction", "dead fraction")):
        lines.append(f"\n### {title}\n")
        lines.append("| series | runs | " + " | ".join(f"L0 {l0:g}" for l0 in l0s) + " |")
        lines.append("|---|---|" + "---|" * len(l0s))
        for name, by in result.items():
            cells = []
            for l0 in l0s:
                c = by[l0]
                if c[key] is None:
                    cells.append("n/a")
                    continue
                s = f"{c[key]:.4g}"
                if len(c[key + "_runs"]) > 1:
                    s += " (" + " / ".join(f"{v:.4g}" for v in c[key + "_runs"]) + ")"
                r = result[ref][l0][key] if ref else None
                if ref and name != ref and r and key != "dead_fraction":
                    s += f" **{c[key] / r:.2f}x**"
                cells.append(s)
            n_runs = len(next(iter(by.values()))[key + "_runs"])
            lines.append(f"| {name} | {n_runs} | " + " | ".join(cells) + " |")
    lines += _spread_markdown(result, ref, l0s)
    return "\n".join(lines) + "\n"


def _spread_markdown(result, ref, l0s) -> list[str]:
    """The seed-spread section: mean ± standard error per series with two or more runs and, where
    ``ref`` is given, Welch's t and p against it (:func:`welch`)."""
    multi = [name for name, by in result.items() if len(next(iter(by.values()))["delta_loss_runs"]) > 1]
    if not multi:
        return []
    lines = [
        "\n### Seed spread\n",
        "Mean ± standard error over the runs of each series with two or more"
        + (
            f"; then Welch's t test against **{ref}** (two-sided, unequal variances): t and p. "
            "A small p (say below 0.05) says the gap is larger than the seed spread explains."
            if ref
            else "."
        )
        + "\n",
    ]
    for key, title in (("delta_loss", "delta LM loss"), ("fvu", "FVU")):
        lines.append(f"\n#### {title}\n")
        lines.append("| series | " + " | ".join(f"L0 {l0:g}" for l0 in l0s) + " |")
        lines.append("|---|" + "---|" * len(l0s))
        for name in multi:
            cells = []
            for l0 in l0s:
                c = result[name][l0]
                if c[key + "_se"] is None:
                    cells.append("n/a")
                    continue
                s = f"{c[key]:.4g} ± {c[key + '_se']:.2g}"
                w = c.get(key + "_welch")
                if w is not None:
                    s += f" (t {w['t']:.2f}, p {w['p']:.2g})"
                cells.append(s)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plots(runs, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for name, _ in runs))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for ykey, ylabel, fname in (
        ("delta_loss", "delta LM loss (nats)", "l0_vs_delta_loss.png"),
        ("fvu", "FVU", "l0_vs_fvu.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        seen: set[str] = set()
        for name, rows in runs:
            pts = sorted((r["l0"], r[ykey]) for r in rows if r["l0"] > 0)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "o-",
                color=colours[name],
                alpha=0.85,
                label=None if name in seen else name,
            )
            seen.add(name)
        log_l0_axis(ax, ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname))
        plt.close(fig)
