"""ReLU SAE with an L1 penalty weighted by decoder row norms (a baseline of the JumpReLU paper).

    pre = (x - b_dec) @ W_enc + b_enc;  f = ReLU(pre);  x_hat = f @ W_dec + b_dec
    loss = mean_batch( ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec[i]|| )

Weighting each latent's L1 by its decoder row norm makes the penalty invariant to moving scale
between encoder and decoder, so the decoder needs no unit-norm constraint (Anthropic's April 2024
recipe); rows are neither renormalised nor gradient-projected. Initialised like JumpReLU.
Exported files have no ``threshold`` key (see :mod:`gemmascope.sae.model`).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gemmascope.sae import jumprelu

NAME = "relu"
UNIT_NORM_DECODER = False


init = jumprelu.init_without_threshold


def encode(params: Mapping[str, jax.Array], x: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
    return jax.nn.relu(jumprelu.pre_activations(params, x, bool(cfg["pre_encoder_bias"])))


def loss(params, x, cfg, sparsity, dead=None):
    from gemmascope.sae.archs import recon_aux

    del dead
    f = encode(params, x, cfg)
    x_hat = f @ params["W_dec"] + params["b_dec"]
    norms = jnp.linalg.norm(params["W_dec"], axis=-1)
    l1 = jnp.mean(f @ norms)
    mse, aux = recon_aux(x, x_hat, f, jnp.sum(f > 0, axis=-1).astype(jnp.float32), sparsity * l1)
    return mse + sparsity * l1, aux


def export_layout(params, cfg, sparsity=None):
    return {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}


def thresholds(params):
    return None
