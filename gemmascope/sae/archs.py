"""The SAE architectures the sweep trainer knows, behind one interface.

Every module in :data:`ARCHS` provides::

    NAME, UNIT_NORM_DECODER                      # rows renormalised + gradients projected if True
    init(key, d_in, d_sae, cfg) -> params        # training parametrisation
    loss(params, x, cfg, sparsity, dead=None) -> (loss, aux)
    export_layout(params, cfg, sparsity) -> dict # file layout, still in training units
    thresholds(params) -> [d_sae] or None        # for the threshold statistics in metrics

``sparsity`` is the sweep value: the coefficient lambda (JumpReLU, ReLU, Gated), or the static
integer k (TopK). ``dead [d_sae]`` (bool) marks latents that have not fired for the configured
window (TopK's AuxK loss uses it). ``aux`` always holds ``mse``, ``l0``, ``sparsity_loss``,
``sq_err_sum`` and ``fired [d_sae]``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gemmascope.sae import gated, jumprelu, relu, topk

ARCHS = {m.NAME: m for m in (jumprelu, relu, topk, gated)}


def get(name: str):
    if name not in ARCHS:
        raise ValueError(f"unknown SAE architecture {name!r} (known: {sorted(ARCHS)})")
    return ARCHS[name]


def recon_aux(x: jax.Array, x_hat: jax.Array, f: jax.Array, l0_per_example: jax.Array,
              sparsity_loss: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """``(mse, aux)`` shared by every architecture's loss."""
    sq_err = jnp.sum((x - x_hat) ** 2, axis=-1)
    mse = jnp.mean(sq_err)
    sg = jax.lax.stop_gradient
    aux = {
        "mse": sg(mse),
        "l0": sg(jnp.mean(l0_per_example)),
        "sparsity_loss": sg(sparsity_loss),
        "fired": sg(jnp.any(f != 0, axis=0)),
        "sq_err_sum": sg(jnp.sum(sq_err)),
    }
    return mse, aux
