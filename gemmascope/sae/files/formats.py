"""Other libraries' SAE folders, in and out: SAELens and Gemma Scope 2.

Our own layout (``params.npz`` + ``metadata.json``, :mod:`gemmascope.sae.files.io`) stays the one
training writes; this module converts raw-unit params (keys ``W_enc [d_in, d_sae]``, ``W_dec
[d_sae, d_in]``, ``b_enc``, ``b_dec`` and ``threshold`` or ``k``; forward in
:mod:`gemmascope.sae.files.model`) to and from two layouts people already load:

* ``sae_lens``: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``, the
  log10 firing frequency of each latent, when known), which ``sae_lens.SAE.load_from_disk``
  loads. Our JumpReLU (and Gated, and any BatchTopK: they export as JumpReLU) -> SAELens
  ``jumprelu``, ReLU -> ``standard``, TopK -> ``topk``. We write ``apply_b_dec_to_input=False``
  and ``normalize_activations="none"`` (our files are raw units with no pre-encoder bias); on
  reading, a SAELens pre-encoder bias is folded into ``b_enc`` (``b_enc - b_dec @ W_enc``, the
  same fold as :func:`gemmascope.sae.files.io.fold_normalisation` with scale 1) and a TopK's
  ``rescale_acts_by_decoder_norm`` into the weights (``W_enc * n``, ``b_enc * n``, ``W_dec / n``
  with ``n`` the decoder row norms: the same pre-activation ranking and reconstruction).
* ``gemma_scope_2``: ``params.safetensors`` with lowercase keys ``w_enc [d_in, d_sae]``,
  ``w_dec [d_sae, d_out]``, ``b_enc``, ``b_dec``, ``threshold`` (and ``affine_skip_connection
  [d_in, d_out]`` for affine transcoders: our key ``W_skip``), in folders
  ``<resid_post|mlp_out|attn_out|transcoder_all>/layer_<L>_width_<W>_l0_<label>[_affine]``.
  JumpReLU SAEs (Gated exports as JumpReLU) and JumpReLU transcoders (our sites ``transcoder``
  and ``transcoder_affine``; ``d_out`` may differ from ``d_in``). Our exports name the L0 by its
  measured value (``l0_12``); the release's ``small``/``medium``/``big`` labels are read as well.
  SAELens has no transcoder export here (an error says so).

Site names: ours ``res``/``mlp``/``att`` are Gemma Scope 2's ``resid_post``/``mlp_out``/
``attn_out`` and TransformerLens's ``blocks.<L>.hook_resid_post``/``hook_mlp_out``/
``attn.hook_z`` (``att`` is the per-head output before ``o``, i.e. ``hook_z`` flattened).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gemmascope.common import write_bytes_atomic
from gemmascope.config import EXPORT_LAYOUTS
from gemmascope.sae import archs
from gemmascope.sae.files import layouts as sae_io
from gemmascope.sae.files.model import arch_of
from gemmascope.sites import pair_of

LAYOUTS = EXPORT_LAYOUTS  # declared in the config, which must not import this module
SAE_LENS_FORMAT_VERSION = "6.54.12"  # the SAELens release whose loader this layout is tested against
# our file layout (sae.archs.file_layouts() values) -> SAELens architecture, and back
SAE_LENS_ARCH = {"jumprelu": "jumprelu", "relu": "standard", "topk": "topk"}
FROM_SAE_LENS_ARCH = {v: k for k, v in SAE_LENS_ARCH.items()}
GS2_SITES = {
    "res": "resid_post",
    "mlp": "mlp_out",
    "att": "attn_out",
    "transcoder": "transcoder_all",
    "transcoder_affine": "transcoder_all",
    "mlp_in": "transcoder_all",  # the transcoder's input site (older name of the folder's site)
}
# every folder of the release tree (gemmascope.sae.files.release): the selected-layer folders and
# the every-layer ``_all`` ones name the same sites
FROM_GS2_SITES = {
    "resid_post": "res",
    "resid_post_all": "res",
    "mlp_out": "mlp",
    "mlp_out_all": "mlp",
    "attn_out": "att",
    "attn_out_all": "att",
    "transcoder": "transcoder",
    "transcoder_all": "transcoder",
}
GS2_TRANSCODERS = "transcoder_all"
TL_HOOKS = {
    "res": "blocks.{layer}.hook_resid_post",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "att": "blocks.{layer}.attn.hook_z",
    "mlp_in": "blocks.{layer}.ln2.hook_normalized",
}
GS2_KEYS = {
    "W_enc": "w_enc",
    "W_dec": "w_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
    "W_skip": "affine_skip_connection",
}
SKIP = "W_skip"  # our key of the affine skip connection (the file's: GS2_KEYS[SKIP])
# ``_seed_<k>``: the release's suffix for a second SAE of the same name (layer_12_width_262k_l0_medium_seed_1)
_GS2_NAME = re.compile(r"^layer_(\d+)_width_(\d+[km]?)_l0_([a-z]+|\d+)(_affine)?(?:_seed_\d+)?$")


def layout_of(folder: str) -> str:
    """The layout of an SAE folder (or file): ``gemma_scope`` (params.npz), ``gemma_scope_2``
    (params.safetensors) or ``sae_lens`` (cfg.json); an error naming the folder otherwise."""
    if os.path.isfile(folder):
        name = os.path.basename(folder)
        by_file = {
            "params.npz": "gemma_scope",
            "params.safetensors": "gemma_scope_2",
            "cfg.json": "sae_lens",
            "sae_weights.safetensors": "sae_lens",
        }
        if name in by_file:
            return by_file[name]
        raise sae_io.SAEFileError(f"{folder}: not an SAE file (expected params.npz, params.safetensors or cfg.json)")
    for name, layout in (
        ("params.npz", "gemma_scope"),
        ("params.safetensors", "gemma_scope_2"),
        ("cfg.json", "sae_lens"),
    ):
        if os.path.exists(os.path.join(folder, name)):
            return layout
    what = (
        "no such folder" if not os.path.isdir(folder) else "holds neither params.npz, params.safetensors nor cfg.json"
    )
    raise sae_io.SAEFileError(f"{folder}: {what} (expected a Gemma Scope, Gemma Scope 2 or SAELens SAE folder)")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown SAE layout {layout!r} (known: {list(LAYOUTS)})")
    return layout


def _folder(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(path)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not os.path.exists(path):
        raise sae_io.SAEFileError(f"{path}: no such file")
    try:
        raw = load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise sae_io.SAEFileError(f"{path}: not a readable .safetensors file ({e})") from e
    return sae_io.float32_arrays(raw, path)


def _write_safetensors(path: str, arrays: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}, metadata=metadata)
    write_bytes_atomic(path, data)


def _write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=sae_io.json_default).encode()
    write_bytes_atomic(path, text)


def _validate_gs2(params: dict[str, np.ndarray], source: str, transcoder: bool) -> None:
    """:func:`sae_io.validate_params` in the JumpReLU layout, or the transcoder layout (``d_out``
    free, optional skip) for a transcoder; errors name the file's key for the skip."""
    layout = "transcoder" if transcoder or SKIP in params else "jumprelu"
    try:
        sae_io.validate_params(params, source=source, layout=layout)
    except sae_io.SAEFileError as e:
        raise sae_io.SAEFileError(str(e).replace(f"key {SKIP!r}", f"key {GS2_KEYS[SKIP]!r} ({SKIP})")) from None


# ---------------------------------------------------------------------------------------------
# Gemma Scope 2


def gs2_dir(root: str, site: str, layer: int, *, width: int, l0: float | str, affine: bool = False) -> str:
    """``root/<resid_post|mlp_out|attn_out|transcoder_all>/layer_<L>_width_<W>_l0_<label>[_affine]``;
    a numeric ``l0`` is written rounded (``l0_12``), a string (``"small"``) as given. The site
    ``transcoder_affine`` gets the ``_affine`` suffix by itself."""
    if site not in GS2_SITES:
        raise ValueError(f"site {site!r} has no Gemma Scope 2 folder (known: {sorted(GS2_SITES)})")
    pair = pair_of(site)
    affine = affine or bool(pair and pair.affine)
    label = l0 if isinstance(l0, str) else str(int(round(float(l0))))
    name = f"layer_{int(layer)}_width_{sae_io.width_name(int(width))}_l0_{label}" + ("_affine" if affine else "")
    return os.path.join(root, GS2_SITES[site], name)


def parse_gs2_dir(folder: str) -> dict[str, Any]:
    """``.../resid_post/layer_12_width_16k_l0_small`` -> ``{"site": "res", "layer": 12, "width":
    "16k", "l0": "small", "affine": False}``; {} when the names do not follow the layout. A
    ``transcoder_all`` folder's site is ``transcoder`` (``transcoder_affine`` when ``_affine``)."""
    folder = os.path.normpath(folder)
    m = _GS2_NAME.match(os.path.basename(folder))
    site = FROM_GS2_SITES.get(os.path.basename(os.path.dirname(folder)))
    if not m:
        return {}
    out = {"layer": int(m.group(1)), "width": m.group(2), "l0": m.group(3), "affine": bool(m.group(4))}
    if site:
        out["site"] = "transcoder_affine" if site == "transcoder" and out["affine"] else site
    return out


def gs2_transcoder_metadata(folder: str) -> dict[str, Any]:
    """Our transcoder metadata fields a Gemma Scope 2 ``transcoder_all`` folder name gives (its
    sites: the MLP's input and output); {} for other folders."""
    parsed = parse_gs2_dir(folder)
    pair = pair_of(parsed.get("site", ""))
    if pair is None:
        return {}
    return {
        "architecture": "transcoder",
        "encoder": "jumprelu",
        "input_site": pair.input_site,
        "output_site": pair.output_site,
        "affine_skip": pair.affine,
    }


def save_gemma_scope_2(folder: str, params: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
    """Writes ``folder/params.safetensors`` (lowercase keys; a JumpReLU SAE or transcoder, the
    latter optionally with the affine skip connection ``W_skip`` as ``affine_skip_connection``)
    and our ``metadata.json`` beside it when given; returns the file's path."""
    arch = sae_io.file_layout(metadata, folder) if metadata is not None else sae_model_arch(params)
    if arch not in ("jumprelu", "transcoder"):
        raise ValueError(
            f"{folder}: the gemma_scope_2 layout holds JumpReLU SAEs and transcoders (and Gated SAEs, "
            f"exported as JumpReLU); architecture {(metadata or {}).get('architecture', arch)!r} cannot be written"
        )
    arrays = {k: np.asarray(v, np.float32) for k, v in params.items() if k in GS2_KEYS}
    _validate_gs2(arrays, folder, arch == "transcoder")
    path = os.path.join(folder, "params.safetensors")
    _write_safetensors(path, {GS2_KEYS[k]: v for k, v in arrays.items()})
    if metadata is not None:
        _write_json(os.path.join(folder, "metadata.json"), dict(metadata))
    return path


def load_gemma_scope_2(path: str) -> dict[str, np.ndarray]:
    """Reads ``params.safetensors`` (the file or its folder) into our keys (``W_enc`` ...,
    ``W_skip`` from ``affine_skip_connection``); raw units, as released. A ``transcoder_all``
    folder (or a file with a skip) is checked as a transcoder (``d_out`` from ``w_dec``)."""
    if os.path.isdir(path):
        path = os.path.join(path, "params.safetensors")
    raw = _read_safetensors(path)
    back = {v: k for k, v in GS2_KEYS.items()}
    unknown = sorted(set(raw) - set(back))
    if unknown:
        raise sae_io.SAEFileError(f"{path}: unexpected keys {unknown} (Gemma Scope 2 keys: {list(back)})")
    params = {back[k]: v for k, v in raw.items()}
    _validate_gs2(params, path, bool(gs2_transcoder_metadata(os.path.dirname(path))))
    return params


def sae_model_arch(params: Mapping[str, Any]) -> str:

    return arch_of(params)


# ---------------------------------------------------------------------------------------------
# SAELens


def hook_name(site: str | None, layer: int | None) -> str | None:
    """TransformerLens hook of one of our sites (None when unknown)."""
    if site not in TL_HOOKS or layer is None:
        return None
    return TL_HOOKS[site].format(layer=int(layer))


def save_sae_lens(
    folder: str,
    params: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    log10_firing_frequency: np.ndarray | None = None,
) -> str:
    """Writes ``cfg.json``, ``sae_weights.safetensors`` and, when given, ``sparsity.safetensors``
    (key ``sparsity``: log10 of each latent's firing frequency, SAELens's ``log10(freq + 1e-10)``).

    ``params``: raw-unit params; ``metadata``: our ``metadata.json`` (architecture, site, layer,
    model). Raises naming the architecture when SAELens cannot represent it.
    """
    meta = dict(metadata or {})
    arch = meta.get("architecture") or sae_model_arch(params)
    if SKIP in params or arch == "transcoder":
        raise ValueError(
            f"{folder}: a transcoder ({meta.get('site', 'architecture transcoder')}) has no SAELens export "
            "here; export it as gemma_scope (params.npz) or gemma_scope_2"
        )
    layout = sae_io.file_layout({"architecture": arch}, folder) if arch in archs.file_layouts() else None
    if layout not in SAE_LENS_ARCH:
        raise ValueError(
            f"{folder}: architecture {arch!r} has no SAELens class (we export "
            f"{sorted(archs.file_layouts())} as {sorted(set(SAE_LENS_ARCH.values()))})"
        )
    arrays = {k: np.asarray(v, np.float32) for k, v in params.items()}
    d_in, d_sae = sae_io.validate_params(arrays, source=folder, layout=layout)
    weights = {k: arrays[k] for k in sae_io.FILE_KEYS[layout] if k != "k"}
    site, layer = meta.get("site"), meta.get("layer")
    cfg: dict[str, Any] = {
        "architecture": SAE_LENS_ARCH[layout],
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if site == "att" else "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": meta.get("model"),
            "hook_name": hook_name(site, layer),
            "hook_head_index": None,
            "prepend_bos": True,
            "exported_by": "gemmascope",
            "gemmascope_architecture": arch,
            "gemmascope_site": site,
            "gemmascope_layer": layer,
        },
    }
    if layout == "topk":
        cfg.update(k=int(np.asarray(arrays["k"])), rescale_acts_by_decoder_norm=False)
    os.makedirs(folder, exist_ok=True)
    _write_safetensors(os.path.join(folder, "sae_weights.safetensors"), weights)
    if log10_firing_frequency is not None:
        lf = np.asarray(log10_firing_frequency, np.float32)
        if lf.shape != (d_sae,):
            raise ValueError(f"{folder}: log10 firing frequencies have shape {lf.shape}, expected ({d_sae},)")
        _write_safetensors(os.path.join(folder, "sparsity.safetensors"), {"sparsity": lf})
    _write_json(os.path.join(folder, "cfg.json"), cfg)
    return folder


def read_sae_lens_cfg(folder: str) -> dict[str, Any]:
    """``cfg.json`` as a dict; SAEFileError for a missing file, one that is not UTF-8 JSON or not
    an object, or a ``metadata`` field that is not an object."""
    path = os.path.join(_folder(folder), "cfg.json")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except FileNotFoundError:
        raise sae_io.SAEFileError(f"{path}: no such file (a SAELens SAE folder holds cfg.json)") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise sae_io.SAEFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise sae_io.SAEFileError(f"{path}: holds a JSON {type(cfg).__name__}, not an object")
    cfg_field(cfg, "metadata", dict, path)
    return cfg


def cfg_field(cfg: Mapping[str, Any], key: str, kind: type | tuple[type, ...], src: str, default: Any = None) -> Any:
    """``cfg[key]`` checked to be of type ``kind`` (a bool is no number here); ``default`` when
    absent, and null allowed only where the default is None. SAEFileError naming the field."""
    v = cfg.get(key, default)
    if v is None and default is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise sae_io.SAEFileError(f"{src}: field {key!r} must be a {want}, got {v!r}")
    return v


def load_sae_lens(path: str) -> dict[str, np.ndarray]:
    """Reads a SAELens folder (``jumprelu``, ``standard`` or ``topk``) into raw-unit params of our
    forward: pre-encoder bias and decoder-norm rescaling folded (see module doc)."""
    folder = _folder(path)
    cfg = read_sae_lens_cfg(folder)
    src = os.path.join(folder, "cfg.json")
    arch = cfg_field(cfg, "architecture", str, src, "standard")
    if arch not in FROM_SAE_LENS_ARCH:
        raise sae_io.SAEFileError(
            f"{src}: SAELens architecture {arch!r} is not one we have (we read {sorted(FROM_SAE_LENS_ARCH)})"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm != "none":
        raise sae_io.SAEFileError(
            f"{src}: normalize_activations={norm!r} is not supported (only 'none'; "
            "fold the normalisation into the weights first)"
        )
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise sae_io.SAEFileError(f"{src}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    raw = _read_safetensors(os.path.join(folder, "sae_weights.safetensors"))
    if "log_threshold" in raw and "threshold" not in raw:  # older SAELens JumpReLU checkpoints
        raw["threshold"] = np.exp(raw.pop("log_threshold"))
    layout = FROM_SAE_LENS_ARCH[arch]
    keys = [k for k in sae_io.FILE_KEYS[layout] if k != "k"]
    missing = [k for k in keys if k not in raw]
    if missing:
        raise sae_io.SAEFileError(
            f"{folder}/sae_weights.safetensors: missing keys {missing} for a SAELens {arch!r} SAE"
        )
    p = {k: raw[k].astype(np.float64) for k in keys}
    if layout == "topk":
        if "k" not in cfg:
            raise sae_io.SAEFileError(f"{src}: a topk SAE needs the field 'k'")
        cfg_field(cfg, "k", (int, float), src)
        if cfg_field(cfg, "rescale_acts_by_decoder_norm", bool, src, False):
            n = np.maximum(np.linalg.norm(p["W_dec"], axis=-1), 1e-8)  # SAELens's clamp
            p["W_enc"], p["b_enc"], p["W_dec"] = p["W_enc"] * n, p["b_enc"] * n, p["W_dec"] / n[:, None]
        p["k"] = np.float64(cfg["k"])
    if cfg_field(cfg, "apply_b_dec_to_input", bool, src, True):
        p = sae_io.fold_normalisation(p, 1.0, pre_encoder_bias=True)
    params = {k: np.asarray(v, np.float32) for k, v in p.items()}
    if layout == "jumprelu":
        # SAELens's JumpReLU is relu(pre) * (pre > threshold): for threshold <= 0 (its training clamps
        # at 0) that is relu(pre), which our pre * (pre > threshold) gives with the smallest positive
        # float32 (they differ only for pre in (0, 1.2e-38]).
        params["threshold"] = np.maximum(params["threshold"], np.finfo(np.float32).tiny)
    sae_io.validate_params(params, source=folder, layout=layout)
    return params


def sae_lens_metadata(folder: str) -> dict[str, Any]:
    """Our metadata fields (architecture, d_in, d_sae, site, layer, model) from a SAELens cfg.json."""
    cfg = read_sae_lens_cfg(folder)
    src = os.path.join(_folder(folder), "cfg.json")
    md = cfg.get("metadata") or {}
    arch = cfg_field(cfg, "architecture", str, src, "standard")
    out: dict[str, Any] = {
        "architecture": FROM_SAE_LENS_ARCH.get(arch, arch),
        "d_in": cfg_field(cfg, "d_in", int, src),
        "d_sae": cfg_field(cfg, "d_sae", int, src),
    }
    if cfg_field(md, "gemmascope_architecture", str, f"{src}: metadata"):
        out["architecture"] = md["gemmascope_architecture"]
    if "k" in cfg:
        out["k"] = cfg_field(cfg, "k", (int, float), src)
    if cfg_field(md, "model_name", str, f"{src}: metadata"):
        out["model"] = md["model_name"]
    m = re.match(
        r"^blocks\.(\d+)\.(hook_resid_post|hook_mlp_out|attn\.hook_z|ln2\.hook_normalized)$",
        cfg_field(md, "hook_name", str, f"{src}: metadata") or "",
    )
    if m:
        out["layer"] = int(m.group(1))
        out["site"] = {
            "hook_resid_post": "res",
            "hook_mlp_out": "mlp",
            "attn.hook_z": "att",
            "ln2.hook_normalized": "mlp_in",
        }[m.group(2)]
    return out


# ---------------------------------------------------------------------------------------------
# Dispatch


def load_any(path: str) -> dict[str, np.ndarray]:
    """Raw-unit params from a folder of any layout (see :func:`layout_of`)."""
    layout = layout_of(path)
    if layout == "gemma_scope":
        return sae_io.load_npz(os.path.join(path, "params.npz") if os.path.isdir(path) else path)
    if layout == "gemma_scope_2":
        return load_gemma_scope_2(path)
    return load_sae_lens(path)


def log10_firing_frequency(fire_counts: np.ndarray, n_tokens: int) -> np.ndarray:
    """SAELens's sparsity statistic: ``log10(count / n_tokens + 1e-10)`` per latent."""
    return np.log10(np.asarray(fire_counts, np.float64) / max(int(n_tokens), 1) + 1e-10).astype(np.float32)


def foreign_metadata(folder: str) -> dict[str, Any]:
    """Metadata of a folder without our ``metadata.json``: from a SAELens ``cfg.json``, or the
    site and layer a Gemma Scope 2 folder name gives; {} otherwise (a released params.npz)."""
    if os.path.exists(os.path.join(folder, "cfg.json")):
        return sae_lens_metadata(folder)
    if os.path.exists(os.path.join(folder, "params.safetensors")):
        out = {k: v for k, v in parse_gs2_dir(folder).items() if k in ("site", "layer")}
        return {**out, **gs2_transcoder_metadata(folder)}
    return {}
