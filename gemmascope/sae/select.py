"""Exact top-k thresholds by bisection (BatchTopK's batch-wide selection while training).

A top-k *mask* only needs a threshold between the (k+1)-th and k-th largest values:
:func:`topk_threshold` finds one by bisection on the floats' order-preserving unsigned-integer
keys, each round one fused compare-and-count pass, stopping per row once exactly k entries are
at or above the candidate, after at most 32 rounds (the key's bits). The result is exact, not
approximate: ``x >= t`` selects the k largest entries, plus any entries tied with the k-th
(``lax.top_k`` breaks such ties by index; with float activations ties are measure zero).

Where it pays: BatchTopK's one threshold over ``B * d_sae`` activations (a ``lax.top_k`` of
``B * k`` out of millions is a full sort: 3.3 s against 0.30 s for 1024 x 4096, k 64 per row),
and per row for large k (:func:`topk_mask_rows`: AuxK's ``k_aux`` of 512). For TopK's per-row
choice of k <= 128 out of a few thousand ``lax.top_k`` (with its indices scattered into the
mask) is faster on XLA:CPU, so TopK keeps it. Measured at 1024 x 4096 in one run (seconds;
matmul 1024 x 576 x 4096 = 0.31): k 16 / 64 / 128 / 256 / 512: lax.top_k 0.08 / 0.12 / 0.23 /
0.52 / 0.81, bisection 0.23 / 0.54 / 0.74 / 0.56 / 0.59 (a loaded 2-core machine; the
crossover is between 256 and 512).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae.files.model import topk_mask as lax_topk_mask

_SIGN = np.uint32(0x80000000)  # NumPy, not jnp: a jnp value at import would start the JAX backend


def sortable_keys(x: jax.Array) -> jax.Array:
    """float32 ``x`` -> uint32 keys with the same order (``-0.0`` just below ``+0.0``; no NaN)."""
    b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(b >= _SIGN, ~b, b | _SIGN)


def _from_keys(k: jax.Array) -> jax.Array:
    b = jnp.where(k >= _SIGN, k & jnp.uint32(0x7FFFFFFF), ~k)
    return jax.lax.bitcast_convert_type(b, jnp.float32)


def topk_threshold(x: jax.Array, k: int, sample_stride: int = 1, margin: float = 0.1) -> jax.Array:
    """Per row of ``x [..., n]`` a value ``t [..., 1]`` (float32) with exactly k entries ``>= t``:
    in ``((k+1)-th largest, k-th largest]``. Where the k-th and (k+1)-th largest are equal (a
    tie) it is that value (more than k entries at or above it).

    Invariant per row: ``count(key >= lo) >= k > count(key >= hi)``; each round halves
    ``[lo, hi)`` and a row stops once ``count(key >= lo) == k``.

    ``sample_stride > 1`` (for long rows of non-negative values, BatchTopK's whole batch): the
    bracket starts at ``t_s * (1 -/+ margin)`` around ``t_s``, the same threshold found first on
    every ``sample_stride``-th entry (for ``k / sample_stride`` entries, a pass that costs
    ``1 / sample_stride``); two counting passes check the bracket, and a row whose bracket does
    not hold starts from the full range instead, so the result is exact either way, in about half
    the full passes when the sample is representative.
    """
    keys = sortable_keys(x)
    n = x.shape[-1]
    lo = jnp.min(keys, axis=-1, keepdims=True)
    hi = jnp.max(keys, axis=-1, keepdims=True) + 1  # 0xFFFFFFFF is a NaN payload, never a key here
    n_lo = jnp.full(lo.shape, n, jnp.int32)  # entries >= lo
    if sample_stride > 1 and k // sample_stride >= 1:
        t_s = topk_threshold(x[..., ::sample_stride], k // sample_stride)
        lo_s = sortable_keys(t_s * (1.0 - margin))
        hi_s = sortable_keys(t_s * (1.0 + margin)) + 1
        n_lo_s = jnp.sum(keys >= lo_s, axis=-1, keepdims=True, dtype=jnp.int32)
        use_lo = (n_lo_s >= k) & (lo_s > lo) & (lo_s < hi_s)
        use_hi = (jnp.sum(keys >= hi_s, axis=-1, keepdims=True, dtype=jnp.int32) < k) & (hi_s < hi) & (lo_s < hi_s)
        lo, n_lo = jnp.where(use_lo, lo_s, lo), jnp.where(use_lo, n_lo_s, n_lo)
        hi = jnp.where(use_hi, hi_s, hi)
    return _bisect(keys, k, lo, hi, n_lo)


def _bisect(keys: jax.Array, k: int, lo: jax.Array, hi: jax.Array, n_lo: jax.Array) -> jax.Array:
    """Bisection of ``[lo, hi)`` (invariant ``count(key >= lo) = n_lo >= k > count(key >= hi)``)."""
    k = jnp.asarray(k, jnp.int32)

    def done(lo, hi, n_lo):
        return (n_lo == k) | (hi - lo <= 1)

    def cond(c):
        return ~jnp.all(done(*c))

    def body(c):
        lo, hi, n_lo = c
        mid = lo + (hi - lo) // 2
        cnt = jnp.sum(keys >= mid, axis=-1, keepdims=True, dtype=jnp.int32)
        live = ~done(lo, hi, n_lo)
        up, down = (cnt >= k) & live, (cnt < k) & live
        return jnp.where(up, mid, lo), jnp.where(down, mid, hi), jnp.where(up, cnt, n_lo)

    lo, _, _ = jax.lax.while_loop(cond, body, (lo, hi, n_lo))
    return _from_keys(lo)


# From this k on, :func:`topk_mask_rows` bisects instead of calling lax.top_k (see the docstring).
BISECT_MIN_K = 384


def topk_mask_rows(x: jax.Array, k: int) -> jax.Array:
    """Bool mask of the k largest entries of each row of ``x [..., n]``, by the faster exact method
    for this k on XLA:CPU: ``lax.top_k`` below :data:`BISECT_MIN_K`, bisection from it on."""
    return topk_mask(x, k) if int(k) >= BISECT_MIN_K else lax_topk_mask(x, int(k))


def topk_mask(x: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool mask of the k largest entries of each row of ``x [..., n]`` (ties at the k-th kept)."""
    return x >= topk_threshold(x, k)
