"""Weights in: Hugging Face checkpoint directories (safetensors) and GGUF files; tokenizers; the
:class:`LM` they make together (:func:`load_lm`).

Nothing here imports torch. Safetensors are read with the ``safetensors`` numpy API, GGUF
tensors are dequantised with ``gguf.quants.dequantize``. Both loaders return
``(LMConfig, params)`` with params in the layout of :mod:`gemmascope.lm.model`: jax arrays on the
default device, or numpy arrays with ``to_device=False`` (to place or shard them yourself).

GGUF specifics handled here (the same fixes transformers applies when it reads GGUF):
- llama.cpp's converter permutes the rows of the Llama q/k projections so that RoPE rotates
  interleaved pairs; we undo it per head (k uses the kv head count).
- llama.cpp stores Gemma 2/3 norm weights (q/k norms included) as ``1 + w``; we subtract 1.
- The Gemma query scale is not stored: llama.cpp uses ``1/sqrt(d_model / n_heads)`` for the
  27B models (Gemma 2: 46 layers, Gemma 3: 62) and ``1/sqrt(head_dim)`` otherwise; we do the same.
- Gemma 3 GGUFs store the full layers' RoPE base (``rope.freq_base``) and, for 4B and up, their
  linear scaling (``rope.scaling.type/factor``); llama.cpp fixes the sliding layers' base at
  10,000 and the pattern at five sliding layers to one full, as transformers' defaults do.

Hugging Face Gemma 3 checkpoints come in two forms, both read here: text-only
(``Gemma3ForCausalLM``, model_type ``gemma3_text``: 270M, 1B) and multimodal
(``Gemma3ForConditionalGeneration``, model_type ``gemma3`` with a ``text_config``: 4B, 12B, 27B),
whose language-model tensors we take and vision tower we skip.

The embedded models (``"embedded"``, ``"embedded:<name>"``) are in :mod:`gemmascope.lm.embedded`,
tokenizers in :mod:`gemmascope.lm.tokenizer`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gemmascope.lm import embedded, gguf_file
from gemmascope.lm.config import LMConfig
from gemmascope.lm.hf import (  # noqa: F401  (re-exported)
    GEMMA3_TEXT_DEFAULTS,
    config_from_hf,
    load_hf_checkpoint,
    resolve_hub_id,
)
from gemmascope.lm.tokenizer import load_tokenizer as _load
from gemmascope.lm.weights import GEMMA_NORMS, CheckpointError, check_filled, empty_params, maybe_device, np_dtype  # noqa: F401  (CheckpointError re-exported)


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. w: [n_head * D, d_in] (HF [out, in] layout).

    llama.cpp reorders each head's rows from (half, i) to (i, half) so RoPE rotates adjacent
    pairs; transformers' rotate_half needs the original (first half, second half) order.
    """
    out, d_in = w.shape
    D = out // n_head
    return w.reshape(n_head, D // 2, 2, d_in).transpose(0, 2, 1, 3).reshape(out, d_in)


GGUF_ARCHS = ("llama", "gemma2", "gemma3")


def config_from_gguf(
    meta: dict[str, Any], dtype: str = "float32", has_output: bool = False, where: str = "GGUF"
) -> LMConfig:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise CheckpointError(
            f"{where}: GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHS)})"
        )

    def g(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    d = int(g("embedding_length"))
    H = int(g("attention.head_count"))
    K = int(g("attention.head_count_kv", H))
    L = int(g("block_count"))
    head_dim = int(g("attention.key_length", d // H))
    vocab = int(g("vocab_size", meta.get("tokenizer.ggml.tokens", 0)))
    common = dict(
        vocab_size=vocab,
        d_model=d,
        n_layers=L,
        n_heads=H,
        n_kv_heads=K,
        head_dim=head_dim,
        d_mlp=int(g("feed_forward_length")),
        rope_theta=float(g("rope.freq_base", 10_000.0)),
        norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        dtype=dtype,
        name=str(meta.get("general.name", "")),
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", 1)),
        eos_id=int(meta.get("tokenizer.ggml.eos_token_id", 2)),
    )
    pad = meta.get("tokenizer.ggml.padding_token_id")
    if arch == "gemma3":
        # llama.cpp: 27B (62 layers) scales queries by 1/sqrt(d_model / n_heads), the others by
        # 1/sqrt(head_dim); sliding layers use base 10,000 and no scaling; pattern 5 sliding : 1 full.
        qpas = d / H if L == 62 else head_dim
        kind = meta.get(f"{arch}.rope.scaling.type")
        if kind not in (None, "none", "linear"):
            raise NotImplementedError(f"{where}: rope scaling {kind!r} is not implemented (none, linear)")
        scale = float(g("rope.scaling.factor", 1.0)) if kind == "linear" else 1.0
        pattern = g("attention.sliding_window_pattern", 6)
        if isinstance(pattern, (list, tuple)):  # per-layer booleans (True: sliding)
            layer_types = tuple("sliding" if p else "full" for p in pattern)
        else:
            layer_types = tuple("full" if (i + 1) % int(pattern) == 0 else "sliding" for i in range(L))
        return LMConfig(
            arch="gemma3",
            attn_softcap=g("attn_logit_softcapping"),
            final_softcap=g("final_logit_softcapping"),
            query_pre_attn_scalar=float(qpas),
            sliding_window=int(g("attention.sliding_window", 512)),
            layer_types=layer_types,
            rope_theta_sliding=float(g("rope.freq_base_swa", 10_000.0)),
            rope_scale=scale,
            tie_embeddings=not has_output,
            pad_id=int(pad if pad is not None else 0),
            **common,
        )
    if arch == "gemma2":
        qpas = d / H if L == 46 else head_dim
        return LMConfig(
            arch="gemma2",
            attn_softcap=g("attn_logit_softcapping", 50.0),
            final_softcap=g("final_logit_softcapping", 30.0),
            query_pre_attn_scalar=float(qpas),
            sliding_window=g("attention.sliding_window", 4096),
            tie_embeddings=not has_output,
            pad_id=int(pad if pad is not None else 0),
            **common,
        )
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise NotImplementedError(f"rope scaling {meta.get(f'{arch}.rope.scaling.type')!r} is not implemented")
    return LMConfig(
        arch="llama",
        attn_softcap=None,
        final_softcap=None,
        query_pre_attn_scalar=None,
        sliding_window=None,
        tie_embeddings=not has_output,
        pad_id=int(pad if pad is not None else common["eos_id"]),
        **common,
    )


_GGUF_LAYER = {
    "attn_norm": "attn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
    "post_attention_norm": "post_attn_norm",
    "post_ffw_norm": "post_mlp_norm",
    "attn_q_norm": "q_norm",
    "attn_k_norm": "k_norm",
}


def load_gguf(path: str, dtype: str = "float32", to_device: bool = True) -> tuple[LMConfig, dict[str, Any]]:
    """(cfg, params) from a GGUF file (llama, gemma2 or gemma3), every tensor dequantised. The
    architecture is checked before any tensor is read.

    Params are jax arrays on the default device (``to_device``) or numpy arrays. The file is read
    by :mod:`gemmascope.lm.gguf_file` (the metadata in well under a second, vocabulary included)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file not found: {path!r}")
    meta, tensors = gguf_file.read(path)
    names = {t.name for t in tensors}
    cfg = config_from_gguf(meta, dtype, has_output="output.weight" in names, where=path)
    npdt = np_dtype(dtype)
    params = empty_params(cfg, npdt)
    filled: set = set()
    for t in tensors:
        w = gguf_file.dequantize(t)
        name = t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name
        is_norm = name.endswith("norm")
        if cfg.gemma and is_norm:
            w = w - 1.0
        if name == "token_embd":
            params["embed"][...] = w
            filled.add("embed")
        elif name == "output_norm":
            params["final_norm"][...] = w
            filled.add("final_norm")
        elif name == "output":
            params["lm_head"][...] = w.T
            filled.add("lm_head")
        elif name.startswith("blk."):
            _, idx, part = name.split(".", 2)
            i = int(idx)
            if part not in _GGUF_LAYER:
                continue
            key = _GGUF_LAYER[part]
            if cfg.arch == "llama" and part == "attn_q":
                w = _unpermute_rope_rows(w, cfg.n_heads)
            elif cfg.arch == "llama" and part == "attn_k":
                w = _unpermute_rope_rows(w, cfg.n_kv_heads)
            params["layers"][key][i] = w if w.ndim == 1 else w.T
            filled.add(("layers", key, i))
    check_filled(params, filled, path)
    return cfg, maybe_device(params, to_device)


# ----------------------------------------------------------------------------- hub ids, dispatch


def load_checkpoint(path: str, dtype: str = "float32", to_device: bool = True) -> tuple[LMConfig, dict[str, Any]]:
    """Dispatch: ``"embedded"`` / ``"embedded:<name>"`` (:mod:`gemmascope.lm.embedded`), a ``.gguf``
    file, a Hugging Face directory, or a hub id (``org/name``, through the hub cache)."""
    name = embedded.parse(path)
    if name is not None:
        m = embedded.model(name)
        cfg, params = load_gguf(embedded.gguf_path(name), dtype, to_device)
        return (cfg.replace(**m.special_ids) if m.special_ids else cfg), params
    if os.path.isfile(path) and path.endswith(".gguf"):
        return load_gguf(path, dtype, to_device)
    hub_dir = resolve_hub_id(path)
    if hub_dir is not None:
        return load_hf_checkpoint(hub_dir, dtype, to_device)
    if os.path.isdir(path):
        return load_hf_checkpoint(path, dtype, to_device)
    raise CheckpointError(
        f"checkpoint {path!r} not found: expected 'embedded' / 'embedded:<name>' (known: "
        f"{', '.join(embedded.MODELS)}), a .gguf file, a Hugging Face directory (config.json + "
        f"*.safetensors) or a hub id. The default embedded model needs:  {embedded.model().pip}"
    )


def context_length(path: str) -> int | None:
    """The context length the checkpoint declares (GGUF ``<arch>.context_length``, Hugging Face
    ``max_position_embeddings``), or None when it declares none. Reads metadata only."""
    name = embedded.parse(path)
    gguf = embedded.gguf_path(name) if name is not None else path
    if os.path.isfile(gguf) and gguf.endswith(".gguf"):
        meta, _ = gguf_file.read(gguf)
        hits = [v for k, v in meta.items() if k.endswith(".context_length")]
        return int(hits[0]) if hits else None
    folder = resolve_hub_id(path) or path
    cfg_path = os.path.join(folder, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as fh:
            hf = json.load(fh)
        hf = hf.get("text_config", hf)
        return int(hf["max_position_embeddings"]) if "max_position_embeddings" in hf else None
    return None


def load_embedded(dtype: str = "float32", to_device: bool = True, name: str | None = None):
    """(cfg, params, tokenizer) of an embedded model (default: :data:`gemmascope.lm.embedded.DEFAULT`,
    SmolLM2-135M-Instruct, whose BOS/EOS are its ``<|endoftext|>``, id 0)."""
    ck = "embedded" if name is None else f"embedded:{name}"
    cfg, params = load_checkpoint(ck, dtype, to_device)
    return cfg, params, load_tokenizer(ck)


def embedded_gguf_path(name: str | None = None) -> str:
    """Path of an embedded model's GGUF file (default: SmolLM2); see :mod:`gemmascope.lm.embedded`."""
    return embedded.gguf_path(name or embedded.DEFAULT)


def embedded_special_ids() -> dict[str, int]:
    """BOS/EOS/PAD ids used with the embedded SmolLM2 model."""
    return dict(embedded.model("smollm2-135m").special_ids)


def load_tokenizer(path: str, cache: bool = True):
    """See :func:`gemmascope.lm.tokenizer.load_tokenizer`."""
    return _load(path, cache)


# ----------------------------------------------------------------------------- the LM in one call


@dataclasses.dataclass(frozen=True)
class LM:
    """A loaded language model: config, parameters, tokenizer and a name for metadata."""

    cfg: Any  # gemmascope.lm.config.LMConfig
    params: Any
    tokenizer: Any
    name: str
    tokenizer_name: str = ""

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """``(bos, eos, pad)``."""
        return self.cfg.bos_id, self.cfg.eos_id, self.cfg.pad_id

    def check_layer(self, layer: int, field: str = "layer") -> None:
        """Fails before any compute when ``layer`` is outside the model."""
        if not 0 <= int(layer) < self.cfg.n_layers:
            raise ValueError(f"{field}: layer {layer} out of range for {self.name} ({self.cfg.n_layers} layers)")


def load_lm(checkpoint: str = "embedded", dtype: str = "float32", log: Callable[[str], None] | None = None) -> LM:
    """The LM named by ``checkpoint``: ``"embedded"`` (or ``""``) or ``"embedded:<name>"`` (the
    registry in :mod:`gemmascope.lm.embedded` names it), a ``.gguf`` file, a Hugging Face
    directory or a hub id in the local cache."""
    t0 = time.time()
    cfg, params = load_checkpoint(checkpoint or "embedded", dtype)
    tok = load_tokenizer(checkpoint or "embedded")
    name = embedded.parse(checkpoint)
    if name is not None:
        m = embedded.model(name)
        lm = LM(cfg, params, tok, m.title, m.tokenizer)
    else:
        lm = LM(cfg, params, tok, str(checkpoint), str(checkpoint))
    if log:
        log(f"[lm] loaded {lm.name}: {cfg.n_layers} layers, d_model {cfg.d_model} in {time.time() - t0:.1f}s")
    return lm
