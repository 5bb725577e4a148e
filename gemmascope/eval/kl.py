"""Next-token cross-entropy and KL divergence of spliced runs against the clean run, from the
last block's outputs, without materialising any ``[B, T, V]`` logits.

For each position (predicting token ``t + 1`` from position ``t``), with clean logits ``a`` and
spliced logits ``b`` over the vocabulary (after the final norm, unembedding and soft-cap, as in
:func:`gemmascope.lm.model.forward`):

    CE  = logsumexp(b) - b[target]
    KL(p_clean || p_spliced) = sum_v p_v (log p_v - log q_v)
                             = sum_v softmax(a)_v (a_v - b_v) - logsumexp(a) + logsumexp(b)

The vocabulary goes in ``n_chunks`` slices with running maxima (``lax.scan``); the sum
``sum_v exp(a_v - m_a) (a_v - b_v)`` is rescaled like the log-sum-exp's sum whenever the clean
running maximum ``m_a`` grows. Positions go in blocks of ``token_block`` rows (``lax.map``), as
:func:`gemmascope.lm.loss.next_token_ce_from_residual` does, and the clean logits of each tile are
computed once for all spliced runs (one stacked matmul of ``K + 1`` residuals).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemmascope.lm.config import LMConfig
from gemmascope.lm.loss import unembedding_chunks
from gemmascope.lm.model import final_norm, softcap_logits


def next_token_ce_and_kl(
    params,
    h_clean: jax.Array,
    h_spliced: jax.Array,
    tokens: jax.Array,
    *,
    cfg: LMConfig,
    n_chunks: int = 8,
    token_block: int = 1024,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ce_clean [B, T-1], ce [K, B, T-1], kl [K, B, T-1])`` from ``h_clean [B, T, d]`` and the
    ``K`` spliced runs ``h_spliced [K, B, T, d]`` (each the ``(n_layers - 1, "res")`` capture).

    ``kl[k]`` is ``KL(clean || spliced_k)`` in nats at each position (see module doc).
    """
    hs = jnp.concatenate([h_clean[None], h_spliced], axis=0)  # [R = K + 1, B, T, d]
    x = final_norm(params, hs, cfg)[:, :, :-1]
    R, B, T1, d = x.shape
    n = B * T1
    tb = max(1, min(int(token_block), n))
    nb = -(-n // tb)
    x = jnp.pad(x.reshape(R, n, d), ((0, 0), (0, nb * tb - n), (0, 0))).reshape(R, nb, tb, d).transpose(1, 0, 2, 3)
    tgt = jnp.pad(jnp.asarray(tokens)[:, 1:].astype(jnp.int32).reshape(-1), (0, nb * tb - n)).reshape(nb, tb)
    w, V, size = unembedding_chunks(params, cfg, n_chunks)

    def block(args):
        xb, tg = args  # [R, tb, d], [tb]

        def body(carry, i):
            m, s, picked, t = carry  # [R, tb] x 3, [R - 1, tb]
            lg = softcap_logits(jnp.einsum("rtd,vd->rtv", xb, w[i]).astype(jnp.float32), cfg)
            col = i * size + jnp.arange(size)
            valid = col < V
            lg = jnp.where(valid, lg, -jnp.inf)
            m_new = jnp.maximum(m, lg.max(-1))
            e = jnp.exp(lg - m_new[..., None])  # [R, tb, size]; 0 on padded columns
            s = s * jnp.exp(m - m_new) + e.sum(-1)
            diff = jnp.where(valid, lg[:1] - lg[1:], 0.0)  # a - b, [R - 1, tb, size]
            t = t * jnp.exp(m[0] - m_new[0]) + jnp.sum(e[:1] * diff, axis=-1)
            loc = tg - i * size
            inside = (loc >= 0) & (loc < size)
            hit = jnp.take_along_axis(
                lg, jnp.broadcast_to(jnp.clip(loc, 0, size - 1)[None, :, None], (R, tb, 1)), axis=-1
            )[..., 0]
            return (m_new, s, picked + jnp.where(inside, hit, 0.0), t), None

        init = (
            jnp.full((R, tb), -jnp.inf, jnp.float32),
            jnp.zeros((R, tb), jnp.float32),
            jnp.zeros((R, tb), jnp.float32),
            jnp.zeros((R - 1, tb), jnp.float32),
        )
        (m, s, picked, t), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
        lse = m + jnp.log(s)
        return lse - picked, t / s[0] - lse[0] + lse[1:]

    ce, kl = jax.lax.map(block, (x, tgt))  # [nb, R, tb], [nb, R - 1, tb]
    ce = ce.transpose(1, 0, 2).reshape(R, nb * tb)[:, :n].reshape(R, B, T1)
    kl = kl.transpose(1, 0, 2).reshape(R - 1, nb * tb)[:, :n].reshape(R - 1, B, T1)
    return ce[0], ce[1:], kl
