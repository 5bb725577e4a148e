"""Next-token losses of the LM (:mod:`gemmascope.lm.model`): from logits, from the last block's
output without materialising the logits (vocabulary chunks), and with splices (delta LM loss)."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp

from gemmascope.lm.config import LMConfig
from gemmascope.lm.model import LMOutput, Params, Site, final_norm, forward, softcap_logits


def unembedding_chunks(params: Params, cfg: LMConfig, n_chunks: int) -> tuple[jax.Array, int, int]:
    """``(w [n_chunks, size, d], V, size)``: the unembedding rows (tied embedding or ``lm_head.T``)
    zero-padded to ``n_chunks * size`` and split into vocabulary chunks, for chunked losses."""
    w = params["embed"].astype(jnp.dtype(cfg.dtype)) if cfg.tie_embeddings else params["lm_head"].T  # [V, d]
    V, d = w.shape
    size = -(-V // n_chunks)
    return jnp.pad(w, ((0, size * n_chunks - V), (0, 0))).reshape(n_chunks, size, d), V, size


def next_token_ce_from_residual(
    params: Params, h: jax.Array, tokens: jax.Array, cfg: LMConfig, *, n_chunks: int = 8, token_block: int = 1024
) -> jax.Array:
    """Per-token next-token cross-entropy ``[B, T-1]`` from the last block's output ``h [B, T, d]``
    (the ``(n_layers - 1, "res")`` capture), without materialising the ``[B, T, V]`` logits.

    Final norm, unembedding and soft-cap as in :func:`forward`. The ``B * (T-1)`` positions go in
    blocks of ``token_block`` rows (``lax.map``), and each block over ``n_chunks`` slices of the
    vocabulary with a running log-sum-exp (``lax.scan``): the same numbers as
    ``next_token_loss(forward(...).logits, ...)[1]`` (tested). Each ``[token_block, V / n_chunks]``
    logits tile (6.3M floats for SmolLM2) stays in the last-level cache, so the unembedding runs
    at the machine's plain matmul rate. Measured at 4,096 tokens x 49,152 vocabulary on 2 cores:
    1.64 s for the full logits, 1.67 s for vocabulary chunks alone, 1.45-1.5 s blocked.
    """
    x = final_norm(params, h, cfg)[:, :-1]
    B, T1, d = x.shape
    n = B * T1
    tb = max(1, min(int(token_block), n))
    nb = -(-n // tb)
    x = jnp.pad(x.reshape(n, d), ((0, nb * tb - n), (0, 0))).reshape(nb, tb, d)
    tgt = jnp.pad(jnp.asarray(tokens)[:, 1:].astype(jnp.int32).reshape(-1), (0, nb * tb - n)).reshape(nb, tb)
    w, V, size = unembedding_chunks(params, cfg, n_chunks)

    def block(args):
        xb, tg = args  # [tb, d], [tb]

        def body(carry, i):
            m, s, picked = carry
            lg = softcap_logits((xb @ w[i].T).astype(jnp.float32), cfg)
            col = i * size + jnp.arange(size)
            lg = jnp.where(col < V, lg, -jnp.inf)
            m_new = jnp.maximum(m, lg.max(-1))
            s = s * jnp.exp(m - m_new) + jnp.exp(lg - m_new[:, None]).sum(-1)
            loc = tg - i * size
            inside = (loc >= 0) & (loc < size)
            hit = jnp.take_along_axis(lg, jnp.clip(loc, 0, size - 1)[:, None], axis=-1)[:, 0]
            return (m_new, s, picked + jnp.where(inside, hit, 0.0)), None

        init = (jnp.full((tb,), -jnp.inf, jnp.float32), jnp.zeros((tb,), jnp.float32), jnp.zeros((tb,), jnp.float32))
        (m, s, picked), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
        return m + jnp.log(s) - picked

    return jax.lax.map(block, (x, tgt)).reshape(-1)[:n].reshape(B, T1)


def next_token_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Next-token cross-entropy (float32).

    logits [B, T, V], tokens [B, T], mask [B, T] bool (True at real tokens; None = all).
    Returns (mean CE over positions t whose TARGET ``tokens[:, t+1]`` is real, i.e.
    ``mask[:, t+1]``; per-token CE [B, T-1] for every position, masked or not).
    """
    lg = logits[:, :-1].astype(jnp.float32)
    tgt = jnp.asarray(tokens)[:, 1:].astype(jnp.int32)
    lse = jax.nn.logsumexp(lg, axis=-1)
    picked = jnp.take_along_axis(lg, tgt[..., None], axis=-1)[..., 0]
    ce = lse - picked
    if mask is None:
        return jnp.mean(ce), ce
    w = jnp.asarray(mask)[:, 1:].astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0), ce


def lm_loss(
    params: Params,
    tokens: jax.Array,
    mask: jax.Array | None,
    cfg: LMConfig,
    *,
    splice=None,
    capture: Iterable[Site] = (),
) -> tuple[jax.Array, jax.Array, LMOutput]:
    """(mean next-token loss, per-token CE [B, T-1], LMOutput) with optional splices: the clean
    loss with ``splice=None``, the spliced loss otherwise (delta LM loss = difference)."""
    out = forward(params, tokens, cfg, capture=capture, splice=splice)
    loss, ce = next_token_loss(out.logits, tokens, mask)
    return loss, ce, out
