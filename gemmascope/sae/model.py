"""One forward for every exported SAE, whatever its architecture.

Exported files (``params.npz``, raw activation units, no pre-encoder bias) come in three forms,
told apart by their keys:

* ``threshold`` present: JumpReLU, ``f = pre * 1[pre > threshold]``. Released Gemma Scope files,
  our JumpReLU SAEs, and our Gated SAEs (a Gated SAE with the paper's weight sharing is exactly
  a JumpReLU; see :mod:`gemmascope.sae.gated`).
* ``k`` present (a scalar): TopK, ``f = ReLU(pre)`` on the ``k`` largest pre-activations of each
  row, 0 elsewhere.
* neither: ReLU, ``f = ReLU(pre)``.

with ``pre = x @ W_enc + b_enc`` and ``x_hat = f @ W_dec + b_dec`` throughout.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def arch_of(params: Mapping[str, jax.Array]) -> str:
    """``"jumprelu"``, ``"topk"`` or ``"relu"`` from the keys of exported params."""
    if "threshold" in params:
        return "jumprelu"
    if "k" in params:
        return "topk"
    return "relu"


def topk_mask(pre: jax.Array, k: int) -> jax.Array:
    """Bool mask of the ``k`` largest entries of each row of ``pre [..., d_sae]``."""
    kth = jax.lax.top_k(pre, k)[0][..., -1:]
    return pre >= kth


def encode(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """Codes ``f [..., d_sae]`` of raw activations ``x [..., d_in]``."""
    pre = x @ params["W_enc"] + params["b_enc"]
    arch = arch_of(params)
    if arch == "jumprelu":
        return pre * (pre > params["threshold"]).astype(pre.dtype)
    if arch == "topk":
        k = int(jnp.asarray(params["k"]).reshape(()))
        return jnp.where(topk_mask(pre, k), jax.nn.relu(pre), 0.0)
    return jax.nn.relu(pre)


def decode(params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
    """``x_hat = f @ W_dec + b_dec``."""
    return f @ params["W_dec"] + params["b_dec"]


def reconstruct(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    return decode(params, encode(params, x))
