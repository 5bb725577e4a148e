"""SAE file layouts at the array level: keys, validation, normalisation folding, ``params.npz``.

The lowest layer of SAE files, imported by :mod:`gemmascope.sae.files.io` (our layout and the dispatch
to every layout) and :mod:`gemmascope.sae.files.formats` (Gemma Scope 2 and SAELens), so neither
imports the other back.

Three array layouts (see :mod:`gemmascope.sae.files.model`), named in ``metadata.json``'s
``architecture`` and told apart by their keys: ``jumprelu`` (the released Gemma Scope layout;
also Gated and BatchTopK SAEs), ``relu`` (no threshold), ``topk`` (a scalar ``k`` instead of a
threshold). A file without metadata (a released Gemma Scope file) must be a JumpReLU.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from gemmascope.sae import archs
from gemmascope.sae.jumprelu import LAYOUT_KEYS

BASE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
FILE_KEYS = {"jumprelu": LAYOUT_KEYS, "relu": BASE_KEYS, "topk": BASE_KEYS + ("k",), "transcoder": LAYOUT_KEYS}
# Keys a layout may hold beyond FILE_KEYS: an affine transcoder's skip connection [d_in, d_out].
OPTIONAL_KEYS = {"transcoder": ("W_skip",)}


# metadata.json fields that loaders and their callers rely on: (types, lower bound or None).
METADATA_TYPES = {
    "architecture": ((str,), None),
    "site": ((str,), None),
    "model": ((str,), None),
    "params_sha256": ((str,), None),
    "layer": ((int,), 0),
    "d_in": ((int,), 1),
    "d_sae": ((int,), 1),
}


class SAEFileError(ValueError):
    """A malformed SAE file; the message names the file and the key."""


def fold_dim_scale(params: Mapping[str, Any], dim_scale: Any) -> dict[str, np.ndarray]:
    """Layout params trained on per-dimension scaled rows -> params on the unscaled rows.

    An SAE (``dim_scale [d_in]``) trains on ``u = x / s``; with the pre-encoder bias its encoder
    reads ``(u - b_dec) @ W_enc + b_enc`` and its decoder writes ``u_hat = f @ W_dec + b_dec``.
    Substituting ``u = x / s``::

        W_enc' = W_enc / s[:, None]   W_dec' = W_dec * s[None, :]   b_dec' = b_dec * s

    gives the same pre-activations (``(x - b_dec') @ W_enc' = (u - b_dec) @ W_enc``), the same codes
    and ``x_hat = s * u_hat``. A transcoder (``dim_scale [d_in + d_out] = concat(s_in, s_out)``,
    as its paired rows) trains on ``x_in / s_in`` and predicts ``y / s_out``; its encoder reads
    the input without the pre-encoder bias, so the same substitution gives ``W_enc' = W_enc /
    s_in[:, None]``, ``W_dec' = W_dec * s_out``, ``b_dec' = b_dec * s_out`` and ``W_skip' = W_skip *
    s_out[None, :] / s_in[:, None]``. ``b_enc``, thresholds and ``k`` are unchanged. Applied before
    :func:`fold_normalisation` or :func:`fold_transcoder` (the scalar C), which compose with it
    exactly. The decoder rows are no longer unit norm in the file (their norms are the scale each
    latent writes at).
    """
    p = {k: np.asarray(v) for k, v in params.items()}
    s = np.asarray(dim_scale, np.float64)
    d_in, d_out = p["W_enc"].shape[0], p["W_dec"].shape[1]
    if s.shape == (d_in + d_out,):  # a transcoder's paired rows (also when d_in == d_out)
        s_in, s_out = s[:d_in], s[d_in:]
    elif s.shape == (d_in,) and d_in == d_out:  # an SAE
        s_in = s_out = s
    else:
        expected = f"({d_in},) = [d_in]" if d_in == d_out else f"({d_in + d_out},) = [d_in + d_out]"
        raise ValueError(f"dim_scale has shape {s.shape}, expected {expected}")
    out = dict(p)
    out["W_enc"] = (p["W_enc"] / s_in[:, None]).astype(np.float32)
    out["W_dec"] = (p["W_dec"] * s_out[None, :]).astype(np.float32)
    out["b_dec"] = (p["b_dec"] * s_out).astype(np.float32)
    if "W_skip" in p:
        out["W_skip"] = (p["W_skip"] * s_out[None, :] / s_in[:, None]).astype(np.float32)
    return out


def fold_normalisation(params: Mapping[str, Any], scale: float, pre_encoder_bias: bool = True) -> dict[str, np.ndarray]:
    """Layout params trained on ``x / scale`` (with pre-encoder bias) -> raw-unit layout params."""
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    b_enc = p["b_enc"] - p["b_dec"] @ p["W_enc"] if pre_encoder_bias else p["b_enc"]
    out = {
        "W_enc": p["W_enc"],
        "W_dec": p["W_dec"],
        "b_enc": (scale * b_enc).astype(np.float32),
        "b_dec": (scale * p["b_dec"]).astype(np.float32),
    }
    if "threshold" in p:
        out["threshold"] = (scale * p["threshold"]).astype(np.float32)
    if "k" in p:
        out["k"] = p["k"]
    return out


def fold_transcoder(params: Mapping[str, Any], c_in: float, c_out: float) -> dict[str, np.ndarray]:
    """Transcoder layout params trained on ``(x_in / C_in, y / C_out)`` -> raw-unit params.

    Trained: ``pre = (x_in / C_in) @ W_enc + b_enc`` (no pre-encoder bias), ``y_hat / C_out =
    f @ W_dec + b_dec + (x_in / C_in) @ W_skip``. Exported with ``pre' = C_out * pre``::

        W_enc' = W_enc * C_out / C_in   b_enc' = C_out * b_enc   threshold' = C_out * threshold
        W_dec' = W_dec                  b_dec' = C_out * b_dec   W_skip'    = W_skip * C_out / C_in

    so the same latents fire, ``f' = C_out * f`` and ``y_hat' = C_out * y_hat`` (raw units), and
    the decoder rows stay unit norm, as the SAE fold (:func:`fold_normalisation`) keeps them.
    """
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    ratio = np.float32(c_out / c_in)
    c = np.float32(c_out)
    out = {
        "W_enc": (p["W_enc"] * ratio).astype(np.float32),
        "W_dec": p["W_dec"],
        "b_enc": (c * p["b_enc"]).astype(np.float32),
        "b_dec": (c * p["b_dec"]).astype(np.float32),
        "threshold": (c * p["threshold"]).astype(np.float32),
    }
    if "W_skip" in p:
        out["W_skip"] = (p["W_skip"] * ratio).astype(np.float32)
    return out


def json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def file_layout(metadata: Mapping[str, Any] | None, source: str = "<params>") -> str:
    """The file layout named by ``metadata["architecture"]`` (JumpReLU when there is none)."""
    arch = (metadata or {}).get("architecture", "jumprelu")
    known = archs.file_layouts()  # each architecture declares its own (BatchTopK, Gated: "jumprelu")
    if not isinstance(arch, str) or arch not in known:
        raise SAEFileError(f"{source}: metadata.json architecture {arch!r} unknown (known: {sorted(known)})")
    return known[arch]


def validate_params(
    params: Mapping[str, np.ndarray], source: str = "<params>", layout: str = "jumprelu"
) -> tuple[int, int]:
    """Checks keys, shapes, finiteness, threshold > 0 (JumpReLU) and ``k`` (TopK); returns ``(d_in, d_sae)``."""
    keys = FILE_KEYS[layout]
    for key in keys:
        if key not in params:
            raise SAEFileError(f"{source}: missing key {key!r} (expected keys {list(keys)} for a {layout} SAE)")
    w_enc = params["W_enc"]
    if np.ndim(w_enc) != 2:
        raise SAEFileError(f"{source}: key 'W_enc' must be 2-D [d_in, d_sae], got shape {np.shape(w_enc)}")
    d_in, d_sae = np.shape(w_enc)
    # A transcoder's decoder writes to the output site: d_out from W_dec; an SAE's is d_in.
    d_out = int(np.shape(params["W_dec"])[-1]) if layout == "transcoder" and np.ndim(params["W_dec"]) == 2 else d_in
    keys = keys + tuple(k for k in OPTIONAL_KEYS.get(layout, ()) if k in params)
    expected = {
        "W_dec": (d_sae, d_out),
        "b_enc": (d_sae,),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
        "k": (),
        "W_skip": (d_in, d_out),
    }
    expected = {k: v for k, v in expected.items() if k in keys}
    dims = f"W_enc [d_in={d_in}, d_sae={d_sae}]" + (f", W_dec d_out={d_out}" if layout == "transcoder" else "")
    for key, shape in expected.items():
        if tuple(np.shape(params[key])) != shape:
            raise SAEFileError(
                f"{source}: key {key!r} has shape {tuple(np.shape(params[key]))}, expected {shape} (from {dims})"
            )
    for key in keys:
        if not np.all(np.isfinite(params[key])):
            raise SAEFileError(f"{source}: key {key!r} holds NaN or inf values")
    if layout == "topk":
        k = float(np.asarray(params["k"]))
        if k != int(k) or not 1 <= k <= d_sae:
            raise SAEFileError(f"{source}: key 'k' must be an integer in [1, d_sae={d_sae}], got {k!r}")
        return int(d_in), int(d_sae)
    if layout not in ("jumprelu", "transcoder"):
        return int(d_in), int(d_sae)
    thr = np.asarray(params["threshold"])
    if np.any(thr <= 0):
        bad = int(np.argmin(thr))
        raise SAEFileError(f"{source}: key 'threshold' must be > 0 everywhere; latent {bad} has {float(thr[bad])!r}")
    return int(d_in), int(d_sae)


def width_name(width: int) -> str:
    """Gemma Scope folder names: 16384 -> '16k', 65536 -> '65k', 131072 -> '131k', 2**20 -> '1m'."""
    if width >= 1 << 20 and width % (1 << 20) == 0:
        return f"{width >> 20}m"
    if width >= 1000:
        return f"{width // 1000}k"
    return str(width)


def read_json_object(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when there is no such file; SAEFileError naming the file
    for one that is not UTF-8 JSON or not an object."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise SAEFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise SAEFileError(f"{path}: holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_metadata_json(folder: str) -> dict[str, Any] | None:
    """``folder/metadata.json`` as a dict, None when there is none; a garbled one is an error: not
    UTF-8 JSON, not an object, or one of the fields loaders rely on (:data:`METADATA_TYPES`) of
    another type, so that a damaged file fails here, naming the field, not in its consumer."""
    meta = os.path.join(folder, "metadata.json")
    obj = read_json_object(meta)
    if obj is None:
        return None
    for key, (types, lo) in METADATA_TYPES.items():
        v = obj.get(key)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool) or (lo is not None and v < lo)):
            want = " or ".join(t.__name__ for t in types) + (f" >= {lo}" if lo is not None else "")
            raise SAEFileError(f"{meta}: field {key!r} must be {want}, got {v!r}")
    return obj


def float32_arrays(arrays: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
    """The arrays as float32; SAEFileError naming the key for one that does not hold real numbers
    (complex, bool, strings), which a cast would turn into numbers without a word."""
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype.kind not in "fiu":
            raise SAEFileError(f"{source}: key {k!r} has dtype {v.dtype}, expected real numbers (float32)")
        out[k] = v.astype(np.float32)
    return out


def load_npz(path: str) -> dict[str, np.ndarray]:
    """A ``params.npz`` file checked against the ``params_sha256`` of the ``metadata.json`` beside
    it (when there is one) and validated for its layout."""
    if not os.path.exists(path):
        raise SAEFileError(f"{path}: no such SAE file (expected a Gemma Scope params.npz)")
    with open(path, "rb") as fh:
        data = fh.read()
    metadata = read_metadata_json(os.path.dirname(path)) or {}
    want = metadata.get("params_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise SAEFileError(
            f"{path}: the file's sha256 does not match params_sha256 in metadata.json (the "
            "file is truncated or corrupt, or was replaced); export the SAE again or copy it again"
        )
    try:
        with np.load(io.BytesIO(data)) as npz:
            raw = {k: npz[k] for k in npz.files}
    except Exception as e:  # zipfile (CRC, truncation) / pickle errors come in many types
        raise SAEFileError(f"{path}: not a readable .npz file ({e})") from e
    arrays = float32_arrays(raw, path)
    layout = file_layout(metadata, path)
    validate_params(arrays, source=path, layout=layout)
    return {k: arrays[k] for k in FILE_KEYS[layout] + OPTIONAL_KEYS.get(layout, ()) if k in arrays}
