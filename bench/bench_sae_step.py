r"""Training-step throughput as a fraction of this machine's dense matmul FLOP/s.

    python bench/bench_sae_step.py                  # (576, 4096) and (2304, 16384), batch 4096
    python bench/bench_sae_step.py --shapes=576x4096 --batch=1024 --lambdas=4
    python bench/bench_sae_step.py --sparse --shapes=576x16384,576x65536 --batch=1024 --l0s=32,64,128
    python bench/bench_sae_step.py --archs=topk,batchtopk,matryoshka_jumprelu,matryoshka_batchtopk \
        --shapes=576x4096 --batch=1024 --k=64           # step time of each against JumpReLU's

With ``--archs`` each architecture's step (K = 1) is timed in the same run as the JumpReLU step,
in interleaved rounds (each step once per round), best round each. ``--dead-fraction`` marks that fraction of latents dead before every step, so
TopK's and BatchTopK's AuxK term runs (it is skipped while no latent is dead). Matryoshka prefixes
are ``width/16, width/4, width``.

A step costs about ``10 * batch * d_in * d_sae`` FLOPs (five matmuls of ``2 * batch * d_in *
d_sae``: encode, decode, and the three backward products; no gradient to x). The ratio divides
the step's FLOP/s (per SAE in the stack, times K) by the FLOP/s of one plain fp32 matmul
``[batch, d_in] @ [d_in, d_sae]`` measured in the same run, so machine load cancels as far as it
can. Appends a row to BENCHMARKS.md.

With ``--sparse`` the JumpReLU step on the sparse path (:mod:`gemmascope.sae.sparse`, slots per
row ``--capacity-factor`` x L0) is timed against the dense step in the same run, interleaved
rounds, best each, at the threshold that gives each L0, with the compiled step's temporary
memory (XLA's ``memory_analysis``) of each.
"""

from __future__ import annotations

import argparse
import itertools
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
    state = step_lib.init_state(jax.random.PRNGKey(0), c, d_in, d_sae=d_sae, n_saes=k, norm_scale=1.0)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=1000), donate_argnums=(0,))
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, d_in), jnp.float32)
    lam = jnp.full((k,), 1e-3, jnp.float32)
    holder = {"s": state}

    def run():
        holder["s"], m = fn(holder["s"], x, lam)
        jax.block_until_ready(m["loss"])

    t = best_time(run, repeats)
    return 10 * batch * d_in * d_sae * k / t


def arch_step_runner(arch: str, batch: int, d_in: int, d_sae: int, k: int, dead_fraction: float = 0.0):
    """A compiled, warmed train step (K = 1) of ``arch`` (``matryoshka_<base>`` for Matryoshka):
    ``run()`` times one step and returns its wall seconds."""
    import numpy as np

    c = config_lib.base_config()
    c.batch_size, c.widths, c.sites = batch, (d_sae,), ("toy",)
    base = arch.removeprefix("matryoshka_")
    c.sae.arch, c.sae.topk_ks, c.sae.auxk_k, c.sae.auxk_dead_tokens = base, (k,), 256, batch
    if arch != base:
        c.sae.matryoshka_prefixes = (d_sae // 16, d_sae // 4, d_sae)
    config_lib.validate(c)
    state = step_lib.init_state(jax.random.PRNGKey(0), c, d_in, d_sae=d_sae, n_saes=1, norm_scale=1.0)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=1000), donate_argnums=(0,))
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, d_in), jnp.float32)
    lam = jnp.full((1,), 1e-3, jnp.float32)
    dead = np.zeros((1, d_sae), bool)
    dead[0, : int(dead_fraction * d_sae)] = True
    holder = {"s": state}

    def run():
        # Before every step: the dead latents last fired long ago, the others in the last step.
        last_fired = np.where(dead, -(10**6), int(holder["s"]["step"])).astype(np.int32)
        s = dict(holder["s"], last_fired=jax.block_until_ready(jnp.asarray(last_fired)))
        t = time.perf_counter()
        holder["s"], m = fn(s, x, lam)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t

    run()  # compile
    return run


def compare_archs(args) -> list[str]:
    """Every architecture's step against JumpReLU's: all compiled first, then ``repeats`` rounds
    that time each once in turn (so load drift hits all alike); the best of the rounds each."""
    rows = []
    for shape in args.shapes.split(","):
        d_in, d_sae = (int(v) for v in shape.split("x"))
        names = ["jumprelu"] + args.archs.split(",")
        runners = {
            a: arch_step_runner(a, args.batch, d_in, d_sae, args.k, 0.0 if a == "jumprelu" else args.dead_fraction)
            for a in names
        }
        times = {a: [] for a in names}
        for _ in range(args.repeats):
            for a in names:
                times[a].append(runners[a]())
        best = {a: min(v) for a, v in times.items()}
        ref = best["jumprelu"]
        ratios = {a: best[a] / ref for a in names[1:]}
        print(
            f"d_in={d_in} d_sae={d_sae} batch={args.batch} k={args.k} dead={args.dead_fraction} "
            f"rounds={args.repeats}: JumpReLU {ref:.3f} s; "
            + "; ".join(f"{a} {best[a]:.3f} s = {r:.2f}x" for a, r in ratios.items())
        )
        goals = {"topk": 1.5, "batchtopk": 1.5, "matryoshka_jumprelu": 1.3}
        cells = []
        for a, r in ratios.items():
            cell = f"{a} **{r:.2f}x**" + (f" (goal <= {goals[a]})" if a in goals else "")
            if a == "matryoshka_batchtopk" and "batchtopk" in ratios:
                cell += f" = {r / ratios['batchtopk']:.2f}x BatchTopK (goal <= 1.3)"
            cells.append(cell)
        auxk = f"AuxK on ({args.dead_fraction:.0%} dead)" if args.dead_fraction > 0 else "no dead latents"
        rows.append(
            f"| d_in={d_in}, d_sae={d_sae}, batch={args.batch}, k={args.k}, {auxk} | {machine()}, load {os.getloadavg()[0]:.1f} "
            f"| JumpReLU {ref:.3f} s (best of {args.repeats} interleaved rounds) | " + "; ".join(cells) + " |"
        )
    return rows


def sparse_runner(path: str, batch: int, d_in: int, d_sae: int, l0: int, capacity: int, arch: str = "jumprelu"):
    """A compiled, warmed train step (K = 1) of ``arch`` on ``path`` ("dense" / "sparse") on a fixed
    normalised Gaussian batch: JumpReLU with the threshold that gives L0 ``l0``, TopK with k =
    ``l0``. Returns ``(run, temp_bytes)``; ``run()`` times one step (seconds, and the step's L0
    and whether it fell back to the dense step)."""
    c = config_lib.base_config()
    c.batch_size, c.widths, c.sites = batch, (d_sae,), ("toy",)
    c.lambdas = (1e-3,)
    c.sae.arch, c.sae.topk_ks = arch, (l0,)
    c.sae.sparse_path, c.sae.sparse_capacity = path, capacity
    # Every pre-activation is x . w_j with unit w_j and x ~ N(0, I / d_in): N(0, 1 / d_in); one
    # threshold at its 1 - l0 / d_sae quantile gives L0 = l0 on average (rows vary with |x|).
    c.sae.threshold_init = float(jax.scipy.special.ndtri(1.0 - l0 / d_sae)) / d_in**0.5
    config_lib.validate(c)
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, d_in), jnp.float32) / d_in**0.5
    state = step_lib.init_state(jax.random.PRNGKey(0), c, d_in, d_sae=d_sae, n_saes=1, norm_scale=1.0)
    lam = jnp.full((1,), 1e-3, jnp.float32)
    fn = jax.jit(step_lib.make_train_step(c, dead_window_steps=1000), donate_argnums=(0,))
    compiled = fn.lower(state, x, lam).compile()
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0) if mem is not None else 0
    holder = {"s": state}

    def run():
        t = time.perf_counter()
        holder["s"], m = compiled(holder["s"], x, lam)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t, float(m["l0"][0]), float(m.get("sparse_fallback", jnp.zeros(1))[0])

    run()
    return run, temp


def saelens_step_seconds(batch: int, d_in: int, d_sae: int, l0: int, steps: int = 2) -> float:
    """Seconds per step of SAELens's JumpReLU training step (``jumprelu_step``, Gemma Scope units,
    its ``SAETrainer`` on CPU torch with this machine's threads) on the same kind of batch, threshold
    at L0 ``l0``: the difference of two ``fit`` s (1 and 1 + ``steps`` steps) over ``steps``, so the
    trainer's setup cancels. Reuses ``experiments/frontier_peers.py``'s SAELens setup."""
    import numpy as np
    import scipy.special
    import torch

    from experiments.frontier_peers import sae_lens_config, train_one

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = sae_lens_config("jumprelu_step", "gemma_scope", 1e-3, d_in, d_sae, 1.0, 1e-3)
    cfg.jumprelu_init_threshold = float(scipy.special.ndtri(1.0 - l0 / d_sae)) / d_in**0.5
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (batch, d_in), jnp.float32)) / d_in**0.5
    batches = itertools.repeat(x)
    t1 = train_one(cfg, "gemma_scope", 1.0, batches, 1, batch, 7e-5)[1]
    tn = train_one(cfg, "gemma_scope", 1.0, batches, 1 + steps, batch, 7e-5)[1]
    return (tn - t1) / steps


def compare_sparse(args) -> list[str]:
    """Dense against sparse steps at each shape and L0, interleaved rounds, best each."""
    rows = []
    for shape in args.shapes.split(","):
        d_in, d_sae = (int(v) for v in shape.split("x"))
        for l0 in (int(v) for v in args.l0s.split(",")):
            cap = args.capacity_factor * l0 if args.sparse_arch == "jumprelu" else l0
            runners = {
                p: sparse_runner(p, args.batch, d_in, d_sae, l0, cap, args.sparse_arch) for p in ("dense", "sparse")
            }
            times = {p: [] for p in runners}
            stats = {}
            for _ in range(args.repeats):
                for p, (run, _) in runners.items():
                    t, got_l0, fb = run()
                    times[p].append(t)
                    stats[p] = (got_l0, fb)
            mm = matmul_flops(args.batch, d_in, d_sae, 2)
            best = {p: min(v) for p, v in times.items()}
            flop = 10 * args.batch * d_in * d_sae
            speed = best["dense"] / best["sparse"]
            peer = saelens_step_seconds(args.batch, d_in, d_sae, l0) if args.saelens else None
            mem = {p: runners[p][1] for p in runners}
            mem_ratio = mem["sparse"] / mem["dense"] if mem["dense"] else float("nan")
            print(
                f"d_in={d_in} d_sae={d_sae} batch={args.batch} L0={l0} (measured {stats['sparse'][0]:.1f}) "
                f"cap={cap}: dense {best['dense']:.3f} s, sparse {best['sparse']:.3f} s = {speed:.2f}x; "
                f"fallback {stats['sparse'][1]:.0f}; temp {mem['dense'] / 2**20:.0f} / {mem['sparse'] / 2**20:.0f} MiB; "
                f"dense FLOP/s / matmul {flop / best['dense'] / mm:.2f}"
                + ("" if peer is None else f"; SAELens {peer:.3f} s/step"),
                flush=True,
            )
            rows.append(
                f"| {args.sparse_arch}, d_in={d_in}, d_sae={d_sae}, batch={args.batch}, L0 {stats['sparse'][0]:.0f}, "
                f"slots {cap}, fallback {stats['sparse'][1]:.0f} "
                f"| {machine()}, load {os.getloadavg()[0]:.1f} "
                f"| dense {args.batch / best['dense']:,.0f} tok/s ({flop / best['dense'] / mm:.2f} of matmul); "
                f"sparse {args.batch / best['sparse']:,.0f} tok/s ({flop / best['sparse'] / mm:.2f} dense-equivalent) "
                f"| **{speed:.2f}x**"
                + (
                    ""
                    if peer is None
                    else f"; SAELens 6.54.12 {args.batch / peer:,.0f} tok/s: sparse **{peer / best['sparse']:.2f}x**, "
                    f"dense {peer / best['dense']:.2f}x SAELens's"
                )
                + f" | temp {mem['dense'] / 2**20:,.0f} / {mem['sparse'] / 2**20:,.0f} MiB "
                f"= **{mem_ratio:.2f}** |"
            )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="576x4096,2304x16384")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lambdas", type=int, default=1, help="K SAEs stacked in the step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--archs",
        default="",
        help="compare these architectures' steps with JumpReLU's "
        "(topk, batchtopk, matryoshka_jumprelu, matryoshka_batchtopk, relu, gated)",
    )
    ap.add_argument("--k", type=int, default=64, help="k of TopK / BatchTopK with --archs")
    ap.add_argument("--dead-fraction", type=float, default=0.0, help="latents dead before each step (AuxK on)")
    ap.add_argument("--sparse", action="store_true", help="dense against sparse JumpReLU steps (--l0s)")
    ap.add_argument("--l0s", default="32,64,128", help="L0s of --sparse")
    ap.add_argument("--capacity-factor", type=int, default=4, help="--sparse: JumpReLU's slots per row = this x L0")
    ap.add_argument("--saelens", action="store_true", help="--sparse: also SAELens's JumpReLU step, same run")
    ap.add_argument("--sparse-arch", default="jumprelu", help="--sparse: jumprelu, or topk (k = L0; no fallback)")
    args = ap.parse_args()
    if args.sparse:
        rows = compare_sparse(args)
        if not args.no_write:
            append_rows(
                "Sparse against dense train step (bench/bench_sae_step.py --sparse)",
                "| shape | machine | tokens/s (step FLOP/s over the matmul rate) | sparse speed-up, same run "
                "| compiled temp memory dense / sparse |\n|---|---|---|---|---|",
                rows,
            )
        return
    if args.archs:
        rows = compare_archs(args)
        if not args.no_write:
            append_rows(
                "Recipe architectures: train step time against JumpReLU's (bench/bench_sae_step.py --archs)",
                "| shape | machine | JumpReLU step | each architecture's step / JumpReLU's, same run |\n"
                "|---|---|---|---|",
                rows,
            )
        return
    rows = []
    for shape in args.shapes.split(","):
        d_in, d_sae = (int(v) for v in shape.split("x"))
        mm = matmul_flops(args.batch, d_in, d_sae, args.repeats)
        st = step_flops(args.batch, d_in, d_sae, args.lambdas, args.repeats)
        mm2 = matmul_flops(args.batch, d_in, d_sae, args.repeats)  # again: load drift shows as a spread
        ref = max(mm, mm2)
        ratio = st / ref
        print(
            f"d_in={d_in} d_sae={d_sae} batch={args.batch} K={args.lambdas}: step {st / 1e9:.1f} GFLOP/s, "
            f"matmul {mm / 1e9:.1f}/{mm2 / 1e9:.1f} GFLOP/s, ratio {ratio:.2f}"
        )
        rows.append(
            f"| SAE train step, JumpReLU, d_in={d_in}, d_sae={d_sae}, batch={args.batch}, K={args.lambdas} "
            f"| {machine()} | step {st / 1e9:.1f} GFLOP/s; matmul {ref / 1e9:.1f} GFLOP/s "
            f"| **{ratio:.2f}** (goal >= 0.8 at d_in 2304) |"
        )
    if not args.no_write:
        append_rows(
            "SAE training step (bench/bench_sae_step.py)",
            "| what | machine | measured | step FLOP/s / matmul FLOP/s |\n|---|---|---|---|",
            rows,
        )


if __name__ == "__main__":
    main()
