"""SAE metrics at a site of the LM: L0, FVU, delta LM loss (with clean and zero-ablation losses
beside it), firing counts per latent, and reconstruction error by token position.

Definitions (SPEC.md section 4):

* L0: mean number of non-zero latents per token.
* FVU: ``E||x - x_hat||^2 / E||x - E[x]||^2`` with the dataset mean per dimension (accumulated
  in float64 over every evaluated token).
* Delta LM loss: next-token cross-entropy with the site replaced by the SAE reconstruction, minus
  the clean cross-entropy, averaged over positions whose target is a real (non-special) token.
  The zero-ablation loss (the site replaced by zeros) is reported beside it for scale.

Which positions are replaced: real-text positions only. BOS (and EOS/padding) keep their
activation, as in training, where they were never seen; so do the norm outliers that training
also never saw (``outlier_norm_factor`` times the batch median of real tokens; counted in the
result). Zero ablation replaces the same positions.

The SAE enters through :func:`reconstruct` on raw-unit layout params (``params.npz``), the same
function for our exports and released Gemma Scope files.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.lm.config import LMConfig
from gemmascope.lm.model import forward, next_token_loss
from gemmascope.sae import model as sae_model


def reconstruct(sae: dict[str, jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Raw-unit JumpReLU SAE: ``x [..., d] -> (x_hat [..., d], codes [..., d_sae])``."""
    f = sae_model.encode(sae, x)
    return sae_model.decode(sae, f), f


def splice_positions(act: jax.Array, mask: jax.Array, outlier_norm_factor: float) -> jax.Array:
    """``[B, T]`` bool: real-text positions that are not norm outliers (see module doc)."""
    norms = jnp.linalg.norm(act.astype(jnp.float32), axis=-1)
    if outlier_norm_factor <= 0:
        return mask
    med = jnp.nanmedian(jnp.where(mask, norms, jnp.nan))
    return mask & (norms <= outlier_norm_factor * med)


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "site", "outlier_norm_factor", "sae_fn"))
def _batch_metrics(lm_params, sae, tokens, mask, cfg: LMConfig, layer: int, site: str,
                   outlier_norm_factor: float, sae_fn: Callable = reconstruct):
    key = (layer, site)
    clean = forward(lm_params, tokens, cfg, capture=[key])
    x = clean.captures[key].astype(jnp.float32)
    sel = splice_positions(x, mask, outlier_norm_factor)
    x_hat, f = sae_fn(sae, x)
    sel3 = sel[..., None]
    spliced = forward(lm_params, tokens, cfg,
                      splice={key: lambda a: jnp.where(sel3, sae_fn(sae, a.astype(jnp.float32))[0].astype(a.dtype), a)})
    zeroed = forward(lm_params, tokens, cfg, splice={key: lambda a: jnp.where(sel3, jnp.zeros_like(a), a)})
    w = mask[:, 1:].astype(jnp.float32)  # targets that are real tokens
    _, ce_clean = next_token_loss(clean.logits, tokens, mask)
    _, ce_sae = next_token_loss(spliced.logits, tokens, mask)
    _, ce_zero = next_token_loss(zeroed.logits, tokens, mask)
    err = jnp.sum((x - x_hat) ** 2, axis=-1)  # [B, T]
    fired = (f != 0) & sel3
    s = sel.astype(jnp.float32)
    return {
        "ce_clean": jnp.sum(ce_clean * w), "ce_sae": jnp.sum(ce_sae * w), "ce_zero": jnp.sum(ce_zero * w),
        "n_targets": jnp.sum(w),
        "n_tokens": jnp.sum(s), "n_outliers": jnp.sum(mask) - jnp.sum(s),
        "l0_sum": jnp.sum(fired),
        "err_sum": jnp.sum(err * s),
        "x_sum": jnp.sum(x * s[..., None], axis=(0, 1)),  # summed again in float64 across batches
        "x_sq_sum": jnp.sum(jnp.sum(x * x, axis=-1) * s),
        "fire_counts": jnp.sum(fired, axis=(0, 1)),
        "err_by_pos": jnp.sum(err * s, axis=0), "count_by_pos": jnp.sum(s, axis=0),
    }


def evaluate_sae(lm_params, cfg: LMConfig, batches: Iterable[tuple[np.ndarray, np.ndarray]], sae: dict[str, Any],
                 layer: int, site: str, outlier_norm_factor: float = 10.0, max_tokens: int | None = None,
                 sae_fn: Callable = reconstruct, log: Callable | None = None) -> dict[str, Any]:
    """Streams ``(tokens [B, T], mask [B, T])`` batches and returns the metrics (see module doc).

    Result keys: l0, fvu, ce_clean, ce_sae, ce_zero, delta_loss, n_tokens, n_targets,
    n_outliers_kept_clean, fire_counts [d_sae], dead_fraction, err_by_position [T] (mean squared
    error per position, NaN where no token), tokens_per_second.
    """
    sae = {k: jnp.asarray(v, jnp.float32) for k, v in sae.items()}
    acc: dict[str, Any] = {}
    t0, n_tok = time.time(), 0
    for tokens, mask in batches:
        out = jax.device_get(_batch_metrics(lm_params, sae, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask), cfg,
                                            int(layer), site, float(outlier_norm_factor), sae_fn))
        for k, v in out.items():
            v = np.asarray(v, np.float64)
            acc[k] = acc[k] + v if k in acc else v
        n_tok = int(acc["n_tokens"])
        if log:
            dt = max(time.time() - t0, 1e-9)
            log(f"[eval] {n_tok:,} tokens ({n_tok / dt:,.0f} tok/s)")
        if max_tokens is not None and n_tok >= max_tokens:
            break
    if not acc or acc["n_tokens"] == 0:
        raise ValueError("evaluate_sae: the batches held no real-text tokens")
    n = acc["n_tokens"]
    mean = acc["x_sum"] / n
    total_var = acc["x_sq_sum"] - n * float(mean @ mean)
    nt = acc["n_targets"]
    res = {
        "l0": float(acc["l0_sum"] / n),
        "fvu": float(acc["err_sum"] / total_var),
        "ce_clean": float(acc["ce_clean"] / nt), "ce_sae": float(acc["ce_sae"] / nt),
        "ce_zero": float(acc["ce_zero"] / nt),
        "n_tokens": int(n), "n_targets": int(nt), "n_outliers_kept_clean": int(acc["n_outliers"]),
        "fire_counts": acc["fire_counts"].astype(np.int64),
        "err_by_position": np.where(acc["count_by_pos"] > 0, acc["err_by_pos"] / np.maximum(acc["count_by_pos"], 1),
                                    np.nan),
        "tokens_per_second": float(n / max(time.time() - t0, 1e-9)),
    }
    res["delta_loss"] = res["ce_sae"] - res["ce_clean"]
    res["dead_fraction"] = float(np.mean(res["fire_counts"] == 0))
    return res


def firing_histogram(fire_counts: np.ndarray, n_tokens: int, bins: int = 40) -> tuple[np.ndarray, np.ndarray, int]:
    """log10 firing-frequency histogram of the latents that fired: ``(counts, edges, n_dead)``."""
    freq = np.asarray(fire_counts, np.float64) / max(n_tokens, 1)
    alive = freq > 0
    lo = np.log10(1.0 / max(n_tokens, 1))
    counts, edges = np.histogram(np.log10(freq[alive]), bins=bins, range=(lo, 0.0))
    return counts, edges, int((~alive).sum())
