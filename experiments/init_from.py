r"""Fine-tuning a released SAE against training one from scratch (``config.init_from``, issue 34).

    python experiments/init_from.py --out=workdirs/init_from        # about 50 min wall on the shared 2-core CPU
    python experiments/init_from.py --out=/tmp/if --steps=16 --rows=20000 --eval_tokens=1024 --no-write  # smoke

On the embedded SmolLM2-135M at the demo's runlocal scale (width 1024, batch 1024, the demo's
target-L0 recipe: quadratic penalty, batch form, coefficient 1e-2, Adam b1 0.9, lr 1e-3):

1. activation stores of the residual stream at layer 15 and each target layer (``--rows``
   training rows each; 4,096 held-out rows);
2. the "released" SAEs: layer 15, from scratch, ``--steps`` steps, target L0s 20, 40, 80;
3. the baseline on each target layer (``--target_layers``, default 16 and 12): from scratch, the
   same recipe and targets, exported at 1/4 (layer 16 only), 1/2 and all of ``--steps``;
4. the fine-tunes on each target layer: one run per target, each starting from the layer-15 SAE of
   the same target (``init_from``; normalisation recomputed on the new layer, Adam fresh, warm-ups
   10 steps), exported at 1/16, 1/8, 1/4 and 1/2 of ``--steps``. The layer-15 files themselves,
   applied to the target layer, are the fine-tunes' 0-token point (the step-0 model equals the
   file: tests/test_init_from.py).

The stages of one run are one run stopped there: each stage reruns ``train_and_evaluate`` on the
same workdir with a larger ``num_tokens``; it resumes the previous stage's final checkpoint, and
with the learning rate constant after its warm-up the steps are those of a single run. Every SAE
is scored on its target layer by our evaluator (``gemmascope.eval.metrics.evaluate_saes``) on the
same ``--eval_tokens`` held-out tokens: L0, FVU, delta LM loss and the KL of the spliced
next-token distributions from the clean ones. At matched L0 (linear in log L0 between each
stage's SAEs, :func:`gemmascope.eval.evaluate.matched_l0`) the script finds the fewest fine-tune
tokens that reach the from-scratch SAEs' full-budget delta LM loss (linear in log tokens between
stages), prints the table docs/results.md quotes and writes ``docs/init_from.csv`` (every SAE). A
rerun skips what is done (stores, stages, evaluations).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from gemmascope.config.experiments import demo  # noqa: E402
from gemmascope.data import generate  # noqa: E402
from gemmascope.eval.evaluate import matched_l0  # noqa: E402
from gemmascope.sae.files import io as sae_io  # noqa: E402
from gemmascope.train import loop  # noqa: E402

SOURCE_LAYER = 15
FIRST_STORE = (15, 16)  # one store holds the source layer and its neighbour; other layers one each
TARGETS = (20.0, 40.0, 80.0)
MATCHED = (30.0, 40.0, 60.0)  # inside every stage's L0 range (targets 20 .. 80)
WIDTH = 1024


def store_path(out: str, layer: int) -> str:
    return os.path.join(out, "activations" if layer in FIRST_STORE else f"activations_l{layer}")


def config(out: str, layer: int, steps: int, rows: int, targets=TARGETS, init_from=(), warmup=None):
    """The demo's target-L0 recipe at runlocal width, on ``layer`` of its store."""
    c = demo.get_config()
    c.layers, c.widths, c.target_l0s = (layer,), (WIDTH,), tuple(targets)
    c.store.sites, c.store.path = ("res",), store_path(out, layer)
    c.store.max_tokens, c.store.heldout_rows = rows, 4096
    c.num_tokens = steps * c.batch_size
    c.norm_sample_rows, c.eval_rows = 8192, 4096
    c.lambda_warmup_steps = warmup[1] if warmup else 100
    c.lr_warmup_steps = warmup[0] if warmup else 50
    c.log_every, c.checkpoint_every, c.tensorboard = 50, 10**6, False  # each stage's end is saved
    c.init_from = tuple(init_from)
    return c


def staged(make, workdir: str, stages, log) -> dict[int, list[str]]:
    """``{steps: [params.npz, ...]}``: ``train_and_evaluate(make(steps), workdir)`` to each budget
    in turn, each stage's ``saes/`` moved to ``workdir/stages/<steps>`` (a rerun skips done ones)."""
    out = {}
    for steps in stages:
        dest = os.path.join(workdir, "stages", str(steps))
        if not os.path.isdir(dest):
            t0 = time.time()
            loop.train_and_evaluate(make(steps), workdir, log=log)
            os.makedirs(dest, exist_ok=True)
            shutil.move(os.path.join(workdir, "saes"), os.path.join(dest, "saes"))
            for marker in glob.glob(os.path.join(workdir, "runs", "*", "exported.json")):
                os.remove(marker)  # the next stage resumes this location's last checkpoint
            print(f"[stage] {workdir} {steps} steps in {time.time() - t0:.0f} s", flush=True)
        out[steps] = sorted(glob.glob(os.path.join(dest, "saes", "**", "params.npz"), recursive=True))
    return out


def evaluate(cfg, layer: int, items, eval_tokens: int, cache_path: str, log) -> list[dict]:
    """Each ``(row, params.npz)`` of ``items`` scored at ``layer``'s residual stream (an
    ``eval_l<layer>.json`` beside the file; done ones read back)."""
    from gemmascope.data.activations import LMActivations
    from gemmascope.eval.metrics import evaluate_saes

    todo = [(r, p) for r, p in items if not os.path.exists(_eval_path(p, layer))]
    if todo:
        lm = LMActivations(cfg, [(layer, "res")], log=log)
        cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
        base, clean = cache.setdefault(f"res_L{layer}", {}), cache.setdefault("clean", {})
        for i in range(0, len(todo), 4):
            chunk = todo[i : i + 4]
            t0 = time.time()
            res = evaluate_saes(
                lm.params,
                lm.lm_cfg,
                lm.packed_batches("heldout"),
                saes=[sae_io.load_params(p) for _, p in chunk],
                layer=layer,
                site="res",
                outlier_norm_factor=float(cfg.lm.outlier_norm_factor),
                max_tokens=eval_tokens,
                baseline_cache=base,
                clean_cache=clean,
            )
            json.dump(cache, open(cache_path, "w"))
            for (_, p), r in zip(chunk, res):
                keep = ("l0", "fvu", "delta_loss", "kl_div_with_sae", "ce_clean", "ce_sae", "n_tokens")
                json.dump({k: float(r[k]) for k in keep}, open(_eval_path(p, layer), "w"))
            print(f"[eval] layer {layer}: {i + len(chunk)}/{len(todo)} in {time.time() - t0:.0f} s", flush=True)
    return [{**r, **json.load(open(_eval_path(p, layer))), "path": os.path.relpath(p)} for r, p in items]


def _eval_path(params_path: str, layer: int) -> str:
    return os.path.join(os.path.dirname(params_path), f"eval_l{layer}.json")


def _target(path: str) -> float:
    return float(sae_io.load_metadata(path)["target_l0"])


def tokens_to_reach(stages: list[tuple[int, float | None]], goal: float) -> float | None:
    """The fewest tokens at which the delta losses ``[(tokens, value), ...]`` (ascending tokens)
    reach ``goal``: linear in log tokens between the two stages around the crossing (a stage's
    own tokens when it is the first or follows the 0-token point; None if none does)."""
    prev = None
    for t, v in stages:
        if v is None:
            continue
        if v <= goal:
            if prev is None or prev[0] <= 0:
                return float(t)
            v0, x0, x1 = prev[1], np.log(prev[0]), np.log(t)
            return float(np.exp(x0 + (v0 - goal) / (v0 - v) * (x1 - x0)))
        prev = (t, v)
    return None


def summary(rows: list[dict], batch: int, steps: int) -> str:
    """The markdown table of one target layer: per matched L0, the from-scratch SAEs' delta loss and
    KL at each stage, the fine-tunes' (0 tokens: the layer-15 files as they are), and the tokens
    the fine-tunes need to reach the from-scratch SAEs' full-budget delta loss."""
    by = {}
    for r in rows:
        by.setdefault((r["run"], r["tokens"]), []).append(r)
    keys = ("delta_loss", "kl_div_with_sae", "fvu")
    m = {k: matched_l0(v, MATCHED, keys=keys, series=lambda r: "x")["x"] for k, v in by.items()}
    runs = [(run, sorted(t for r_, t in m if r_ == run)) for run in ("scratch", "finetune")]
    lines = [
        "| matched L0 | "
        + " | ".join(f"{run}: {', '.join(f'{t / 1e3:.0f}k' for t in ts)} tokens" for run, ts in runs)
        + " | fine-tune tokens to reach scratch's |",
        "|---|---|---|---|",
    ]

    def cell(run, ts, l0, key):
        vals = [m[(run, t)][l0][key] for t in ts]
        return " / ".join("n/a" if v is None else f"{v:.3f}" for v in vals)

    full = m[("scratch", steps * batch)]
    for l0 in MATCHED:
        goal = full[l0]["delta_loss"]
        reach = tokens_to_reach([(t, m[("finetune", t)][l0]["delta_loss"]) for t in runs[1][1]], goal)
        verdict = "not reached" if reach is None else f"{reach / 1e3:.0f}k ({reach / (steps * batch):.2f}x)"
        both = [
            f"delta {cell(run, ts, l0, 'delta_loss')}; KL {cell(run, ts, l0, 'kl_div_with_sae')}" for run, ts in runs
        ]
        lines.append(f"| {l0:g} | {both[0]} | {both[1]} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=240, help="the from-scratch budget (and the released SAEs')")
    ap.add_argument("--rows", type=int, default=60_000, help="stored training rows per layer")
    ap.add_argument("--eval_tokens", type=int, default=2048)
    ap.add_argument("--target_layers", default="16,12")
    ap.add_argument("--no-write", dest="write", action="store_false", help="leave docs/ alone")
    a = ap.parse_args(argv)
    out, n, log = os.path.abspath(a.out), a.steps, print
    layers = [int(v) for v in a.target_layers.split(",")]
    for group in [FIRST_STORE] + [(l,) for l in layers if l not in FIRST_STORE]:
        gen = config(out, group[0], n, a.rows)
        gen.layers = group
        t0 = time.time()
        generate.generate(gen, out, log=log)
        print(f"[store] layers {group}: {time.time() - t0:.0f} s", flush=True)
    b = gen.batch_size
    released = staged(lambda s: config(out, SOURCE_LAYER, s, a.rows), os.path.join(out, "released"), [n], log)[n]
    by_target = {_target(p): os.path.dirname(p) for p in released}
    rows, tables = [], []
    for layer in layers:
        first = [n // 4] if layer == FIRST_STORE[1] else []
        scratch = staged(
            lambda s, l=layer: config(out, l, s, a.rows),
            os.path.join(out, f"scratch_l{layer}"),
            first + [n // 2, n],
            log,
        )
        fine = {}
        for t in TARGETS:
            make = lambda s, t=t, l=layer: config(  # noqa: E731
                out, l, s, a.rows, targets=(t,), init_from=(by_target[t],), warmup=(10, 10)
            )
            wd = os.path.join(out, f"finetune_l{layer}_l0_{t:g}")
            for s, paths in staged(make, wd, [n // 16, n // 8, n // 4, n // 2], log).items():
                fine.setdefault(s, []).extend(paths)
        items = [({"run": "finetune", "steps": 0}, p) for p in released]
        items += [({"run": "scratch", "steps": s}, p) for s, ps in scratch.items() for p in ps]
        items += [({"run": "finetune", "steps": s}, p) for s, ps in fine.items() for p in ps]
        items = [({**r, "tokens": r["steps"] * b, "layer": layer, "target_l0": _target(p)}, p) for r, p in items]
        ev = config(out, layer, n, a.rows)
        ev.lm.batch_sequences = 16  # 2,048-token batches: no LM pass over more text than --eval_tokens needs
        got = evaluate(ev, layer, items, a.eval_tokens, os.path.join(out, "eval_cache.json"), log)
        rows += got
        tables.append(f"Layer {SOURCE_LAYER} -> {layer}:\n\n" + summary(got, b, n))
    print("\n".join(tables))
    if a.write:
        cols = ("layer", "run", "steps", "tokens", "target_l0", "l0", "fvu", "delta_loss", "kl_div_with_sae")
        cols += ("ce_clean", "n_tokens")
        with open(os.path.join(REPO, "docs", "init_from.csv"), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in sorted(rows, key=lambda r: (-r["layer"], r["run"], r["tokens"], r["target_l0"])):
                w.writerow([round(r[c], 6) if isinstance(r[c], float) else r[c] for c in cols])


if __name__ == "__main__":
    main()
