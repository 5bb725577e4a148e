"""ReLU SAE with an L1 penalty weighted by decoder row norms (a baseline of the JumpReLU paper).

    pre = (x - b_dec) @ W_enc + b_enc;  f = ReLU(pre);  x_hat = f @ W_dec + b_dec
    loss = mean_batch( ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec[i]|| )

Weighting each latent's L1 by its decoder row norm makes the penalty invariant to moving scale
between encoder and decoder, so the decoder needs no unit-norm constraint (Anthropic's April 2024
recipe); rows are neither renormalised nor gradient-projected. Initialised like JumpReLU.
Exported files have no ``threshold`` key (see :mod:`gemmascope.sae.files.model`). Training units
throughout (see :mod:`gemmascope.sae.common`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gemmascope.sae.common import (
    SAEConfig,
    as_sae_config,
    decode_train,
    init_base,
    l0_per_example,
    lambda_axis,
    no_auxk,
    no_metadata,
    no_suffix,
    no_update,
    pre_activations,
    recon_aux,
    warmed_coefficient,
)

NAME = "relu"
UNIT_NORM_DECODER = False
FILE_LAYOUT = "relu"
after_update = no_update
MATRYOSHKA = False
OWN_FIELDS: tuple[str, ...] = ()
sweep_axis = lambda_axis
sparsity_argument = warmed_coefficient
uses_auxk = no_auxk
variant_suffix = no_suffix
metadata = no_metadata


def init(key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> dict[str, jax.Array]:
    del cfg
    return init_base(key, d_in, d_sae)


def encode_train(params, x: jax.Array, cfg: SAEConfig | Mapping[str, Any], sparsity: Any = None) -> jax.Array:
    del sparsity
    return jax.nn.relu(pre_activations(params, x, as_sae_config(cfg).pre_encoder_bias))


def loss(params, x, cfg, sparsity, dead=None):
    del dead
    f = encode_train(params, x, cfg)
    x_hat = decode_train(params, f)
    norms = jnp.linalg.norm(params["W_dec"], axis=-1)
    l1 = jnp.mean(f @ norms)
    mse, aux = recon_aux(x, x_hat, f, l0_per_example(f), sparsity * l1)
    return mse + sparsity * l1, aux


def export_layout(params, cfg, sparsity=None):
    return {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}


def thresholds(params):
    return None
