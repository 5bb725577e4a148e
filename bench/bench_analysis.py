"""Benchmark of the logit-lens analysis and token set enrichment; appends rows to BENCHMARKS.md.

    /tmp/venv/bin/python bench/bench_analysis.py                       # 16k x 576 SAE, 49,152 vocab
    /tmp/venv/bin/python bench/bench_analysis.py --d_sae 4096 --no_write

Random weights (timing does not depend on the values): ``W_dec`` rows of unit norm, a Gaussian
``W_U`` and a synthetic vocabulary of BPE-like token strings for the default token sets.
Measured in the same run, for ratios that survive a noisy shared machine:

* ``logit_lens``: the whole analysis (matmul, moments, top/bottom-k, classes), against the bare
  chunked matmul ``W_dec @ W_U`` alone (the floor: every other step is overhead on top of it);
* ``enrichment``: :func:`token_set_enrichment` with :func:`default_token_sets` (includes its own matmul).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import numpy as np

from gemmascope.analysis.enrichment import default_token_sets, token_set_enrichment
from gemmascope.analysis.logit_lens import iter_logit_weights, logit_lens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "Analysis"
TABLE_HEAD = "| machine | benchmark | d_sae x d_in x vocab | chunk | seconds | ratio |\n|---|---|---|---|---|---|\n"


def synthetic_vocab(vocab: int, seed: int = 0) -> list[str]:
    """BPE-like token strings: words with and without a leading '▁', capitals, digits, punctuation."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for _ in range(vocab):
        kind = rng.random()
        if kind < 0.75:
            s = "".join(rng.choice(letters, size=rng.integers(1, 10)))
            r = rng.random()
            s = s.capitalize() if r < 0.2 else s.upper() if r < 0.25 else s
        elif kind < 0.85:
            s = str(rng.integers(0, 10 ** rng.integers(1, 5)))
        elif kind < 0.95:
            s = "".join(rng.choice(list(".,;:!?()[]{}<>-'\"/"), size=rng.integers(1, 3)))
        else:
            s = "".join(chr(int(c)) for c in rng.integers(0x400, 0x4FF, size=rng.integers(1, 4)))
        out.append("\u2581" + s if rng.random() < 0.5 else s)
    return out


def _machine() -> str:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return f"{platform.machine()} {os.cpu_count()} cores, {dev.platform}:{kind}, jax {jax.__version__}"


def _append_rows(section: str, table_header: str, rows: list[str]) -> None:
    """Fallback writer (same format as ``bench/report.py``): rows, dated, at the end of ``## section``."""
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    stamp = datetime.date.today().isoformat()
    rows = [r.rstrip() + f" {stamp} |" for r in rows]
    h1, h2 = table_header.splitlines()[:2]
    if f"## {section}\n" not in text:
        text = text.rstrip("\n") + f"\n\n## {section}\n\n{h1} date |\n{h2}---|\n" + "\n".join(rows) + "\n"
    else:
        start = text.index(f"## {section}\n")
        nxt = text.find("\n## ", start + 1)
        end = len(text) if nxt < 0 else nxt
        text = text[:start] + text[start:end].rstrip("\n") + "\n" + "\n".join(rows) + "\n" + text[end:]
    with open(path, "w") as fh:
        fh.write(text)


try:  # the shared writer, when present, so every section of BENCHMARKS.md has one format
    sys.path.insert(0, REPO)
    from bench.report import append_rows, machine  # noqa: E402
except ImportError:
    append_rows, machine = _append_rows, _machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d_sae", type=int, default=16384)
    ap.add_argument("--d_in", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunk", type=int, default=512, help="logit-lens chunk size")
    ap.add_argument("--enrich_chunk", type=int, default=32, help="enrichment chunk size")
    ap.add_argument(
        "--enrich_latents", type=int, default=None, help="latents for the enrichment timing (default: all d_sae)"
    )
    ap.add_argument("--no_write", action="store_true", help="print only, do not append to BENCHMARKS.md")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((args.d_sae, args.d_in), dtype=np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_U = rng.standard_normal((args.d_in, args.vocab), dtype=np.float32)
    shape = f"{args.d_sae} x {args.d_in} x {args.vocab}"

    # Warm-up: compile for the chunk shape, so the timings below are steady state.
    logit_lens(W_dec[: args.chunk], W_U, chunk_size=args.chunk)
    for _ in iter_logit_weights(W_dec[: args.chunk], W_U, args.chunk):
        pass

    t0 = time.perf_counter()
    for _ in iter_logit_weights(W_dec, W_U, args.chunk):
        pass
    t_mm = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = logit_lens(W_dec, W_U, chunk_size=args.chunk)
    t_ll = time.perf_counter() - t0
    flops = 2 * args.d_sae * args.d_in * args.vocab
    print(f"matmul only   {t_mm:7.2f} s  ({flops / t_mm / 1e9:.1f} GFLOP/s)")
    print(f"logit_lens    {t_ll:7.2f} s  ({t_ll / t_mm:.2f}x the bare matmul); classes {res.class_counts()}")

    tokens = synthetic_vocab(args.vocab)
    t0 = time.perf_counter()
    sets = default_token_sets(tokens)
    t_sets = time.perf_counter() - t0
    n_en = args.enrich_latents or args.d_sae
    members = sum(int(m.sum()) for m in sets.values())
    token_set_enrichment(W_dec[: args.enrich_chunk], W_U, sets, chunk_size=args.enrich_chunk)  # warm-up
    t0 = time.perf_counter()
    er = token_set_enrichment(W_dec[:n_en], W_U, sets, chunk_size=args.enrich_chunk)
    t_en = time.perf_counter() - t0
    print(f"token sets    {t_sets:7.2f} s  ({len(sets)} default sets, {members / args.vocab:.2f} x vocab members)")
    print(
        f"enrichment    {t_en:7.2f} s  for {n_en} latents x {len(sets)} sets "
        f"({t_en / n_en * 1e3:.2f} ms/latent); significant at q<0.05: {int(er.significant().sum())}"
    )

    if args.no_write:
        return
    m = machine()
    rows = [
        f"| {m} | logit_lens (stats, top/bottom-10, classes), random weights | {shape} | "
        f"{args.chunk} | {t_ll:.1f} | {t_ll / t_mm:.2f}x bare chunked matmul ({t_mm:.1f} s, "
        f"{flops / t_mm / 1e9:.0f} GFLOP/s) |",
        f"| {m} | token_set_enrichment, {len(sets)} default sets on a synthetic vocab, "
        f"{n_en} latents | {shape} | {args.enrich_chunk} | {t_en:.1f} | "
        f"{t_en / n_en * args.d_sae / t_ll:.2f}x logit_lens per latent; {t_en / n_en * 1e3:.2f} ms/latent |",
    ]
    append_rows(SECTION, TABLE_HEAD, rows)
    print("appended to BENCHMARKS.md:\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
