"""BatchTopK SAE (Bussmann et al. 2024, arXiv 2412.06410): top ``B * k`` over the whole batch.

While training::

    pre = (x - b_dec) @ W_enc + b_enc;  a = ReLU(pre)
    f   = a where a >= tau_batch (and a > 0), else 0;   tau_batch = the (B k)-th largest entry of a
    loss = mean_batch ||x - x_hat||^2 + AuxK (as TopK, :func:`gemmascope.sae.topk.auxk_loss`)

so the batch keeps ``B * k`` activations in all (``k`` per row on average, fewer or more in any one
row). At inference a batch-wide choice is not available per token; the SAE becomes the JumpReLU
with one threshold ``theta`` for every latent, estimated while training as the running mean of
``tau_batch`` (the smallest kept activation): ``theta <- theta + r (tau_batch - theta)`` with
``r = cfg.batchtopk_threshold_lr`` (the first step sets it), held in the gradient-free parameter
``batch_threshold`` (a scalar; its gradient is zero, so Adam leaves it alone) and updated in
:func:`after_update`. Export writes that JumpReLU (file layout ``jumprelu``, so every loader and
evaluator takes it), ``threshold = max(theta, THRESHOLD_FLOOR)`` for every latent.

``k`` is the sweep value (static, ``config.sae.topk_ks``). Decoder rows unit norm as TopK. With
``cfg.matryoshka_prefixes`` the reconstruction is summed over nested prefixes
(:func:`gemmascope.sae.common.reconstruction_loss`). Training units throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gemmascope.sae import select, sparse
from gemmascope.sae.common import (
    SAEConfig,
    always_auxk,
    as_sae_config,
    decode_train,  # noqa: F401  (the contract's decode)
    encoder_bias,
    init_base,
    k_axis,
    l0_per_example,
    no_metadata,
    no_suffix,
    pre_activations,
    recon_aux,
    reconstruction_loss,
    static_k,
)
from gemmascope.sae.topk import with_auxk

NAME = "batchtopk"
UNIT_NORM_DECODER = True
FILE_LAYOUT = "jumprelu"
MATRYOSHKA = True
OWN_FIELDS: tuple[str, ...] = ()
sweep_axis = k_axis
sparsity_argument = static_k
uses_auxk = always_auxk
variant_suffix = no_suffix
metadata = no_metadata
THRESHOLD_FLOOR = 1e-6
# The batch threshold's bisection starts from a bracket found on every 16th activation
# (:func:`gemmascope.sae.select.topk_threshold`; exact either way).
SAMPLE_STRIDE = 16


def init(key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> dict[str, jax.Array]:
    del cfg
    return {**init_base(key, d_in, d_sae), "batch_threshold": jnp.zeros([], jnp.float32)}


def codes_and_pre(params, x, cfg, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(f, pre, tau)``: batch top-k codes ``[batch, d_sae]``, the pre-activations, and the
    smallest kept activation ``tau`` (a scalar; 0 if fewer than ``B k`` entries are positive)."""
    pre = pre_activations(params, x, as_sae_config(cfg).pre_encoder_bias)
    act = jax.nn.relu(pre)
    keep, tau = batch_keep(jax.lax.stop_gradient(act), k)
    return jnp.where(keep, act, 0.0), pre, tau


def batch_keep(a: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``(keep [B, d_sae] bool, tau)`` of the activations ``a = ReLU(pre)``: the ``B k`` largest
    (and positive) of the batch, and the smallest kept (0 if none)."""
    t = select.topk_threshold(a.reshape(1, -1), a.shape[0] * int(k), sample_stride=SAMPLE_STRIDE).reshape(())
    keep = (a >= t) & (a > 0)
    tau = jnp.where(jnp.any(keep), jnp.min(jnp.where(keep, a, jnp.inf)), 0.0)
    return keep, tau


def encode_train(params, x, cfg, sparsity: Any = None) -> jax.Array:
    """Training-time codes (batch top-k, ``sparsity`` = k)."""
    return codes_and_pre(params, x, cfg, int(sparsity))[0]


def loss(params, x, cfg, sparsity, dead=None):
    cfg = as_sae_config(cfg)
    f, pre, tau = codes_and_pre(params, x, cfg, int(sparsity))
    recon, x_hat = reconstruction_loss(params, f, x, cfg.matryoshka_prefixes)
    _, aux = recon_aux(x, x_hat, f, l0_per_example(f), jnp.zeros([], jnp.float32))
    aux["batch_tau"] = jax.lax.stop_gradient(tau)
    return with_auxk(recon, aux, params, pre=pre, x=x, x_hat=x_hat, dead=dead, cfg=cfg)


def sparse_capacity(cfg: SAEConfig, k: Any) -> int:
    """The sparse path's default slots per row: 4k (a row may keep more than k; one over 4k sends
    its batch to the dense step)."""
    return 4 * int(k)


def sparse_select(params, x, cfg, k: int, capacity: int) -> dict[str, Any]:
    """The sparse path's slots (:mod:`gemmascope.sae.sparse`): the dense ``pre [B, d_sae]`` and the
    kept latents of each row in ``idx [B, cap]`` (``keep`` there, ``tau``), ``overflow`` when a row
    keeps more than ``capacity``."""
    pre = pre_activations(jax.lax.stop_gradient(params), x, as_sae_config(cfg).pre_encoder_bias)
    keep, tau = batch_keep(jax.nn.relu(pre), k)
    idx, used, overflow = sparse.active_slots(keep, capacity)
    keep = jnp.take_along_axis(keep, idx, axis=1)
    return {"pre": pre, "idx": idx, "used": used, "overflow": overflow, "keep": keep, "tau": tau}


def sparse_loss(params, x, cfg, sparsity, dead=None, sel=None):
    """:func:`loss` over the slots of :func:`sparse_select`: the same value and gradients."""
    cfg = as_sae_config(cfg)
    idx, d_sae = sel["idx"], params["b_enc"].shape[-1]
    z = sparse.gather_pre(x, params["W_enc"], encoder_bias(params, cfg.pre_encoder_bias), idx, sel["pre"], sel["used"])
    f = jnp.where(sel["keep"], jax.nn.relu(z), 0.0)
    recon, x_hat = reconstruction_loss(params, f, x, cfg.matryoshka_prefixes, (idx, sel["used"]))
    _, aux = recon_aux(x, x_hat, f, l0_per_example(f), jnp.zeros([], jnp.float32), idx, d_sae)
    aux["batch_tau"] = jax.lax.stop_gradient(sel["tau"])
    return with_auxk(recon, aux, params, pre=None, x=x, x_hat=x_hat, dead=dead, cfg=cfg, sel=sel)


def after_update(params, aux, step, cfg):
    """The running estimate of the inference threshold from this batch's smallest kept activation."""
    cfg = as_sae_config(cfg)
    old = params["batch_threshold"]
    new = jnp.where(step == 0, aux["batch_tau"], old + cfg.batchtopk_threshold_lr * (aux["batch_tau"] - old))
    return {**params, "batch_threshold": new.astype(jnp.float32)}


def export_layout(params, cfg, sparsity=None):
    """The JumpReLU it becomes at inference, in training units."""
    d_sae = params["b_enc"].shape[-1]
    out = {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    out["threshold"] = jnp.full((d_sae,), jnp.maximum(params["batch_threshold"], THRESHOLD_FLOOR), jnp.float32)
    return out


def thresholds(params):
    return params["batch_threshold"][None]
