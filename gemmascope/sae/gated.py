"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014), a baseline of the JumpReLU paper.

With weight sharing between the two encoder paths (``W_mag = W_gate * exp(r_mag)`` column-wise)::

    g        = (x - b_dec) @ W_gate
    pi_gate  = g + b_gate                      f_gate = 1[pi_gate > 0]   (no gradient)
    pi_mag   = exp(r_mag) * g + b_mag          f      = f_gate * ReLU(pi_mag)
    x_hat    = f @ W_dec + b_dec
    loss     = mean_batch( ||x - x_hat||^2 + lambda * ||ReLU(pi_gate)||_1
                           + ||x - (ReLU(pi_gate) @ sg(W_dec) + sg(b_dec))||^2 )

``sg`` = stop-gradient: the auxiliary reconstruction trains the gate path only. Decoder rows are
unit norm (renormalised, gradients projected), so the L1 cannot shrink by inflating the decoder.
``W_gate`` is stored under the key ``W_enc``. Training units throughout.

Export: ``pi_gate > 0`` iff ``pi_mag > theta`` with ``theta = b_mag - exp(r_mag) * b_gate``, so
the Gated SAE *is* a JumpReLU with ``W_enc = W_gate * exp(r_mag)``, ``b_enc = b_mag`` and
threshold ``theta`` (where theta <= 0 the gate is implied by the ReLU, i.e. threshold 0; such
thresholds are stored as ``THRESHOLD_FLOOR``, changing codes only for pre-activations in
``(0, THRESHOLD_FLOOR]``, in training units).
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
    recon_aux,
    warmed_coefficient,
)

NAME = "gated"
UNIT_NORM_DECODER = True
FILE_LAYOUT = "jumprelu"
after_update = no_update
MATRYOSHKA = False
OWN_FIELDS: tuple[str, ...] = ()
sweep_axis = lambda_axis
sparsity_argument = warmed_coefficient
uses_auxk = no_auxk
variant_suffix = no_suffix
metadata = no_metadata
THRESHOLD_FLOOR = 1e-6


def init(key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> dict[str, jax.Array]:
    del cfg
    p = init_base(key, d_in, d_sae)
    del p["b_enc"]
    z = jnp.zeros((d_sae,), jnp.float32)
    return {**p, "b_gate": z, "b_mag": z, "r_mag": z}


def paths(params, x, cfg) -> tuple[jax.Array, jax.Array]:
    """``(pi_gate, pi_mag)``, each ``[batch, d_sae]``."""
    g = x @ params["W_enc"]
    if as_sae_config(cfg).pre_encoder_bias:  # (x - b_dec) @ W, folded as in common.pre_activations
        g = g - params["b_dec"] @ params["W_enc"]
    return g + params["b_gate"], jnp.exp(params["r_mag"]) * g + params["b_mag"]


def encode_train(params, x, cfg, sparsity: Any = None) -> jax.Array:
    del sparsity
    pi_gate, pi_mag = paths(params, x, cfg)
    return jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)


def loss(params, x, cfg, sparsity, dead=None):
    del dead
    pi_gate, pi_mag = paths(params, x, cfg)
    f = jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)
    x_hat = decode_train(params, f)
    gate_act = jax.nn.relu(pi_gate)
    l1 = jnp.mean(jnp.sum(gate_act, axis=-1))
    sg = jax.lax.stop_gradient
    x_hat_frozen = gate_act @ sg(params["W_dec"]) + sg(params["b_dec"])
    aux_recon = jnp.mean(jnp.sum((x - x_hat_frozen) ** 2, axis=-1))
    mse, aux = recon_aux(x, x_hat, f, l0_per_example(f), sparsity * l1)
    return mse + sparsity * l1 + aux_recon, aux


def export_layout(params, cfg, sparsity=None):
    """The equivalent JumpReLU, in training units."""
    scale = jnp.exp(params["r_mag"])
    theta = params["b_mag"] - scale * params["b_gate"]
    return {
        "W_enc": params["W_enc"] * scale,
        "W_dec": params["W_dec"],
        "b_enc": params["b_mag"],
        "b_dec": params["b_dec"],
        "threshold": jnp.maximum(theta, THRESHOLD_FLOOR),
    }


def thresholds(params):
    return params["b_mag"] - jnp.exp(params["r_mag"]) * params["b_gate"]
