r"""Sweep and width scaling of the sharded training step (the path ``train_location`` runs).

    python bench/bench_sweep.py                 # all three parts, rows appended to BENCHMARKS.md
    python bench/bench_sweep.py --parts=sweep --no-write

* ``sweep``: one step of a stacked sweep of K = 4 and K = 8 SAEs against K separate single-SAE
  steps on the same batch; the ratio is (sweep step time) / (K x single step time), the cost per
  token per SAE of the sweep relative to separate runs (below 1: the sweep is cheaper).
* ``width``: one SAE's step FLOP/s (``10 * B * d_in * d_sae``) over the FLOP/s of a plain fp32
  matmul ``[B, d_in] @ [d_in, d_sae]`` measured at the same shape in the same run, for widths
  4096 .. 65536 at d_in 576; also seconds per step per width unit (flat = cost linear in width).
* ``mesh``: the default 1x1 mesh through ``ShardedSweep.jit_step`` (shardings, ``put_batch``)
  against a plain ``jax.jit`` of the same step (the single-device path before sharding existed).

Times are the minimum over repeats, interleaving the compared variants so that machine load
drifts hit both; the machine's 1-minute load average is written into each row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import append_rows, machine  # noqa: E402
from gemmascope import config as config_lib  # noqa: E402
from gemmascope.train import sharding  # noqa: E402
from gemmascope.train import step as step_lib  # noqa: E402


def _config(batch: int, d_sae: int, k: int):
    c = config_lib.base_config()
    c.sites, c.widths, c.batch_size = ("toy",), (d_sae,), batch
    c.lambdas = tuple(float(v) for v in np.geomspace(1e-4, 1e-2, k))
    return config_lib.validate(c)


class Runner:
    """One compiled step on its own state; ``run()`` times one call (state donated and kept)."""

    def __init__(self, batch: int, d_in: int, d_sae: int, k: int, sharded: bool = True):
        c = _config(batch, d_sae, k)
        key = jax.random.PRNGKey(0)
        init = lambda: step_lib.init_state(key, c, d_in, d_sae=d_sae, n_saes=k, norm_scale=1.0)  # noqa: E731
        fn = step_lib.make_train_step(c, dead_window_steps=1000)
        x = np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32)
        if sharded:
            sw = sharding.ShardedSweep(c, sharding.make_mesh(c), jax.eval_shape(init), d_in, d_sae)
            self.state, self.fn = sw.init(init), sw.jit_step(fn)
            self.values, self.put = sw.put_values(c.lambdas), sw.put_batch
        else:
            self.state, self.fn = init(), jax.jit(fn, donate_argnums=(0,))
            self.values, self.put = jnp.asarray(c.lambdas, jnp.float32), jnp.asarray
        self.x = x
        self.run()  # compile

    def run(self) -> float:
        t = time.perf_counter()
        self.state, m = self.fn(self.state, self.put(self.x), self.values)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t


def interleaved_min(runners: dict, repeats: int) -> dict:
    best = {k: float("inf") for k in runners}
    for _ in range(repeats):
        for k, r in runners.items():
            best[k] = min(best[k], r())
    return best


def matmul_runner(batch: int, d_in: int, d_sae: int):
    a = jax.random.normal(jax.random.PRNGKey(0), (batch, d_in), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (d_in, d_sae), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()

    def run():
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        return time.perf_counter() - t

    return run


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def part_sweep(args) -> list[str]:
    rows = []
    single = Runner(args.batch, args.d_in, args.sweep_width, 1)
    for k in (4, 8):
        stacked = Runner(args.batch, args.d_in, args.sweep_width, k)
        t = interleaved_min({"single": single.run, "stacked": stacked.run}, args.repeats)
        ratio = t["stacked"] / (k * t["single"])
        print(f"sweep K={k}: stacked {t['stacked']:.3f} s vs {k} x single {t['single']:.3f} s -> ratio {ratio:.2f}")
        rows.append(
            f"| sweep of K={k} in one step vs {k} single-SAE steps | d_in={args.d_in}, d_sae={args.sweep_width}, "
            f"batch={args.batch}, mesh 1x1 | {machine()}, {load()} | stacked {t['stacked']:.3f} s; single "
            f"{t['single']:.3f} s | **{ratio:.2f}** (cost per token per SAE, sweep / separate) |"
        )
        del stacked
    return rows


def part_width(args) -> list[str]:
    rows, per_unit = [], []
    for w in args.widths:
        r = Runner(args.batch, args.d_in, w, 1)
        mm = matmul_runner(args.batch, args.d_in, w)
        t = interleaved_min({"step": r.run, "mm": mm}, args.repeats)
        step_fs = 10 * args.batch * args.d_in * w / t["step"]
        mm_fs = 2 * args.batch * args.d_in * w / t["mm"]
        per_unit.append(t["step"] / w)
        print(
            f"width {w}: step {t['step']:.3f} s ({step_fs / 1e9:.1f} GFLOP/s), matmul {mm_fs / 1e9:.1f} GFLOP/s, "
            f"ratio {step_fs / mm_fs:.2f}, {1e6 * t['step'] / w:.2f} us per latent"
        )
        rows.append(
            f"| step FLOP/s / matmul FLOP/s, K=1 | d_in={args.d_in}, d_sae={w}, batch={args.batch}, mesh 1x1 "
            f"| {machine()}, {load()} | step {t['step']:.3f} s = {step_fs / 1e9:.1f} GFLOP/s; matmul "
            f"{mm_fs / 1e9:.1f} GFLOP/s; {1e6 * t['step'] / w:.2f} us/latent (x{per_unit[-1] / per_unit[0]:.2f} "
            f"of width {args.widths[0]}) | **{step_fs / mm_fs:.2f}** |"
        )
        del r
    return rows


def part_mesh(args) -> list[str]:
    w = args.sweep_width
    sharded, plain = Runner(args.batch, args.d_in, w, 4), Runner(args.batch, args.d_in, w, 4, sharded=False)
    t = interleaved_min({"sharded": sharded.run, "plain": plain.run}, args.repeats)
    ratio = t["sharded"] / t["plain"]
    print(f"1x1 mesh: sharded path {t['sharded']:.3f} s vs plain jit {t['plain']:.3f} s -> {ratio:.2f}")
    return [
        f"| 1x1 mesh through ShardedSweep vs plain jax.jit (K=4) | d_in={args.d_in}, d_sae={w}, batch={args.batch} "
        f"| {machine()}, {load()} | sharded {t['sharded']:.3f} s; plain {t['plain']:.3f} s | **{ratio:.2f}** "
        f"(time ratio, 1.00 = same speed) |"
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="sweep,width,mesh")
    ap.add_argument("--d_in", type=int, default=576)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--sweep_width", type=int, default=4096)
    ap.add_argument("--widths", default="4096,8192,16384,32768,65536")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.widths = [int(v) for v in args.widths.split(",")]
    rows = []
    parts = args.parts.split(",")
    t0 = time.time()
    for name, fn in (("sweep", part_sweep), ("width", part_width), ("mesh", part_mesh)):
        if name in parts:
            rows += fn(args)
    print(f"total {time.time() - t0:.0f} s")
    if not args.no_write:
        append_rows(
            "Sweep and width scaling (bench/bench_sweep.py)",
            "| what | shapes | machine | measured | ratio |\n|---|---|---|---|---|",
            rows,
        )


if __name__ == "__main__":
    main()
