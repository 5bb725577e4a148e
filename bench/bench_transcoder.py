r"""Transcoder train step against the SAE train step of the same width, timed in the same run.

    python bench/bench_transcoder.py                       # d_model 576 (SmolLM2), width 4096, batch 1024
    python bench/bench_transcoder.py --shapes=576x4096,2304x16384 --batch=4096 --rounds=6

A JumpReLU SAE step on ``x [B, d]`` and a JumpReLU transcoder step on ``concat(x_in, y) [B, 2d]``
(``d_out = d``) cost the same five ``2 B d W`` matmuls (encode, decode, three backward products);
the transcoder has no pre-encoder bias, and its batch is twice as wide (the target half is only
read by the loss). The affine transcoder adds ``x_in @ W_skip`` and its gradient, two ``2 B d^2``
matmuls: ``4 d / (10 W)`` more FLOPs (5.6% at d = 576, W = 4096). Each step (K = 1) is compiled
first, then timed once per round in interleaved rounds (so load drift hits all alike), best round
each; the ratios to the SAE step are the result. Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.report import append_rows, machine  # noqa: E402
from gemmascope import config as config_lib  # noqa: E402
from gemmascope.sae import archs  # noqa: E402
from gemmascope.sites import pair_of
from gemmascope.train import step as step_lib  # noqa: E402


def step_runner(site: str, batch: int, d: int, width: int):
    """A compiled, warmed train step (K = 1) at ``site`` ("res": the SAE; "transcoder",
    "transcoder_affine"): ``run()`` times one step and returns its wall seconds."""
    c = config_lib.base_config()
    c.batch_size, c.widths, c.lambdas = batch, (width,), (1e-3,)
    pair = pair_of(site)
    arch = archs.for_site(c, site, d if pair else None)
    scale = (1.0, 1.0) if pair else 1.0
    state = step_lib.init_state(jax.random.PRNGKey(0), c, d, d_sae=width, n_saes=1, norm_scale=scale, arch=arch)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=1000, arch=arch), donate_argnums=(0,))
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, 2 * d if pair else d), jnp.float32)
    lam = jnp.full((1,), 1e-3, jnp.float32)
    holder = {"s": state}

    def run():
        t = time.perf_counter()
        holder["s"], m = fn(holder["s"], x, lam)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t

    run()  # compile
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="576x4096", help="d_model x width, comma separated")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        d, width = (int(v) for v in shape.split("x"))
        names = ("res", "transcoder", "transcoder_affine")
        runners = {n: step_runner(n, args.batch, d, width) for n in names}
        times = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                times[n].append(runners[n]())
        best = {n: min(v) for n, v in times.items()}
        r_plain, r_affine = best["transcoder"] / best["res"], best["transcoder_affine"] / best["res"]
        flops_affine = 1 + 4 * d / (10 * width)
        print(
            f"d={d} width={width} batch={args.batch} rounds={args.rounds}: SAE {best['res']:.3f} s; "
            f"transcoder {best['transcoder']:.3f} s = {r_plain:.2f}x; affine {best['transcoder_affine']:.3f} s = "
            f"{r_affine:.2f}x (FLOPs {flops_affine:.3f}x)"
        )
        rows.append(
            f"| d_in=d_out={d}, width={width}, batch={args.batch}, K=1 | {machine()}, load {os.getloadavg()[0]:.1f} "
            f"| SAE {best['res']:.3f} s (best of {args.rounds} interleaved rounds) "
            f"| transcoder **{r_plain:.2f}x** (FLOPs 1.00x); affine **{r_affine:.2f}x** (FLOPs {flops_affine:.3f}x) |"
        )
    if not args.no_write:
        append_rows(
            "Transcoder train step against the SAE step of the same width (bench/bench_transcoder.py)",
            "| shape | machine | SAE step | transcoder step / SAE step, same run |\n|---|---|---|---|",
            rows,
        )


if __name__ == "__main__":
    main()
