"""Weights in: Hugging Face checkpoint directories (safetensors) and GGUF files; tokenizers.

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

import glob
import json
import os
import re
from typing import Any

import numpy as np

from gemmascope.lm.config import LMConfig


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or cannot be read; the message says what was looked for."""


# ----------------------------------------------------------------------------- shared


def _empty_params(cfg: LMConfig, dtype) -> dict[str, Any]:
    """Uninitialised numpy arrays in the layout of :func:`gemmascope.lm.model.init_params`."""
    import jax

    from gemmascope.lm.model import param_shapes

    return jax.tree_util.tree_map(lambda x: np.empty(x.shape, dtype), param_shapes(cfg))


def _maybe_device(params, to_device: bool):
    if not to_device:
        return params
    import jax

    return jax.device_put(params)


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


# Checkpoint norm tensors -> our key. Per arch, since Llama's "post_attention_layernorm" is the
# pre-MLP norm while Gemma's follows attention.
_GEMMA_NORMS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attn_norm",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "post_mlp_norm",
}
_HF_LAYER = {
    "gemma2": _GEMMA_NORMS,
    "gemma3": {**_GEMMA_NORMS, "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm"},
    "llama": {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"},
}
# Prefixes of the language model's tensors in multimodal Gemma 3 checkpoints (older and newer
# transformers layouts), stripped before the text-only names below; other towers are skipped.
_HF_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.")
_HF_SKIP = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_HF_LINEAR = {
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}


def _check_filled(params, filled: set, where: str):
    missing = []
    for k in ("embed", "final_norm", "lm_head"):
        if k in params and k not in filled:
            missing.append(k)
    for k, arr in params["layers"].items():
        for i in range(arr.shape[0]):
            if ("layers", k, i) not in filled:
                missing.append(f"layers.{k}[{i}]")
    if missing:
        raise CheckpointError(f"{where}: no tensor found for {missing[:8]}{' ...' if len(missing) > 8 else ''}")


# ----------------------------------------------------------------------------- Hugging Face


# transformers' Gemma3TextConfig defaults (the Gemma 3 4B shape): multimodal checkpoints' config.json
# give only the fields that differ from them in "text_config" (tested against transformers).
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
}


def _rope_of(params: dict | None, where: str) -> tuple[float | None, float]:
    """(theta or None, linear factor) of one transformers RoPE dict; other RoPE types refused."""
    params = params or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear"):
        raise NotImplementedError(f"config.json: {where} rope type {kind!r} is not implemented (default, linear)")
    theta = params.get("rope_theta")
    factor = float(params.get("factor", 1.0)) if kind == "linear" else 1.0
    return (None if theta is None else float(theta)), factor


def _with_gemma3_defaults(hf: dict) -> dict:
    """A Gemma 3 text config dict with transformers' defaults for the fields it omits (or sets to
    None: soft-caps excepted, where None means "off")."""
    given = {k: v for k, v in hf.items() if v is not None or k.endswith("softcapping")}
    return {**GEMMA3_TEXT_DEFAULTS, **given}


def _gemma3_fields(hf: dict) -> dict:
    """LMConfig fields special to Gemma 3 from a (text) config dict, old or new RoPE layout."""
    hf = _with_gemma3_defaults(hf)
    if hf.get("use_bidirectional_attention"):
        raise NotImplementedError("config.json: use_bidirectional_attention (EmbeddingGemma) is not implemented")
    rp = hf.get("rope_parameters") or {}
    if "full_attention" in rp or "sliding_attention" in rp:  # transformers >= 4.57 layout
        theta, scale = _rope_of(rp.get("full_attention"), "full_attention")
        theta_s, scale_s = _rope_of(rp.get("sliding_attention"), "sliding_attention")
        theta = theta if theta is not None else hf["rope_theta"]
        theta_s = theta_s if theta_s is not None else hf["rope_local_base_freq"]
    else:  # the hub's config.json: rope_theta, rope_local_base_freq, rope_scaling (full layers only)
        _, scale = _rope_of(hf.get("rope_scaling"), "rope_scaling")
        theta, theta_s, scale_s = float(hf["rope_theta"]), float(hf["rope_local_base_freq"]), 1.0
    L = hf["num_hidden_layers"]
    lt = hf.get("layer_types")
    if lt is None:
        pat = int(hf["sliding_window_pattern"])
        lt = ["full_attention" if (i + 1) % pat == 0 else "sliding_attention" for i in range(L)]
    return dict(
        rope_theta=float(theta),
        rope_theta_sliding=float(theta_s),
        rope_scale=scale,
        rope_scale_sliding=scale_s,
        layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in lt),
    )


def config_from_hf(hf: dict, dtype: str = "float32") -> LMConfig:
    """LMConfig from a Hugging Face ``config.json`` dict: model_type gemma2, llama, gemma3_text, or
    gemma3 (multimodal: its ``text_config`` over transformers' Gemma3TextConfig defaults)."""
    mt = hf.get("model_type")
    if mt == "gemma3":
        hf = {**hf.get("text_config", {}), "_name_or_path": hf.get("_name_or_path", "")}
        mt = "gemma3_text"
    if mt not in ("gemma2", "llama", "gemma3_text"):
        raise CheckpointError(
            f"config.json model_type {mt!r} is not supported (supported: gemma2, gemma3, gemma3_text, llama)"
        )
    g3 = _gemma3_fields(hf) if mt == "gemma3_text" else {}
    if g3:
        hf = _with_gemma3_defaults(hf)
    rope = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if not g3 and scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise NotImplementedError(f"rope scaling {scaling!r} is not implemented")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise NotImplementedError("attention/MLP biases are not implemented")
    d = hf["hidden_size"]
    H = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // H

    def tok(key, default):
        v = hf.get(key, default)
        if isinstance(v, (list, tuple)):
            v = v[0]
        return default if v is None else int(v)

    common = dict(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=H,
        n_kv_heads=hf.get("num_key_value_heads") or H,
        head_dim=head_dim,
        d_mlp=hf["intermediate_size"],
        rope_theta=float(theta),
        dtype=dtype,
        name=hf.get("_name_or_path", "") or "",
    )
    if mt in ("gemma2", "gemma3_text"):
        act = hf.get("hidden_activation") or hf.get("hidden_act")
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise NotImplementedError(f"Gemma hidden activation {act!r} (expected gelu_pytorch_tanh)")
        if g3:
            common.update(g3)
        else:
            lt = hf.get("layer_types")
            if lt is not None:
                common["layer_types"] = tuple("sliding" if t == "sliding_attention" else "full" for t in lt)
        return LMConfig(
            arch="gemma2" if mt == "gemma2" else "gemma3",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            attn_softcap=hf.get("attn_logit_softcapping"),
            final_softcap=hf.get("final_logit_softcapping"),
            query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", head_dim)),
            sliding_window=hf.get("sliding_window"),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            bos_id=tok("bos_token_id", 2),
            eos_id=tok("eos_token_id", 1),
            pad_id=tok("pad_token_id", 0),
            **common,
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"Llama hidden_act {hf.get('hidden_act')!r} (expected silu)")
    eos = tok("eos_token_id", 2)
    return LMConfig(
        arch="llama",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        attn_softcap=None,
        final_softcap=None,
        query_pre_attn_scalar=None,
        sliding_window=None,
        layer_types=None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_id=tok("bos_token_id", 1),
        eos_id=eos,
        pad_id=tok("pad_token_id", eos),
        **common,
    )


def load_hf_checkpoint(path: str, dtype: str = "float32", to_device: bool = True) -> tuple[LMConfig, dict[str, Any]]:
    """(cfg, params) from a Hugging Face directory holding config.json + *.safetensors.

    Params are jax arrays on the default device (``to_device``) or numpy arrays (to shard them
    yourself)."""
    from safetensors import safe_open

    cfg_path = os.path.join(path, "config.json")
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not os.path.isfile(cfg_path) or not files:
        raise CheckpointError(
            f"{path!r}: expected a Hugging Face checkpoint directory with config.json and *.safetensors "
            f"(found config.json: {os.path.isfile(cfg_path)}, safetensors files: {len(files)}). "
            "Download one with `huggingface-cli download <repo> --include '*.json' '*.safetensors' --local-dir DIR`."
        )
    with open(cfg_path) as f:
        hf = json.load(f)
    cfg = config_from_hf(hf, dtype)
    npdt = _np_dtype(dtype)
    params = _empty_params(cfg, npdt)
    layer_map = _HF_LAYER[cfg.arch]
    filled: set = set()
    for fn in files:
        with safe_open(fn, framework="numpy") as st:
            for name in st.keys():
                if name.startswith(_HF_SKIP):
                    continue
                n = next((name[len(p) :] for p in _HF_PREFIXES if name.startswith(p)), name)
                if n == "embed_tokens.weight":
                    params["embed"][...] = st.get_tensor(name)
                    filled.add("embed")
                elif n == "norm.weight":
                    params["final_norm"][...] = st.get_tensor(name)
                    filled.add("final_norm")
                elif n == "lm_head.weight" or name == "lm_head.weight":
                    if "lm_head" in params:
                        params["lm_head"][...] = st.get_tensor(name).T
                        filled.add("lm_head")
                elif n.startswith("layers."):
                    _, idx, rest = n.split(".", 2)
                    i = int(idx)
                    rest = rest[: -len(".weight")] if rest.endswith(".weight") else rest
                    if rest in layer_map:
                        key = layer_map[rest]
                        params["layers"][key][i] = st.get_tensor(name)
                    elif rest in _HF_LINEAR:
                        key = _HF_LINEAR[rest]
                        params["layers"][key][i] = st.get_tensor(name).T
                    else:
                        continue
                    filled.add(("layers", key, i))
    _check_filled(params, filled, path)
    return cfg, _maybe_device(params, to_device)


# ----------------------------------------------------------------------------- GGUF


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
    from gemmascope.lm import gguf_file

    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file not found: {path!r}")
    meta, tensors = gguf_file.read(path)
    names = {t.name for t in tensors}
    cfg = config_from_gguf(meta, dtype, has_output="output.weight" in names, where=path)
    npdt = _np_dtype(dtype)
    params = _empty_params(cfg, npdt)
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
    _check_filled(params, filled, path)
    return cfg, _maybe_device(params, to_device)


# ----------------------------------------------------------------------------- hub ids, dispatch


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def resolve_hub_id(path: str) -> str | None:
    """A Hugging Face hub id (``"google/gemma-2-2b"``) -> its local snapshot directory.

    Uses the hub cache (``HF_HUB_CACHE`` / ``HF_HOME``) first; with a network and without
    ``HF_HUB_OFFLINE`` it downloads config, tokenizer and safetensors files into that cache.
    Returns None when ``path`` is not of the form ``org/name`` or is an existing local path.
    """
    if not isinstance(path, str) or os.path.exists(path) or not _HUB_ID.match(path):
        return None
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "special_tokens_map.json"]
    try:
        return snapshot_download(path, allow_patterns=patterns, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    try:
        return snapshot_download(path, allow_patterns=patterns)
    except Exception as e:  # noqa: BLE001 - offline, gated or unknown repo
        raise CheckpointError(
            f"checkpoint {path!r}: not in the Hugging Face cache and could not be downloaded ({type(e).__name__}: "
            f"{e}). With a network, accept the model's licence on the hub and run `huggingface-cli login`; "
            f"offline, pass a local directory holding config.json and *.safetensors."
        ) from None


def load_checkpoint(path: str, dtype: str = "float32", to_device: bool = True) -> tuple[LMConfig, dict[str, Any]]:
    """Dispatch: ``"embedded"`` / ``"embedded:<name>"`` (:mod:`gemmascope.lm.embedded`), a ``.gguf``
    file, a Hugging Face directory, or a hub id (``org/name``, through the hub cache)."""
    from gemmascope.lm import embedded

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


def load_embedded(dtype: str = "float32", to_device: bool = True, name: str | None = None):
    """(cfg, params, tokenizer) of an embedded model (default: :data:`gemmascope.lm.embedded.DEFAULT`,
    SmolLM2-135M-Instruct, whose BOS/EOS are its ``<|endoftext|>``, id 0)."""
    ck = "embedded" if name is None else f"embedded:{name}"
    cfg, params = load_checkpoint(ck, dtype, to_device)
    return cfg, params, load_tokenizer(ck)


def embedded_gguf_path(name: str | None = None) -> str:
    """Path of an embedded model's GGUF file (default: SmolLM2); see :mod:`gemmascope.lm.embedded`."""
    from gemmascope.lm import embedded

    return embedded.gguf_path(name or embedded.DEFAULT)


def embedded_special_ids() -> dict[str, int]:
    """BOS/EOS/PAD ids used with the embedded SmolLM2 model."""
    from gemmascope.lm import embedded

    return dict(embedded.model("smollm2-135m").special_ids)


def load_tokenizer(path: str, cache: bool = True):
    """See :func:`gemmascope.lm.tokenizer.load_tokenizer`."""
    from gemmascope.lm.tokenizer import load_tokenizer as _load

    return _load(path, cache)
