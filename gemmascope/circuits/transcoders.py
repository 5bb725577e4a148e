"""The transcoders an attribution graph is built on: one per layer, or one cross-layer transcoder.

Both are held as one :class:`TranscoderStack` of raw-unit arrays (what the exported files hold,
:mod:`gemmascope.sae.files`), ``L`` the LM's layers, ``n`` the width, ``d`` the model width::

    W_enc [L, d, n], b_enc [L, n], threshold [L, n] (JumpReLU; absent: ReLU),
    W_dec [L, n, d] (per-layer: feature of layer l writes layer l's MLP output)
          or [L, n, L, d] (cross-layer: to every layer m >= l),
    b_dec [L, d], W_skip [L, d, d] (affine transcoders only)

Per-layer transcoders read ``mlp_in`` (after the pre-MLP norm) and CLTs ``res_mid`` (before it):
the sites their training read. Both write ``mlp`` (Gemma: after the post-MLP norm).

A graph explains every layer's MLP: a stack must cover layers ``0..L-1`` of the LM it is used
with, at its width (:func:`check_against`), or the error nodes would carry whole MLPs.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from gemmascope.sae.files import multilayer


@dataclasses.dataclass(frozen=True)
class TranscoderStack:
    """Raw-unit transcoder arrays over every layer (module doc); ``names``: where each came from."""

    params: Mapping[str, np.ndarray]
    cross_layer: bool
    read_site: str
    names: tuple[str, ...] = ()
    model: str | None = None  # the LM the files say they were trained on, when they say

    @property
    def n_layers(self) -> int:
        return int(self.params["W_enc"].shape[0])

    @property
    def d_model(self) -> int:
        return int(self.params["W_enc"].shape[1])

    @property
    def width(self) -> int:
        return int(self.params["W_enc"].shape[2])

    @property
    def has_skip(self) -> bool:
        return "W_skip" in self.params

    def layer_encoder(self, layer: int) -> dict[str, Any]:
        """Layer ``layer``'s encoder as an exported-SAE dict (:func:`gemmascope.sae.files.model.encode`)."""
        keys = [k for k in ("W_enc", "b_enc", "threshold") if k in self.params]
        return {k: self.params[k][layer] for k in keys}

    def encode(self, layer: int, x: Any) -> jnp.ndarray:
        """Codes ``[..., n]`` of layer ``layer``'s read ``x [..., d]``."""
        return sae_model.encode(self.layer_encoder(layer), jnp.asarray(x, jnp.float32))

    def write(self, layer: int, codes, read) -> jnp.ndarray:
        """Layer ``layer``'s MLP output as the transcoders predict it, ``[..., d]``: from ``codes``
        (indexable by layer, each ``[..., n]``; a CLT reads layers ``0..layer``) and the layer's
        read ``[..., d]`` (the affine skip)."""
        p = self.params
        if self.cross_layer:
            y = sum(jnp.asarray(codes[s]) @ p["W_dec"][s, :, layer] for s in range(layer + 1))
        else:
            y = jnp.asarray(codes[layer]) @ p["W_dec"][layer]
        y = y + p["b_dec"][layer]
        if self.has_skip:
            y = y + jnp.asarray(read, jnp.float32) @ p["W_skip"][layer]
        return y

    def decoder_rows(self, layer: int, features: np.ndarray) -> np.ndarray:
        """What features ``features [k]`` of layer ``layer`` write per unit activation: ``[k, d]``
        (per-layer) or ``[k, L, d]`` (cross-layer: to each layer's MLP output, zero before ``layer``)."""
        rows = np.asarray(self.params["W_dec"][layer])[np.asarray(features, np.int64)]
        if self.cross_layer:
            rows = rows * (np.arange(self.n_layers) >= layer)[None, :, None]
        return rows.astype(np.float32)


def _stacked_transcoders(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """One ``params.npz`` per layer (in layer order) stacked on a leading layer axis; every file
    must be a transcoder (``W_dec`` [n, d]) of the same width and kind."""
    layers = [sae_io.load_params(p) for p in paths]
    keys = set(layers[0])
    for p, lp in zip(paths, layers):
        if set(lp) != keys:
            raise ValueError(
                f"{p}: keys {sorted(lp)} differ from {paths[0]}'s {sorted(keys)}: a stack needs one kind of transcoder"
            )
        if lp["W_enc"].shape != layers[0]["W_enc"].shape:
            raise ValueError(
                f"{p}: W_enc has shape {lp['W_enc'].shape}, {paths[0]} has {layers[0]['W_enc'].shape}: "
                "a stack needs one width on every layer"
            )
    if "k" in keys:
        raise ValueError(f"{paths[0]}: TopK transcoders are not supported for attribution yet (JumpReLU or ReLU)")
    return {k: np.stack([np.asarray(lp[k], np.float32) for lp in layers]) for k in sorted(keys)}


def find_transcoders(root: str) -> dict[int, str]:
    """``{layer: params.npz}`` of the per-layer transcoders under ``root`` (a workdir's ``saes``
    tree, or any folder holding ``layer_<i>/.../params.npz``); ValueError when a layer has several
    (pass a narrower folder, e.g. one sweep value's)."""
    found: dict[int, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "params.npz"), recursive=True)):
        meta = sae_io.load_metadata(path)
        if meta.get("architecture") != "transcoder":
            continue
        found.setdefault(int(meta["layer"]), []).append(path)
    many = {l: ps for l, ps in found.items() if len(ps) > 1}
    if many:
        l, ps = sorted(many.items())[0]
        raise ValueError(
            f"{root}: layer {l} has {len(ps)} transcoders ({', '.join(ps[:3])}...): pass a folder with one per layer, "
            "or the list of files"
        )
    return {l: ps[0] for l, ps in found.items()}


def load_stack(source: str | Sequence[str]) -> TranscoderStack:
    """A :class:`TranscoderStack` from a CLT folder (Gemma Scope 2's ``params_layer_<i>.safetensors``
    + ``config.json``), a folder of per-layer transcoders (:func:`find_transcoders`), or a list of
    per-layer ``params.npz`` files in layer order."""
    if isinstance(source, str) and os.path.isdir(source) and multilayer.read_clt_config(source) is not None:
        cfg = multilayer.read_clt_config(source) or {}
        if cfg.get("architecture", "clt") != "clt":
            raise ValueError(
                f"{source}: config.json architecture {cfg['architecture']!r} is not a transcoder "
                "(attribution graphs need a CLT or per-layer transcoders)"
            )
        params = multilayer.load_gemma_scope_2_clt(source)
        model = cfg.get("model")
        return TranscoderStack(params, cross_layer=True, read_site="res_mid", names=(source,), model=model)
    if isinstance(source, str):
        if not os.path.isdir(source):
            raise FileNotFoundError(f"{source}: no such transcoder folder")
        by_layer = find_transcoders(source)
        if not by_layer:
            raise FileNotFoundError(f"{source}: holds neither a CLT (config.json) nor per-layer transcoders")
        missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
        if missing:
            raise ValueError(f"{source}: no transcoder for layer(s) {missing} (found layers {sorted(by_layer)})")
        paths = [by_layer[l] for l in sorted(by_layer)]
    else:
        paths = list(source)
    params = _stacked_transcoders(paths)
    models = {sae_io.load_metadata(p).get("model") for p in paths} - {None}
    if len(models) > 1:
        raise ValueError(f"{paths[0]}...: the transcoders were trained on different models: {sorted(models)}")
    model = models.pop() if models else None
    return TranscoderStack(params, cross_layer=False, read_site="mlp_in", names=tuple(paths), model=model)


def model_mismatch(stack: TranscoderStack, model_name: str | None) -> str | None:
    """A warning when the files name the LM they were trained on and it is not ``model_name``
    (a warning, not an error: the same weights load under several names, a GGUF and a hub id)."""
    if model_name is None or stack.model is None or stack.model == model_name:
        return None
    where = stack.names[0] if stack.names else "transcoders"
    return f"{where}: the transcoders were trained on {stack.model!r}, the LM loaded is {model_name!r}"


def check_against(stack: TranscoderStack, cfg) -> None:
    """ValueError naming the mismatch when ``stack`` does not fit the LM ``cfg``: every layer
    covered, the model width, a square (``d -> d``) decoder."""
    where = stack.names[0] if stack.names else "transcoders"
    if stack.n_layers != cfg.n_layers:
        raise ValueError(
            f"{where}: the transcoders cover {stack.n_layers} layer(s) but the LM has {cfg.n_layers}: "
            "an attribution graph replaces every MLP (train or pass one transcoder per layer)"
        )
    d_out = int(stack.params["W_dec"].shape[-1])
    if stack.d_model != cfg.d_model or d_out != cfg.d_model:
        raise ValueError(
            f"{where}: the transcoders read width {stack.d_model} and write {d_out}, but the LM's d_model is "
            f"{cfg.d_model}: transcoders from another model?"
        )
