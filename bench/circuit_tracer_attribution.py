r"""circuit-tracer 0.5.0's attribution graph of one prompt, for ``bench/bench_attribution.py``; runs
inside circuit-tracer's venv and imports only numpy, torch, transformers and circuit_tracer (never
gemmascope or jax: circuit-tracer pins ``transformers<=4.57.3``, which our environment does not have).

    python bench/circuit_tracer_attribution.py --model_dir=DIR --transcoders=DIR --kind=clt|plt \
        --tokens=2,818,... --out=OUT.npz [--batch_size=512] [--runs=1] [--threads=N]

``--model_dir``: a Hugging Face Gemma 3 text checkpoint (config.json, model.safetensors,
tokenizer.json) that the driver wrote from our own parameters, so both sides hold the same float32
weights. It is loaded with ``Gemma3ForCausalLM.from_pretrained`` and handed to TransformerLens as
``hf_model=`` under the name ``google/gemma-3-270m``, whose TransformerLens config is hard-coded (no
hub access); the tokenizer is ``PreTrainedTokenizerFast`` on the copied ``tokenizer.json``, saved
as a folder because TransformerLens re-loads it by name (used only to decode the prompt into the
graph's ``input_string``: token ids are passed in).

``--kind=clt``: ``DIR/params_layer_<i>.safetensors`` (Gemma Scope 2 CLT files) through
``load_gemma_scope_2_clt`` with one extra dummy key (its loader reads keys ``0 .. max - 1``: see
``bench/bench_circuit_tracer.py``). ``--kind=plt``: ``DIR/layer_<i>.safetensors`` (Gemma Scope 2
transcoder files: ``w_enc [d, n]``, ``w_dec [n, d]``, ``b_enc``, ``b_dec``, ``threshold``) through
``load_transcoder_set(..., special_load_fn="gemma-scope-2")`` reading ``mlp.hook_in`` (the pre-MLP
norm's output, its weight applied: our ``mlp_in``; circuit-tracer's Gemma 3 mapping puts it at
``pre_feedforward_layernorm``'s output) and writing ``hook_mlp_out`` (after the post-MLP norm, our
``mlp``). Not ``ln2.hook_normalized``: in TransformerLens that is ``x / rms`` *before* the norm's
weight, another read.

**A fix applied by default** (``--as_shipped`` turns it off): circuit-tracer 0.5.0's
TransformerLens backend shares the last block's RoPE tables with every block
(``_deduplicate_attention_buffers``), which is wrong for Gemma 3, whose local and global layers
use different bases (:func:`_dedup_keeping_originals`). This script lets it run as shipped,
records the logits of that model (``shipped_logits``), then gives each block its own tables back
(:func:`restore_rope`) before attributing, so the graph is that of Gemma 3.

Writes ``OUT.npz``: the dense ``adjacency`` ([target, source], circuit-tracer's node order),
``active_features [n, 3]`` (layer, position, feature), ``selected_features``, ``activation_values``,
``logit_tokens``, ``logit_probabilities``, the model's ``logits`` of the last position (to check the
two LMs agree), ``seconds`` (one entry per run of ``attribute``: the whole call, phases 0-5, as a
user runs it), ``setup_seconds`` (model and transcoder loading) and the torch thread count.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import time
from importlib.metadata import version

import numpy as np
import torch
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.cross_layer_transcoder import load_gemma_scope_2_clt
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
from transformers import AutoTokenizer, Gemma3ForCausalLM, PreTrainedTokenizerFast

CPU = torch.device("cpu")


def layer_files(folder: str, pattern: str) -> dict[int, str]:
    """``{layer: path}`` of the files in ``folder`` whose name matches ``pattern`` (one group: the layer)."""
    out = {}
    for p in glob.glob(os.path.join(folder, "*.safetensors")):
        m = re.fullmatch(pattern, os.path.basename(p))
        if m:
            out[int(m.group(1))] = p
    if sorted(out) != list(range(len(out))):
        raise SystemExit(f"{folder}: layers {sorted(out)} are not 0..{len(out) - 1}")
    return out


def load_transcoders(folder: str, kind: str):
    if kind == "clt":
        paths = layer_files(folder, r"params_layer_(\d+)\.safetensors")
        # circuit-tracer 0.5.0 reads keys 0 .. max(keys) - 1: one dummy key past the last layer.
        paths[len(paths)] = "unused (circuit-tracer reads keys 0 .. max - 1)"
        return load_gemma_scope_2_clt(paths, device=CPU, dtype=torch.float32)
    paths = layer_files(folder, r"layer_(\d+)\.safetensors")
    return load_transcoder_set(
        paths,
        scan="gemmascope-bench-random",
        feature_input_hook="mlp.hook_in",
        feature_output_hook="hook_mlp_out",
        device=CPU,
        dtype=torch.float32,
        special_load_fn="gemma-scope-2",
        lazy_encoder=False,
        lazy_decoder=False,
    )


_SHIPPED_DEDUP = TransformerLensReplacementModel._deduplicate_attention_buffers


def _dedup_keeping_originals(self) -> None:
    """circuit-tracer's ``_deduplicate_attention_buffers``, run as shipped, after keeping each
    block's own RoPE tables on the side so :func:`restore_rope` can put them back.

    As shipped (0.5.0) it keeps *one* ``rotary_sin`` / ``rotary_cos`` for every block (the last
    block's), while TransformerLens builds Gemma 3's local layers with base 10,000 and its global
    layers with base 1,000,000: every local layer of the replacement model then rotates with the
    global base, and the model it attributes is not Gemma 3 (the last logits move by ~2 on a
    6-token prompt). Masks are shared by attention type, which is right."""
    self._bench_rope = [
        (b.attn.rotary_sin, b.attn.rotary_cos) if hasattr(b.attn, "rotary_sin") else None for b in self.blocks
    ]
    _SHIPPED_DEDUP(self)


def restore_rope(model) -> int:
    """Gives every block back its own RoPE tables (kept by :func:`_dedup_keeping_originals`);
    returns how many blocks had been given another block's."""
    fixed = 0
    for b, orig in zip(model.blocks, model._bench_rope):
        if orig is not None and not torch.equal(b.attn.rotary_sin, orig[0]):
            b.attn.rotary_sin, b.attn.rotary_cos = orig
            fixed += 1
    return fixed


TransformerLensReplacementModel._deduplicate_attention_buffers = _dedup_keeping_originals


def target_ids(graph) -> np.ndarray:
    """The logit targets' token ids (0.5.0 keeps them as objects with ``vocab_idx``, older as a tensor)."""
    lt = graph.logit_targets
    if isinstance(lt, torch.Tensor):
        return lt.cpu().numpy().astype(np.int64)
    return np.array([int(getattr(t, "vocab_idx", t)) for t in lt], np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--kind", choices=("clt", "plt"), required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids, BOS first")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch_size", type=int, default=512, help="circuit-tracer's default")
    ap.add_argument("--max_n_logits", type=int, default=10)
    ap.add_argument("--desired_logit_prob", type=float, default=0.95)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--as_shipped", action="store_true", help="keep 0.5.0's shared RoPE tables (see restore_rope)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    tok_dir = os.path.join(args.model_dir, "tokenizer")
    if not os.path.isdir(tok_dir):  # TransformerLens re-loads the tokenizer by its name_or_path: a folder
        PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(args.model_dir, "tokenizer.json"),
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
        ).save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    hf = Gemma3ForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    transcoders = load_transcoders(args.transcoders, args.kind)
    model = ReplacementModel.from_pretrained_and_transcoders(
        "google/gemma-3-270m",
        transcoders,
        backend="transformerlens",
        device=CPU,
        dtype=torch.float32,
        hf_model=hf,
        tokenizer=tok,
    )
    del hf
    setup_s = time.perf_counter() - t0

    tokens = torch.tensor([int(t) for t in args.tokens.split(",")], dtype=torch.long)
    with torch.no_grad():
        shipped_logits = model(tokens[None])[0, -1].float().numpy()
    n_fixed = restore_rope(model) if not args.as_shipped else 0
    with torch.no_grad():
        logits = model(tokens[None])[0, -1].float().numpy()
    print(f"[circuit-tracer] RoPE tables restored in {n_fixed} blocks", flush=True)

    seconds = []
    graph = None
    for i in range(args.runs):
        t = time.perf_counter()
        graph = attribute(
            tokens,
            model,
            max_n_logits=args.max_n_logits,
            desired_logit_prob=args.desired_logit_prob,
            batch_size=args.batch_size,
        )
        seconds.append(time.perf_counter() - t)
        print(f"[circuit-tracer] run {i}: {seconds[-1]:.1f}s", flush=True)

    np.savez(
        args.out,
        adjacency=graph.adjacency_matrix.float().numpy(),
        active_features=graph.active_features.cpu().numpy().astype(np.int64),
        selected_features=graph.selected_features.cpu().numpy().astype(np.int64),
        activation_values=graph.activation_values.float().cpu().numpy(),
        logit_tokens=target_ids(graph),
        logit_probabilities=graph.logit_probabilities.float().cpu().numpy(),
        logits=logits,
        shipped_logits=shipped_logits,
        rope_blocks_restored=np.array(n_fixed),
        seconds=np.array(seconds),
        setup_seconds=np.array(setup_s),
        threads=np.array(torch.get_num_threads()),
        versions=np.array(
            [
                f"circuit-tracer {version('circuit-tracer')}",
                f"torch {torch.__version__}",
                f"transformers {version('transformers')}",
                f"transformer-lens {version('transformer-lens')}",
            ]
        ),
    )
    print(f"[circuit-tracer] wrote {args.out}: {graph.adjacency_matrix.shape[0]} nodes", flush=True)


if __name__ == "__main__":
    main()
