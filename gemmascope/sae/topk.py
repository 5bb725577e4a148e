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
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae import jumprelu
from gemmascope.sae.model import topk_mask

NAME = "topk"
UNIT_NORM_DECODER = True


init = jumprelu.init_without_threshold


def encode(params, x, cfg, k: int) -> jax.Array:
    pre = jumprelu.pre_activations(params, x, bool(cfg["pre_encoder_bias"]))
    return jnp.where(topk_mask(jax.lax.stop_gradient(pre), int(k)), jax.nn.relu(pre), 0.0), pre


def auxk_loss(params, pre: jax.Array, residual: jax.Array, dead: jax.Array, k_aux: int) -> jax.Array:
    """``mean_batch ||e - f_aux @ W_dec||^2`` over the ``k_aux`` largest dead pre-activations."""
    if k_aux >= pre.shape[-1]:  # every dead latent (a full top-k would be a slow sort)
        chosen = jnp.broadcast_to(dead, pre.shape)
    else:
        masked = jnp.where(dead, jax.lax.stop_gradient(pre), -jnp.inf)
        chosen = topk_mask(masked, int(k_aux)) & dead
    f_aux = jnp.where(chosen, jax.nn.relu(pre), 0.0)
    e_hat = f_aux @ params["W_dec"]
    return jnp.mean(jnp.sum((residual - e_hat) ** 2, axis=-1))


def loss(params, x, cfg, sparsity, dead=None):
    from gemmascope.sae.archs import recon_aux

    k = int(sparsity)
    f, pre = encode(params, x, cfg, k)
    x_hat = f @ params["W_dec"] + params["b_dec"]
    mse, aux = recon_aux(x, x_hat, f, jnp.sum(f > 0, axis=-1).astype(jnp.float32), jnp.zeros([], jnp.float32))
    total = mse
    if dead is not None:
        residual = jax.lax.stop_gradient(x - x_hat)
        alpha = float(cfg["auxk_coefficient"])
        aux_l = jax.lax.cond(jnp.any(dead),
                             lambda: auxk_loss(params, pre, residual, dead, int(cfg["auxk_k"])),
                             lambda: jnp.zeros([], jnp.float32))
        total = total + alpha * aux_l
        aux["sparsity_loss"] = jax.lax.stop_gradient(alpha * aux_l)  # the auxiliary term, for the logs
    return total, aux


def export_layout(params, cfg, sparsity):
    out = {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    out["k"] = np.asarray(int(sparsity), np.float32)
    return out


def thresholds(params):
    return None
