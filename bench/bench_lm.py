"""LM throughput: our jitted JAX forward against transformers (PyTorch) on an embedded model.

    /tmp/venv/bin/python bench/bench_lm.py                      # SmolLM2, batch 4 x 128 tokens, fp32
    /tmp/venv/bin/python bench/bench_lm.py --model gemma3-270m  # Gemma 3 270M (Q4_K_M)
    /tmp/venv/bin/python bench/bench_lm.py --batch 8 --seq 256 --no_write

Both sides run the same GGUF (SmolLM2-135M-Instruct Q4_1, or Gemma 3 270M Q4_K_M) dequantised to
fp32 (ours through ``gemmascope.lm.loading``, theirs through
``AutoModelForCausalLM.from_pretrained(gguf_file=...)``, default attention implementation), on the
same packed held-out text, in the same process. Two workloads:

* ``to layer L``: activations of the residual stream at a middle layer, the work of activation
  generation. Ours stops after layer L (``stop_after``); transformers is stopped by a forward hook
  on layer L that raises (the usual trick of SAE libraries), so neither computes the rest.
* ``full``: logits of the whole model.

Repetitions alternate between the two implementations so load from other processes on a shared
machine hits both alike; the ratio of the best (minimum) times is the result, the estimate least
hit by other processes (ours / transformers tokens/s).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "LM forward (activation source)"
TABLE_HEAD = "| machine | what | batch x seq | ours tok/s | transformers tok/s | ratio |\n|---|---|---|---|---|---|\n"

try:  # the shared writer, so every section of BENCHMARKS.md has one format
    sys.path.insert(0, REPO)
    from bench.report import append_rows, machine  # noqa: E402
except ImportError:  # pragma: no cover
    append_rows = None

    def machine() -> str:
        dev = jax.devices()[0]
        return f"{platform.machine()} {os.cpu_count()} cores, {dev.platform}:{getattr(dev, 'device_kind', '')}, jax {jax.__version__}"


from gemmascope.data import text  # noqa: E402
from gemmascope.lm import loading, model  # noqa: E402


class _Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="smollm2-135m",
        choices=["smollm2-135m", "gemma3-270m"],
        help="embedded model (lm.checkpoint embedded:<model>)",
    )
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layer", type=int, default=None, help="middle layer (default n_layers // 2)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no_write", action="store_true", help="print only, do not append to BENCHMARKS.md")
    args = ap.parse_args()

    import torch
    import transformers

    cfg, params, tok = loading.load_embedded(name=args.model)
    params = jax.device_put(params)
    label = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}[args.model]
    layer = cfg.n_layers // 2 if args.layer is None else args.layer
    _, held = text.split_texts(text.embedded_corpus())
    tokens, _ = text.pack(tok, held, args.seq, bos_id=cfg.bos_id, eos_id=cfg.eos_id, max_sequences=args.batch)
    assert tokens.shape == (args.batch, args.seq), tokens.shape
    n_tok = tokens.size

    d, f = os.path.split(loading.embedded_gguf_path(args.model))
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, local_files_only=True
    ).eval()
    tt = torch.tensor(tokens, dtype=torch.long)

    def ours_mid():
        return jax.block_until_ready(
            model.jit_forward(params, tokens, cfg, capture=[(layer, "res")], stop_after=layer).captures[(layer, "res")]
        )

    def ours_full():
        return jax.block_until_ready(model.jit_forward(params, tokens, cfg).logits)

    got = {}

    def stop_hook(mod, inp, out):
        got["res"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    def theirs_mid():
        h = hf.model.layers[layer].register_forward_hook(stop_hook)
        try:
            with torch.inference_mode():
                hf(tt)
        except _Stop:
            pass
        finally:
            h.remove()
        return got["res"]

    def theirs_full():
        with torch.inference_mode():
            return hf(tt).logits

    # Same numbers first (the benchmark compares equal work).
    a, b = np.asarray(ours_mid()), theirs_mid().numpy()
    err_mid = float(np.abs(a - b).max() / (np.abs(b).max()))
    a, b = np.asarray(ours_full()), theirs_full().numpy()
    err_full = float(np.abs(a - b).max())
    print(f"check: layer-{layer} res rel err {err_mid:.1e}, logits max abs err {err_full:.1e}")

    rows = []
    mach = f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    for what, ours, theirs in (
        (f"to layer {layer} (res)", ours_mid, theirs_mid),
        ("full (logits)", ours_full, theirs_full),
    ):
        ours(), theirs()  # warm-up (compilation)
        to, tt_ = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ours()
            to.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs()
            tt_.append(time.perf_counter() - t0)
        o, t = n_tok / min(to), n_tok / min(tt_)
        line = f"| {mach} | {label} fp32 {what} | {args.batch} x {args.seq} | {o:,.0f} | {t:,.0f} | {o / t:.2f} |"
        print(line)
        rows.append(line)
    if not args.no_write and append_rows is not None:
        append_rows(SECTION, TABLE_HEAD, rows)
        print("appended to BENCHMARKS.md")


if __name__ == "__main__":
    main()
