"""A whole-model sweep from one LM pass against one run per layer, on the embedded Gemma 3 270M.

Same process, same config, same rows (the LM loaded once and shared, so its 30 s load counts in
neither); the times are whole ``train_and_evaluate`` calls (normalisation sample, compile, steps,
checkpoint, export with its held-out evaluation):

* ``all``: ``sites=("res_all",)`` over all 18 layers: one location, the LM run once per batch
  (:mod:`gemmascope.sae.layer_saes`);
* ``per_layer``: ``sites=("res",)`` over the same 18 layers: 18 locations one after another, each
  running the LM (up to its layer) for its own batches;
* ``lm``: the LM work of ``all`` alone (its source's sample, batches and held-out rows);
* ``saes``: ``all`` with its source replaced by a replay of the rows ``lm`` recorded, i.e. the SAE
  side alone (steps, compile, checkpoint, export).

The issue's goal: ``all <= 1.3 * (lm + saes)``, i.e. training every layer together costs little
beyond the LM forward and the SAE steps themselves. Writes a row to stdout and, with ``--write``,
to BENCHMARKS.md.

    python bench/bench_layer_sweep.py [--steps=8] [--width=256] [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gemmascope import config as config_lib  # noqa: E402
from gemmascope.config.files import load_config_file  # noqa: E402
from gemmascope.data import sources as sources_lib  # noqa: E402
from gemmascope.lm import loading as lm_loading  # noqa: E402
from gemmascope.train import loop  # noqa: E402

LAYERS = tuple(range(18))


def make_config(site: str, steps: int, width: int, batch: int):
    c = load_config_file("configs/gemma_demo.py")
    c.unlock()
    c.source, c.sites, c.layers, c.widths = "online", (site,), LAYERS, (width,)
    c.target_l0s = (20.0,)
    c.dim_scale_power, c.dim_std_cap = 0.0, 0.0  # cross-layer sites take per-layer constants only
    c.batch_size, c.num_tokens = batch, batch * steps
    c.norm_sample_rows, c.eval_rows = 1024, 512
    c.lm.batch_sequences, c.lm.context_length = 8, 128
    c.lr_warmup_steps, c.lambda_warmup_steps, c.log_every, c.checkpoint_every = 2, 2, steps, steps
    c.export.layouts = ("gemma_scope",)
    c.store.sites = ()
    return config_lib.prepare(c)


class Replay:
    """The rows a source gave, given again (the SAE side without the LM)."""

    def __init__(self, src, sample, batches, heldout):
        self.d_in, self.d_out, self.n_layers = src.d_in, src.d_out, src.n_layers
        self.model_name = src.model_name
        self._sample, self._batches, self._heldout, self._i = sample, batches, heldout, 0

    def __iter__(self):
        return self

    def __next__(self):
        self._i += 1
        return self._batches[self._i - 1]

    def get_state(self):
        return {"i": self._i}

    def set_state(self, state):
        self._i = int(state["i"])

    def sample(self, n):
        return self._sample[:n]

    def heldout(self, n):
        return self._heldout[:n]


def timed(config, workdir) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    t = time.perf_counter()
    loop.train_and_evaluate(config, workdir, log=lambda *a: None)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lm = lm_loading.load_lm("embedded:gemma3-270m")
    lm_loading.load_lm = lambda *a, **k: lm  # shared: the load counts in neither
    tmp = tempfile.mkdtemp(prefix="bench_layer_sweep_")
    c_all = make_config("res_all", args.steps, args.width, args.batch)
    c_one = make_config("res", args.steps, args.width, args.batch)

    t = time.perf_counter()  # the LM side of `all`: what its source computes
    src = sources_lib.make_source(c_all, tmp, "res_all", layer=LAYERS)
    sample = np.asarray(src.sample(c_all.norm_sample_rows))
    batches = [np.asarray(next(src)) for _ in range(args.steps)]
    heldout = np.asarray(src.heldout(c_all.eval_rows))
    t_lm = time.perf_counter() - t

    real = loop.make_source
    loop.make_source = lambda *a, **k: Replay(src, sample, batches, heldout)
    t_saes = timed(c_all, os.path.join(tmp, "saes"))
    loop.make_source = real
    t_all = timed(c_all, os.path.join(tmp, "all"))
    t_per = timed(c_one, os.path.join(tmp, "per_layer"))
    shutil.rmtree(tmp, ignore_errors=True)

    ratio_goal = t_all / (t_lm + t_saes)
    row = (
        f"| whole-model sweep, Gemma 3 270M `res` x 18 layers, width {args.width}, {args.steps} steps of "
        f"{args.batch} rows | one pass {t_all:.0f} s, one run per layer {t_per:.0f} s: **{t_per / t_all:.1f}x** "
        f"faster; LM side {t_lm:.0f} s + SAE side {t_saes:.0f} s: all = **{ratio_goal:.2f}x** their sum (goal <= 1.3x) |"
    )
    print(row)
    if args.write:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as fh:
            fh.write(row + "\n")


if __name__ == "__main__":
    main()
