"""Writing an SAE folder in another layout: ``launch/export.py`` and the end-of-training hook.

Reads through :mod:`gemmascope.sae.files.io` (any layout) and writes through
:mod:`gemmascope.sae.files.formats` (Gemma Scope 2, SAELens) or :func:`gemmascope.sae.files.io.save_params`.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from gemmascope.sae.files.formats import (
    SKIP,
    check_layout,
    gs2_dir,
    load_any,
    log10_firing_frequency,
    sae_model_arch,
    save_gemma_scope_2,
    save_sae_lens,
)


def export(src: str, layout: str, out: str, log10_freq: np.ndarray | None = None) -> str:
    """Writes the SAE folder ``src`` (any layout we read) in ``layout`` under the folder ``out``;
    returns the written folder. ``gemma_scope_2`` puts the file in ``out`` itself."""
    check_layout(layout)
    params = load_any(src)
    meta = sae_io.load_metadata(src)
    if layout == "sae_lens":
        return save_sae_lens(out, params, meta or None, log10_freq)
    if layout == "gemma_scope_2":
        save_gemma_scope_2(out, params, meta or None)
        return out
    arch = meta.get("architecture") or ("transcoder" if SKIP in params else sae_model_arch(params))
    sae_io.save_params(os.path.join(out, "params.npz"), params, {**meta, "architecture": arch})
    return out


def saved_log10_frequency(folder: str) -> np.ndarray | None:
    """Per-latent log10 firing frequencies from the evaluation (``fire_counts.npy`` and the token
    count in ``eval.json`` beside the SAE), or None when it was not evaluated."""
    counts, ev = os.path.join(folder, "fire_counts.npy"), os.path.join(folder, "eval.json")
    if not (os.path.exists(counts) and os.path.exists(ev)):
        return None
    with open(ev) as fh:
        n = json.load(fh)["n_tokens"]
    return log10_firing_frequency(np.load(counts), n)


def export_layouts(layouts, workdir: str, folder: str, heldout: np.ndarray | None = None, log=print) -> list[str]:
    """The end-of-training hook: writes the SAE in ``workdir/saes/<...>`` (``folder``) in every
    other layout of ``layouts`` (``config.export.layouts``): SAELens under
    ``workdir/saes_sae_lens/<same sub-folders>`` (its sparsity file from the firing frequencies on
    the ``heldout [n, d_in]`` rows when given), Gemma Scope 2 under
    ``workdir/saes_gemma_scope_2/<gs2 folder>`` (:func:`gs2_dir`). Returns the written folders."""
    written = []
    for layout in layouts:
        check_layout(layout)
        if layout == "gemma_scope":
            continue
        meta = sae_io.load_metadata(folder)
        if layout == "gemma_scope_2":
            out = gs2_dir(
                os.path.join(workdir, "saes_gemma_scope_2"),
                meta["site"],
                meta["layer"],
                width=meta["d_sae"],
                l0=meta["l0"],
                affine=bool(meta.get("affine_skip", False)),
            )
            # two SAEs of a sweep on the same rounded L0: keep their folders apart, as in saes/
            out += re.search(r"(_sae\d+)?$", folder).group(0)
            lf = None
        else:
            rel = os.path.relpath(folder, os.path.join(workdir, "saes"))
            out = os.path.join(workdir, "saes_sae_lens", rel)
            lf = None
            if heldout is not None:
                x = np.asarray(heldout, np.float32)[:, : int(meta.get("d_in", heldout.shape[-1]))]
                f = np.asarray(sae_model.encode(sae_io.load_params(folder), x))
                lf = log10_firing_frequency((f != 0).sum(0), len(f))
        written.append(export(folder, layout, out, lf))
        if log:
            log(f"[export] {layout} -> {written[-1]}")
    return written
