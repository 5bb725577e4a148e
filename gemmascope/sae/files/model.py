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

Transcoders (``metadata.json`` ``architecture: "transcoder"``) are JumpReLU files whose decoder
writes to another site: ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, and, when affine, ``W_skip
[d_in, d_out]``. :func:`transcode` is their forward, ``y_hat = f @ W_dec + b_dec (+ x_in @ W_skip)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def arch_of(params: Mapping[str, jax.Array]) -> str:
    """``"jumprelu"``, ``"topk"`` or ``"relu"`` from the keys of exported params."""
    if "threshold" in params:
        return "jumprelu"
    if "k" in params:
        return "topk"
    return "relu"


def topk_mask(pre: jax.Array, k) -> jax.Array:
    """Bool mask of the ``k`` largest entries of each row of ``pre [..., d_sae]``.

    ``k`` a Python int uses ``lax.top_k``; a traced scalar (an exported file's ``k`` passed into
    a jitted function) falls back to a full sort.
    """
    try:
        k = int(k)
    except (TypeError, jax.errors.ConcretizationTypeError):
        srt = jnp.sort(pre, axis=-1)
        idx = (pre.shape[-1] - jnp.asarray(k).astype(jnp.int32)).reshape((1,) * pre.ndim)
        kth = jnp.take_along_axis(srt, jnp.broadcast_to(idx, pre.shape[:-1] + (1,)), axis=-1)
        return pre >= kth
    # Built from the indices: on XLA:CPU a top_k whose indices go unused is rewritten into a
    # full sort (measured 15-20x slower at 1024 x 256).
    flat = pre.reshape(-1, pre.shape[-1])
    _, idx = jax.lax.top_k(flat, k)
    mask = jnp.zeros(flat.shape, bool).at[jnp.arange(flat.shape[0])[:, None], idx].set(True)
    return mask.reshape(pre.shape)


def encode(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """Codes ``f [..., d_sae]`` of raw activations ``x [..., d_in]``."""
    pre = x @ params["W_enc"] + params["b_enc"]
    arch = arch_of(params)
    if arch == "jumprelu":
        return pre * (pre > params["threshold"]).astype(pre.dtype)
    if arch == "topk":
        return jnp.where(topk_mask(pre, params["k"]), jax.nn.relu(pre), 0.0)
    return jax.nn.relu(pre)


def decode(params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
    """``x_hat = f @ W_dec + b_dec``."""
    return f @ params["W_dec"] + params["b_dec"]


def transcode(params: Mapping[str, jax.Array], x_in: jax.Array) -> jax.Array:
    """A transcoder's prediction ``[..., d_out]`` of the output site from the input site ``x_in
    [..., d_in]``: ``encode`` then ``decode``, plus the affine skip ``x_in @ W_skip`` when the file
    has one. (For an SAE, ``W_skip`` absent, this is :func:`reconstruct`.)"""
    y = decode(params, encode(params, x_in))
    if "W_skip" in params:
        y = y + x_in @ params["W_skip"]
    return y


def reconstruct(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    return decode(params, encode(params, x))


def split_static_k(sae: Mapping[str, Any]) -> tuple[dict[str, jax.Array], int | None]:
    """``(float32 device arrays, k)``: exported params ready to pass to a jitted function, with
    TopK's scalar ``k`` split off as a static Python int (``None`` for other layouts)."""
    k = int(np.asarray(sae["k"]).reshape(())) if "k" in sae else None
    return {n: jnp.asarray(v, jnp.float32) for n, v in sae.items() if n != "k"}, k
