"""Token set enrichment of SAE latents' logit weights (Bloom 2024; GSEA-style, Kolmogorov-Smirnov).

For latent i and token set S (``|S| = n`` of ``V`` tokens), rank the vocabulary by the logit weight
``W_dec[i] @ W_U`` in descending order (ties broken by token id, smallest first) and walk down the
list, adding ``1/n`` at a token in S and subtracting ``1/(V - n)`` otherwise. After ``j`` steps the
running sum is ``F_S(j) - F_rest(j)``, the difference of the empirical CDFs of the rank positions of
S and of the rest, so the largest absolute running sum is exactly the two-sample KS statistic of
"positions of S" vs "positions of the rest" (``scipy.stats.ks_2samp(...).statistic``).

We report the *signed* score: the running sum at its largest absolute excursion. Positive: S sits
near the top of the ranking (the latent promotes S); negative: near the bottom (suppresses S).
If the largest upward and downward excursions are equal the positive one is reported.
Empty and full sets (``n = 0`` or ``n = V``) have no ranking to test: score 0, p-value 1.

Computation. The running sum only peaks just after a member and only dips just before one, so with
the member ranks sorted, ``r_1 < ... < r_n`` (0-based), the score needs only those ``n`` values::

    max = max(0, max_k  k/n - (r_k + 1 - k)/(V - n))        (just after member k)
    min = min(0, min_k (k-1)/n - (r_k - (k-1))/(V - n))     (just before member k)

For a chunk of latents we sort the vocabulary once per latent (an int64 key: float order, then
token id), gather the ranks of the members of every set, sort them per set in one segmented sort
(the set index is added as a high offset) and reduce per set: ``O(sum_S |S| log)`` per latent
instead of ``O(n_sets * V)``. Memory per chunk is about ``20 * chunk_size * (sum_S |S| + V)`` bytes;
the default ``chunk_size=32`` was the fastest on a 2-core CPU (cache-sized blocks).

Significance (which test, which correction)
------------------------------------------
Under the null hypothesis that S is a random subset of the vocabulary (independent of the
latent's ranking), the score is a two-sample KS statistic with sample sizes ``n`` and ``V - n``.
We use the asymptotic two-sided p-value with Stephens' small-sample correction
(Stephens 1970; Numerical Recipes ``probks``)::

    n_e = n (V - n) / V,   p = Q_KS((sqrt(n_e) + 0.12 + 0.11 / sqrt(n_e)) * |score|)

with ``Q_KS = scipy.special.kolmogorov`` (the Kolmogorov distribution's survival function). Against
scipy's ``ks_2samp(method="asymp")`` (``kstwo.sf(D, round(n_e))``, which is far too slow to call
on millions of pairs) the absolute difference is below 0.02 for ``n_e >= 50`` and below 0.005 for
``n_e >= 1000``; for tiny sets the p-values are rough. p-values underflow to 0 for very strong
enrichment: rank by the score itself there.

Multiple testing: **Benjamini-Hochberg** by default (``correction="bh"``): the adjusted p-values
("q-values") control the false discovery rate over *all* (latent, set) pairs tested in one call.
BH is valid for independent or positively dependent tests; overlapping sets and related latents are
not independent, so use ``correction="bonferroni"`` (family-wise error over all pairs) when a strict
guarantee is needed.

Token sets. :func:`default_token_sets` builds regex sets over the token strings after removing the
leading-space marker (a literal space, sentencepiece ``'▁'`` or GPT-2 byte-level ``'Ġ'``):
leading space, capitalised, all caps, lowercase, digits, punctuation, brackets, whitespace,
non-ASCII, and token length n. :func:`regex_token_sets` and :func:`token_sets_from_lists` make sets
from the user's regular expressions or lists of strings (e.g. names, part-of-speech word lists).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import kolmogorov

from gemmascope.analysis.logit_lens import iter_logit_weights

# Leading-space markers of common tokenizers: sentencepiece (Gemma, Llama) and GPT-2 byte-level BPE.
SPACE_MARKERS = ("\u2581", "\u0120")  # '▁', 'Ġ'

_PUNCT = re.escape(string.punctuation)
DEFAULT_PATTERNS: dict[str, str] = {
    # Regexes are matched with re.fullmatch against the token's *body* (leading-space marker removed,
    # other markers turned into spaces). ASCII letters only for the case sets.
    "capitalised": r"[A-Z][a-z]*",  # Title-case word: one capital then lowercase ("The", "I")
    "all_caps": r"[A-Z]{2,}",  # two or more capitals only ("USA")
    "lowercase": r"[a-z]+",
    "digits": r"[0-9]+",
    "punctuation": rf"[{_PUNCT}]+",  # only ASCII punctuation characters
    "brackets": r".*[()\[\]{}<>].*",  # contains a bracket
    "open_bracket": r".*[(\[{<].*",
    "close_bracket": r".*[)\]}>].*",
    "whitespace": r"\s*",  # empty body or only whitespace (" ", "\n", "▁▁")
    "non_ascii": r".*[^\x00-\x7f].*",
}
DEFAULT_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8)


def split_leading_space(token: str) -> tuple[bool, str]:
    """``token -> (has_leading_space, body)``.

    The markers ``'▁'`` and ``'Ġ'`` anywhere in the token are read as spaces (how these tokenizers
    spell a space); then one leading space, if present, is removed to give the body.
    """
    for m in SPACE_MARKERS:
        if m in token:
            token = token.replace(m, " ")
    if token.startswith(" "):
        return True, token[1:]
    return False, token


def regex_token_sets(
    token_strings: Sequence[str], patterns: Mapping[str, str], *, on_body: bool = True, flags: int = re.DOTALL
) -> dict[str, np.ndarray]:
    """Token sets from regular expressions: ``{name: pattern} -> {name: bool mask [V]}``.

    A token is in the set when ``re.fullmatch(pattern, s)`` matches, with ``s`` the token's body
    (leading-space marker removed, see :func:`split_leading_space`) if ``on_body`` else the raw string.
    Use ``.*x.*`` for "contains x".
    """
    subjects = [split_leading_space(t)[1] for t in token_strings] if on_body else list(token_strings)
    out = {}
    for name, pattern in patterns.items():
        rx = re.compile(pattern, flags)
        out[name] = np.fromiter((rx.fullmatch(s) is not None for s in subjects), bool, len(subjects))
    return out


def default_token_sets(token_strings: Sequence[str], lengths: Iterable[int] = DEFAULT_LENGTHS) -> dict[str, np.ndarray]:
    """The default regex sets over a vocabulary (token strings in vocab order) -> ``{name: bool [V]}``.

    ``leading_space`` (literal space, ``'▁'`` or ``'Ġ'``), the :data:`DEFAULT_PATTERNS` sets on the
    body, and ``length_<n>`` (body of exactly n characters) for n in ``lengths``.
    """
    split = [split_leading_space(t) for t in token_strings]
    sets = {"leading_space": np.fromiter((s for s, _ in split), bool, len(split))}
    sets.update(regex_token_sets(token_strings, DEFAULT_PATTERNS))
    body_len = np.fromiter((len(b) for _, b in split), np.int64, len(split))
    for n in lengths:
        sets[f"length_{n}"] = body_len == n
    return sets


def token_sets_from_lists(
    token_strings: Sequence[str],
    lists: Mapping[str, Iterable[str]],
    *,
    ignore_leading_space: bool = True,
    case_sensitive: bool = True,
) -> dict[str, np.ndarray]:
    """Token sets from lists of strings (e.g. first names): ``{name: [str]} -> {name: bool [V]}``.

    A token is in the set when its string equals a list entry; with ``ignore_leading_space`` both
    are compared by their body (so ``" Mary"``, ``"▁Mary"`` and ``"Mary"`` all match ``"Mary"``);
    without ``case_sensitive`` the comparison is case-folded.
    """

    def norm(s: str) -> str:
        if ignore_leading_space:
            s = split_leading_space(s)[1]
        return s if case_sensitive else s.casefold()

    keys = [norm(t) for t in token_strings]
    out = {}
    for name, words in lists.items():
        wanted = {norm(w) for w in words}
        out[name] = np.fromiter((k in wanted for k in keys), bool, len(keys))
    return out


def _as_set_matrix(token_sets: Mapping[str, Any], vocab: int) -> tuple[list[str], list[np.ndarray]]:
    """``{name: bool mask [V] | token ids}`` -> names and sorted unique member ids per set."""
    names, members = [], []
    for name, s in token_sets.items():
        s = np.asarray(s)
        if s.dtype == bool:
            if s.shape != (vocab,):
                raise ValueError(f"token set {name!r}: mask shape {s.shape} != vocab ({vocab},)")
            ids = np.flatnonzero(s)
        else:
            ids = np.unique(s.astype(np.int64))
            if ids.size and (ids[0] < 0 or ids[-1] >= vocab):
                raise ValueError(f"token set {name!r}: ids out of range [0, {vocab})")
        names.append(name)
        members.append(ids.astype(np.int64))
    return names, members


def _descending_order(w: np.ndarray) -> np.ndarray:
    """``[c, V]`` weights -> ``[c, V]`` token ids in descending weight order, ties by token id."""
    c, vocab = w.shape
    if w.dtype == np.float32 and vocab < 2**32:
        bits = (w + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
        key = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)  # int32 order == float order
        key = (~key.astype(np.int64)) << 32  # descending, in the high 32 bits
        key |= np.arange(vocab, dtype=np.int64)  # token id breaks ties
        key.sort(axis=1)  # int64 sort: SIMD in numpy >= 2
        return (key & 0xFFFFFFFF).astype(np.int64)
    return np.argsort(-np.asarray(w, np.float64), axis=1, kind="stable")


class _SetLayout:
    """Precomputed per-column constants for the segmented computation over all valid sets."""

    def __init__(self, members: list[np.ndarray], vocab: int):
        sizes = np.array([m.size for m in members], np.int64)
        self.sizes = sizes
        self.valid = (sizes > 0) & (sizes < vocab)
        valid_idx = np.flatnonzero(self.valid)
        self.valid_idx = valid_idx
        if valid_idx.size == 0:
            return
        vs = sizes[valid_idx]
        self.starts = np.concatenate([[0], np.cumsum(vs)[:-1]]).astype(np.int64)
        self.ids = np.concatenate([members[i] for i in valid_idx])  # [N]
        seg = np.repeat(np.arange(valid_idx.size), vs)
        # int32 keys sort faster; int64 only when the offsets would overflow
        self.key_dtype = np.int32 if valid_idx.size * vocab < 2**31 else np.int64
        self.offset = (seg.astype(np.int64) * vocab).astype(self.key_dtype)  # [N]
        k = (np.arange(self.ids.size) - np.repeat(self.starts, vs) + 1).astype(np.float64)
        inv_n = np.repeat(1.0 / vs, vs)
        inv_m = np.repeat(1.0 / (vocab - vs), vs)
        # With rm = (rank + offset) * inv_m, the running sum just after member k is up0 - rm and just
        # before it down0 - rm (the offset is folded in here, so the sorted keys are used as they are).
        self.inv_m = inv_m
        self.up0 = k * (inv_n + inv_m) - inv_m + self.offset * inv_m
        self.down0 = (k - 1.0) * (inv_n + inv_m) + self.offset * inv_m


def _scores_chunk(w: np.ndarray, layout: _SetLayout, n_sets: int) -> np.ndarray:
    """``[c, V]`` weights -> ``[c, n_sets]`` signed KS scores."""
    c, vocab = w.shape
    out = np.zeros((c, n_sets), np.float64)
    if layout.valid_idx.size == 0:
        return out
    order = _descending_order(w)
    rank = np.empty(order.shape, layout.key_dtype)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(vocab, dtype=layout.key_dtype), order.shape), axis=1)
    r = rank[:, layout.ids] + layout.offset  # [c, N]; segment s holds values in [s V, (s+1) V)
    r.sort(axis=1)  # sorts each set's member ranks (same layout after)
    rm = np.multiply(r, layout.inv_m)  # [c, N] float64
    del r
    tmp = np.subtract(layout.up0, rm)  # running sum just after member k
    dmax = np.maximum(np.maximum.reduceat(tmp, layout.starts, axis=1), 0.0)
    np.subtract(layout.down0, rm, out=tmp)  # running sum just before member k
    dmin = np.minimum(np.minimum.reduceat(tmp, layout.starts, axis=1), 0.0)
    out[:, layout.valid_idx] = np.where(dmax >= -dmin, dmax, dmin)
    return out


def ks_pvalue(score: np.ndarray, set_size: np.ndarray, vocab: int) -> np.ndarray:
    """Asymptotic two-sided KS p-value of ``|score|`` for sets of ``set_size`` in a vocab of ``vocab``.

    ``p = kolmogorov((sqrt(n_e) + 0.12 + 0.11 / sqrt(n_e)) |score|)``, ``n_e = n (V - n) / V``;
    1 for empty or full sets. Broadcasts ``score [..., n_sets]`` with ``set_size [n_sets]``.
    """
    n = np.asarray(set_size, np.float64)
    valid = (n > 0) & (n < vocab)
    ne = np.where(valid, n * (vocab - n) / vocab, 1.0)
    sq = np.sqrt(ne)
    p = kolmogorov((sq + 0.12 + 0.11 / sq) * np.abs(score))
    return np.where(valid, np.clip(p, 0.0, 1.0), 1.0)


def adjust_pvalues(p: np.ndarray, method: str = "bh") -> np.ndarray:
    """Multiple-testing adjustment over *all* entries of ``p`` (any shape).

    ``"bh"``: Benjamini-Hochberg step-up adjusted p-values (FDR); ``"bonferroni"``: ``min(1, m p)``
    (FWER); ``"none"``: unchanged. ``m`` is the number of entries.
    """
    p = np.asarray(p, np.float64)
    m = p.size
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    if method != "bh":
        raise ValueError(f"unknown correction {method!r}: use 'bh', 'bonferroni' or 'none'")
    flat = p.ravel()
    order = np.argsort(flat, kind="stable")
    scaled = flat[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]  # q_(i) = min_{j >= i} p_(j) m / j
    q = np.empty_like(flat)
    q[order] = np.minimum(q_sorted, 1.0)
    return q.reshape(p.shape)


@dataclasses.dataclass(kw_only=True)
class EnrichmentResult:
    """Enrichment of every (latent, set) pair.

    ``score``, ``pvalue`` and ``qvalue`` are ``[n_latents, n_sets]``; ``set_sizes`` is ``[n_sets]``.
    ``qvalue`` is ``pvalue`` adjusted by ``correction`` over all pairs of this result.
    """

    set_names: list[str]
    set_sizes: np.ndarray
    score: np.ndarray
    pvalue: np.ndarray
    qvalue: np.ndarray
    correction: str

    def significant(self, alpha: float = 0.05) -> np.ndarray:
        """``[n_latents, n_sets]`` bool: adjusted p-value below ``alpha``."""
        return self.qvalue < alpha

    def top_sets(self, latent: int, k: int = 5, alpha: float | None = None) -> list[tuple[str, float, float]]:
        """The ``k`` sets with the largest ``|score|`` for one latent: ``[(name, score, qvalue)]``,
        optionally only those with ``qvalue < alpha``."""
        s = self.score[latent]
        out = []
        for j in np.argsort(-np.abs(s), kind="stable"):
            if alpha is not None and not self.qvalue[latent, j] < alpha:
                continue
            out.append((self.set_names[j], float(s[j]), float(self.qvalue[latent, j])))
            if len(out) == k:
                break
        return out

    def column(self, name: str) -> np.ndarray:
        """``[n_latents]`` scores of one set."""
        return self.score[:, self.set_names.index(name)]


def enrichment_scores(weights: np.ndarray, token_sets: Mapping[str, Any], *, chunk_size: int = 32) -> np.ndarray:
    """Signed enrichment scores of precomputed logit weights.

    Args:
      weights: ``[n_latents, V]`` (or ``[V]``) logit weights.
      token_sets: ``{name: bool mask [V] or array of token ids}``.
      chunk_size: latents per chunk (memory ``~20 * chunk_size * (sum_S |S| + V)`` bytes).

    Returns:
      ``[n_latents, n_sets]`` float64 (``[n_sets]`` for 1-D input), in ``token_sets`` order.
    """
    w = np.asarray(weights)
    squeeze = w.ndim == 1
    w = np.atleast_2d(w)
    vocab = w.shape[1]
    names, members = _as_set_matrix(token_sets, vocab)
    layout = _SetLayout(members, vocab)
    chunk_size = max(1, int(chunk_size))
    out = (
        np.concatenate(
            [_scores_chunk(w[s : s + chunk_size], layout, len(names)) for s in range(0, w.shape[0], chunk_size)]
        )
        if w.shape[0]
        else np.zeros((0, len(names)))
    )
    return out[0] if squeeze else out


def token_set_enrichment(
    w_dec_or_params: Any, W_U: Any, token_sets: Mapping[str, Any], *, chunk_size: int = 32, correction: str = "bh"
) -> EnrichmentResult:
    """Token set enrichment of every latent of an SAE, with corrected significance.

    Args:
      w_dec_or_params: ``W_dec [d_sae, d_in]`` or an SAE params dict holding ``"W_dec"``.
      W_U: unembedding ``[d_in, vocab]``.
      token_sets: ``{name: bool mask [vocab] or token ids}``, e.g. :func:`default_token_sets`.
      chunk_size: latents per chunk; never more than one ``[chunk_size, vocab]`` logit block.
      correction: ``"bh"`` (default), ``"bonferroni"`` or ``"none"``, over all (latent, set) pairs.
    """
    if correction not in ("bh", "bonferroni", "none"):
        raise ValueError(f"unknown correction {correction!r}: use 'bh', 'bonferroni' or 'none'")
    vocab = W_U.shape[1]
    names, members = _as_set_matrix(token_sets, vocab)
    layout = _SetLayout(members, vocab)
    parts = [_scores_chunk(w, layout, len(names)) for _, w in iter_logit_weights(w_dec_or_params, W_U, chunk_size)]
    score = np.concatenate(parts) if parts else np.zeros((0, len(names)))
    p = ks_pvalue(score, layout.sizes, vocab)
    return EnrichmentResult(
        set_names=names,
        set_sizes=layout.sizes,
        score=score,
        pvalue=p,
        qvalue=adjust_pvalues(p, correction),
        correction=correction,
    )


def enrichment_from_weights(
    weights: np.ndarray, token_sets: Mapping[str, Any], *, chunk_size: int = 32, correction: str = "bh"
) -> EnrichmentResult:
    """:func:`token_set_enrichment` on precomputed logit weights ``[n_latents, V]``."""
    w = np.atleast_2d(np.asarray(weights))
    vocab = w.shape[1]
    names, members = _as_set_matrix(token_sets, vocab)
    sizes = np.array([m.size for m in members], np.int64)
    score = enrichment_scores(w, token_sets, chunk_size=chunk_size)
    p = ks_pvalue(score, sizes, vocab)
    return EnrichmentResult(
        set_names=names,
        set_sizes=sizes,
        score=score,
        pvalue=p,
        qvalue=adjust_pvalues(p, correction),
        correction=correction,
    )
