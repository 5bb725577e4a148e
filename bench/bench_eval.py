r"""Evaluation speed: a 4096-wide SAE on 100k tokens of the embedded SmolLM2 (issue goal: < 5 min
on 2 cores), and what evaluating several SAEs of a site together saves.

    python bench/bench_eval.py                          # layer 15 res, width 4096, 100k tokens
    python bench/bench_eval.py --tokens=20000 --no-write

Workloads, each timed to ``--tokens`` real-text tokens of the embedded corpus (the training
split: the held-out split is only ~30k tokens; speed does not depend on which text):

* ``one SAE, cold``: clean, zero-ablation and SAE runs (the first SAE evaluated at a site).
* ``one SAE, cached baselines``: the clean and zero-ablation losses come from the cache written
  by the cold pass, so only the SAE run is left (every later SAE at the site).
* ``4 SAEs in one pass, cold``: per-SAE time when a sweep's SAEs share one pass.
* ``seed``: the three-full-forwards-per-batch evaluation this replaced, timed on the same text
  (one full LM run each for clean, SAE and zero ablation).

Each workload is also given as a fraction of the machine's matmul rate: its matmul FLOPs per
token (LM layers, attention, unembedding, SAE encode/decode) times its tokens/s, over a plain
``[4096, d] x [d, d_mlp]`` matmul's FLOP/s measured in the same run. 1.0 would be the FLOP
floor: an evaluation goes faster than that only by doing less arithmetic. It is the
machine-independent part of the result (the 2-core machines here differ by 2x in matmul rate).

The SAE is a JumpReLU of the demo's shape with random weights (unit-norm decoder rows, thresholds
set so L0 is about 60): the time does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import append_rows, machine  # noqa: E402


def random_sae(key, d_in: int, d_sae: int, x: np.ndarray, target_l0: float = 60.0) -> dict[str, np.ndarray]:
    w_dec = np.array(jax.random.normal(key, (d_sae, d_in)), np.float64)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    w_enc = w_dec.T.copy()
    pre = x @ w_enc
    thr = np.quantile(pre, 1.0 - target_l0 / d_sae, axis=0).clip(1e-3)
    return {
        "W_enc": w_enc.astype(np.float32),
        "W_dec": w_dec.astype(np.float32),
        "b_enc": np.zeros(d_sae, np.float32),
        "b_dec": np.zeros(d_in, np.float32),
        "threshold": thr.astype(np.float32),
    }


def take_batches(lm, n_tokens: int) -> list:
    out, n = [], 0
    for tokens, mask in lm.packed_batches("train"):
        out.append((tokens, mask))
        n += int(mask.sum())
        if n >= n_tokens:
            break
    return out


def seed_eval(lm, batches, sae, layer: int, site: str) -> float:
    """The replaced evaluation: clean, spliced and zeroed runs of the whole LM per batch."""
    from gemmascope.eval.metrics import reconstruct
    from gemmascope.lm.loss import next_token_loss
    from gemmascope.lm.model import forward

    key = (layer, site)

    @functools.partial(jax.jit, static_argnames=("cfg",))
    def step(params, sae, tokens, mask, cfg):
        clean = forward(params, tokens, cfg, capture=[key])
        spliced = forward(params, tokens, cfg, splice={key: lambda a: reconstruct(sae, a)[0]})
        zeroed = forward(params, tokens, cfg, splice={key: jnp.zeros_like})
        return sum(jnp.sum(next_token_loss(o.logits, tokens, mask)[1]) for o in (clean, spliced, zeroed))

    sae = {k: jnp.asarray(v) for k, v in sae.items()}
    t0, n = None, 0
    for i, (tokens, mask) in enumerate(batches):
        float(step(lm.params, sae, jnp.asarray(tokens), jnp.asarray(mask), lm.lm_cfg))
        if i == 0:
            t0 = time.time()  # the first batch compiles
        else:
            n += int(mask.sum())
    return n / (time.time() - t0)


def layer_flops(cfg, T: int) -> float:
    """Matmul FLOPs per token of one decoder block (projections, MLP, causal attention at length T)."""
    d, H, K, D, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_mlp
    return 2.0 * (d * (H + 2 * K) * D + H * D * d + 3 * d * F) + 2.0 * 2 * H * D * (T + 1) / 2


def eval_flops(cfg, T: int, layer: int, width: int, n_saes: int, baselines: int) -> float:
    """FLOPs per token of one pass: the prefix through ``layer`` once, then ``baselines + n_saes``
    suffix runs (layers after ``layer`` and the unembedding), and each SAE's encode and decode."""
    suffix = (cfg.n_layers - layer - 1) * layer_flops(cfg, T) + 2.0 * cfg.d_model * cfg.vocab_size
    return (layer + 1) * layer_flops(cfg, T) + (baselines + n_saes) * suffix + n_saes * 4.0 * cfg.d_model * width


def matmul_rate(d: int, f: int) -> float:
    a, b = jnp.ones((4096, d)), jnp.ones((d, f))
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    ts = []
    for _ in range(10):
        t = time.time()
        mm(a, b).block_until_ready()
        ts.append(time.time() - t)
    return 2.0 * 4096 * d * f / min(ts)


def timed(lm, batches, saes, layer, site, cache) -> float:
    from gemmascope.eval.metrics import evaluate_saes

    # Compile the variant the timed pass runs (with or without the baseline runs) on a copy of the cache.
    evaluate_saes(lm.params, lm.lm_cfg, batches[:1], saes=saes, layer=layer, site=site, baseline_cache=dict(cache))
    t0 = time.time()
    r = evaluate_saes(lm.params, lm.lm_cfg, batches, saes=saes, layer=layer, site=site, baseline_cache=cache)
    return r[0]["n_tokens"] / (time.time() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--workloads", default="seed,cold,cached,four", help="comma-separated subset of seed, cold, cached, four"
    )
    args = ap.parse_args()
    work = set(args.workloads.split(","))
    if not work <= {"seed", "cold", "cached", "four"}:
        ap.error(
            f"--workloads: unknown {sorted(work - {'seed', 'cold', 'cached', 'four'})} "
            "(known: seed, cold, cached, four)"
        )

    from gemmascope import config as config_lib
    from gemmascope.data.activations import LMActivations

    c = config_lib.base_config()
    c.source, c.sites, c.layers = "store", ("res",), (args.layer,)
    c.lm.context_length, c.lm.batch_sequences = 128, 32
    lm = LMActivations(c, [(args.layer, "res")], log=lambda *_: None)
    batches = take_batches(lm, args.tokens + 4096)  # + the first batch, which compiles in seed_eval
    from gemmascope.lm.model import forward

    xs = np.asarray(
        forward(
            lm.params, jnp.asarray(batches[0][0]), lm.lm_cfg, capture=[(args.layer, "res")], stop_after=args.layer
        ).captures[(args.layer, "res")]
    )[batches[0][1]]
    saes = [random_sae(jax.random.PRNGKey(i), lm.lm_cfg.d_model, args.width, xs) for i in range(4)]
    n_tok = sum(int(m.sum()) for _, m in batches[1:])
    print(f"{n_tok:,} tokens in {len(batches) - 1} batches of {c.lm.batch_sequences} x {c.lm.context_length}")

    cfg, T = lm.lm_cfg, c.lm.context_length
    rate = matmul_rate(cfg.d_model, cfg.d_mlp)
    print(f"matmul [4096, {cfg.d_model}] x [{cfg.d_model}, {cfg.d_mlp}]: {rate / 1e9:,.0f} GFLOP/s")
    full = cfg.n_layers * layer_flops(cfg, T) + 2.0 * cfg.d_model * cfg.vocab_size
    floors = {
        "seed": 3 * full + 4.0 * cfg.d_model * args.width,
        "cold": eval_flops(cfg, T, args.layer, args.width, 1, 2),
        "cached": eval_flops(cfg, T, args.layer, args.width, 1, 0),
        "four": eval_flops(cfg, T, args.layer, args.width, 4, 2) / 4,
    }
    got, cache = {}, {}
    if "seed" in work:
        got["seed"] = seed_eval(lm, batches, saes[0], args.layer, "res")
    if "cold" in work or "cached" in work:
        got["cold"] = timed(lm, batches[1:], saes[:1], args.layer, "res", cache)
    if "cached" in work:
        got["cached"] = timed(lm, batches[1:], saes[1:2], args.layer, "res", cache)
    if "four" in work:
        got["four"] = 4 * timed(lm, batches[1:], saes, args.layer, "res", {})  # SAE-tokens/s
    names = {
        "seed": "seed (3 full forwards)",
        "cold": "one SAE, cold",
        "cached": "one SAE, cached baselines",
        "four": "4 SAEs in one pass, cold, per SAE",
    }
    cells = []
    for k, tps in got.items():
        minutes = 100_000 / tps / 60
        frac = tps * floors[k] / rate  # achieved FLOP/s over the matmul rate (1.0 = the FLOP floor)
        print(
            f"{names[k]}: {tps:,.0f} tok/s = {minutes:.1f} min per 100k tokens; {frac:.2f} of the matmul rate "
            f"({floors[k] / 1e6:,.0f} MFLOP/token)"
        )
        cells.append((names[k], f"{tps:,.0f}", f"{minutes:.1f}", f"{minutes * frac:.1f}", f"{frac:.2f}"))

    rows = [
        f"| {machine()}; matmul {rate / 1e9:,.0f} GFLOP/s | layer {args.layer} res, width {args.width}, {n_tok:,} tokens "
        f"| {name} | {tps} | {mins} | {fm} | **{fr}** |"
        for name, tps, mins, fm, fr in cells
    ]
    if not args.no_write:
        append_rows(
            "Evaluation speed against the FLOP floor (bench/bench_eval.py)",
            "| machine | workload | evaluation | tok/s | min per SAE for 100k tokens "
            "| floor: min at the matmul rate | FLOP/s / matmul FLOP/s |\n|---|---|---|---|---|---|---|",
            rows,
        )


if __name__ == "__main__":
    main()
