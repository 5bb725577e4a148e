r"""Does the trainer ever wait on data? Reader rows/s against the train step's consumption.

    python bench/bench_consumption.py            # the demo's shapes: d_in 576, width 4096, K=4, batch 1024

Measured in one run: (a) the compiled sweep step's tokens/s at the given shapes, (b) the
activation-store reader's rows/s (shuffled, prefetched) over a store of the same d_in written to
a temp folder. Goal: reader >= 2x consumption. Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import append_rows, machine  # noqa: E402
from gemmascope import config as config_lib  # noqa: E402
from gemmascope.data import store as store_lib  # noqa: E402
from gemmascope.train import step as step_lib  # noqa: E402


def step_tokens_per_s(d_in, width, k, batch, steps) -> float:
    c = config_lib.base_config()
    c.batch_size = batch
    state = step_lib.init_state(jax.random.PRNGKey(0), c, d_in, d_sae=width, n_saes=k, norm_scale=1.0)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=1000), donate_argnums=(0,))
    x = np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32)
    lam = jnp.full((k,), 1e-3)
    state, m = fn(state, x, lam)
    jax.block_until_ready(m["loss"])
    t = time.perf_counter()
    for _ in range(steps):
        state, m = fn(state, x, lam)
    jax.block_until_ready(m["loss"])
    return steps * batch / (time.perf_counter() - t)


def reader_rows_per_s(root, site, batch, n_batches) -> float:
    r = store_lib.ActivationReader(root, site, batch_size=batch, seed=0)
    next(r)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(r)
    dt = time.perf_counter() - t
    r.close()
    return n_batches * batch / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d_in", type=int, default=576)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "store")
        rng = np.random.default_rng(0)
        with store_lib.ActivationWriter(root, {"res_L0": args.d_in}, {"bench": True}) as w:
            for b in range(args.rows // 10_000):
                w.write_batch(b, {"res_L0": rng.standard_normal((10_000, args.d_in)).astype(np.float32)})
        consume = step_tokens_per_s(args.d_in, args.width, args.k, args.batch, args.steps)
        read = reader_rows_per_s(root, "res_L0", args.batch, n_batches=min(400, args.rows // args.batch * 2))
    ratio = read / consume
    print(f"trainer consumes {consume:,.0f} tok/s; reader delivers {read:,.0f} rows/s; ratio {ratio:.1f}")
    if not args.no_write:
        append_rows(
            "Activation store vs trainer consumption (bench/bench_consumption.py)",
            "| machine | shapes | trainer tok/s | reader rows/s | reader / trainer |\n|---|---|---|---|---|",
            [
                f"| {machine()} | d_in {args.d_in}, width {args.width}, K={args.k}, batch {args.batch} "
                f"| {consume:,.0f} | {read:,.0f} | **{ratio:.0f}x** (goal >= 2x) |"
            ],
        )


if __name__ == "__main__":
    main()
