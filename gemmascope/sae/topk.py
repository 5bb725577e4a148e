"""TopK SAE with the AuxK loss for dead latents (Gao et al. 2024, arXiv 2406.04093), a baseline.

    pre = (x - b_dec) @ W_enc + b_enc;  f = ReLU(pre) on the k largest entries of pre, else 0
    x_hat = f @ W_dec + b_dec
    loss = mean_batch ||x - x_hat||^2 + alpha * mean_batch ||e - e_hat||^2

AuxK: ``e = x - x_hat`` (a constant: no gradient flows through it) is reconstructed from the
``k_aux`` largest pre-activations among the dead latents only (``dead``: no firing for
``cfg.auxk_dead_tokens``), ``e_hat = f_aux @ W_dec`` (no bias). It gives dead latents a gradient
so they come back. alpha = ``cfg.auxk_coefficient`` (1/32 in the paper). The term is skipped
(``lax.cond``) while no latent is dead.

k is the sweep value and is static (one compiled top-k per SAE of the stack). Decoder rows are
unit norm with the parallel gradient removed, as in the paper. Exported files carry ``k``.
Training units throughout (see :mod:`gemmascope.sae.common`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae import select, sparse
from gemmascope.sae.common import (
    SAEConfig,
    always_auxk,
    as_sae_config,
    decode_train,
    encoder_bias,
    init_base,
    k_axis,
    l0_per_example,
    no_metadata,
    no_suffix,
    no_update,
    pre_activations,
    recon_aux,
    sparse_decode,
    static_k,
)
from gemmascope.sae.files.model import topk_mask

NAME = "topk"
UNIT_NORM_DECODER = True
FILE_LAYOUT = "topk"
after_update = no_update
MATRYOSHKA = False
OWN_FIELDS: tuple[str, ...] = ()
sweep_axis = k_axis
sparsity_argument = static_k
uses_auxk = always_auxk
variant_suffix = no_suffix
metadata = no_metadata


def init(key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> dict[str, jax.Array]:
    del cfg
    return init_base(key, d_in, d_sae)


def codes_and_pre(params, x, cfg, k: int) -> tuple[jax.Array, jax.Array]:
    """``(f, pre)``, each ``[batch, d_sae]``: TopK codes and the pre-activations they came from."""
    pre = pre_activations(params, x, as_sae_config(cfg).pre_encoder_bias)
    return jnp.where(topk_mask(jax.lax.stop_gradient(pre), int(k)), jax.nn.relu(pre), 0.0), pre


def encode_train(params, x, cfg, sparsity: Any = None) -> jax.Array:
    """TopK codes ``[batch, d_sae]``; ``sparsity`` is k."""
    return codes_and_pre(params, x, cfg, int(sparsity))[0]


def auxk_loss(params, pre: jax.Array, residual: jax.Array, dead: jax.Array, k_aux: int) -> jax.Array:
    """``mean_batch ||e - f_aux @ W_dec||^2`` over the ``k_aux`` largest dead pre-activations.

    While at most ``k_aux`` latents are dead that is every dead latent, and the top-k is skipped
    (``lax.cond``; the same choice, without the selection's cost).
    """
    all_dead = jnp.broadcast_to(dead, pre.shape)
    if k_aux >= pre.shape[-1]:  # every dead latent (a full top-k would be a slow sort)
        chosen = all_dead
    else:

        def top_dead():
            masked = jnp.where(dead, jax.lax.stop_gradient(pre), -jnp.inf)
            return select.topk_mask_rows(masked, int(k_aux)) & dead

        chosen = jax.lax.cond(jnp.sum(dead) <= k_aux, lambda: all_dead, top_dead)
    f_aux = jnp.where(chosen, jax.nn.relu(pre), 0.0)
    return _auxk_error(residual, f_aux @ params["W_dec"])


def _auxk_error(residual: jax.Array, e_hat: jax.Array) -> jax.Array:
    return jnp.mean(jnp.sum((residual - e_hat) ** 2, axis=-1))


def sparse_auxk_loss(params, x: jax.Array, sel, residual: jax.Array, dead: jax.Array, cfg: SAEConfig) -> jax.Array:
    """:func:`auxk_loss` on the sparse path: the same choice of dead latents as slots
    (:func:`gemmascope.sae.sparse.auxk_slots`, ``k_aux`` per row), decoded and differentiated
    over those slots; ``sel["pre"]`` is the dense ``pre`` of :func:`sparse_select`."""
    idx, chosen = sparse.auxk_slots(sel["pre"], dead, cfg.auxk_k)
    used = jnp.int32(idx.shape[1])
    z = sparse.gather_pre(x, params["W_enc"], encoder_bias(params, cfg.pre_encoder_bias), idx, sel["pre"], used)
    f_aux = jnp.where(chosen, jax.nn.relu(z), 0.0)
    return _auxk_error(residual, sparse.decode(f_aux, idx, params["W_dec"], used))


def loss(params, x, cfg, sparsity, dead=None):
    cfg = as_sae_config(cfg)
    f, pre = codes_and_pre(params, x, cfg, int(sparsity))
    x_hat = decode_train(params, f)
    mse, aux = recon_aux(x, x_hat, f, l0_per_example(f), jnp.zeros([], jnp.float32))
    return with_auxk(mse, aux, params, pre=pre, x=x, x_hat=x_hat, dead=dead, cfg=cfg)


def with_auxk(total, aux, params, *, pre, x, x_hat, dead, cfg, sel=None):
    """``(total + auxk_coefficient * AuxK, aux)`` when ``dead [d_sae]`` is given (skipped by
    ``lax.cond`` while no latent is dead); ``aux["sparsity_loss"]`` adds the auxiliary term.
    Shared by TopK, BatchTopK and JumpReLU with ``sae.jumprelu_auxk``; ``sel`` (the sparse
    path's slot choice) computes it by :func:`sparse_auxk_loss`."""
    if dead is None:
        return total, aux
    residual = jax.lax.stop_gradient(x - x_hat)
    alpha = cfg.auxk_coefficient
    if sel is None:
        term = lambda: auxk_loss(params, pre, residual, dead, cfg.auxk_k)  # noqa: E731
    else:
        term = lambda: sparse_auxk_loss(params, x, sel, residual, dead, cfg)  # noqa: E731
    aux_l = jax.lax.cond(jnp.any(dead), term, lambda: jnp.zeros([], jnp.float32))
    # The auxiliary term joins the logged sparsity loss (TopK's is 0; JumpReLU's its penalty).
    aux["sparsity_loss"] = aux["sparsity_loss"] + jax.lax.stop_gradient(alpha * aux_l)
    return total + alpha * aux_l, aux


def sparse_capacity(cfg: SAEConfig, k: Any) -> int:
    """The sparse path's slots per row: k (the top-k indices are the slots: no row overflows)."""
    return int(k)


def sparse_select(params, x, cfg, k: int, capacity: int) -> dict[str, Any]:
    """The sparse path's slots (:mod:`gemmascope.sae.sparse`): the dense ``pre [B, d_sae]``
    (stop-gradient) and ``idx [B, k]``, the top-k indices :func:`codes_and_pre`'s mask is built
    from (the same ``lax.top_k``). ``overflow`` is ``None``: never (``capacity`` is k)."""
    pre = pre_activations(jax.lax.stop_gradient(params), x, as_sae_config(cfg).pre_encoder_bias)
    idx = jax.lax.top_k(pre, int(k))[1].astype(jnp.int32)
    return {"pre": pre, "idx": idx, "used": jnp.int32(k), "overflow": None}


def sparse_loss(params, x, cfg, sparsity, dead=None, sel=None):
    """:func:`loss` over the top-k slots of :func:`sparse_select`: the same value and gradients."""
    cfg = as_sae_config(cfg)
    idx, d_sae = sel["idx"], params["b_enc"].shape[-1]
    z = sparse.gather_pre(x, params["W_enc"], encoder_bias(params, cfg.pre_encoder_bias), idx, sel["pre"], sel["used"])
    f = jax.nn.relu(z)
    x_hat = sparse_decode(params, f, (idx, sel["used"]))
    mse, aux = recon_aux(x, x_hat, f, l0_per_example(f), jnp.zeros([], jnp.float32), idx, d_sae)
    return with_auxk(mse, aux, params, pre=None, x=x, x_hat=x_hat, dead=dead, cfg=cfg, sel=sel)


def export_layout(params, cfg, sparsity):
    out = {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    out["k"] = np.asarray(int(sparsity), np.float32)
    return out


def thresholds(params):
    return None
