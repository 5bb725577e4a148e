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

The array layouts, validation and folding live in :mod:`gemmascope.sae.files.layouts`; Gemma Scope 2
and SAELens folders in :mod:`gemmascope.sae.files.formats`. This module is the entry point for every
layout: :func:`load_params` and :func:`load_metadata` take any SAE folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from gemmascope.common import atomic_write, write_bytes_atomic
from gemmascope.sae.files import formats, mirror, multilayer
from gemmascope.sae.files.layouts import (  # noqa: F401  (re-exported: the names callers use)
    BASE_KEYS,
    FILE_KEYS,
    SAEFileError,
    file_layout,
    fold_normalisation,
    fold_transcoder,
    json_default,
    load_npz,
    read_metadata_json,
    validate_params,
    width_name,
)

_atomic_write = atomic_write  # one implementation: gemmascope/common.py
_json_default = json_default


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
    write_bytes_atomic(path, data)
    if metadata is not None:
        meta_path = os.path.join(os.path.dirname(path), "metadata.json")
        metadata = {**dict(metadata), "params_sha256": hashlib.sha256(data).hexdigest()}
        text = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default).encode()
        write_bytes_atomic(meta_path, text)


def load_params(path: str, root: str | None = None) -> dict[str, np.ndarray]:
    """Loads an SAE in raw units from any layout: our / released Gemma Scope ``params.npz`` (the
    file or its folder), a Gemma Scope 2 ``params.safetensors`` folder or a SAELens ``cfg.json``
    folder (:func:`gemmascope.sae.files.formats.load_any`; an error naming the folder when it holds none
    of them). A ``params.npz``'s layout comes from the ``metadata.json`` beside it (JumpReLU
    without one). Raises :class:`SAEFileError` naming the problem (missing file, missing key,
    wrong shape, non-positive threshold, NaN, a file that does not match the ``params_sha256`` in
    its metadata, a zip CRC error). Encode the result with :func:`gemmascope.sae.files.model.encode`.

    With ``root``, ``path`` is a Gemma Scope 2 release name in the local mirror ``root``
    (``"gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium"`` or
    ``"gemma-scope-2-270m-pt/resid_post/layer_9_width_16k_l0_medium"``;
    :func:`gemmascope.sae.files.mirror.resolve`, whose error lists what the mirror holds). A
    cross-layer transcoder folder (``params_layer_<i>.safetensors``) gives its stacked arrays
    (:func:`gemmascope.sae.files.multilayer.load_gemma_scope_2_clt`: ``W_enc [L, d_in, d_sae]`` ...).
    """
    if root is not None:
        path = mirror.resolve(path, root)
    if os.path.isfile(os.path.join(path, "params_layer_0.safetensors")):
        return multilayer.load_gemma_scope_2_clt(path)
    if not path.endswith(".npz") and not os.path.exists(os.path.join(path, "params.npz")):
        return formats.load_any(path)
    return load_npz(os.path.join(path, "params.npz") if os.path.isdir(path) else path)


def load_metadata(path: str, root: str | None = None) -> dict[str, Any]:
    """Reads the ``metadata.json`` beside a params.npz (or in a folder); for folders without one,
    what a SAELens ``cfg.json`` or a Gemma Scope 2 folder name tells; {} for released files.
    With ``root``, ``path`` is a release name in a local mirror, as in :func:`load_params`."""
    if root is not None:
        path = mirror.resolve(path, root)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    meta = read_metadata_json(folder)
    return formats.foreign_metadata(folder) if meta is None else meta


def sae_dir(root: str, site: str, layer: int, *, width: int, l0: float, arch: str = "jumprelu") -> str:
    """``root/<site>/layer_<L>/width_<W>/average_l0_<N>`` (the Hugging Face Gemma Scope layout);
    other architectures than JumpReLU get a folder of their own above ``average_l0_<N>``."""
    parts = [root, site, f"layer_{layer}", f"width_{width_name(width)}"]
    if arch != "jumprelu":
        parts.append(arch)
    return os.path.join(*parts, f"average_l0_{int(round(l0))}")
