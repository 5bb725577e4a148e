"""Feature dashboards: scan text through the LM and an SAE, then write a static, offline HTML site.

Two steps, both usable on their own:

1. :func:`scan` streams packed text batches ``(tokens [B, T], mask [B, T])`` through the LM up to
   the SAE's layer, encodes the site's activations with :func:`gemmascope.sae.model.encode` (any
   exported architecture) and keeps, per latent:

   * the firing count and the sum and maximum of its activations;
   * the top-``k`` activating *sequences* (one context per sequence: the position of the latent's
     largest activation in it), merged batch by batch: ``[d_sae, k]`` values, sequence ids and
     positions;
   * every non-zero activation as a sparse entry ``(row, latent, value)`` (``L0`` entries per
     token), from which the histograms and the per-token shading of the contexts are read.

   Rows are the text positions of the packed batches: BOS, EOS and padding are never encoded, and,
   as in :mod:`gemmascope.data.activations`, rows whose norm is over ``outlier_norm_factor`` times the
   batch median (attention sinks) are dropped and counted. Everything per batch is one jitted
   encode plus a few numpy reductions over ``[B, d_sae]`` arrays; no Python loop runs over latents
   or tokens while scanning.

2. :func:`write_site` renders ``index.html`` (one row per latent: firing frequency, logit-lens
   class and top tokens, the tokens it fires on most; a plain-JS search box, class filter and
   sortable columns), ``latents/<i>.html`` per latent (top contexts with tokens shaded by
   activation and the value on hover, an inline-SVG activation histogram, firing frequency,
   logit-lens statistics, top/bottom tokens, token-set enrichment) and ``style.css``, plus
   ``summary.json``. No network access is needed to view it: no CDN, no external fonts.

:func:`build_dashboard` does both for an SAE file and a checkpoint (the embedded SmolLM2 by
default), reading the held-out split of the embedded corpus; ``launch/analyze.py`` is its CLI.

Token display. Every string from the tokenizer is HTML-escaped (``<``, ``&``, quotes). In the
token chips (logit-lens lists, index) spaces are shown as ``␣`` so ``" the"`` and ``"the"`` differ
visibly; in contexts text reads normally, with newlines as ``↵``, tabs as ``⇥`` and other control
characters as ``\\xNN``. Contexts never cross a document boundary (the EOS between packed
documents) and never show BOS.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import time
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.progress import Progress
from gemmascope.sae import model as sae_model



class DashboardInputError(ValueError):
    """A bad input to the dashboard (missing SAE file, latent out of range, no layer/site); the
    message names it."""


# ----------------------------------------------------------------------------------- token display

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _escape_controls(s: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def context_text(token: str) -> str:
    """A token as shown inside a context (plain text, not yet HTML-escaped): spaces kept,
    ``\\n`` -> ``↵``, ``\\t`` -> ``⇥``, ``\\r`` -> ``␍``, other control characters -> ``\\xNN``."""
    s = token.replace("\r", "\u240d").replace("\n", "\u21b5").replace("\t", "\u21e5")
    return _escape_controls(s)


def chip_text(token: str) -> str:
    """A token as shown on its own (a chip): like :func:`context_text` with every space as ``␣``,
    and ``∅`` for the empty string."""
    if token == "":
        return "\u2205"
    return context_text(token).replace(" ", "\u2423")


def esc(s: Any) -> str:
    """HTML-escape text for element content *and* attribute values (quotes included)."""
    return html.escape(str(s), quote=True)


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Every id's decoded string (``" the"`` with its leading space), in id order."""
    out = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    return [str(s) for s in out]


# ----------------------------------------------------------------------------------- scanning


@dataclasses.dataclass
class ScanResult:
    """What :func:`scan` keeps. ``S`` sequences of length ``T``, ``d_sae`` latents, ``k`` contexts.

    ``tokens``/``mask``/``valid``: ``[S, T]`` (``mask``: real text; ``valid``: text that was encoded,
    i.e. ``mask`` less the dropped norm outliers). ``fire_counts``, ``act_sum``, ``act_max``:
    ``[d_sae]``. ``top_values``, ``top_seq``, ``top_pos``: ``[d_sae, k]``, descending, ``-1``
    sequence ids (value 0) where a latent fired in fewer than ``k`` sequences. Sparse non-zero
    activations sorted by ``(latent, row)``: ``entry_latent``, ``entry_row`` (``seq * T + pos``),
    ``entry_value``; ``latent_start [d_sae + 1]`` indexes them per latent.
    """

    tokens: np.ndarray
    mask: np.ndarray
    valid: np.ndarray
    fire_counts: np.ndarray
    act_sum: np.ndarray
    act_max: np.ndarray
    top_values: np.ndarray
    top_seq: np.ndarray
    top_pos: np.ndarray
    entry_latent: np.ndarray
    entry_row: np.ndarray
    entry_value: np.ndarray
    latent_start: np.ndarray
    n_tokens: int
    n_dropped: int
    seconds: float

    @property
    def d_sae(self) -> int:
        return int(self.fire_counts.shape[0])

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / max(self.seconds, 1e-9)

    @property
    def frequency(self) -> np.ndarray:
        """``[d_sae]`` fraction of scanned tokens on which each latent fired."""
        return self.fire_counts / max(self.n_tokens, 1)

    @property
    def l0(self) -> float:
        return float(self.fire_counts.sum() / max(self.n_tokens, 1))

    def entries(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)`` of one latent's non-zero activations, rows ascending."""
        lo, hi = self.latent_start[latent], self.latent_start[latent + 1]
        return self.entry_row[lo:hi], self.entry_value[lo:hi]

    def activations_at(self, latent: int, rows: np.ndarray) -> np.ndarray:
        """The latent's activation at flat rows ``seq * T + pos`` (0 where it did not fire)."""
        r, v = self.entries(latent)
        rows = np.asarray(rows, np.int64)
        if r.size == 0:
            return np.zeros(rows.shape, np.float32)
        i = np.minimum(np.searchsorted(r, rows), r.size - 1)
        return np.where(r[i] == rows, v[i], 0.0).astype(np.float32)


def _sae_arrays(sae: Mapping[str, Any]) -> tuple[dict[str, jax.Array], int | None]:
    """Array params on the device, and TopK's ``k`` as a static Python int (None otherwise)."""
    k = int(np.asarray(sae["k"]).reshape(())) if "k" in sae else None
    arrays = {n: jnp.asarray(v, jnp.float32) for n, v in sae.items() if n != "k"}
    return arrays, k


@partial(jax.jit, static_argnames=("topk",))
def _encode_batch(arrays: dict[str, jax.Array], x: jax.Array, valid: jax.Array, topk: int | None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x [B, T, d_in]``, ``valid [B, T]`` -> codes ``[B*T, d_sae]`` (0 at invalid rows), and per
    sequence the max ``[B, d_sae]`` and its position ``[B, d_sae]``."""
    B, T, d = x.shape
    params = dict(arrays)
    if topk is not None:
        params["k"] = topk
    f = sae_model.encode(params, x.reshape(B * T, d))
    f = jnp.where(valid.reshape(B * T, 1), f, 0.0)
    f3 = f.reshape(B, T, -1)
    return f, jnp.max(f3, axis=1), jnp.argmax(f3, axis=1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("cfg", "layer", "site"))
def _capture(lm_params, tokens: jax.Array, cfg, layer: int, site: str) -> tuple[jax.Array, jax.Array]:
    """The site's activations ``[B, T, d]`` and their norms ``[B, T]`` (the LM stops at ``layer``)."""
    from gemmascope.lm.model import forward

    a = forward(lm_params, tokens, cfg, capture=[(layer, site)], stop_after=layer).captures[(layer, site)]
    a = a.astype(jnp.float32)
    return a, jnp.sqrt(jnp.sum(a * a, axis=-1))


def _merge_top(vals: np.ndarray, seqs: np.ndarray, poss: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keeps the ``k`` largest of ``[d_sae, m]`` candidates per row (stable: earlier first on ties)."""
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(vals, order, 1), np.take_along_axis(seqs, order, 1),
            np.take_along_axis(poss, order, 1))


class _Accumulator:
    """Folds batches of codes into the per-latent statistics of :class:`ScanResult`."""

    def __init__(self, d_sae: int, k: int):
        self.d_sae, self.k = d_sae, k
        self.toks, self.masks, self.valids = [], [], []
        self.rows, self.lats, self.vals = [], [], []
        self.fire = np.zeros(d_sae, np.int64)
        self.act_sum = np.zeros(d_sae, np.float64)
        self.act_max = np.zeros(d_sae, np.float32)
        self.top_v = np.zeros((d_sae, k), np.float32)
        self.top_s = np.full((d_sae, k), -1, np.int64)
        self.top_p = np.zeros((d_sae, k), np.int64)
        self.n_tok = self.n_drop = self.n_entries = self.n_seq = 0

    def add(self, tokens: np.ndarray, mask: np.ndarray, valid: np.ndarray, f: np.ndarray, smax: np.ndarray,
            sarg: np.ndarray) -> None:
        """``tokens/mask/valid [B, T]``, codes ``f [B*T, d_sae]`` (0 at invalid rows), per-sequence max
        ``smax [B, d_sae]`` and its position ``sarg [B, d_sae]``."""
        B, T = tokens.shape
        rows, lat = np.nonzero(f)
        vals = f[rows, lat].astype(np.float32)
        self.rows.append(rows.astype(np.int64) + self.n_seq * T)
        self.lats.append(lat.astype(np.int32))
        self.vals.append(vals)
        self.n_entries += rows.size
        self.fire += np.bincount(lat, minlength=self.d_sae)
        self.act_sum += np.bincount(lat, weights=vals, minlength=self.d_sae)
        smax = np.asarray(smax, np.float32).T                             # [d_sae, B]
        np.maximum(self.act_max, smax.max(axis=1), out=self.act_max)
        seq_ids = np.broadcast_to(np.arange(self.n_seq, self.n_seq + B, dtype=np.int64), smax.shape)
        self.top_v, self.top_s, self.top_p = _merge_top(
            np.concatenate([self.top_v, smax], 1),
            np.concatenate([self.top_s, np.where(smax > 0, seq_ids, -1)], 1),
            np.concatenate([self.top_p, np.asarray(sarg).T.astype(np.int64)], 1), self.k)
        self.toks.append(np.asarray(tokens, np.int32))
        self.masks.append(np.asarray(mask, bool))
        self.valids.append(np.asarray(valid, bool))
        self.n_seq += B
        self.n_tok += int(valid.sum())
        self.n_drop += int(mask.sum() - valid.sum())

    def result(self, seconds: float) -> ScanResult:
        if not self.toks:
            raise ValueError("scan: the text source produced no batches")
        if self.n_tok == 0:
            raise ValueError("scan: the batches held no real-text tokens")
        rows, lat, vals = np.concatenate(self.rows), np.concatenate(self.lats), np.concatenate(self.vals)
        order = np.lexsort((rows, lat))
        lat, rows, vals = lat[order], rows[order], vals[order]
        start = np.searchsorted(lat, np.arange(self.d_sae + 1)).astype(np.int64)
        return ScanResult(tokens=np.concatenate(self.toks), mask=np.concatenate(self.masks),
                          valid=np.concatenate(self.valids), fire_counts=self.fire, act_sum=self.act_sum,
                          act_max=self.act_max, top_values=self.top_v, top_seq=self.top_s, top_pos=self.top_p,
                          entry_latent=lat, entry_row=rows, entry_value=vals, latent_start=start,
                          n_tokens=self.n_tok, n_dropped=self.n_drop, seconds=seconds)


def scan_codes(tokens: np.ndarray, mask: np.ndarray, codes: np.ndarray, k: int = 12,
               valid: np.ndarray | None = None) -> ScanResult:
    """A :class:`ScanResult` from codes computed elsewhere: ``tokens/mask [S, T]``, ``codes [S, T, d_sae]``
    (only rows where ``valid``, default ``mask``, count). For small inputs (dense in memory)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    valid = mask if valid is None else np.asarray(valid, bool) & mask
    f = np.where(valid[..., None], np.asarray(codes, np.float32), 0.0)
    S, T, d_sae = f.shape
    acc = _Accumulator(d_sae, k)
    acc.add(tokens, mask, valid, f.reshape(S * T, d_sae), f.max(axis=1), f.argmax(axis=1))
    return acc.result(0.0)


def scan(lm_params, lm_cfg, sae: Mapping[str, Any], layer: int, site: str,
         batches: Iterable[tuple[np.ndarray, np.ndarray]], *, max_tokens: int | None = None, k: int = 12,
         outlier_norm_factor: float = 10.0, max_entries: int = 60_000_000,
         log: Callable[[str], None] | None = print) -> ScanResult:
    """Encodes text batches with the SAE and keeps the per-latent statistics of :class:`ScanResult`.

    Args:
      lm_params, lm_cfg: the LM (:mod:`gemmascope.lm`).
      sae: exported SAE params (any architecture :func:`gemmascope.sae.model.encode` reads).
      layer, site: where the SAE reads the LM.
      batches: ``(tokens [B, T] int32, mask [B, T] bool)`` with mask True at real text only; keep
        ``B, T`` fixed (pad the last batch with fully masked rows) to compile once.
      max_tokens: stop after the batch that reaches this many encoded tokens (None: all batches).
      k: contexts kept per latent.
      outlier_norm_factor: drop rows whose norm exceeds this times the batch's median text-row
        norm (0 keeps all), as the activation store does.
      max_entries: stop early (with a message) once this many non-zero activations are held
        (16 bytes each): a guard for dense SAEs.
      log: progress lines (tokens/s), or None.
    """
    d_in = int(np.shape(sae["W_enc"])[0])
    arrays, topk = _sae_arrays(sae)
    acc = _Accumulator(int(arrays["W_enc"].shape[1]), k)
    t0 = time.time()
    bar = Progress("scan", max_tokens, "tok", log=log)  # a live bar on a terminal, else the lines
    for tokens, mask in batches:
        tokens = np.asarray(tokens, np.int32)
        mask = np.asarray(mask, bool)
        x, norms = _capture(lm_params, jnp.asarray(tokens), lm_cfg, int(layer), site)
        if x.shape[-1] != d_in:
            raise DashboardInputError(f"the SAE reads d_in={d_in} but {site!r} at layer {layer} of this model has "
                                      f"width {x.shape[-1]}: wrong model, layer or site for this SAE")
        valid = mask.copy()
        if outlier_norm_factor > 0 and mask.any():
            n = np.asarray(norms)
            valid &= n <= outlier_norm_factor * np.median(n[mask])
        f, smax, sarg = _encode_batch(arrays, x, jnp.asarray(valid), topk)
        acc.add(tokens, mask, valid, np.asarray(f), np.asarray(smax), np.asarray(sarg))
        if log:
            dt = max(time.time() - t0, 1e-9)
            bar.report(acc.n_tok, f"[scan] {acc.n_tok:,} tokens, {acc.n_seq} sequences "
                       f"({acc.n_tok / dt:,.0f} tok/s, L0 {acc.fire.sum() / max(acc.n_tok, 1):.1f})")
        if max_tokens is not None and acc.n_tok >= max_tokens:
            break
        if acc.n_entries >= max_entries:
            if log:
                bar.write(f"[scan] stopping early: {acc.n_entries:,} non-zero activations held "
                          f"(max_entries={max_entries:,})")
            break
    bar.close()
    return acc.result(time.time() - t0)


def text_batches(tokenizer, lm_cfg, texts: Iterable[str], seq_len: int = 128, batch_sequences: int = 32
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Packed ``(tokens [batch_sequences, seq_len], mask)`` batches with BOS first; the last batch is
    padded with fully masked rows so every batch has one shape."""
    from gemmascope.data import text as text_lib

    bos, eos, pad = lm_cfg.bos_id, lm_cfg.eos_id, lm_cfg.pad_id
    for toks, mask in text_lib.iter_packed(tokenizer, texts, seq_len, bos, eos, pad, batch_size=batch_sequences):
        if len(toks) < batch_sequences:
            extra = batch_sequences - len(toks)
            filler = np.full((extra, seq_len), pad, np.int32)
            filler[:, 0] = bos
            toks = np.concatenate([toks, filler])
            mask = np.concatenate([mask, np.zeros((extra, seq_len), bool)])
        yield toks, mask


# ----------------------------------------------------------------------------------- contexts


@dataclasses.dataclass
class Context:
    """One top-activating context of a latent: the document's tokens around ``seq``/``pos``.

    ``token_ids``/``acts``/``encoded`` are ``[n]`` for positions ``first .. first + n - 1``;
    ``focus`` indexes the max-activating token; ``cut_left``/``cut_right``: the window, not the
    document, ended there.
    """

    seq: int
    pos: int
    value: float
    first: int
    token_ids: np.ndarray
    acts: np.ndarray
    encoded: np.ndarray
    focus: int
    cut_left: bool
    cut_right: bool


def _document_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[S, T]`` mask -> (first, last) text position of the document holding each position."""
    S, T = mask.shape
    idx = np.broadcast_to(np.arange(T), (S, T))
    first = np.maximum.accumulate(np.where(~mask, idx, -1), axis=1) + 1
    nxt = np.where(~mask, idx, T)
    last = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1] - 1
    return first, last


def latent_contexts(res: ScanResult, latent: int, before: int = 24, after: int = 8,
                    bounds: tuple[np.ndarray, np.ndarray] | None = None) -> list[Context]:
    """The latent's top contexts (at most ``k``), each limited to its own document."""
    first_all, last_all = bounds if bounds is not None else _document_bounds(res.mask)
    T = res.tokens.shape[1]
    out = []
    for v, s, p in zip(res.top_values[latent], res.top_seq[latent], res.top_pos[latent]):
        if s < 0 or v <= 0:
            continue
        s, p = int(s), int(p)
        lo = max(int(first_all[s, p]), p - before)
        hi = min(int(last_all[s, p]), p + after)
        pos = np.arange(lo, hi + 1)
        out.append(Context(seq=s, pos=p, value=float(v), first=lo, token_ids=res.tokens[s, lo:hi + 1].copy(),
                           acts=res.activations_at(latent, s * T + pos), encoded=res.valid[s, lo:hi + 1].copy(),
                           focus=p - lo, cut_left=lo > first_all[s, p], cut_right=hi < last_all[s, p]))
    return out


def firing_tokens(res: ScanResult, latent: int, n: int = 8) -> list[tuple[int, int, float]]:
    """The token ids the latent fires on most often: ``[(token_id, count, mean_activation)]``."""
    rows, vals = res.entries(latent)
    if rows.size == 0:
        return []
    ids = res.tokens.reshape(-1)[rows]
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=vals)
    order = np.lexsort((-sums, -counts))[:n]
    return [(int(uniq[i]), int(counts[i]), float(sums[i] / counts[i])) for i in order]


def histogram(res: ScanResult, latents: Sequence[int], bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Linear histograms of each latent's non-zero activations over ``[0, act_max]``.

    Returns ``counts [n, bins]`` and ``upper [n]`` (the range's upper edge, the latent's max).
    Vectorised over all entries of the selected latents.
    """
    latents = np.asarray(latents, np.int64)
    upper = res.act_max[latents].astype(np.float64)
    sel = np.full(res.d_sae, -1, np.int64)
    sel[latents] = np.arange(len(latents))
    which = sel[res.entry_latent]
    keep = which >= 0
    w, v = which[keep], res.entry_value[keep].astype(np.float64)
    top = upper[w]
    b = np.clip(np.floor(v / np.where(top > 0, top, 1.0) * bins), 0, bins - 1).astype(np.int64)
    counts = np.bincount(w * bins + b, minlength=len(latents) * bins).reshape(len(latents), bins)
    return counts, upper


# ----------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2933;background:#fafafa}
header{background:#24303f;color:#fff;padding:10px 20px}
header a{color:#cfe3ff}
header .meta{font-size:13px;color:#c8d2dd}
main{padding:12px 20px;max-width:1400px}
h1{font-size:20px;margin:4px 0}
h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border-bottom:1px solid #e3e7ec;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5;position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap}
th[data-dir="asc"]::after{content:" \\25B2"}
th[data-dir="desc"]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;background:#eef1f5;border:1px solid #d7dde4;
     border-radius:3px;padding:0 3px;margin:1px;display:inline-block;white-space:pre}
.tok.pos{background:#e3f4e8;border-color:#b6dfc2}
.tok.neg{background:#fde8e8;border-color:#f2c0c0}
.cls{font-size:12px;padding:1px 6px;border-radius:8px;background:#e4e7eb}
.cls-partition{background:#e0e7ff}.cls-prediction{background:#dcfce7}.cls-suppression{background:#fee2e2}
.controls{margin:8px 0;display:flex;gap:10px;align-items:center;font-size:14px}
#search{font-size:14px;padding:4px 8px;width:320px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:6px;max-width:1100px}
.stat{background:#fff;border:1px solid #e3e7ec;border-radius:4px;padding:4px 8px}
.stat b{display:block;font-size:16px}
.stat span{font-size:12px;color:#52606d}
.cols{display:grid;grid-template-columns:440px minmax(0,1fr);gap:24px;align-items:start}
.ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;background:#fff;
     border:1px solid #e3e7ec;border-radius:4px;padding:3px 8px;margin:4px 0;white-space:pre-wrap;word-break:break-all}
.ctx .v{display:inline-block;width:64px;color:#52606d;font-size:12px}
.ctx span.t{border-radius:2px}
.ctx span.t.focus{outline:2px solid #b45309}
.ctx span.t.drop{text-decoration:underline dotted #9aa5b1}
.ell{color:#9aa5b1}
.muted{color:#7b8794;font-size:13px}
svg text{font-size:11px;fill:#52606d}
"""

# Index behaviour: search (substring over each row's data-search, lower-cased, spaces kept so " the"
# finds the leading-space token), class filter,
# sort on header click (numbers by data-v, otherwise text). Plain DOM JS, no libraries.
INDEX_JS = """
(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('#latents tbody tr'));
  var box = document.getElementById('search'), cls = document.getElementById('cls');
  var count = document.getElementById('count');
  function apply(){
    var q = box.value.toLowerCase(), c = cls.value, n = 0;
    rows.forEach(function(r){
      var ok = (!q || r.getAttribute('data-search').indexOf(q) >= 0) && (!c || r.getAttribute('data-class') === c);
      r.style.display = ok ? '' : 'none';
      if (ok) n++;
    });
    count.textContent = n + ' of ' + rows.length + ' latents';
  }
  box.addEventListener('input', apply);
  cls.addEventListener('change', apply);
  document.querySelectorAll('#latents th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var dir = th.getAttribute('data-dir') === 'desc' ? 'asc' : 'desc';
      document.querySelectorAll('#latents th').forEach(function(o){ o.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', dir);
      var num = th.hasAttribute('data-num'), s = dir === 'asc' ? 1 : -1;
      rows.sort(function(a, b){
        var x = a.children[col], y = b.children[col];
        if (num) return s * (parseFloat(x.getAttribute('data-v')) - parseFloat(y.getAttribute('data-v')));
        return s * x.textContent.localeCompare(y.textContent);
      });
      var body = document.querySelector('#latents tbody');
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
  apply();
})();
"""


def _page(title: str, body: str, css_href: str, header: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<link rel=\"stylesheet\" href=\"{css_href}\"></head><body><header>{header}</header>"
            f"<main>{body}</main>{js}</body></html>\n")


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}g}"


def _pct(freq: float) -> str:
    if freq == 0:
        return "0%"
    return f"{100 * freq:.3g}%"


def _chip(token: str, cls: str = "", title: str = "") -> str:
    t = f' title="{esc(title)}"' if title else ""
    c = f"tok {cls}".strip()
    return f'<span class="{c}"{t}>{esc(chip_text(token))}</span>'


def histogram_svg(counts: np.ndarray, lo: float, hi: float, threshold: float | None = None,
                  xlabel: str = "activation", width: int = 420, height: int = 150) -> str:
    """Inline SVG bar chart: ``counts [n]`` over equal bins spanning ``[lo, hi]``; hover a bar for
    its range and count; ``threshold`` draws a dashed line (the JumpReLU threshold)."""
    counts = np.asarray(counts)
    n = max(len(counts), 1)
    ml, mb, mt, mr = 40, 28, 8, 20
    pw, ph = width - ml - mr, height - mb - mt
    cmax = max(int(counts.max()), 1) if counts.size else 1
    bw = pw / n
    span = hi - lo
    parts = [f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(xlabel)} histogram">',
             f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#9aa5b1"/>',
             f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#9aa5b1"/>']
    for i, c in enumerate(counts):
        if c == 0:
            continue
        h = ph * c / cmax
        b0, b1 = lo + span * i / n, lo + span * (i + 1) / n
        parts.append(f'<rect class="bar" x="{ml + i * bw + 0.5:.1f}" y="{mt + ph - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#ea7a2f"><title>{esc(f"{b0:.3g} to {b1:.3g}: {int(c)}")}</title></rect>')
    if threshold is not None and span > 0 and lo < threshold <= hi:
        x = ml + pw * (threshold - lo) / span
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#24303f" '
                     f'stroke-dasharray="3,3"><title>{esc(f"threshold {threshold:.3g}")}</title></line>')
    for frac in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{ml + pw * frac:.1f}" y="{mt + ph + 14}" text-anchor="middle">'
                     f'{esc(_fmt(lo + span * frac))}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + 9}" text-anchor="end">{cmax}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 2}" text-anchor="middle">{esc(xlabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _context_html(ctx: Context, tok_text: Sequence[str], tok_title: Sequence[str], scale: float) -> str:
    spans = []
    for j, (tid, a, enc) in enumerate(zip(ctx.token_ids, ctx.acts, ctx.encoded)):
        cls = "t focus" if j == ctx.focus else "t"
        if not enc:
            spans.append(f'<span class="t drop" title="{tok_title[tid]} &#8594; not encoded (norm outlier)">'
                         f'{tok_text[tid]}</span>')
            continue
        if a > 0:
            alpha = 0.12 + 0.88 * min(float(a) / scale, 1.0) if scale > 0 else 1.0
            spans.append(f'<span class="{cls}" style="background:rgba(234,122,47,{alpha:.2f})" '
                         f'data-act="{a:.4g}" title="{tok_title[tid]} &#8594; {a:.4g}">{tok_text[tid]}</span>')
        else:
            spans.append(f'<span class="{cls}" data-act="0" title="{tok_title[tid]} &#8594; 0">{tok_text[tid]}</span>')
    left = '<span class="ell">\u2026</span>' if ctx.cut_left else ""
    right = '<span class="ell">\u2026</span>' if ctx.cut_right else ""
    return f'<div class="ctx"><span class="v">{ctx.value:.3g}</span>{left}{"".join(spans)}{right}</div>'


@dataclasses.dataclass
class SiteInfo:
    """Labels for the pages: where the SAE reads, which model, which text."""

    title: str = "SAE"
    sae_path: str = ""
    model: str = ""
    layer: int | None = None
    site: str | None = None
    text: str = ""


def write_site(out_dir: str, res: ScanResult, lens, tokens: Sequence[str], latents: Sequence[int],
               sae: Mapping[str, Any] | None = None, info: SiteInfo | None = None, enrichment=None,
               enrichment_floor: Mapping[str, float] | None = None,
               contexts_before: int = 24, contexts_after: int = 8, hist_bins: int = 32,
               log: Callable[[str], None] | None = print) -> dict[str, Any]:
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
        unit directions, :func:`random_direction_floor`: the embedding's geometry alone makes most
        sets "significant" for any direction).

    Returns the summary written to ``summary.json``.
    """
    info = info or SiteInfo()
    latents = [int(i) for i in latents]
    for i in latents:
        if not 0 <= i < res.d_sae:
            raise DashboardInputError(f"latent {i} out of range: the SAE has {res.d_sae} latents")
    if len(lens) == res.d_sae:
        lrow = {i: i for i in latents}
    elif len(lens) == len(latents):
        lrow = {i: j for j, i in enumerate(latents)}
    else:
        raise ValueError(f"logit lens has {len(lens)} rows: need {res.d_sae} (all latents) or {len(latents)}")
    if enrichment is not None and enrichment.score.shape[0] != len(latents):
        raise ValueError(f"enrichment has {enrichment.score.shape[0]} rows, expected {len(latents)}")
    t0 = time.time()
    os.makedirs(os.path.join(out_dir, "latents"), exist_ok=True)
    with open(os.path.join(out_dir, "style.css"), "w") as fh:
        fh.write(CSS)
    tok_text = [esc(context_text(t)) for t in tokens]
    tok_title = [esc(repr(t)) for t in tokens]
    freq = res.frequency
    mean_act = np.where(res.fire_counts > 0, res.act_sum / np.maximum(res.fire_counts, 1), 0.0)
    counts, upper = histogram(res, latents, hist_bins)
    bounds = _document_bounds(res.mask)
    thr = np.asarray(sae["threshold"]) if sae is not None and "threshold" in sae else None
    sep = " \u00b7 "
    where = sep.join(x for x in [info.model, f"layer {info.layer}" if info.layer is not None else "",
                                        f"site {info.site}" if info.site else ""] if x)
    scan_note = (f"{res.n_tokens:,} tokens of {info.text or 'text'}; BOS/EOS/padding excluded"
                 + (f", {res.n_dropped:,} norm-outlier rows dropped" if res.n_dropped else ""))
    rows_html, summary_latents = [], []
    for n_page, i in enumerate(latents):
        r = lrow[i]
        cls = str(lens.feature_class[r])
        top_ids, top_vals = lens.top_ids[r], lens.top_values[r]
        bot_ids, bot_vals = lens.bottom_ids[r], lens.bottom_values[r]
        fires = firing_tokens(res, i)
        ctxs = latent_contexts(res, i, contexts_before, contexts_after, bounds)
        enr = []
        if enrichment is not None:
            floor = enrichment_floor or {}
            enr = [e for e in enrichment.top_sets(n_page, k=len(enrichment.set_names), alpha=0.05)
                   if abs(e[1]) > floor.get(e[0], 0.0)][:4]
        prev_i = latents[n_page - 1] if n_page > 0 else None
        next_i = latents[n_page + 1] if n_page + 1 < len(latents) else None
        nav = " ".join(x for x in [
            '<a href="../index.html">index</a>',
            f'<a href="{prev_i}.html">&#8592; latent {prev_i}</a>' if prev_i is not None else "",
            f'<a href="{next_i}.html">latent {next_i} &#8594;</a>' if next_i is not None else ""] if x)
        header = (f'<div class="meta">{nav}</div><h1>Latent {i}</h1>'
                  f'<div class="meta">{esc(info.title)}{sep + esc(where) if where else ""}</div>')
        stat = lambda label, value: f'<div class="stat"><b>{value}</b><span>{label}</span></div>'  # noqa: E731
        stats = "".join([
            stat("firing frequency", esc(_pct(freq[i])) + f' <small class="muted">({int(res.fire_counts[i]):,} of '
                 f'{res.n_tokens:,})</small>'),
            stat("max activation", esc(_fmt(float(res.act_max[i])))),
            stat("mean activation when firing", esc(_fmt(float(mean_act[i])))),
            stat("logit-lens class", f'<span class="cls cls-{esc(cls)}">{esc(cls)}</span>'),
            stat("logit skew / kurtosis", f"{esc(_fmt(float(lens.skew[r])))} / {esc(_fmt(float(lens.kurtosis[r])))}"),
            stat("vocab above mean logit", esc(_pct(float(lens.frac_above_mean[r])))),
        ] + ([stat("threshold", esc(_fmt(float(thr[i]))))] if thr is not None else []))
        if res.fire_counts[i] > 0:
            hist = histogram_svg(counts[n_page], 0.0, float(upper[n_page]), float(thr[i]) if thr is not None else None)
        else:
            hist = '<p class="muted">never fired on the scanned text</p>'
        lens_html = (
            '<h2>Promoted tokens (logit lens)</h2><div class="chips">'
            + "".join(_chip(tokens[t], "pos", f"{v:+.3g}") for t, v in zip(top_ids, top_vals))
            + '</div><h2>Suppressed tokens (logit lens)</h2><div class="chips">'
            + "".join(_chip(tokens[t], "neg", f"{v:+.3g}") for t, v in zip(bot_ids, bot_vals)) + "</div>")
        fires_html = ("".join(_chip(tokens[t], "", f"{c} times, mean {m:.3g}") + f'<small class="muted">&times;{c}</small> '
                              for t, c, m in fires) or '<span class="muted">none</span>')
        floor_note = " beyond random directions" if enrichment_floor else ""
        enr_html = ("".join(f'<div>{esc(name)}: score {s:+.2f} <span class="muted">(q={q:.1e}'
                            + (f', random p99 {enrichment_floor[name]:.2f}' if enrichment_floor else "")
                            + ')</span></div>' for name, s, q in enr)
                    or f'<span class="muted">no significant token set{floor_note}</span>') \
            if enrichment is not None else '<span class="muted">not computed</span>'
        scale = float(res.act_max[i])
        ctx_html = "".join(_context_html(c, tok_text, tok_title, scale) for c in ctxs) or \
            '<p class="muted">no activating context in the scanned text</p>'
        body = (f'<div class="stats">{stats}</div><div class="cols"><div class="left">'
                f'<h2>Activation histogram</h2>{hist}'
                f'<div class="muted">non-zero activations over {res.n_tokens:,} scanned tokens</div>'
                f'{lens_html}<h2>Fires most on</h2><div>{fires_html}</div>'
                f'<h2>Token-set enrichment of the logit weights</h2><div>{enr_html}</div></div>'
                f'<div class="right"><h2>Top activating contexts</h2><div class="muted">one per sequence, the max '
                f'token outlined; hover a token for its activation</div><div id="contexts">{ctx_html}</div>'
                f'<div class="muted">{esc(scan_note)}</div></div></div>')
        with open(os.path.join(out_dir, "latents", f"{i}.html"), "w", encoding="utf-8") as fh:
            fh.write(_page(f"Latent {i} - {info.title}", body, "../style.css", header))
        # index row
        top5 = [tokens[t] for t in top_ids[:5]]
        fire3 = [tokens[t] for t, _, _ in fires[:3]]
        search = " ".join([str(i), cls] + top5 + fire3 + [n for n, _, _ in enr]).lower()
        rows_html.append(
            f'<tr data-class="{esc(cls)}" data-search="{esc(search)}">'
            f'<td class="num" data-v="{i}"><a href="latents/{i}.html">{i}</a></td>'
            f'<td class="num" data-v="{freq[i]:.6g}">{esc(_pct(freq[i]))}</td>'
            f'<td class="num" data-v="{float(res.act_max[i]):.6g}">{esc(_fmt(float(res.act_max[i])))}</td>'
            f'<td><span class="cls cls-{esc(cls)}">{esc(cls)}</span></td>'
            f'<td class="num" data-v="{_fmt(float(lens.skew[r]), 6)}">{esc(_fmt(float(lens.skew[r])))}</td>'
            f'<td class="num" data-v="{_fmt(float(lens.kurtosis[r]), 6)}">{esc(_fmt(float(lens.kurtosis[r])))}</td>'
            f'<td>{"".join(_chip(t, "pos") for t in top5)}</td>'
            f'<td>{"".join(_chip(t) for t in fire3)}</td></tr>')
        summary_latents.append({
            "latent": i, "frequency": float(freq[i]), "fire_count": int(res.fire_counts[i]),
            "max_activation": float(res.act_max[i]), "mean_activation": float(mean_act[i]), "class": cls,
            "skew": float(lens.skew[r]), "kurtosis": float(lens.kurtosis[r]),
            "frac_above_mean": float(lens.frac_above_mean[r]),
            "top_tokens": [tokens[t] for t in top_ids], "bottom_tokens": [tokens[t] for t in bot_ids],
            "fires_on": [[tokens[t], c] for t, c, _ in fires],
            "enrichment": [[n, s, q] for n, s, q in enr],
            "top_contexts": [{"value": c.value, "seq": c.seq, "pos": c.pos,
                              "text": "".join(tokens[t] for t in c.token_ids), "focus_token": tokens[c.token_ids[c.focus]]}
                             for c in ctxs[:5]],
        })
        if log and (n_page + 1) % 500 == 0:
            log(f"[pages] {n_page + 1}/{len(latents)}")
    class_counts = {c: int(sum(1 for s in summary_latents if s["class"] == c))
                    for c in ("partition", "prediction", "suppression", "other")}
    alive = int(sum(1 for s in summary_latents if s["fire_count"] > 0))
    options = "".join(f'<option value="{c}">{c} ({n})</option>' for c, n in class_counts.items())
    freq_all = freq[latents]
    header = (f'<h1>{esc(info.title)}</h1><div class="meta">{esc(where)}</div>'
              f'<div class="meta">{esc(scan_note)}</div>')
    overview = "".join([
        f'<div class="stat"><b>{len(latents):,}</b><span>latents listed</span></div>',
        f'<div class="stat"><b>{alive:,}</b><span>fired on the scanned text</span></div>',
        f'<div class="stat"><b>{res.l0:.1f}</b><span>L0 (mean active latents per token)</span></div>',
        f'<div class="stat"><b>{res.n_tokens:,}</b><span>tokens scanned</span></div>',
    ] + [f'<div class="stat"><b>{n:,}</b><span>{c} (logit lens)</span></div>' for c, n in class_counts.items()])
    alive_f = freq_all[freq_all > 0]
    freq_hist = ""
    if alive_f.size:
        lo = math.floor(math.log10(max(1.0 / res.n_tokens, 1e-12)))
        c, _ = np.histogram(np.log10(alive_f), bins=30, range=(lo, 0.0))
        freq_hist = ('<h2>Firing frequency of the latents that fired</h2>'
                     + histogram_svg(c, lo, 0.0, xlabel="log10 firing frequency", height=130))
    body = (f'<div class="stats">{overview}</div>{freq_hist}'
            '<div class="controls"><input id="search" type="search" placeholder="Search latents: index, token, class'
            '\u2026" autocomplete="off"><select id="cls"><option value="">all classes</option>'
            f'{options}</select><span id="count"></span></div>'
            '<table id="latents"><thead><tr><th data-num>latent</th><th data-num>frequency</th><th data-num>max act</th>'
            '<th>class</th><th data-num>skew</th><th data-num>kurtosis</th><th>top logit-lens tokens</th>'
            f'<th>fires most on</th></tr></thead><tbody>{"".join(rows_html)}</tbody></table>')
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as fh:
        fh.write(_page(f"{info.title} - latents", body, "style.css", header, INDEX_JS))
    summary = {
        "sae": info.sae_path, "model": info.model, "layer": info.layer, "site": info.site, "text": info.text,
        "d_sae": res.d_sae, "n_tokens": res.n_tokens, "n_dropped_outliers": res.n_dropped, "l0": res.l0,
        "scan_seconds": res.seconds, "tokens_per_second": res.tokens_per_second,
        "class_counts": class_counts, "n_latents": len(latents), "n_fired": alive,
        "enrichment_floor": dict(enrichment_floor) if enrichment_floor else None,
        "latents": summary_latents,
    }
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    if log:
        log(f"[pages] wrote {len(latents)} latent pages in {time.time() - t0:.1f}s -> {os.path.join(out_dir, 'index.html')}")
    return summary


def random_direction_floor(W_U: Any, d_in: int, token_sets: Mapping[str, Any], n: int = 256, q: float = 99.0,
                           seed: int = 0) -> dict[str, float]:
    """``{set: percentile q of |enrichment score|}`` over ``n`` random unit directions ``[n, d_in]``
    read through ``W_U``: how strong an enrichment any direction shows, the baseline a latent must beat."""
    from gemmascope.analysis import enrichment as enrichment_lib

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


def build_dashboard(sae_path: str, out_dir: str, *, n_tokens: int = 50_000, latents: str | Sequence[int] | None = None,
                    layer: int | None = None, site: str | None = None, checkpoint: str = "embedded",
                    lm: tuple | None = None, split: str = "heldout", seq_len: int = 128, batch_sequences: int = 32,
                    k: int = 12, outlier_norm_factor: float = 10.0, enrichment: bool = True,
                    log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Scans text with an SAE and writes its dashboard site into ``out_dir``; returns the summary.

    Args:
      sae_path: an exported SAE folder or ``params.npz`` (``metadata.json`` beside it gives the
        layer and site; a released Gemma Scope file has none: pass ``layer`` and ``site``).
      n_tokens: text tokens to scan (the embedded held-out split holds about 29k).
      latents: which latents get a row and a page (``"0-99,512"``, a list, or None for all).
      checkpoint: the LM (``"embedded"``, a ``.gguf``, a Hugging Face dir); ``lm``: an already
        loaded ``(cfg, params, tokenizer)`` instead (notebooks, tests).
      split: ``"heldout"`` (default), ``"train"`` or ``"all"`` documents of the embedded corpus.
      seq_len, batch_sequences: packing of the scanned text (BOS first in every row).
      k: top contexts per latent; enrichment: also run token-set enrichment of the listed latents
        (shown when beyond the 99th percentile of 256 random directions, :func:`random_direction_floor`).
    """
    from gemmascope.analysis import enrichment as enrichment_lib
    from gemmascope.analysis.logit_lens import logit_lens
    from gemmascope.data import text as text_lib
    from gemmascope.sae import io as sae_io

    t_start = time.time()
    params_path = resolve_sae_path(sae_path)
    sae = sae_io.load_params(params_path)
    meta = sae_io.load_metadata(params_path)
    d_sae = int(np.shape(sae["W_enc"])[1])
    chosen = parse_latents(latents, d_sae)
    layer = layer if layer is not None else meta.get("layer")
    site = site or meta.get("site")
    if layer is None or site is None:
        raise DashboardInputError(f"{params_path}: no metadata.json with 'layer' and 'site' beside it; "
                                  "pass layer= and site= (--layer/--site)")
    if split not in ("heldout", "train", "all"):
        raise DashboardInputError(f"split must be 'heldout', 'train' or 'all', got {split!r}")
    if lm is None:
        from gemmascope.lm import loading

        if checkpoint in ("", "embedded"):
            lm = loading.load_embedded()
        else:
            cfg, params = loading.load_checkpoint(checkpoint)
            lm = (cfg, params, loading.load_tokenizer(checkpoint))
    cfg, lm_params, tokenizer = lm
    if not 0 <= int(layer) < cfg.n_layers:
        raise DashboardInputError(f"layer {layer} out of range: the model has {cfg.n_layers} layers")
    src = {"kind": "embedded"} if split == "all" else {"kind": "embedded", "split_part": split}
    batches = text_batches(tokenizer, cfg, text_lib.iter_texts(src), seq_len, batch_sequences)
    res = scan(lm_params, cfg, sae, int(layer), site, batches, max_tokens=n_tokens, k=k,
               outlier_norm_factor=outlier_norm_factor, log=log)
    if log:
        log(f"[scan] done: {res.n_tokens:,} tokens in {res.seconds:.1f}s ({res.tokens_per_second:,.0f} tok/s), "
            f"L0 {res.l0:.1f}, {int((res.fire_counts > 0).sum())}/{d_sae} latents fired")
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
        log(f"[lens] logit lens{' and enrichment' if enrichment else ''} in {time.time() - t1:.1f}s: "
            + ", ".join(f"{c} {n}" for c, n in lens.class_counts().items()))
    info = SiteInfo(title=f"SAE {os.path.basename(os.path.dirname(os.path.abspath(params_path)))}",
                    sae_path=params_path, model=str(meta.get("model", checkpoint)), layer=int(layer), site=str(site),
                    text=f"the embedded corpus ({split} split)" if split != "all" else "the embedded corpus")
    summary = write_site(out_dir, res, lens, toks, chosen, sae=sae, info=info, enrichment=enr, enrichment_floor=floor,
                         log=log)
    summary["class_counts_all_latents"] = lens.class_counts()
    summary["total_seconds"] = time.time() - t_start
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    if log:
        log(f"[done] {len(chosen)} latents in {summary['total_seconds']:.1f}s -> {os.path.join(out_dir, 'index.html')}")
    return summary
