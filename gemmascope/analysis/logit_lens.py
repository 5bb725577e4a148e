"""Logit-lens statistics of SAE latents (Bloom 2024, "Understanding SAE Features with the Logit Lens").

The *logit weights* of latent ``i`` are its decoder direction read through the unembedding::

    w_i = W_dec[i] @ W_U        W_dec [d_sae, d_in], W_U [d_in, vocab]  ->  w_i [vocab]

(for a model with tied embeddings ``W_U = embed.T``; Gemma 2's final soft-capping and norm are
ignored, as in Bloom's analysis). Per latent we report, over the vocabulary:

* ``mean``, ``std`` (population, ddof=0),
* ``skew = E[z^3]`` and ``kurtosis = E[z^4]`` of the standardised weights ``z = (w - mean) / std``
  (kurtosis NOT in excess: a Gaussian gives 3, a two-point 50/50 split gives 1),
* ``frac_above_mean``: the fraction of the vocabulary with ``w > mean`` (how evenly it splits),
* the top-k (most promoted) and bottom-k (most suppressed) token ids and their weights.

These are the biased (plug-in) moments, equal to ``scipy.stats.skew(w)`` and
``scipy.stats.kurtosis(w, fisher=False)`` with their default ``bias=True``.

Classification rule (:func:`classify`, thresholds in :class:`ClassThresholds`)
-----------------------------------------------------------------------------
Applied in this order, the first match wins:

1. ``partition``:   ``kurtosis < partition_max_kurtosis`` (2.0) **and**
   ``|frac_above_mean - 0.5| <= partition_max_imbalance`` (0.2).
   Bimodal: the latent promotes about half of the vocabulary and suppresses the rest
   (e.g. tokens with vs. without a leading space). A two-point mixture with mass p on one side has
   kurtosis ``1 / (p (1 - p)) - 3``: 1 at p = 1/2, < 2 for p in (0.28, 0.72); two Gaussian bumps
   at ``+-delta`` (unit width) fall below 2 once ``delta`` exceeds about 1.55. (A uniform distribution, 1.8,
   also passes: it is the limit of a flat, "half up, half down" split.)
2. ``prediction``:  ``kurtosis > heavy_tail_min_kurtosis`` (4.0) **and** ``skew > min_abs_skew`` (0.5).
   Heavy right tail: a small set of tokens is strongly promoted.
3. ``suppression``: ``kurtosis > heavy_tail_min_kurtosis`` **and** ``skew < -min_abs_skew``.
   The mirror image: a small set of tokens is strongly suppressed (Bloom: "like partition features
   but asymmetric"; a 95/5 two-point split has skew -4.1 and kurtosis 18).
4. ``other``: everything else, including near-Gaussian latents (kurtosis ~3, skew ~0), symmetric
   heavy tails (e.g. Laplace: kurtosis 6, skew 0) and dead latents (``std == 0``, statistics NaN).

The classes are disjoint because ``partition_max_kurtosis < heavy_tail_min_kurtosis`` (checked).
The default thresholds are our choice (Bloom's post gives the classes, not numbers): with a vocabulary
of tens of thousands of tokens the sampling noise of a Gaussian's skew and kurtosis is ~0.01-0.02,
so the margins are wide; tune them with the ``thresholds`` argument.

Performance: latents are processed in chunks of ``chunk_size`` rows (the ``[chunk, vocab]`` logit
block is the only large temporary, ``4 * chunk * vocab`` bytes); one jitted function computes the
matmul, moments and top-k per chunk, and the last chunk is zero-padded so it compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CLASSES = ("partition", "prediction", "suppression", "other")


@dataclasses.dataclass(frozen=True)
class ClassThresholds:
    """Named thresholds of the classification rule (see the module docstring)."""

    partition_max_kurtosis: float = 2.0
    """Partition features have kurtosis below this (bimodal / flat; a 50/50 two-point split gives 1)."""
    partition_max_imbalance: float = 0.2
    """... and ``|frac_above_mean - 0.5|`` at most this (the vocabulary splits near 50/50)."""
    heavy_tail_min_kurtosis: float = 4.0
    """Prediction / suppression features have kurtosis above this (Gaussian: 3)."""
    min_abs_skew: float = 0.5
    """... and skew above ``+min_abs_skew`` (prediction) or below ``-min_abs_skew`` (suppression)."""

    def __post_init__(self):
        if not self.partition_max_kurtosis < self.heavy_tail_min_kurtosis:
            raise ValueError(
                f"partition_max_kurtosis ({self.partition_max_kurtosis}) must be below "
                f"heavy_tail_min_kurtosis ({self.heavy_tail_min_kurtosis}) so the classes are disjoint"
            )
        if self.min_abs_skew < 0 or self.partition_max_imbalance < 0:
            raise ValueError("min_abs_skew and partition_max_imbalance must be >= 0")


def ids_to_tokens(ids: np.ndarray | Sequence[int], token_strings: Sequence[str]) -> np.ndarray:
    """Token ids of any shape -> an object array of the same shape holding the token strings."""
    table = np.asarray(token_strings, dtype=object)
    return table[np.asarray(ids)]


@dataclasses.dataclass(kw_only=True)
class LogitLensResult:
    """Per-latent logit-lens statistics; every array is ``[d_sae]`` unless stated.

    ``top_ids``/``top_values`` are ``[d_sae, k]`` in descending weight order; ``bottom_ids``/
    ``bottom_values`` are ``[d_sae, k]`` in ascending order (most suppressed first).
    ``feature_class`` holds one of :data:`CLASSES` per latent.
    """

    mean: np.ndarray
    std: np.ndarray
    skew: np.ndarray
    kurtosis: np.ndarray
    frac_above_mean: np.ndarray
    top_ids: np.ndarray
    top_values: np.ndarray
    bottom_ids: np.ndarray
    bottom_values: np.ndarray
    feature_class: np.ndarray
    thresholds: ClassThresholds = ClassThresholds()

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def top_tokens(self, token_strings: Sequence[str], latent: int | None = None) -> np.ndarray:
        """Top-k token strings: ``[d_sae, k]``, or ``[k]`` for one latent."""
        ids = self.top_ids if latent is None else self.top_ids[latent]
        return ids_to_tokens(ids, token_strings)

    def bottom_tokens(self, token_strings: Sequence[str], latent: int | None = None) -> np.ndarray:
        """Bottom-k token strings: ``[d_sae, k]``, or ``[k]`` for one latent (most suppressed first)."""
        ids = self.bottom_ids if latent is None else self.bottom_ids[latent]
        return ids_to_tokens(ids, token_strings)

    def class_counts(self) -> dict[str, int]:
        """Number of latents in each class."""
        return {c: int(np.sum(self.feature_class == c)) for c in CLASSES}

    def reclassify(self, thresholds: ClassThresholds) -> LogitLensResult:
        """The same statistics classified with other thresholds (no recomputation)."""
        cls = classify(self.skew, self.kurtosis, self.frac_above_mean, thresholds)
        return dataclasses.replace(self, feature_class=cls, thresholds=thresholds)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays as a plain dict (e.g. for ``np.savez``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "thresholds"}


def classify(
    skew: np.ndarray, kurtosis: np.ndarray, frac_above_mean: np.ndarray, thresholds: ClassThresholds = ClassThresholds()
) -> np.ndarray:
    """``[d_sae]`` statistics -> ``[d_sae]`` class names (the rule in the module docstring).

    NaN statistics (dead latents) compare False everywhere and end up in ``other``.
    """
    t = thresholds
    skew = np.asarray(skew, np.float64)
    kurt = np.asarray(kurtosis, np.float64)
    frac = np.asarray(frac_above_mean, np.float64)
    out = np.full(skew.shape, "other", dtype="<U11")
    heavy = kurt > t.heavy_tail_min_kurtosis
    out[heavy & (skew < -t.min_abs_skew)] = "suppression"
    out[heavy & (skew > t.min_abs_skew)] = "prediction"
    partition = (kurt < t.partition_max_kurtosis) & (np.abs(frac - 0.5) <= t.partition_max_imbalance)
    out[partition] = "partition"
    return out


def _get_w_dec(w_dec_or_params: Any) -> Any:
    if isinstance(w_dec_or_params, Mapping):
        return w_dec_or_params["W_dec"]
    return w_dec_or_params


def _check_shapes(W_dec: Any, W_U: Any) -> None:
    if W_dec.ndim != 2 or W_U.ndim != 2:
        raise ValueError(f"W_dec must be [d_sae, d_in] and W_U [d_in, vocab]; got {W_dec.shape}, {W_U.shape}")
    if W_dec.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"W_dec is [d_sae, d_in] = {tuple(W_dec.shape)} but W_U is {tuple(W_U.shape)}: W_U must be "
            "[d_in, vocab] (for tied embeddings pass embed.T)"
        )


@jax.jit
def _logits(w_dec_chunk: jax.Array, w_u: jax.Array) -> jax.Array:
    """``[c, d_in] @ [d_in, V] -> [c, V]`` in fp32 at full precision (no TF32/bf16 passes on GPU)."""
    return jnp.matmul(w_dec_chunk.astype(jnp.float32), w_u.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)


@partial(jax.jit, static_argnames=("k",))
def _chunk_stats(w_dec_chunk: jax.Array, w_u: jax.Array, k: int) -> dict[str, jax.Array]:
    """One chunk of latents ``[c, d_in]`` -> moments ``[c]`` and top/bottom-k ``[c, k]``."""
    w = _logits(w_dec_chunk, w_u)  # [c, V]
    mean = jnp.mean(w, axis=1)
    d = w - mean[:, None]  # two-pass: centre first, then moments
    d2 = d * d
    m2 = jnp.mean(d2, axis=1)
    m3 = jnp.mean(d2 * d, axis=1)
    m4 = jnp.mean(d2 * d2, axis=1)
    live = m2 > 0
    safe_m2 = jnp.where(live, m2, 1.0)
    skew = jnp.where(live, m3 / safe_m2**1.5, jnp.nan)
    kurt = jnp.where(live, m4 / (safe_m2 * safe_m2), jnp.nan)
    frac = jnp.mean((d > 0).astype(jnp.float32), axis=1)
    top_v, top_i = jax.lax.top_k(w, k)
    bot_v, bot_i = jax.lax.top_k(-w, k)
    return dict(
        mean=mean,
        std=jnp.sqrt(m2),
        skew=skew,
        kurtosis=kurt,
        frac_above_mean=frac,
        top_ids=top_i,
        top_values=top_v,
        bottom_ids=bot_i,
        bottom_values=-bot_v,
    )


def _padded_chunks(W_dec: Any, chunk_size: int) -> Iterator[tuple[int, int, jax.Array]]:
    """Yields ``(start, n_valid, chunk [chunk_size, d_in])``; the last chunk is zero-padded."""
    d_sae = W_dec.shape[0]
    for start in range(0, d_sae, chunk_size):
        block = np.asarray(W_dec[start : start + chunk_size], dtype=np.float32)
        n = block.shape[0]
        if n < chunk_size:
            block = np.concatenate([block, np.zeros((chunk_size - n, block.shape[1]), np.float32)])
        yield start, n, jnp.asarray(block)


def iter_logit_weights(w_dec_or_params: Any, W_U: Any, chunk_size: int = 512) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(start, w)`` with ``w = W_dec[start:start+c] @ W_U`` as fp32 numpy ``[c, vocab]``.

    Only one ``[chunk_size, vocab]`` block exists at a time.
    """
    W_dec = _get_w_dec(w_dec_or_params)
    _check_shapes(W_dec, W_U)
    chunk_size = max(1, min(int(chunk_size), W_dec.shape[0]))
    w_u = jnp.asarray(W_U, jnp.float32)
    for start, n, block in _padded_chunks(W_dec, chunk_size):
        yield start, np.asarray(_logits(block, w_u))[:n]


def logit_weights(w_dec_or_params: Any, W_U: Any, latents: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Logit weights ``W_dec[latents] @ W_U``: ``[n, vocab]`` fp32 (all latents if ``latents`` is None;
    only for a few latents or small SAEs: use :func:`logit_lens` for whole SAEs)."""
    W_dec = _get_w_dec(w_dec_or_params)
    _check_shapes(W_dec, W_U)
    rows = np.asarray(W_dec if latents is None else np.asarray(W_dec)[np.asarray(latents)], np.float32)
    return np.asarray(_logits(jnp.asarray(rows), jnp.asarray(W_U, jnp.float32)))


def logit_lens(
    w_dec_or_params: Any,
    W_U: Any,
    *,
    k: int = 10,
    chunk_size: int = 512,
    thresholds: ClassThresholds = ClassThresholds(),
) -> LogitLensResult:
    """Logit-lens statistics and classes of every latent.

    Args:
      w_dec_or_params: ``W_dec [d_sae, d_in]`` or an SAE params dict holding ``"W_dec"``
        (numpy, JAX or memory-mapped; rows are read one chunk at a time).
      W_U: unembedding ``[d_in, vocab]`` (``embed.T`` for tied embeddings).
      k: how many top and bottom tokens to keep per latent.
      chunk_size: latents per chunk; peak extra memory is about ``5 * 4 * chunk_size * vocab`` bytes.
      thresholds: the classification thresholds.

    Returns:
      :class:`LogitLensResult` with ``[d_sae]`` statistics, ``[d_sae, k]`` top/bottom ids and values.
    """
    W_dec = _get_w_dec(w_dec_or_params)
    _check_shapes(W_dec, W_U)
    vocab = W_U.shape[1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k} must be in [1, vocab={vocab}]")
    d_sae = W_dec.shape[0]
    chunk_size = max(1, min(int(chunk_size), d_sae))
    w_u = jnp.asarray(W_U, jnp.float32)
    parts: dict[str, list[np.ndarray]] = {}
    pending = None  # keep one chunk in flight: dispatch the next before pulling the previous to host
    for _start, n, block in _padded_chunks(W_dec, chunk_size):
        out = _chunk_stats(block, w_u, k)
        if pending is not None:
            _collect(parts, *pending)
        pending = (out, n)
    if pending is not None:
        _collect(parts, *pending)
    stats = {name: np.concatenate(v) for name, v in parts.items()}
    for name in ("mean", "std", "skew", "kurtosis", "frac_above_mean", "top_values", "bottom_values"):
        stats[name] = stats[name].astype(np.float32)
    for name in ("top_ids", "bottom_ids"):
        stats[name] = stats[name].astype(np.int32)
    cls = classify(stats["skew"], stats["kurtosis"], stats["frac_above_mean"], thresholds)
    return LogitLensResult(feature_class=cls, thresholds=thresholds, **stats)


def _collect(parts: dict[str, list[np.ndarray]], out: dict[str, jax.Array], n: int) -> None:
    for name, v in out.items():
        parts.setdefault(name, []).append(np.asarray(v)[:n])


def moments_reference(w: np.ndarray) -> dict[str, np.ndarray]:
    """Plain float64 numpy moments of ``w [n, vocab]`` (a slow reference for tests and small inputs)."""
    w = np.asarray(w, np.float64)
    mean = w.mean(axis=1)
    d = w - mean[:, None]
    m2 = (d**2).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = np.where(m2 > 0, (d**3).mean(axis=1) / m2**1.5, np.nan)
        kurt = np.where(m2 > 0, (d**4).mean(axis=1) / m2**2, np.nan)
    return dict(mean=mean, std=np.sqrt(m2), skew=skew, kurtosis=kurt, frac_above_mean=(d > 0).mean(axis=1))
