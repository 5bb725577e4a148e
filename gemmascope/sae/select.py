"""Exact top-k selection by threshold bisection (for TopK and BatchTopK while training).

``lax.top_k`` on XLA:CPU costs about 2.5 matmuls of the SAE step at width 4096 (it sorts). A
top-k *mask* only needs a threshold between the (k+1)-th and k-th largest values:
:func:`topk_threshold` finds one by bisection on the floats' order-preserving unsigned-integer keys, each round one fused compare-and-count pass
over the pre-activations, stopping per row once exactly k entries are at or above the candidate
(about 20 rounds for a 4096-wide row) and after at most 32 (the key's bits). The result is exact,
not approximate (``jax.lax.approx_max_k`` is exact top-k on CPU anyway): ``x >= t`` selects
the k largest entries, plus any entries tied with the k-th (``lax.top_k`` would break such ties
by index; with float activations ties are measure zero).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_SIGN = jnp.uint32(0x80000000)


def sortable_keys(x: jax.Array) -> jax.Array:
    """float32 ``x`` -> uint32 keys with the same order (``-0.0`` just below ``+0.0``; no NaN)."""
    b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(b >= _SIGN, ~b, b | _SIGN)


def _from_keys(k: jax.Array) -> jax.Array:
    b = jnp.where(k >= _SIGN, k & jnp.uint32(0x7FFFFFFF), ~k)
    return jax.lax.bitcast_convert_type(b, jnp.float32)


def topk_threshold(x: jax.Array, k: int | jax.Array) -> jax.Array:
    """Per row of ``x [..., n]`` a value ``t [..., 1]`` (float32) with exactly k entries ``>= t``:
    in ``((k+1)-th largest, k-th largest]``. Where the k-th and (k+1)-th largest are equal (a
    tie) it is that value (more than k entries at or above it).

    Invariant per row: ``count(key >= lo) >= k > count(key >= hi)``; each round halves
    ``[lo, hi)`` and a row stops once ``count(key >= lo) == k``. ``k`` may be traced (1 <= k <= n).
    """
    keys = sortable_keys(x)
    k = jnp.asarray(k, jnp.int32)
    lo = jnp.min(keys, axis=-1, keepdims=True)
    hi_max = jnp.max(keys, axis=-1, keepdims=True)
    n_lo = jnp.full(lo.shape, x.shape[-1], jnp.int32)

    def done(lo, hi, n_lo):
        return (n_lo == k) | (hi - lo <= 1)

    def cond(c):
        lo, hi, n_lo = c
        return ~jnp.all(done(lo, hi, n_lo))

    def body(c):
        lo, hi, n_lo = c
        mid = lo + (hi - lo) // 2
        cnt = jnp.sum(keys >= mid, axis=-1, keepdims=True, dtype=jnp.int32)
        up = (cnt >= k) & ~done(lo, hi, n_lo)
        down = (cnt < k) & ~done(lo, hi, n_lo)
        return jnp.where(up, mid, lo), jnp.where(down, mid, hi), jnp.where(up, cnt, n_lo)

    # hi starts one past the largest key (the maximum key is 0xFFFFFFFF only for NaN payloads).
    lo, _, _ = jax.lax.while_loop(cond, body, (lo, hi_max + 1, n_lo))
    return _from_keys(lo)


def topk_mask(x: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool mask of the k largest entries of each row of ``x [..., n]`` (ties at the k-th kept)."""
    return x >= topk_threshold(x, k)
