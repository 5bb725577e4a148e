"""Dashboard scanning: text through the LM and an SAE into per-latent statistics (no HTML here).

:func:`scan` streams packed text batches ``(tokens [B, T], mask [B, T])`` through the LM up to the
SAE's layer, encodes the site's activations with :func:`gemmascope.sae.files.model.encode` (any exported
architecture) and keeps, per latent (:class:`ScanResult`):

* the firing count and the sum and maximum of its activations;
* the top-``k`` activating *sequences* (one context per sequence: the position of the latent's
  largest activation in it), merged batch by batch: ``[d_sae, k]`` values, sequence ids and
  positions;
* every non-zero activation as a sparse entry ``(row, latent, value)`` (``L0`` entries per token),
  from which the histograms and the per-token shading of the contexts are read.

Rows are the text positions of the packed batches: BOS, EOS and padding are never encoded, and, as
in :mod:`gemmascope.data.activations`, rows whose norm is over ``outlier_norm_factor`` times the
batch median (attention sinks) are dropped and counted. A transcoder (``site`` ``"transcoder"`` or
``"transcoder_affine"``) encodes the rows of its input site (the MLP input), and a row is kept when
it passes the rule at both its input and output sites: the paired store's rows, the rows the
evaluator scores. Everything per batch is one jitted encode
plus a few numpy reductions over ``[B, d_sae]`` arrays; no Python loop runs over latents or tokens
while scanning. :func:`scan_codes` builds the same result from codes computed elsewhere.

Readers of a scan, used by the pages (:mod:`gemmascope.analysis.dashboard_render`):
:func:`latent_contexts` (top contexts, each within its own document), :func:`firing_tokens` and
:func:`histogram`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.data import sites as sites_lib
from gemmascope.eval.metrics import read_write_sites
from gemmascope.lm.loading import LM
from gemmascope.progress import Progress
from gemmascope.sae.files import model as sae_model


class DashboardInputError(ValueError):
    """A bad input to the dashboard (missing SAE file, latent out of range, no layer/site); the
    message names it."""


# ----------------------------------------------------------------------------------- scanning


@dataclasses.dataclass(kw_only=True)
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


@partial(jax.jit, static_argnames=("topk",))
def _encode_batch(
    arrays: dict[str, jax.Array], x: jax.Array, valid: jax.Array, topk: int | None
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


def _merge_top(
    vals: np.ndarray, seqs: np.ndarray, poss: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keeps the ``k`` largest of ``[d_sae, m]`` candidates per row (stable: earlier first on ties)."""
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(vals, order, 1), np.take_along_axis(seqs, order, 1), np.take_along_axis(poss, order, 1))


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

    def add(
        self, tokens: np.ndarray, mask: np.ndarray, valid: np.ndarray, f: np.ndarray, smax: np.ndarray, sarg: np.ndarray
    ) -> None:
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
        smax = np.asarray(smax, np.float32).T  # [d_sae, B]
        np.maximum(self.act_max, smax.max(axis=1), out=self.act_max)
        seq_ids = np.broadcast_to(np.arange(self.n_seq, self.n_seq + B, dtype=np.int64), smax.shape)
        self.top_v, self.top_s, self.top_p = _merge_top(
            np.concatenate([self.top_v, smax], 1),
            np.concatenate([self.top_s, np.where(smax > 0, seq_ids, -1)], 1),
            np.concatenate([self.top_p, np.asarray(sarg).T.astype(np.int64)], 1),
            self.k,
        )
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
        return ScanResult(
            tokens=np.concatenate(self.toks),
            mask=np.concatenate(self.masks),
            valid=np.concatenate(self.valids),
            fire_counts=self.fire,
            act_sum=self.act_sum,
            act_max=self.act_max,
            top_values=self.top_v,
            top_seq=self.top_s,
            top_pos=self.top_p,
            entry_latent=lat,
            entry_row=rows,
            entry_value=vals,
            latent_start=start,
            n_tokens=self.n_tok,
            n_dropped=self.n_drop,
            seconds=seconds,
        )


def scan_codes(
    tokens: np.ndarray, mask: np.ndarray, codes: np.ndarray, k: int = 12, valid: np.ndarray | None = None
) -> ScanResult:
    """A :class:`ScanResult` from codes computed elsewhere: ``tokens/mask [S, T]``, ``codes [S, T, d_sae]``
    (only rows where ``valid``, default ``mask``, count). For small inputs (dense in memory)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    valid = mask if valid is None else np.asarray(valid, bool) & mask
    f = np.where(valid[..., None], np.asarray(codes, np.float32), 0.0)
    S, T, d_sae = f.shape
    acc = _Accumulator(d_sae, k)
    acc.add(tokens, mask, valid, f.reshape(S * T, d_sae), f.max(axis=1), f.argmax(axis=1))
    return acc.result(0.0)


def scan(
    lm_params,
    lm_cfg,
    sae: Mapping[str, Any],
    *,
    layer: int,
    site: str,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    max_tokens: int | None = None,
    k: int = 12,
    outlier_norm_factor: float = 10.0,
    max_entries: int = 60_000_000,
    log: Callable[[str], None] | None = print,
) -> ScanResult:
    """Encodes text batches with the SAE and keeps the per-latent statistics of :class:`ScanResult`.

    Args:
      lm_params, lm_cfg: the LM (:mod:`gemmascope.lm`).
      sae: exported SAE params (any architecture :func:`gemmascope.sae.files.model.encode` reads).
      layer, site: where the SAE reads the LM (a transcoder site: its input site is encoded).
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
    read, write = read_write_sites(site)
    lm = LM(lm_cfg, lm_params, None, "")
    arrays, topk = sae_model.split_static_k(sae)
    acc = _Accumulator(int(arrays["W_enc"].shape[1]), k)
    t0 = time.time()
    bar = Progress("scan", max_tokens, "tok", log=log)  # a live bar on a terminal, else the lines
    for tokens, mask in batches:
        tokens = np.asarray(tokens, np.int32)
        mask = np.asarray(mask, bool)
        caps = sites_lib.capture(lm, tokens, mask, [(int(layer), s) for s in (read, write)], outlier_norm_factor)
        x, keep = caps[(int(layer), read)]
        if x.shape[-1] != d_in:
            raise DashboardInputError(
                f"the SAE reads d_in={d_in} but {read!r} at layer {layer} of this model has "
                f"width {x.shape[-1]}: wrong model, layer or site for this SAE"
            )
        valid = np.asarray(keep) & np.asarray(caps[(int(layer), write)][1])  # an SAE: the same mask twice
        f, smax, sarg = _encode_batch(arrays, x, jnp.asarray(valid), topk)
        acc.add(tokens, mask, valid, np.asarray(f), np.asarray(smax), np.asarray(sarg))
        if log:
            dt = max(time.time() - t0, 1e-9)
            bar.report(
                acc.n_tok,
                f"[scan] {acc.n_tok:,} tokens, {acc.n_seq} sequences "
                f"({acc.n_tok / dt:,.0f} tok/s, L0 {acc.fire.sum() / max(acc.n_tok, 1):.1f})",
            )
        if max_tokens is not None and acc.n_tok >= max_tokens:
            break
        if acc.n_entries >= max_entries:
            if log:
                bar.write(
                    f"[scan] stopping early: {acc.n_entries:,} non-zero activations held (max_entries={max_entries:,})"
                )
            break
    bar.close()
    return acc.result(time.time() - t0)


def text_batches(
    tokenizer, lm_cfg, texts: Iterable[str], seq_len: int = 128, batch_sequences: int = 32
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Packed ``(tokens [batch_sequences, seq_len], mask)`` batches with BOS first, the last one
    padded: the store's batches (:func:`gemmascope.data.sites.packed_batches`)."""
    return sites_lib.packed_batches(tokenizer, lm_cfg, texts, seq_len, batch_sequences)


# ----------------------------------------------------------------------------------- contexts


@dataclasses.dataclass(kw_only=True)
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


def document_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[S, T]`` mask -> (first, last) text position of the document holding each position."""
    S, T = mask.shape
    idx = np.broadcast_to(np.arange(T), (S, T))
    first = np.maximum.accumulate(np.where(~mask, idx, -1), axis=1) + 1
    nxt = np.where(~mask, idx, T)
    last = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1] - 1
    return first, last


def latent_contexts(
    res: ScanResult, latent: int, before: int = 24, after: int = 8, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> list[Context]:
    """The latent's top contexts (at most ``k``), each limited to its own document."""
    first_all, last_all = bounds if bounds is not None else document_bounds(res.mask)
    T = res.tokens.shape[1]
    out = []
    for v, s, p in zip(res.top_values[latent], res.top_seq[latent], res.top_pos[latent]):
        if s < 0 or v <= 0:
            continue
        s, p = int(s), int(p)
        lo = max(int(first_all[s, p]), p - before)
        hi = min(int(last_all[s, p]), p + after)
        pos = np.arange(lo, hi + 1)
        out.append(
            Context(
                seq=s,
                pos=p,
                value=float(v),
                first=lo,
                token_ids=res.tokens[s, lo : hi + 1].copy(),
                acts=res.activations_at(latent, s * T + pos),
                encoded=res.valid[s, lo : hi + 1].copy(),
                focus=p - lo,
                cut_left=lo > first_all[s, p],
                cut_right=hi < last_all[s, p],
            )
        )
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
