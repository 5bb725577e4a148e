r"""Training-step throughput as a fraction of this machine's dense matmul FLOP/s.

    python bench/bench_sae_step.py                  # (576, 4096) and (2304, 16384), batch 4096
    python bench/bench_sae_step.py --shapes=576x4096 --batch=1024 --lambdas=4

A step costs about ``10 * batch * d_in * d_sae`` FLOPs (five matmuls of ``2 * batch * d_in *
d_sae``: encode, decode, and the three backward products; no gradient to x). The ratio divides
the step's FLOP/s (per SAE in the stack, times K) by the FLOP/s of one plain fp32 matmul
``[batch, d_in] @ [d_in, d_sae]`` measured in the same run, so machine load cancels as far as it
can. Appends a row to BENCHMARKS.md.
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
from gemmascope.train import step as step_lib  # noqa: E402


def best_time(fn, repeats: int) -> float:
    fn()  # compile / warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_flops(batch: int, d_in: int, d_sae: int, repeats: int) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (batch, d_in), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (d_in, d_sae), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    t = best_time(lambda: mm(a, b).block_until_ready(), repeats)
    return 2 * batch * d_in * d_sae / t


def step_flops(batch: int, d_in: int, d_sae: int, k: int, repeats: int) -> float:
    c = config_lib.base_config()
    c.batch_size = batch
    state = step_lib.init_state(jax.random.PRNGKey(0), c, d_in, d_sae, k, norm_scale=1.0)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=1000), donate_argnums=(0,))
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, d_in), jnp.float32)
    lam = jnp.full((k,), 1e-3, jnp.float32)
    holder = {"s": state}

    def run():
        holder["s"], m = fn(holder["s"], x, lam)
        jax.block_until_ready(m["loss"])

    t = best_time(run, repeats)
    return 10 * batch * d_in * d_sae * k / t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="576x4096,2304x16384")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lambdas", type=int, default=1, help="K SAEs stacked in the step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        d_in, d_sae = (int(v) for v in shape.split("x"))
        mm = matmul_flops(args.batch, d_in, d_sae, args.repeats)
        st = step_flops(args.batch, d_in, d_sae, args.lambdas, args.repeats)
        mm2 = matmul_flops(args.batch, d_in, d_sae, args.repeats)  # again: load drift shows as a spread
        ref = max(mm, mm2)
        ratio = st / ref
        print(f"d_in={d_in} d_sae={d_sae} batch={args.batch} K={args.lambdas}: step {st / 1e9:.1f} GFLOP/s, "
              f"matmul {mm / 1e9:.1f}/{mm2 / 1e9:.1f} GFLOP/s, ratio {ratio:.2f}")
        rows.append(f"| SAE train step, JumpReLU, d_in={d_in}, d_sae={d_sae}, batch={args.batch}, K={args.lambdas} "
                    f"| {machine()} | step {st / 1e9:.1f} GFLOP/s; matmul {ref / 1e9:.1f} GFLOP/s "
                    f"| **{ratio:.2f}** (goal >= 0.8 at d_in 2304) |")
    if not args.no_write:
        append_rows("SAE training step (bench/bench_sae_step.py)",
                    "| what | machine | measured | step FLOP/s / matmul FLOP/s |\n|---|---|---|---|", rows)


if __name__ == "__main__":
    main()
