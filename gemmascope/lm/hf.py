"""Hugging Face checkpoints: ``config.json`` to :class:`~gemmascope.lm.config.LMConfig`, and the
``*.safetensors`` tensors into our parameter tree (Gemma 2, Gemma 3 text and multimodal, Llama);
hub ids resolved through the local hub cache."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

from gemmascope.lm.config import LMConfig
from gemmascope.lm.weights import GEMMA_NORMS, CheckpointError, check_filled, empty_params, maybe_device, np_dtype  # noqa: F401

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


_HF_LAYER = {
    "gemma2": GEMMA_NORMS,
    "gemma3": {**GEMMA_NORMS, "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm"},
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
    npdt = np_dtype(dtype)
    params = empty_params(cfg, npdt)
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
    check_filled(params, filled, path)
    return cfg, maybe_device(params, to_device)


# ----------------------------------------------------------------------------- GGUF


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
