"""The sparse training path: the decoder and the weight gradients over the latents that fire.

At width 65,536 and L0 64 all but 0.1% of the dense step's decoder product and of its two weight
gradients is multiplication by zero. Here every row of the batch carries a static number of
*slots* (``capacity``): ``idx [B, cap]`` latent indices and the values there, a superset of the
latents whose gradient is non-zero (JumpReLU: the firing latents and those whose pre-activation
lies within the straight-through kernel's bandwidth of the threshold). Then

* the encoder's forward stays dense (``pre = x @ W_enc + b``: it is what chooses the slots);
* :func:`gather_pre` reads ``pre`` at the slots; its custom VJP turns the slots' cotangent into
  the encoder's weight gradient by a scatter-add of ``g[b, j] * x[b]`` into row ``idx[b, j]`` of
  ``W_enc^T`` (``B * cap * d_in`` multiply-adds, not ``B * d_sae * d_in``), so no ``[B, d_sae]``
  cotangent and no ``[B, d_sae]`` residual exist;
* :func:`decode` is ``sum_j f[b, j] W_dec[idx[b, j]]`` (a gather), and its custom VJP gives the
  decoder's gradient as a scatter-add and the slots' cotangent as gathered dot products.

Slots beyond a row's active latents hold inactive latents (distinct indices, each row's slots
all different), whose code and every pseudo-derivative are exactly 0, so the sparse loss is the
dense loss restricted to a superset of its support: the same values and gradients up to the
order of float32 sums. A row with more active latents than slots *overflows*
(:func:`active_slots` says so); the trainer then takes the dense step for that batch
(:mod:`gemmascope.train.step`), so a result never silently differs.

The loops over slots are loops over slot columns (each iteration one ``[B, d_in]`` gather or
scatter): on XLA:CPU that ran 2x (scatter) to 6x (gather) faster than one gather of
``[B, cap, d_in]`` followed by a reduction, which also materialises ``B * cap * d_in`` floats
(measured at 1024 x 576 x 65,536, cap 128: decode 0.04 s against 0.25 s, scatter-add 0.16 s
against 0.33 s; the dense decoder matmul 0.79 s). Each row's active latents come first in its
slots, so the loops stop at ``used``, the largest row's count: the capacity costs the slot
choice and ``[B, cap]`` arrays, not gathers and scatters.

Not yet: the dense fallback lives in the same compiled step (``lax.cond``), so XLA's temporary
memory of the step is the dense step's, not the sparse path's own (bench/bench_sae_step.py
--sparse reports both); a sharded decoder (``config.mesh.model > 1``) and accelerators train
dense under "auto" (not measured there).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Chunk length of the first stage of :func:`active_slots` (a divisor of the width is used).
CHUNK = 64


def active_slots(active: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(idx [B, cap] int32, used [] int32, overflow [] bool)``: per row of ``active [B, n]`` (bool)
    ``cap`` distinct latent indices holding every active one first when the row has at most ``cap``
    (``cap = min(capacity, n)``); the remaining slots hold inactive latents. ``used``: the most
    active latents of a row (at most ``cap``), so slots ``j >= used`` are inactive in every row and
    the loops over slots stop there; ``overflow``: some row has more than ``cap``.

    Two stages of ``lax.top_k`` instead of one over ``[B, n]`` (0.13 s against 0.43 s at 1024 x
    65,536, cap 128, on XLA:CPU): the chunks of :data:`CHUNK` latents holding an active one (at
    most ``cap`` of them when the row fits), then the active latents among those chunks' entries.
    Ties (inactive fillers) go to the lowest index, so the choice is deterministic.
    """
    b, n = active.shape
    cap = min(int(capacity), n)
    most = jnp.max(jnp.sum(active, axis=-1, dtype=jnp.int32))
    overflow, used = most > cap, jnp.minimum(most, cap)
    if cap == n:  # every latent a slot, in index order
        return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)), jnp.int32(n), overflow
    c = math.gcd(n, CHUNK)
    chunks = active.reshape(b, n // c, c)
    k1 = min(cap, n // c)
    _, ch = jax.lax.top_k(jnp.any(chunks, axis=-1).astype(jnp.float32), k1)  # [B, k1]
    sub = jnp.take_along_axis(chunks, ch[:, :, None], axis=1).reshape(b, k1 * c)
    _, j = jax.lax.top_k(sub.astype(jnp.float32), cap)  # [B, cap] positions in sub, active first
    idx = jnp.take_along_axis(ch, j // c, axis=1) * c + j % c
    return idx.astype(jnp.int32), used, overflow


def _gather_sum(idx: jax.Array, coef: jax.Array, table: jax.Array, used: jax.Array) -> jax.Array:
    """``[B, d]``: ``sum_{j < used} coef[b, j] * table[idx[b, j]]`` (``idx, coef [B, cap]``,
    ``table [n, d]``)."""

    def body(j, acc):
        return acc + coef[:, j, None] * table[idx[:, j]]

    init = jnp.zeros((idx.shape[0], table.shape[-1]), table.dtype)
    return jax.lax.fori_loop(0, used, body, init)


def _gather_dot(idx: jax.Array, rows: jax.Array, table: jax.Array, used: jax.Array) -> jax.Array:
    """``[B, cap]``: ``<rows[b], table[idx[b, j]]>`` for ``j < used``, else 0 (``rows [B, d]``,
    ``table [n, d]``)."""

    def body(j, out):
        return out.at[:, j].set(jnp.sum(rows * table[idx[:, j]], axis=-1))

    return jax.lax.fori_loop(0, used, body, jnp.zeros(idx.shape, rows.dtype))


def _scatter_rows(idx: jax.Array, coef: jax.Array, rows: jax.Array, n: int, used: jax.Array) -> jax.Array:
    """``[n, d]``: row ``i`` is ``sum over (b, j < used) with idx[b, j] = i`` of ``coef[b, j] *
    rows[b]`` (the transpose of :func:`_gather_sum` and of :func:`_gather_dot` in ``table``)."""

    def body(j, acc):
        return acc.at[idx[:, j]].add(coef[:, j, None] * rows)

    return jax.lax.fori_loop(0, used, body, jnp.zeros((n, rows.shape[-1]), rows.dtype))


@jax.custom_vjp
def decode(f: jax.Array, idx: jax.Array, w_dec: jax.Array, used: jax.Array) -> jax.Array:
    """``[B, d_out]``: ``sum_j f[b, j] * W_dec[idx[b, j]]``, the dense ``f_dense @ W_dec`` of the
    codes ``f [B, cap]`` at latents ``idx [B, cap]`` (no bias), over the slots ``j < used``
    (``f`` is 0 beyond). Gradients: to ``f`` the gathered dot products (0 beyond ``used``: slots
    of inactive latents, whose codes have zero derivative), to ``W_dec [d_sae, d_out]`` a
    scatter-add; residuals ``f, idx, W_dec`` only."""
    return _gather_sum(idx, f, w_dec, used)


def _decode_fwd(f, idx, w_dec, used):
    return decode(f, idx, w_dec, used), (f, idx, w_dec, used)


def _decode_bwd(res, g):
    f, idx, w_dec, used = res
    return _gather_dot(idx, g, w_dec, used), None, _scatter_rows(idx, f, g, w_dec.shape[0], used), None


decode.defvjp(_decode_fwd, _decode_bwd)


@jax.custom_vjp
def gather_pre(
    x: jax.Array, w_enc: jax.Array, b: jax.Array, idx: jax.Array, pre: jax.Array, used: jax.Array
) -> jax.Array:
    """``[B, cap]``: ``(x @ W_enc + b)[b, idx[b, j]]``, read from ``pre``, which the caller computed
    as exactly that (``stop_gradient``-ed: the encoder's dense forward, shared with the slot
    choice). Gradients as if computed from ``x [B, d_in]``, ``W_enc [d_in, d_sae]``, ``b [d_sae]``,
    from the slots ``j < used`` (beyond, the caller's cotangent is 0: inactive latents):
    scatter-adds (``W_enc``'s built as its transpose, one ``[d_sae, d_in]`` pass to turn it),
    ``x``'s a gather (removed by XLA when nothing uses it); none to ``pre``."""
    return jnp.take_along_axis(pre, idx, axis=1)


def _gather_pre_fwd(x, w_enc, b, idx, pre, used):
    return gather_pre(x, w_enc, b, idx, pre, used), (x, w_enc, idx, used)


def _gather_pre_bwd(res, g):
    x, w_enc, idx, used = res
    n = w_enc.shape[1]
    d_w = _scatter_rows(idx, g, x, n, used).T
    d_b = jnp.zeros((n,), g.dtype).at[idx.reshape(-1)].add(g.reshape(-1))
    d_x = _gather_sum(idx, g, w_enc.T, used)
    return d_x, d_w, d_b, None, None, None


gather_pre.defvjp(_gather_pre_fwd, _gather_pre_bwd)


def fired(idx: jax.Array, f: jax.Array, n: int) -> jax.Array:
    """``[n]`` bool: latents with a non-zero code on some row (the dense ``any(f != 0, axis=0)``)."""
    hits = jnp.zeros((n,), jnp.int32).at[idx.reshape(-1)].add((f != 0).reshape(-1).astype(jnp.int32))
    return jax.lax.stop_gradient(hits > 0)


def per_latent_sum(idx: jax.Array, v: jax.Array, n: int) -> jax.Array:
    """``[n]``: the slot values ``v [B, cap]`` summed per latent over the batch (the dense
    ``sum(v_dense, axis=0)``; differentiable: its transpose is a gather)."""
    return jnp.zeros((n,), v.dtype).at[idx.reshape(-1)].add(v.reshape(-1))


def auxk_slots(pre: jax.Array, dead: jax.Array, k_aux: int) -> tuple[jax.Array, jax.Array]:
    """``(idx [B, k], chosen [B, k] bool)``: the AuxK choice of :func:`gemmascope.sae.topk.auxk_loss`
    as slots: the ``k = min(k_aux, d_sae)`` largest pre-activations among the ``dead [d_sae]``
    latents of each row of ``pre [B, d_sae]``, or every dead latent while at most ``k_aux`` are
    (``chosen`` marks the slots that hold a chosen latent)."""
    b, n = pre.shape
    k = min(int(k_aux), n)

    def every_dead():
        _, i = jax.lax.top_k(dead.astype(jnp.float32), k)  # the dead first, then live fillers
        return jnp.broadcast_to(i, (b, k))

    def top_dead():
        return jax.lax.top_k(jnp.where(dead, pre, -jnp.inf), k)[1]

    idx = every_dead() if k_aux >= n else jax.lax.cond(jnp.sum(dead) <= k_aux, every_dead, top_dead)
    return idx.astype(jnp.int32), dead[idx]


# "auto" (``config.sae.sparse_path``) trains sparse from this width on, when the slots are at most
# AUTO_MAX_DENSITY of the width; below it the dense step is as fast (bench/bench_sae_step.py --sparse).
AUTO_MIN_WIDTH = 16384
AUTO_MAX_DENSITY = 1 / 8


def capacities(cfg, arch, d_sae: int, values, model_shards: int = 1) -> list[int] | None:
    """The sparse path's slots per row for each SAE of a stack (its sweep ``values``), or ``None``
    for the dense step: ``cfg.sae.sparse_path`` "dense"; an architecture without ``sparse_loss``
    (":func:`sparse`" there raises, naming the field); "auto" below :data:`AUTO_MIN_WIDTH` or with
    more slots than :data:`AUTO_MAX_DENSITY` of ``d_sae``, with the latents sharded over
    ``model_shards > 1`` devices, or off XLA:CPU (the only backend where the path was measured;
    gathers and scatters of a sharded decoder were not). The slots: ``cfg.sparse_capacity``, or
    the architecture's ``sparse_capacity(cfg, value)`` when 0."""
    if not available(cfg, arch):
        return None
    if cfg.sparse_path == "auto" and (model_shards > 1 or jax.default_backend() != "cpu"):
        return None
    caps = [int(cfg.sparse_capacity) or int(arch.sparse_capacity(cfg, v)) for v in values]
    if cfg.sparse_path == "auto" and (d_sae < AUTO_MIN_WIDTH or max(caps) > AUTO_MAX_DENSITY * d_sae):
        return None
    return caps


def available(cfg, arch) -> bool:
    """Whether ``arch`` may train on the sparse path under ``cfg`` (not "dense", and it has a
    ``sparse_loss``); ``ValueError`` naming ``config.sae.sparse_path`` for "sparse" without one."""
    if cfg.sparse_path == "dense":
        return False
    if not hasattr(arch, "sparse_loss"):
        if cfg.sparse_path == "sparse":
            raise ValueError(f"config.sae.sparse_path: 'sparse', but architecture {arch.NAME!r} has no sparse path")
        return False
    return True
