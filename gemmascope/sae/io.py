"""SAE files: the Gemma Scope ``params.npz`` layout in and out, and normalisation folding.

Training sees ``x / C`` (C fixed so that ``E||x/C||^2 = 1``) and a pre-encoder bias. Export
folds both away so that the file works on raw activations with the plain forward
``pre = x @ W_enc + b_enc``:

    trained, on x/C:  pre  = (x/C - b_dec) @ W_enc + b_enc
    exported, on x:   pre' = x @ W_enc + b_enc'  with  b_enc' = C * (b_enc - b_dec @ W_enc)
                      => pre' = C * pre; with threshold' = C * threshold the codes mask is the same,
                      f' = C * f and x_hat' = f' @ W_dec + C * b_dec = C * x_hat.

So ``b_enc' = C (b_enc - b_dec W_enc)``, ``b_dec' = C b_dec``, ``threshold' = C threshold`` and
``W_enc``, ``W_dec`` unchanged. The same folding serves ReLU and TopK SAEs (no threshold; a
positive scale of ``pre`` keeps the ReLU and the top-k choice), and ``k`` is copied.

Three file layouts (see :mod:`gemmascope.sae.model`), named in ``metadata.json``'s
``architecture`` and told apart by their keys: ``jumprelu`` (the released Gemma Scope layout;
also Gated SAEs), ``relu`` (no threshold), ``topk`` (a scalar ``k`` instead of a threshold). A
file without metadata (a released Gemma Scope file) must be a JumpReLU.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Mapping

import numpy as np

from gemmascope.common import atomic_write

from gemmascope.sae.jumprelu import LAYOUT_KEYS

BASE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
FILE_KEYS = {"jumprelu": LAYOUT_KEYS, "relu": BASE_KEYS, "topk": BASE_KEYS + ("k",)}
# metadata.json "architecture" -> file layout (Gated SAEs export as JumpReLU, exactly)
ARCH_FILE_LAYOUT = {"jumprelu": "jumprelu", "gated": "jumprelu", "relu": "relu", "topk": "topk",
                    "batchtopk": "jumprelu"}  # BatchTopK exports the JumpReLU it becomes

class SAEFileError(ValueError):
    """A malformed SAE file; the message names the file and the key."""


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


_atomic_write = atomic_write  # one implementation: gemmascope/common.py


def save_params(path: str, params: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> None:
    """Writes ``params.npz`` (fp32, layout keys) and, if given, ``metadata.json`` beside it, with
    the file's sha256 as ``params_sha256`` (checked by :func:`load_params`; the zip's own CRC-32
    per array catches damage in files without metadata)."""
    arrays = {k: np.asarray(v, np.float32) for k, v in params.items()}
    layout = file_layout(metadata, path)
    validate_params(arrays, source=path, layout=layout)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    _atomic_write(path, lambda fh: fh.write(data))
    if metadata is not None:
        meta_path = os.path.join(os.path.dirname(path), "metadata.json")
        metadata = {**dict(metadata), "params_sha256": hashlib.sha256(data).hexdigest()}
        text = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default).encode()
        _atomic_write(meta_path, lambda fh: fh.write(text))


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def file_layout(metadata: Mapping[str, Any] | None, source: str = "<params>") -> str:
    """The file layout named by ``metadata["architecture"]`` (JumpReLU when there is none)."""
    arch = (metadata or {}).get("architecture", "jumprelu")
    if arch not in ARCH_FILE_LAYOUT:
        raise SAEFileError(f"{source}: metadata.json architecture {arch!r} unknown (known: {sorted(ARCH_FILE_LAYOUT)})")
    return ARCH_FILE_LAYOUT[arch]


def validate_params(params: Mapping[str, np.ndarray], source: str = "<params>", layout: str = "jumprelu"
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
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,), "k": ()}
    expected = {k: v for k, v in expected.items() if k in keys}
    for key, shape in expected.items():
        if tuple(np.shape(params[key])) != shape:
            raise SAEFileError(
                f"{source}: key {key!r} has shape {tuple(np.shape(params[key]))}, expected {shape} "
                f"(from W_enc [d_in={d_in}, d_sae={d_sae}])"
            )
    for key in keys:
        if not np.all(np.isfinite(params[key])):
            raise SAEFileError(f"{source}: key {key!r} holds NaN or inf values")
    if layout == "topk":
        k = float(np.asarray(params["k"]))
        if k != int(k) or not 1 <= k <= d_sae:
            raise SAEFileError(f"{source}: key 'k' must be an integer in [1, d_sae={d_sae}], got {k!r}")
        return int(d_in), int(d_sae)
    if layout != "jumprelu":
        return int(d_in), int(d_sae)
    thr = np.asarray(params["threshold"])
    if np.any(thr <= 0):
        bad = int(np.argmin(thr))
        raise SAEFileError(
            f"{source}: key 'threshold' must be > 0 everywhere; latent {bad} has {float(thr[bad])!r}"
        )
    return int(d_in), int(d_sae)


def load_params(path: str) -> dict[str, np.ndarray]:
    """Loads a ``params.npz``: ours (any architecture) or a released Gemma Scope file (raw units).

    ``path`` may be the file or the folder holding it. A folder without ``params.npz`` goes to
    :func:`gemmascope.sae.formats.load_any` (Gemma Scope 2 ``params.safetensors``, SAELens
    ``cfg.json``; an error naming the folder when it holds none of them). The layout comes from the
    ``metadata.json`` beside it (JumpReLU without one). Raises :class:`SAEFileError` naming the
    problem (missing file, missing key, wrong shape, non-positive threshold, NaN, a file that does
    not match the ``params_sha256`` in its metadata, a zip CRC error).
    Encode the result with :func:`gemmascope.sae.model.encode`.
    """
    if not path.endswith(".npz") and not os.path.exists(os.path.join(path, "params.npz")):
        from gemmascope.sae import formats  # Gemma Scope 2 and SAELens folders (or a missing one)

        return formats.load_any(path)
    if os.path.isdir(path):
        path = os.path.join(path, "params.npz")
    if not os.path.exists(path):
        raise SAEFileError(f"{path}: no such SAE file (expected a Gemma Scope params.npz)")
    with open(path, "rb") as fh:
        data = fh.read()
    metadata = load_metadata(path)
    want = metadata.get("params_sha256")
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise SAEFileError(f"{path}: the file's sha256 does not match params_sha256 in metadata.json (the "
                           "file is truncated or corrupt, or was replaced); export the SAE again or copy it again")
    try:
        with np.load(io.BytesIO(data)) as npz:
            arrays = {k: np.asarray(npz[k], np.float32) for k in npz.files}
    except Exception as e:  # zipfile (CRC, truncation) / pickle errors come in many types
        raise SAEFileError(f"{path}: not a readable .npz file ({e})") from e
    layout = file_layout(metadata, path)
    validate_params(arrays, source=path, layout=layout)
    return {k: arrays[k] for k in FILE_KEYS[layout]}


def load_metadata(path: str) -> dict[str, Any]:
    """Reads the ``metadata.json`` beside a params.npz (or in a folder); for folders without one,
    what a SAELens ``cfg.json`` or a Gemma Scope 2 folder name tells; {} for released files."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    meta = os.path.join(folder, "metadata.json")
    if not os.path.exists(meta):
        from gemmascope.sae import formats  # a SAELens cfg.json or a Gemma Scope 2 folder name

        return formats.foreign_metadata(folder)
    try:
        with open(meta) as fh:
            return json.load(fh)
    except ValueError as e:
        raise SAEFileError(f"{meta}: not valid JSON ({e})") from None


def width_name(width: int) -> str:
    """Gemma Scope folder names: 16384 -> '16k', 65536 -> '65k', 131072 -> '131k', 2**20 -> '1m'."""
    if width >= 1 << 20 and width % (1 << 20) == 0:
        return f"{width >> 20}m"
    if width >= 1000:
        return f"{width // 1000}k"
    return str(width)


def sae_dir(root: str, site: str, layer: int, width: int, l0: float, arch: str = "jumprelu") -> str:
    """``root/<site>/layer_<L>/width_<W>/average_l0_<N>`` (the Hugging Face Gemma Scope layout);
    other architectures than JumpReLU get a folder of their own above ``average_l0_<N>``."""
    parts = [root, site, f"layer_{layer}", f"width_{width_name(width)}"]
    if arch != "jumprelu":
        parts.append(arch)
    return os.path.join(*parts, f"average_l0_{int(round(l0))}")
