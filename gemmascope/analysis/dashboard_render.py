"""Dashboard rendering: a :class:`~gemmascope.analysis.dashboard_scan.ScanResult` into a static HTML site.

:func:`write_site` renders ``index.html`` (one row per latent: firing frequency, logit-lens class
and top tokens, the tokens it fires on most; a plain-JS search box, class filter and sortable
columns), ``latents/<i>.html`` per latent (top contexts with tokens shaded by activation and the
value on hover, an inline-SVG activation histogram, firing frequency, logit-lens statistics,
top/bottom tokens, token-set enrichment) and ``style.css``, plus ``summary.json``. No network
access is needed to view it: no CDN, no external fonts.

Layout. The markup lives in Jinja2 templates (``dashboard_templates/``: ``base.html``,
``index.html``, ``latent.html``, ``macros.html``) rendered with autoescaping on, so every string
(token strings, titles, paths, set names) is passed raw and escaped by Jinja, never by hand. The
stylesheet and the index's JavaScript are static files (``dashboard_static/``), shipped as package
data: ``style.css`` is copied beside the pages, ``index.js`` is inlined into ``index.html``. This
module only computes the values the templates show (view dicts of numbers and raw strings); numbers
are formatted in the templates with the filters ``num`` (a Python format spec), ``sig`` and ``pct``.

Token display. In the token chips (logit-lens lists, index) spaces are shown as ``␣`` so ``" the"``
and ``"the"`` differ visibly; in contexts text reads normally, with newlines as ``↵``, tabs as
``⇥`` and other control characters as ``\\xNN``. Contexts never cross a document boundary (the EOS
between packed documents) and never show BOS.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.resources
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
import markupsafe
import numpy as np

from gemmascope.analysis.dashboard_scan import (
    Context,
    DashboardInputError,
    ScanResult,
    document_bounds,
    firing_tokens,
    histogram,
    latent_contexts,
)

# ----------------------------------------------------------------------------------- token display

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def context_text(token: str) -> str:
    """A token as shown inside a context (plain text, not yet HTML-escaped): spaces kept,
    ``\\n`` -> ``↵``, ``\\t`` -> ``⇥``, ``\\r`` -> ``␍``, other control characters -> ``\\xNN``."""
    s = token.replace("\r", "\u240d").replace("\n", "\u21b5").replace("\t", "\u21e5")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def chip_text(token: str) -> str:
    """A token as shown on its own (a chip): like :func:`context_text` with every space as ``␣``,
    and ``∅`` for the empty string."""
    if token == "":
        return "\u2205"
    return context_text(token).replace(" ", "\u2423")


def esc(s: Any) -> str:
    """HTML-escape text for element content *and* attribute values (quotes included), for callers
    building HTML outside the templates (the templates autoescape)."""
    return html.escape(str(s), quote=True)


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Every id's decoded string (``" the"`` with its leading space), in id order."""
    out = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    return [str(s) for s in out]


# ----------------------------------------------------------------------------------- templates


def _sig(v: float | None, digits: int = 3) -> str:
    """``digits`` significant digits; ``"n/a"`` for None, NaN and infinities."""
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}g}"


def _pct(freq: float) -> str:
    """A fraction as a percentage with 3 significant digits (``"0%"`` for exactly 0)."""
    if freq == 0:
        return "0%"
    return f"{100 * freq:.3g}%"


def _environment() -> jinja2.Environment:
    # auto_reload off: templates are read once per process (no stat per page, one version per site).
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gemmascope.analysis", "dashboard_templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters.update(num=format, sig=_sig, pct=_pct, chip=chip_text)
    return env


_ENV = _environment()


def static_text(name: str) -> str:
    """The text of a static file of the pages (``style.css``, ``index.js``), shipped as package data."""
    return (importlib.resources.files("gemmascope.analysis") / "dashboard_static" / name).read_text("utf-8")


def histogram_view(
    counts: np.ndarray,
    lo: float,
    hi: float,
    *,
    threshold: float | None = None,
    xlabel: str = "activation",
    width: int = 420,
    height: int = 150,
) -> dict[str, Any]:
    """The geometry of an inline SVG bar chart of ``counts [n]`` over equal bins spanning ``[lo, hi]``
    (the ``histogram`` macro of ``macros.html`` draws it); ``threshold`` (the JumpReLU threshold) is
    drawn as a dashed line when inside ``(lo, hi]``. Only non-empty bins get a bar:
    ``(x, y, width, height, bin low, bin high, count)``."""
    counts = np.asarray(counts)
    n = max(len(counts), 1)
    ml, mb, mt, mr = 40, 28, 8, 20  # margins: left, bottom, top, right
    pw, ph = width - ml - mr, height - mb - mt  # plot area
    cmax = max(int(counts.max()), 1) if counts.size else 1
    bw = pw / n
    span = hi - lo
    bars = []
    for i, c in enumerate(counts):
        if c == 0:
            continue
        h = ph * c / cmax
        bars.append(
            (ml + i * bw + 0.5, mt + ph - h, max(bw - 1, 1), h, lo + span * i / n, lo + span * (i + 1) / n, int(c))
        )
    show_thr = threshold is not None and span > 0 and lo < threshold <= hi
    return {
        "width": width,
        "height": height,
        "xlabel": xlabel,
        "left": ml,
        "right": ml + pw,
        "top": mt,
        "bottom": mt + ph,
        "count_max": cmax,
        "bars": bars,
        "label_x": ml + pw / 2,
        "ticks": [(ml + pw * frac, lo + span * frac) for frac in (0.0, 0.5, 1.0)],
        "threshold": threshold if show_thr else None,
        "threshold_x": ml + pw * (threshold - lo) / span if show_thr else None,
    }


def histogram_svg(
    counts: np.ndarray,
    lo: float,
    hi: float,
    *,
    threshold: float | None = None,
    xlabel: str = "activation",
    width: int = 420,
    height: int = 150,
) -> markupsafe.Markup:
    """:func:`histogram_view` drawn as an SVG element (safe markup), e.g. for a notebook."""
    macros = _ENV.get_template("macros.html").module
    return macros.histogram(
        histogram_view(counts, lo, hi, threshold=threshold, xlabel=xlabel, width=width, height=height)
    )


# ----------------------------------------------------------------------------------- views


@dataclasses.dataclass(kw_only=True)
class SiteInfo:
    """Labels for the pages: where the SAE reads, which model, which text."""

    title: str = "SAE"
    sae_path: str = ""
    model: str = ""
    layer: int | None = None
    site: str | None = None
    text: str = ""


def context_view(ctx: Context, tok_text: Sequence[str], tok_title: Sequence[str], scale: float) -> dict[str, Any]:
    """One context for the ``context`` macro: spans ``(text, title, focus, activation, alpha)``.

    ``activation`` is None where the row was not encoded (a norm outlier); ``alpha`` shades the
    token's background by ``activation / scale`` (``scale``: the latent's max), at least 0.12, and
    is None where the latent did not fire.
    """
    spans = []
    ids, acts, encoded = ctx.token_ids.tolist(), ctx.acts.tolist(), ctx.encoded.tolist()
    for j, (tid, a, enc) in enumerate(zip(ids, acts, encoded)):
        alpha = (0.12 + 0.88 * min(a / scale, 1.0) if scale > 0 else 1.0) if a > 0 else None
        spans.append((tok_text[tid], tok_title[tid], j == ctx.focus, a if enc else None, alpha))
    return {"value": ctx.value, "spans": spans, "cut_left": bool(ctx.cut_left), "cut_right": bool(ctx.cut_right)}


class _Pages:
    """What every latent's page reads: the scan, the logit lens and enrichment rows, and per-site
    arrays computed once (token display strings, frequencies, histograms, document bounds)."""

    def __init__(
        self,
        res: ScanResult,
        lens,
        tokens: Sequence[str],
        *,
        latents: list[int],
        sae,
        enrichment,
        enrichment_floor,
        contexts_before: int,
        contexts_after: int,
        hist_bins: int,
    ):
        if len(lens) == res.d_sae:
            self.lrow = {i: i for i in latents}
        elif len(lens) == len(latents):
            self.lrow = {i: j for j, i in enumerate(latents)}
        else:
            raise ValueError(f"logit lens has {len(lens)} rows: need {res.d_sae} (all latents) or {len(latents)}")
        if enrichment is not None and enrichment.score.shape[0] != len(latents):
            raise ValueError(f"enrichment has {enrichment.score.shape[0]} rows, expected {len(latents)}")
        self.res, self.lens, self.tokens, self.latents = res, lens, tokens, latents
        self.enrichment, self.floor = enrichment, enrichment_floor
        self.before, self.after = contexts_before, contexts_after
        self.tok_text = [context_text(t) for t in tokens]
        self.tok_title = [repr(t) for t in tokens]
        self.freq = res.frequency
        self.mean_act = np.where(res.fire_counts > 0, res.act_sum / np.maximum(res.fire_counts, 1), 0.0)
        self.counts, self.upper = histogram(res, latents, hist_bins)
        self.bounds = document_bounds(res.mask)
        self.thr = np.asarray(sae["threshold"]) if sae is not None and "threshold" in sae else None

    def enriched_sets(self, n_page: int) -> list[tuple[str, float, float]]:
        """Up to 4 sets with q < 0.05 and ``|score|`` above the floor, largest ``|score|`` first."""
        if self.enrichment is None:
            return []
        floor = self.floor or {}
        top = self.enrichment.top_sets(n_page, k=len(self.enrichment.set_names), alpha=0.05)
        return [e for e in top if abs(e[1]) > floor.get(e[0], 0.0)][:4]

    def latent(self, n_page: int) -> tuple[dict[str, Any], list[Context]]:
        """The view of the ``n_page``-th listed latent, and its contexts."""
        res, lens, tokens, i = self.res, self.lens, self.tokens, self.latents[n_page]
        r = self.lrow[i]
        ctxs = latent_contexts(res, i, self.before, self.after, self.bounds)
        thr = float(self.thr[i]) if self.thr is not None else None
        hist = (
            histogram_view(self.counts[n_page], 0.0, float(self.upper[n_page]), threshold=thr)
            if res.fire_counts[i] > 0
            else None
        )
        scale = float(res.act_max[i])
        return {
            "latent": i,
            "prev": self.latents[n_page - 1] if n_page > 0 else None,
            "next": self.latents[n_page + 1] if n_page + 1 < len(self.latents) else None,
            "freq": float(self.freq[i]),
            "fire_count": int(res.fire_counts[i]),
            "act_max": float(res.act_max[i]),
            "mean_act": float(self.mean_act[i]),
            "cls": str(lens.feature_class[r]),
            "skew": float(lens.skew[r]),
            "kurtosis": float(lens.kurtosis[r]),
            "frac_above_mean": float(lens.frac_above_mean[r]),
            "threshold": thr,
            "histogram": hist,
            "promoted": [(tokens[t], v) for t, v in zip(lens.top_ids[r], lens.top_values[r])],
            "suppressed": [(tokens[t], v) for t, v in zip(lens.bottom_ids[r], lens.bottom_values[r])],
            "fires": [(tokens[t], c, m) for t, c, m in firing_tokens(res, i)],
            "enrichment": self.enriched_sets(n_page) if self.enrichment is not None else None,
            "contexts": [context_view(c, self.tok_text, self.tok_title, scale) for c in ctxs],
        }, ctxs


def _index_row(p: Mapping[str, Any]) -> dict[str, Any]:
    """A row of the index: the latent's page view less the page, plus the search text (index, class,
    top-5 logit-lens tokens, the 3 tokens it fires on most, the enriched set names; lower-cased)."""
    top5 = [t for t, _ in p["promoted"][:5]]
    fire3 = [t for t, _, _ in p["fires"][:3]]
    names = [n for n, _, _ in p["enrichment"] or []]
    search = " ".join([str(p["latent"]), p["cls"]] + top5 + fire3 + names).lower()
    return {
        **{k: p[k] for k in ("latent", "cls", "freq", "act_max", "skew", "kurtosis")},
        "search": search,
        "top": top5,
        "fires": fire3,
    }


def _latent_summary(p: Mapping[str, Any], ctxs: Sequence[Context], tokens: Sequence[str]) -> dict[str, Any]:
    """The latent's entry in ``summary.json``."""
    return {
        "latent": p["latent"],
        "frequency": p["freq"],
        "fire_count": p["fire_count"],
        "max_activation": p["act_max"],
        "mean_activation": p["mean_act"],
        "class": p["cls"],
        "skew": p["skew"],
        "kurtosis": p["kurtosis"],
        "frac_above_mean": p["frac_above_mean"],
        "top_tokens": [t for t, _ in p["promoted"]],
        "bottom_tokens": [t for t, _ in p["suppressed"]],
        "fires_on": [[t, c] for t, c, _ in p["fires"]],
        "enrichment": [[n, s, q] for n, s, q in p["enrichment"] or []],
        "top_contexts": [
            {
                "value": c.value,
                "seq": c.seq,
                "pos": c.pos,
                "text": "".join(tokens[t] for t in c.token_ids),
                "focus_token": tokens[c.token_ids[c.focus]],
            }
            for c in ctxs[:5]
        ],
    }


def _frequency_histogram(res: ScanResult, freq: np.ndarray) -> dict[str, Any] | None:
    """30 bins of log10 firing frequency of the latents that fired, from 1/n_tokens to 1 (None if none)."""
    alive = freq[freq > 0]
    if not alive.size:
        return None
    lo = math.floor(math.log10(max(1.0 / res.n_tokens, 1e-12)))
    counts, _ = np.histogram(np.log10(alive), bins=30, range=(lo, 0.0))
    return histogram_view(counts, lo, 0.0, xlabel="log10 firing frequency", height=130)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_site(
    out_dir: str,
    res: ScanResult,
    lens,
    *,
    tokens: Sequence[str],
    latents: Sequence[int],
    sae: Mapping[str, Any] | None = None,
    info: SiteInfo | None = None,
    enrichment=None,
    enrichment_floor: Mapping[str, float] | None = None,
    contexts_before: int = 24,
    contexts_after: int = 8,
    hist_bins: int = 32,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Writes ``index.html``, ``latents/<i>.html``, ``style.css`` and ``summary.json`` into ``out_dir``.

    Args:
      res: the scan.
      lens: a :class:`gemmascope.analysis.logit_lens.LogitLensResult` over *all* ``d_sae`` latents, or
        over exactly ``latents`` (rows in that order).
      tokens: token strings in id order (:func:`token_strings`).
      latents: the latents to list and give pages.
      sae: the SAE params (for the JumpReLU threshold on the histograms), optional.
      info: labels; enrichment: an :class:`~gemmascope.analysis.enrichment.EnrichmentResult` over
        ``latents`` (rows in that order), optional.
      enrichment_floor: ``{set name: |score|}``; a set is listed for a latent only when its q-value is
        below 0.05 *and* its ``|score|`` exceeds the floor (e.g. the 99th percentile over random
        unit directions, :func:`~gemmascope.analysis.dashboard.random_direction_floor`: the
        embedding's geometry alone makes most sets "significant" for any direction).

    Returns the summary written to ``summary.json``.
    """
    info = info or SiteInfo()
    latents = [int(i) for i in latents]
    for i in latents:
        if not 0 <= i < res.d_sae:
            raise DashboardInputError(f"latent {i} out of range: the SAE has {res.d_sae} latents")
    pages = _Pages(
        res,
        lens,
        tokens,
        latents=latents,
        sae=sae,
        enrichment=enrichment,
        enrichment_floor=enrichment_floor,
        contexts_before=contexts_before,
        contexts_after=contexts_after,
        hist_bins=hist_bins,
    )
    t0 = time.time()
    os.makedirs(os.path.join(out_dir, "latents"), exist_ok=True)
    _write(os.path.join(out_dir, "style.css"), static_text("style.css"))
    where = " \u00b7 ".join(
        x
        for x in [
            info.model,
            f"layer {info.layer}" if info.layer is not None else "",
            f"site {info.site}" if info.site else "",
        ]
        if x
    )
    scan_note = f"{res.n_tokens:,} tokens of {info.text or 'text'}; BOS/EOS/padding excluded" + (
        f", {res.n_dropped:,} norm-outlier rows dropped" if res.n_dropped else ""
    )
    site = {"title": info.title, "where": where, "scan_note": scan_note, "n_tokens": res.n_tokens}
    floor = dict(enrichment_floor) if enrichment_floor else None
    latent_page = _ENV.get_template("latent.html")
    rows, summary_latents = [], []
    for n_page, i in enumerate(latents):
        p, ctxs = pages.latent(n_page)
        _write(
            os.path.join(out_dir, "latents", f"{i}.html"),
            latent_page.render(p=p, s=site, floor=floor, css_href="../style.css"),
        )
        rows.append(_index_row(p))
        summary_latents.append(_latent_summary(p, ctxs, tokens))
        if log and (n_page + 1) % 500 == 0:
            log(f"[pages] {n_page + 1}/{len(latents)}")
    class_counts = {
        c: int(sum(1 for s in summary_latents if s["class"] == c))
        for c in ("partition", "prediction", "suppression", "other")
    }
    alive = int(sum(1 for s in summary_latents if s["fire_count"] > 0))
    _write(
        os.path.join(out_dir, "index.html"),
        _ENV.get_template("index.html").render(
            s=site,
            css_href="style.css",
            n_latents=len(latents),
            n_fired=alive,
            l0=res.l0,
            class_counts=class_counts,
            freq_hist=_frequency_histogram(res, pages.freq[latents]),
            rows=rows,
            script=markupsafe.Markup(static_text("index.js")),
        ),
    )
    summary = {
        "sae": info.sae_path,
        "model": info.model,
        "layer": info.layer,
        "site": info.site,
        "text": info.text,
        "d_sae": res.d_sae,
        "n_tokens": res.n_tokens,
        "n_dropped_outliers": res.n_dropped,
        "l0": res.l0,
        "scan_seconds": res.seconds,
        "tokens_per_second": res.tokens_per_second,
        "class_counts": class_counts,
        "n_latents": len(latents),
        "n_fired": alive,
        "enrichment_floor": dict(enrichment_floor) if enrichment_floor else None,
        "latents": summary_latents,
    }
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    if log:
        log(
            f"[pages] wrote {len(latents)} latent pages in {time.time() - t0:.1f}s -> "
            f"{os.path.join(out_dir, 'index.html')}"
        )
    return summary
