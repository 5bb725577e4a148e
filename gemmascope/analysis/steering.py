"""Steering: add ``alpha * W_dec[i]`` to a site's activation at every position while generating.

For a transcoder (site ``transcoder``/``transcoder_affine``) the decoder rows live in the space of
its output site: steering adds the row to the MLP output (the splice at ``(layer, "mlp")``), which
the block then adds to the residual stream (the site a transcoder writes,
:func:`gemmascope.eval.metrics.read_write_sites`).

The steering vector is a traced argument of one compiled function, so changing the latent or
alpha does not recompile. Generation recomputes the whole (padded) context each step rather than
keeping a KV cache: one compilation for a fixed ``max_len``, fine for the short prompts of
interactive steering on small models.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.eval.metrics import read_write_sites
from gemmascope.lm.config import LMConfig, site_dim
from gemmascope.lm.model import forward


def steering_vector(sae_params: dict[str, Any], latent: int, alpha: float) -> np.ndarray:
    """``alpha * W_dec[latent]``: ``[d_out]`` float32 (``d_in`` for an SAE). Raises naming the latent
    when out of range."""
    w_dec = np.asarray(sae_params["W_dec"], np.float32)
    if not 0 <= int(latent) < w_dec.shape[0]:
        raise ValueError(f"latent {latent} out of range: the SAE has {w_dec.shape[0]} latents")
    return float(alpha) * w_dec[int(latent)]


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "site"))
def steered_logits(params, tokens: jax.Array, vec: jax.Array, cfg: LMConfig, *, layer: int, site: str) -> jax.Array:
    """Logits ``[B, T, V]`` with ``vec [d]`` added to ``(layer, site)`` at every position (a
    transcoder site: its output site)."""
    splice = {(layer, read_write_sites(site)[1]): lambda a: a + vec.astype(a.dtype)}
    return forward(params, tokens, cfg, splice=splice).logits


def generate(
    params,
    cfg: LMConfig,
    prompt_ids: list[int],
    vec: np.ndarray | None,
    *,
    layer: int,
    site: str,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
    max_len: int | None = None,
    stop_ids: tuple[int, ...] = (),
) -> list[int]:
    """Greedy (``temperature == 0``) or sampled continuation of ``prompt_ids`` under steering.

    ``vec=None`` generates without steering (a zero vector). Returns the new token ids. ``site``
    may be a transcoder site (the vector goes to its output site).
    """
    n0 = len(prompt_ids)
    if n0 == 0:
        raise ValueError("generate needs a non-empty prompt (start it with BOS)")
    max_len = max_len or n0 + max_new_tokens
    if n0 + max_new_tokens > max_len:
        raise ValueError(f"prompt ({n0}) + max_new_tokens ({max_new_tokens}) exceeds max_len {max_len}")
    d = site_dim(cfg, read_write_sites(site)[1])
    vec = np.zeros(d, np.float32) if vec is None else np.asarray(vec, np.float32)
    if vec.shape != (d,):
        raise ValueError(f"steering vector has shape {vec.shape}; site {site!r} of this model has width {d}")
    buf = np.full((1, max_len), cfg.pad_id, np.int32)
    buf[0, :n0] = prompt_ids
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for t in range(n0, n0 + max_new_tokens):
        logits = np.asarray(
            steered_logits(params, jnp.asarray(buf), jnp.asarray(vec), cfg, layer=layer, site=site)[0, t - 1],
            np.float64,
        )
        if temperature > 0:
            p = np.exp((logits - logits.max()) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        else:
            nxt = int(np.argmax(logits))
        out.append(nxt)
        buf[0, t] = nxt  # causal attention: later padding never affects earlier positions
        if nxt in stop_ids:
            break
    return out


def steer_text(
    params,
    cfg: LMConfig,
    tokenizer,
    *,
    prompt: str,
    sae_params: dict[str, Any] | None,
    latent: int,
    alpha: float,
    layer: int,
    site: str,
    **kw,
) -> str:
    """Text in, steered continuation out (BOS is prepended to the prompt)."""
    ids = [cfg.bos_id] + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    vec = None if sae_params is None or alpha == 0 else steering_vector(sae_params, latent, alpha)
    new = generate(params, cfg, ids, vec, layer=layer, site=site, stop_ids=(cfg.eos_id,), **kw)
    return tokenizer.decode(new)
