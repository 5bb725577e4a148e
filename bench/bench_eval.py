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
    return {"W_enc": w_enc.astype(np.float32), "W_dec": w_dec.astype(np.float32),
            "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_in, np.float32),
            "threshold": thr.astype(np.float32)}


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
    from gemmascope.lm.model import forward, next_token_loss

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


def timed(lm, batches, saes, layer, site, cache) -> float:
    from gemmascope.eval.metrics import evaluate_saes

    evaluate_saes(lm.params, lm.lm_cfg, batches[:1], saes, layer, site, baseline_cache=None)  # compile
    t0 = time.time()
    r = evaluate_saes(lm.params, lm.lm_cfg, batches, saes, layer, site, baseline_cache=cache)
    return r[0]["n_tokens"] / (time.time() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from gemmascope import config as config_lib
    from gemmascope.data.activations import LMActivations

    c = config_lib.base_config()
    c.source, c.sites, c.layers = "store", ("res",), (args.layer,)
    c.lm.context_length, c.lm.batch_sequences = 128, 32
    lm = LMActivations(c, [(args.layer, "res")], log=lambda *_: None)
    batches = take_batches(lm, args.tokens + 4096)  # + the first batch, which compiles in seed_eval
    from gemmascope.lm.model import forward
    xs = np.asarray(forward(lm.params, jnp.asarray(batches[0][0]), lm.lm_cfg, capture=[(args.layer, "res")],
                            stop_after=args.layer).captures[(args.layer, "res")])[batches[0][1]]
    saes = [random_sae(jax.random.PRNGKey(i), lm.lm_cfg.d_model, args.width, xs) for i in range(4)]
    n_tok = sum(int(m.sum()) for _, m in batches[1:])
    print(f"{n_tok:,} tokens in {len(batches) - 1} batches of {c.lm.batch_sequences} x {c.lm.context_length}")

    seed = seed_eval(lm, batches, saes[0], args.layer, "res")
    print(f"seed (3 full forwards per batch): {seed:,.0f} tok/s")
    cache: dict = {}
    cold = timed(lm, batches[1:], saes[:1], args.layer, "res", cache)
    print(f"one SAE, cold: {cold:,.0f} tok/s")
    warm = timed(lm, batches[1:], saes[1:2], args.layer, "res", cache)
    print(f"one SAE, cached baselines: {warm:,.0f} tok/s")
    four = timed(lm, batches[1:], saes, args.layer, "res", {})
    print(f"4 SAEs in one pass, cold: {four:,.0f} tok/s per pass = {four * 4:,.0f} SAE-tok/s")

    def minutes(tps, per=1):
        return 100_000 * per / tps / 60

    rows = [f"| {machine()} | layer {args.layer} res, width {args.width}, {n_tok:,} tokens | "
            f"seed {seed:,.0f}; one cold {cold:,.0f}; one cached {warm:,.0f}; four-in-one {four * 4:,.0f} (SAE-tok/s) | "
            f"{minutes(seed):.1f} / {minutes(cold):.1f} / {minutes(warm):.1f} / {minutes(four, 1) / 4 * 1:.1f} per SAE | "
            f"**{cold / seed:.2f}x / {warm / seed:.2f}x / {four * 4 / seed:.2f}x** |"]
    if not args.no_write:
        append_rows("Evaluation speed (bench/bench_eval.py)",
                    "| machine | workload | tok/s | min per SAE for 100k tokens (seed / cold / cached / four-in-one) "
                    "| speed-up over seed (cold / cached / four-in-one) |\n|---|---|---|---|---|", rows)


if __name__ == "__main__":
    main()
