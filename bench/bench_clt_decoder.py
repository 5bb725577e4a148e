r"""The cross-layer transcoder's decoder, forward and backward: the causal blocks only
(:func:`gemmascope.sae.clt.causal_decode`, what the CLT trains with) against the masked full
product (``einsum`` of the codes with ``W_dec`` times the causal mask, what it replaced), timed
in the same run.

    python bench/bench_clt_decoder.py                     # L 18, d_sae 512, d_out 640 (Gemma 3 270M), batch 512
    python bench/bench_clt_decoder.py --layers=26 --width=256 --d_out=1152 --rounds=5

For ``L`` layers the masked product multiplies ``L^2`` blocks of ``[d_sae, d_out]`` per row where
the causal ones are ``L (L + 1) / 2``: the FLOP ratio is ``(L + 1) / (2 L)`` (0.53 at 18 layers).
Both are compiled as ``value_and_grad`` of a squared error with respect to the decoder and the
codes, then timed once per round in interleaved rounds (best round each), and their outputs and
gradients compared. Appends a row to BENCHMARKS.md.
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
from gemmascope.sae.clt import causal_decode, causal_mask  # noqa: E402

SECTION = "CLT decoder: causal blocks against the masked product (bench/bench_clt_decoder.py)"
HEAD = (
    "| shape | machine | masked (s) | causal (s) | speed-up, same run | FLOP ratio | max rel diff (loss, grad W_dec, grad f) |\n"
    "|---|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--width", type=int, default=512, help="d_sae per layer")
    ap.add_argument("--d_out", type=int, default=640)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no_write", action="store_true")
    args = ap.parse_args()
    L, s, d, B = args.layers, args.width, args.d_out, args.batch
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    w = jax.random.normal(k[0], (L, s, L, d)) * 0.01
    f = jax.nn.relu(jax.random.normal(k[1], (B, L, s)))
    y = jax.random.normal(k[2], (B, L, d))
    decoders = {
        "masked": lambda f, w: jnp.einsum("bls,lsmo->bmo", f, w * causal_mask(L)),
        "causal": causal_decode,
    }
    fns, out, best = {}, {}, {}
    for name, dec in decoders.items():
        fns[name] = jax.jit(jax.value_and_grad(lambda f, w, dec=dec: jnp.sum((dec(f, w) - y) ** 2), argnums=(0, 1)))
        out[name] = jax.block_until_ready(fns[name](f, w))  # compile, and the values compared below
        best[name] = np.inf
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(f, w))
            best[name] = min(best[name], time.perf_counter() - t)

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))

    (lm, (gfm, gwm)), (lc, (gfc, gwc)) = out["masked"], out["causal"]
    diffs = f"{rel(lm, lc):.1e}, {rel(gwm, gwc):.1e}, {rel(gfm, gfc):.1e}"
    flops = (L + 1) / (2 * L)
    speed = best["masked"] / best["causal"]
    print(f"masked {best['masked']:.3f}s causal {best['causal']:.3f}s: {speed:.2f}x (FLOP ratio {flops:.2f}); {diffs}")
    if not args.no_write:
        shape = f"L={L}, d_sae={s}, d_out={d}, batch={B}, {args.rounds} rounds"
        row = (
            f"| {shape} | {machine()} | {best['masked']:.3f} | {best['causal']:.3f} | **{speed:.2f}x** | "
            f"{flops:.2f} | {diffs} |"
        )
        append_rows(SECTION, HEAD, [row])


if __name__ == "__main__":
    main()
