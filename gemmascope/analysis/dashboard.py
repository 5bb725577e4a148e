"""Feature dashboards: scan text through the LM and an SAE, then write a static, offline HTML site.

:func:`build_dashboard` does both steps for an SAE file and a checkpoint (the embedded SmolLM2 by
default), reading the held-out split of the embedded corpus; ``launch/analyze.py`` is its CLI.
The steps, usable on their own, live in two modules whose public names are re-exported here:

1. :mod:`gemmascope.analysis.dashboard_scan`: :func:`scan` (LM + SAE over packed text batches into
   a :class:`ScanResult`: firing counts, top contexts, sparse activations), :func:`scan_codes`,
   :func:`text_batches`, and the readers :func:`latent_contexts`, :func:`firing_tokens`,
   :func:`histogram`.
2. :mod:`gemmascope.analysis.dashboard_render`: :func:`write_site` (``index.html``,
   ``latents/<i>.html``, ``style.css``, ``summary.json``) from Jinja2 templates with autoescaping
   (``dashboard_templates/``) and static CSS/JS (``dashboard_static/``), plus the token display
   helpers :func:`chip_text`, :func:`context_text`, :func:`esc`, :func:`token_strings`.

This module adds the pieces of the one call: :func:`parse_latents`, :func:`resolve_sae_path` and
:func:`random_direction_floor` (the enrichment baseline).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from gemmascope.analysis import enrichment as enrichment_lib
from gemmascope.analysis.dashboard_render import (
    SiteInfo,
    chip_text,
    context_text,
    context_view,
    esc,
    histogram_svg,
    histogram_view,
    static_text,
    token_strings,
    write_site,
)
from gemmascope.analysis.dashboard_scan import (
    Context,
    DashboardInputError,
    ScanResult,
    document_bounds,
    firing_tokens,
    histogram,
    latent_contexts,
    scan,
    scan_codes,
    text_batches,
)
from gemmascope.analysis.logit_lens import logit_lens
from gemmascope.data import text as text_lib
from gemmascope.lm.loading import load_lm
from gemmascope.sae.files import io as sae_io
from gemmascope.sites import pair_of

__all__ = [
    "Context",
    "DashboardInputError",
    "ScanResult",
    "SiteInfo",
    "build_dashboard",
    "chip_text",
    "context_text",
    "context_view",
    "document_bounds",
    "esc",
    "firing_tokens",
    "histogram",
    "histogram_svg",
    "histogram_view",
    "latent_contexts",
    "parse_latents",
    "random_direction_floor",
    "resolve_sae_path",
    "scan",
    "scan_codes",
    "static_text",
    "text_batches",
    "token_strings",
    "write_site",
]


def random_direction_floor(
    W_U: Any, d_in: int, token_sets: Mapping[str, Any], *, n: int = 256, q: float = 99.0, seed: int = 0
) -> dict[str, float]:
    """``{set: percentile q of |enrichment score|}`` over ``n`` random unit directions ``[n, d_in]``
    read through ``W_U``: how strong an enrichment any direction shows, the baseline a latent must beat."""
    r = np.random.default_rng(seed).standard_normal((n, d_in)).astype(np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    res = enrichment_lib.token_set_enrichment(r, W_U, token_sets, correction="none")
    return {name: float(np.percentile(np.abs(res.score[:, j]), q)) for j, name in enumerate(res.set_names)}


# ----------------------------------------------------------------------------------- one call


def parse_latents(spec: str | Sequence[int] | None, d_sae: int) -> list[int]:
    """``None``/``"all"`` -> every latent; ``"0-99,512"`` -> ranges and indices; a sequence as is.

    Raises :class:`DashboardInputError` naming a bad entry or an index outside ``[0, d_sae)``.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(d_sae))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not m:
                raise DashboardInputError(f"latents: cannot read {part!r} (use indices and ranges like '0-99,512')")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) else a
            if b < a:
                raise DashboardInputError(f"latents: range {part!r} is empty")
            out.extend(range(a, b + 1))
    else:
        out = [int(i) for i in spec]
    bad = [i for i in out if not 0 <= i < d_sae]
    if bad:
        raise DashboardInputError(f"latent {bad[0]} out of range: the SAE has {d_sae} latents (valid: 0..{d_sae - 1})")
    return list(dict.fromkeys(out))


def resolve_sae_path(path: str) -> str:
    """An SAE folder or ``params.npz`` -> the ``params.npz`` path; raises naming what is missing."""
    p = os.path.join(path, "params.npz") if os.path.isdir(path) else path
    if not os.path.exists(p):
        raise DashboardInputError(f"{p}: no such SAE file (pass an exported SAE folder or its params.npz)")
    return p


def build_dashboard(
    sae_path: str,
    out_dir: str,
    *,
    n_tokens: int = 50_000,
    latents: str | Sequence[int] | None = None,
    layer: int | None = None,
    site: str | None = None,
    checkpoint: str = "embedded",
    lm: tuple | None = None,
    split: str = "heldout",
    seq_len: int = 128,
    batch_sequences: int = 32,
    k: int = 12,
    outlier_norm_factor: float = 10.0,
    enrichment: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Scans text with an SAE and writes its dashboard site into ``out_dir``; returns the summary.

    Args:
      sae_path: an exported SAE folder or ``params.npz`` (``metadata.json`` beside it gives the
        layer and site; a released Gemma Scope file has none: pass ``layer`` and ``site``). A
        transcoder (site ``transcoder``/``transcoder_affine``) is scanned on its input site (the
        MLP input); its logit lens and enrichment read its decoder rows, which live in the MLP
        output space, part of the residual stream, so ``W_dec @ W_U`` means what it does for an SAE.
      n_tokens: text tokens to scan (the embedded held-out split holds about 29k).
      latents: which latents get a row and a page (``"0-99,512"``, a list, or None for all).
      checkpoint: the LM (``"embedded"``, a ``.gguf``, a Hugging Face dir); ``lm``: an already
        loaded ``(cfg, params, tokenizer)`` instead (notebooks, tests).
      split: ``"heldout"`` (default), ``"train"`` or ``"all"`` documents of the embedded corpus.
      seq_len, batch_sequences: packing of the scanned text (BOS first in every row).
      k: top contexts per latent; enrichment: also run token-set enrichment of the listed latents
        (shown when beyond the 99th percentile of 256 random directions, :func:`random_direction_floor`).
    """
    t_start = time.time()
    params_path = resolve_sae_path(sae_path)
    sae = sae_io.load_params(params_path)
    meta = sae_io.load_metadata(params_path)
    d_sae = int(np.shape(sae["W_enc"])[1])
    chosen = parse_latents(latents, d_sae)
    layer = layer if layer is not None else meta.get("layer")
    site = site or meta.get("site")
    if layer is None or site is None:
        raise DashboardInputError(
            f"{params_path}: no metadata.json with 'layer' and 'site' beside it; pass layer= and site= (--layer/--site)"
        )
    if split not in ("heldout", "train", "all"):
        raise DashboardInputError(f"split must be 'heldout', 'train' or 'all', got {split!r}")
    if lm is None:
        loaded = load_lm(checkpoint)
        lm = (loaded.cfg, loaded.params, loaded.tokenizer)
    cfg, lm_params, tokenizer = lm
    if not 0 <= int(layer) < cfg.n_layers:
        raise DashboardInputError(f"layer {layer} out of range: the model has {cfg.n_layers} layers")
    src = {"kind": "embedded"} if split == "all" else {"kind": "embedded", "split_part": split}
    batches = text_batches(tokenizer, cfg, text_lib.iter_texts(src), seq_len, batch_sequences)
    res = scan(
        lm_params,
        cfg,
        sae,
        layer=int(layer),
        site=site,
        batches=batches,
        max_tokens=n_tokens,
        k=k,
        outlier_norm_factor=outlier_norm_factor,
        log=log,
    )
    if log:
        log(
            f"[scan] done: {res.n_tokens:,} tokens in {res.seconds:.1f}s "
            f"({res.tokens_per_second:,.0f} tok/s), "
            f"L0 {res.l0:.1f}, {int((res.fire_counts > 0).sum())}/{d_sae} latents fired"
        )
    t1 = time.time()
    W_U = lm_params["lm_head"] if "lm_head" in lm_params else jnp.asarray(lm_params["embed"]).T
    lens = logit_lens(sae, W_U, k=10)
    toks = token_strings(tokenizer, cfg.vocab_size)
    enr = floor = None
    if enrichment:
        sets = enrichment_lib.default_token_sets(toks)
        enr = enrichment_lib.token_set_enrichment({"W_dec": np.asarray(sae["W_dec"])[chosen]}, W_U, sets)
        floor = random_direction_floor(W_U, int(np.shape(sae["W_dec"])[1]), sets)
    if log:
        log(
            f"[lens] logit lens{' and enrichment' if enrichment else ''} in {time.time() - t1:.1f}s: "
            + ", ".join(f"{c} {n}" for c, n in lens.class_counts().items())
        )
    kind = "SAE" if pair_of(str(site)) is None else "Transcoder"
    info = SiteInfo(
        title=f"{kind} {os.path.basename(os.path.dirname(os.path.abspath(params_path)))}",
        sae_path=params_path,
        model=str(meta.get("model", checkpoint)),
        layer=int(layer),
        site=str(site),
        text=f"the embedded corpus ({split} split)" if split != "all" else "the embedded corpus",
    )
    summary = write_site(
        out_dir,
        res,
        lens,
        tokens=toks,
        latents=chosen,
        sae=sae,
        info=info,
        enrichment=enr,
        enrichment_floor=floor,
        log=log,
    )
    summary["class_counts_all_latents"] = lens.class_counts()
    summary["total_seconds"] = time.time() - t_start
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    if log:
        log(f"[done] {len(chosen)} latents in {summary['total_seconds']:.1f}s -> {os.path.join(out_dir, 'index.html')}")
    return summary
