"""Cross-layer transcoder (CLT) files: Gemma Scope 2's per-layer safetensors layout, in and out,
and the raw-unit NumPy forward every reader is checked against.

Our exported CLT (:class:`gemmascope.sae.clt.CrossLayerTranscoder`, normalisation already folded,
raw activation units) is a dict of arrays stacked over ``L`` layers::

    W_enc [L, d_in, d_sae]   b_enc [L, d_sae]   threshold [L, d_sae]
    W_dec [L, d_sae, L, d_out]   (W_dec[l, :, m] == 0 for m < l: a source layer writes forward only)
    b_dec [L, d_out]         W_skip [L, d_in, d_out] (optional: the affine skip)

Gemma Scope 2 ships a CLT as one file per source layer, so a reader can load the layers it needs:
``folder/params_layer_<i>.safetensors`` with lowercase keys ``w_enc [d_in, d_sae]``, ``b_enc``,
``threshold [d_sae]``, ``b_dec [d_out]`` (target layer ``i``'s bias), ``w_dec [d_sae, L, d_out]``
(source layer ``i``'s writes to every layer, zeros before ``i``) and ``affine_skip_connection
[d_in, d_out]`` when affine; we add ``config.json`` (the sizes and hook names, for readers that
want them; a folder without it is read too, ``L`` from the files).

The decoder's entries before the source layer must be zero on reading: circuit-tracer keeps only
``w_dec[:, i:]`` and drops the rest without a word, so a file whose zeros are not zeros would
mean different things to it and to us; we refuse it instead (naming file and layer).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gemmascope.common import write_bytes_atomic
from gemmascope.sae.files.layouts import SAEFileError, float32_arrays, json_default, read_json_object

CONFIG = "config.json"
HOOK_IN = "hook_resid_mid"  # the MLP input each layer's encoder reads (TransformerLens's name)
HOOK_OUT = "hook_mlp_out"  # the MLP output each layer's prediction targets
#: our site -> TransformerLens's hook name, for ``config.json``'s ``hook_in`` / ``hook_out`` (the
#: metadata's ``input_site`` / ``output_site``; a weakly causal crosscoder reads and writes ``res``)
TL_HOOKS = {"res_mid": HOOK_IN, "mlp": HOOK_OUT, "res": "hook_resid_post"}
# our stacked key -> the per-layer file's key
FILE_KEYS = {
    "W_enc": "w_enc",
    "b_enc": "b_enc",
    "threshold": "threshold",
    "W_dec": "w_dec",
    "b_dec": "b_dec",
    "W_skip": "affine_skip_connection",
}
REQUIRED = ("W_enc", "b_enc", "threshold", "W_dec", "b_dec")
SKIP = "W_skip"
_LAYER_FILE = re.compile(r"^params_layer_(\d+)\.safetensors$")


def layer_file(folder: str, layer: int) -> str:
    """``folder/params_layer_<layer>.safetensors``."""
    return os.path.join(folder, f"params_layer_{int(layer)}.safetensors")


def causal_mask(n_layers: int) -> np.ndarray:
    """``[L, 1, L, 1]`` float32: 1 where source layer ``l`` may write to target layer ``m >= l``."""
    return np.triu(np.ones((n_layers, n_layers), np.float32))[:, None, :, None]


def clt_dims(params: Mapping[str, Any], source: str = "<params>") -> dict[str, int]:
    """``{"n_layers", "d_in", "d_sae", "d_out"}`` of stacked CLT params, after checking every
    key's shape against ``W_enc [L, d_in, d_sae]`` and ``W_dec``'s ``d_out``; ValueError (an
    :class:`SAEFileError`) naming the key, its shape and the expected one."""
    for key in REQUIRED:
        if key not in params:
            raise SAEFileError(f"{source}: missing key {key!r} (a CLT holds {list(REQUIRED)} and optionally {SKIP!r})")
    w_enc, w_dec = np.shape(params["W_enc"]), np.shape(params["W_dec"])
    if len(w_enc) != 3:
        raise SAEFileError(f"{source}: key 'W_enc' must be 3-D [L, d_in, d_sae], got shape {w_enc}")
    if len(w_dec) != 4:
        raise SAEFileError(f"{source}: key 'W_dec' must be 4-D [L, d_sae, L, d_out], got shape {w_dec}")
    n, d_in, d_sae = (int(v) for v in w_enc)
    d_out = int(w_dec[-1])
    expected = {
        "W_dec": (n, d_sae, n, d_out),
        "b_enc": (n, d_sae),
        "threshold": (n, d_sae),
        "b_dec": (n, d_out),
        SKIP: (n, d_in, d_out),
    }
    for key, shape in expected.items():
        if key in params and tuple(np.shape(params[key])) != shape:
            raise SAEFileError(
                f"{source}: key {key!r} has shape {tuple(np.shape(params[key]))}, expected {shape} "
                f"(from W_enc [L={n}, d_in={d_in}, d_sae={d_sae}] and W_dec d_out={d_out})"
            )
    return {"n_layers": n, "d_in": d_in, "d_sae": d_sae, "d_out": d_out}


def clt_forward(params: Mapping[str, Any], x: Any) -> tuple[np.ndarray, np.ndarray]:
    """The CLT in raw units, NumPy float32: ``x [n, L, d_in]`` (each layer's MLP input) ->
    ``(f [n, L, d_sae], y_hat [n, L, d_out])`` (each layer's predicted MLP output).

    ``pre = x @ W_enc[l] + b_enc[l]``, ``f = pre * (pre > threshold)`` (JumpReLU), and
    ``y_hat[:, m] = sum_{l <= m} f[:, l] @ W_dec[l, :, m] + b_dec[m]`` (``+ x[:, m] @ W_skip[m]``).
    The causal mask is applied here too, so a decoder with non-zero entries before its layer
    still gives the CLT's meaning (the reference the file readers are checked against).
    """
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    dims = clt_dims(p)
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.shape[1:] != (dims["n_layers"], dims["d_in"]):
        raise ValueError(f"x has shape {x.shape}, expected [n, L={dims['n_layers']}, d_in={dims['d_in']}]")
    pre = np.einsum("bld,lds->bls", x, p["W_enc"]) + p["b_enc"]
    f = np.where(pre > p["threshold"], pre, np.float32(0)).astype(np.float32)
    w_dec = p["W_dec"] * causal_mask(dims["n_layers"])
    y_hat = np.einsum("bls,lsmo->bmo", f, w_dec) + p["b_dec"]
    if SKIP in p:
        y_hat = y_hat + np.einsum("bld,ldo->blo", x, p[SKIP])
    return f, y_hat.astype(np.float32)


def _write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=json_default).encode()
    write_bytes_atomic(path, text)


def _write_safetensors(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()})
    write_bytes_atomic(path, data)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        raw = load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise SAEFileError(f"{path}: not a readable .safetensors file ({e})") from e
    return float32_arrays(raw, path)


def save_gemma_scope_2_clt(folder: str, params: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
    """Writes ``folder/params_layer_<i>.safetensors`` for every layer ``i`` and ``config.json``;
    returns ``folder``. Gemma Scope 2 ships its weakly causal crosscoders in the same files.

    ``params``: stacked raw-unit CLT arrays (module doc); ``metadata``: extra ``config.json``
    fields (``model``, ``layers``, ``input_site``/``output_site``, whose TransformerLens names
    become ``hook_in``/``hook_out``, :data:`TL_HOOKS`), which may not override the sizes. Shapes are checked and
    the decoder's entries before each layer zeroed (they mean nothing, and the file layout holds
    zeros there) before any file is written, so a bad call leaves no half folder.
    """
    arrays = {k: np.asarray(v, np.float32) for k, v in params.items() if k in FILE_KEYS}
    dims = clt_dims(arrays, folder)
    for key, v in arrays.items():
        if not np.all(np.isfinite(v)):
            raise SAEFileError(f"{folder}: key {key!r} holds NaN or inf values")
    n, affine = dims["n_layers"], SKIP in arrays
    w_dec = arrays["W_dec"] * causal_mask(n)
    meta = dict(metadata or {})
    hooks = TL_HOOKS.get(meta.get("input_site"), HOOK_IN), TL_HOOKS.get(meta.get("output_site"), HOOK_OUT)
    config = {**meta, **dims, "affine": affine, "hook_in": hooks[0], "hook_out": hooks[1]}
    config.setdefault("architecture", "clt")
    for i in range(n):
        layer = {FILE_KEYS[k]: arrays[k][i] for k in arrays if k != "W_dec"}
        layer["w_dec"] = w_dec[i]
        _write_safetensors(layer_file(folder, i), layer)
    _write_json(os.path.join(folder, CONFIG), config)
    return folder


def concat_forward(params: Mapping[str, Any], x: Any) -> tuple[np.ndarray, np.ndarray]:
    """An acausal crosscoder (one JumpReLU dictionary over the concatenated layers, raw units,
    NumPy float32): ``x [n, L, d]`` -> ``(f [n, d_sae], x_hat [n, L, d])`` with
    ``f = JumpReLU(concat(x) @ W_enc + b_enc)`` and ``x_hat = f @ W_dec + b_dec`` per block."""
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    x = np.asarray(x, np.float32)
    flat = x.reshape(len(x), -1)
    if flat.shape[1] != p["W_enc"].shape[0]:
        raise ValueError(
            f"x has shape {x.shape}: its {flat.shape[1]} values per row do not match W_enc {p['W_enc'].shape}"
        )
    pre = flat @ p["W_enc"] + p["b_enc"]
    f = np.where(pre > p["threshold"], pre, np.float32(0)).astype(np.float32)
    return f, (f @ p["W_dec"] + p["b_dec"]).reshape(x.shape).astype(np.float32)


def read_clt_config(folder: str) -> dict[str, Any] | None:
    """``folder/config.json`` as a dict, None when there is none; SAEFileError for one that is
    not a JSON object or whose ``n_layers`` is not a positive integer."""
    path = os.path.join(folder, CONFIG)
    cfg = read_json_object(path)
    if cfg is None:
        return None
    n = cfg.get("n_layers")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise SAEFileError(f"{path}: field 'n_layers' must be an integer >= 1, got {n!r}")
    return cfg


def clt_layer_count(folder: str) -> int:
    """``L`` of a CLT folder: the files must be ``params_layer_0 .. L-1`` with no gap, and agree
    with ``config.json``'s ``n_layers`` when there is one; SAEFileError naming the folder and
    the missing or extra files otherwise."""
    if not os.path.isdir(folder):
        raise SAEFileError(f"{folder}: no such folder (expected a CLT folder of params_layer_<i>.safetensors)")
    found = sorted(int(m.group(1)) for name in os.listdir(folder) if (m := _LAYER_FILE.match(name)))
    cfg = read_clt_config(folder)
    if not found:
        raise SAEFileError(f"{folder}: holds no params_layer_<i>.safetensors files (not a CLT folder)")
    n = cfg["n_layers"] if cfg and cfg.get("n_layers") is not None else found[-1] + 1
    missing = sorted(set(range(n)) - set(found))
    if missing:
        names = [os.path.basename(layer_file(folder, i)) for i in missing]
        why = f"config.json says n_layers={n}" if cfg and "n_layers" in cfg else f"files up to layer {found[-1]}"
        raise SAEFileError(f"{folder}: missing {names} ({why}; found layers {found})")
    extra = [i for i in found if i >= n]
    if extra:
        raise SAEFileError(
            f"{folder}: {CONFIG} says n_layers={n} but the folder also holds "
            f"{[os.path.basename(layer_file(folder, i)) for i in extra]}"
        )
    return n


def _check_layer(raw: Mapping[str, np.ndarray], path: str, layer: int, expected: Mapping[str, tuple]) -> None:
    """Keys and shapes of one layer's file against ``expected`` (file key -> shape), and zeros in
    its decoder before the layer."""
    unknown = sorted(set(raw) - set(expected) - {FILE_KEYS[SKIP]})
    if unknown:
        raise SAEFileError(f"{path}: unexpected keys {unknown} (a CLT layer holds {sorted(expected)})")
    for key, shape in expected.items():
        if key not in raw:
            raise SAEFileError(f"{path}: missing key {key!r} (a CLT layer holds {sorted(expected)})")
        if raw[key].shape != shape:
            raise SAEFileError(f"{path}: key {key!r} has shape {raw[key].shape}, expected {shape}")
        if not np.all(np.isfinite(raw[key])):
            raise SAEFileError(f"{path}: key {key!r} holds NaN or inf values")
    early = raw["w_dec"][:, :layer]
    if np.any(early != 0):
        m = int(np.nonzero(np.any(early != 0, axis=(0, 2)))[0][0])
        raise SAEFileError(
            f"{path}: key 'w_dec' writes to layer {m}, before its own layer {layer} (max |w| "
            f"{float(np.abs(early).max()):.3g}); a CLT's decoder must be zero there (circuit-tracer "
            "would drop these entries silently)"
        )


def load_gemma_scope_2_clt(folder: str) -> dict[str, np.ndarray]:
    """Reads a CLT folder (:func:`save_gemma_scope_2_clt`'s, or Gemma Scope 2's) into the stacked
    arrays of our keys (module doc), raw units as stored.

    Layer 0's file sets the shapes (``d_in``, ``d_sae``, ``d_out``, affine or not); every other
    file must match it. SAEFileError naming the folder or the file and key for: no folder, a
    gap in ``params_layer_0 .. L-1`` or an ``L`` other than config.json's, a missing or unknown
    key, a shape unlike layer 0's (got and expected), a skip in some layers only, non-finite
    values, and decoder entries before the layer that are not zero.
    """
    n = clt_layer_count(folder)
    layers: list[dict[str, np.ndarray]] = []
    expected: dict[str, tuple] = {}
    for i in range(n):
        path = layer_file(folder, i)
        raw = _read_safetensors(path)
        if i == 0:
            for key, ndim, dims in (("w_enc", 2, "[d_in, d_sae]"), ("w_dec", 3, f"[d_sae, L={n}, d_out]")):
                if key not in raw:
                    raise SAEFileError(f"{path}: missing key {key!r} (a CLT layer holds {sorted(FILE_KEYS.values())})")
                if raw[key].ndim != ndim:
                    raise SAEFileError(f"{path}: key {key!r} must be {ndim}-D {dims}, got shape {raw[key].shape}")
            (d_in, d_sae), d_out = raw["w_enc"].shape, raw["w_dec"].shape[-1]
            expected = {
                "w_enc": (d_in, d_sae),
                "b_enc": (d_sae,),
                "threshold": (d_sae,),
                "w_dec": (d_sae, n, d_out),
                "b_dec": (d_out,),
            }
            if FILE_KEYS[SKIP] in raw:
                expected[FILE_KEYS[SKIP]] = (d_in, d_out)
        elif (FILE_KEYS[SKIP] in raw) != (FILE_KEYS[SKIP] in expected):
            first = layer_file(folder, 0)
            has = f"holds key {FILE_KEYS[SKIP]!r} but {first} does not"
            raise SAEFileError(
                f"{path}: " + (has if FILE_KEYS[SKIP] in raw else f"lacks key {FILE_KEYS[SKIP]!r}, which {first} holds")
            )
        _check_layer(raw, path, i, expected)
        layers.append(raw)
    back = {v: k for k, v in FILE_KEYS.items()}
    return {back[key]: np.stack([layer[key] for layer in layers]) for key in expected}
