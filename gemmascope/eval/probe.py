"""Where a spliced reconstruction's LM loss comes from: splice *variants* of an SAE's output at a
``res`` site and measure, for each, the LM's loss, the KL to the clean run, where the error sits,
and how much every later computation changes.

A variant is a function ``fn(x [B, T, d], x_hat [B, T, d], key) -> [B, T, d]``: the value spliced at
the selected positions (real text, norm outliers left alone, as :mod:`gemmascope.eval.metrics`
does). ``x_hat`` is the SAE's reconstruction, so variants can move the SAE's error between
dimensions (``error_in(dims)``), rescale it, or replace it by random noise of the same size
(:func:`variant_library`). For each variant the probe reports:

* ``delta_loss`` and ``kl``: next-token cross-entropy minus the clean one, and ``KL(clean ||
  spliced)``, averaged over positions whose target is real text (nats);
* ``err_sq``: ``E||splice - x||^2``, with the shares of it in the massive dimensions and on the
  1% of rows with the largest norm;
* ``later``: for every later layer ``l`` and site (``att``: attention's head outputs, ``mlp``:
  the MLP's output after its norm, ``res``: the block output), the relative squared change
  ``E||a_spliced - a_clean||^2 / E||a_clean||^2`` over the selected positions, and ``scale``: the
  mean relative change of the RMS of the residual entering layer ``l`` (what its input norm
  divides by);
* ``attention``: for every later layer ``l`` and head, over the selected query positions, the
  mean total-variation distance between the spliced and the clean attention rows (``0.5 * sum_s
  |p_s - p'_s|``, 0 = the same pattern, 1 = disjoint), and the mean attention on position 0 (the
  BOS sink of a packed sequence) in the clean and the spliced run (``sink_clean``,
  ``sink_spliced``): which heads the splice moves, and whether it moves them off the sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.data.sites import keep_mask
from gemmascope.eval.kl import next_token_ce_and_kl
from gemmascope.lm.config import LMConfig
from gemmascope.lm.model import forward, layer_patterns
from gemmascope.sae.files import model as sae_model

Variant = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
LATER_SITES = ("att", "mlp", "res")


def massive_dims(x: np.ndarray, factor: float = 10.0) -> np.ndarray:
    """Dimensions of ``x [n, d]`` whose root mean square is over ``factor`` times the median
    dimension's (Gemma 3 270M, layer 9: dimension 163 and a few others), largest first."""
    rms = np.sqrt(np.mean(np.asarray(x, np.float64) ** 2, axis=0))
    dims = np.flatnonzero(rms > factor * np.median(rms))
    return dims[np.argsort(-rms[dims])]


def variant_library(dims: Sequence[int], d: int) -> dict[str, Variant]:
    """The variants of the diagnosis (module doc), with ``dims`` the massive dimensions:

    * ``sae``: the reconstruction as it is;
    * ``error_massive_only``: ``x`` with the SAE's values on ``dims`` only (its error there alone);
    * ``error_rest_only``: the SAE's values with ``x`` restored on ``dims`` (its error elsewhere);
    * ``sae_norm_matched``: the reconstruction rescaled per token to ``||x||``;
    * ``random_rest_same_norm``: ``x`` plus Gaussian noise outside ``dims`` with, per token, the
      norm of the SAE's error outside ``dims`` (is the SAE's error placed better than chance?).
    """
    m = jnp.zeros((d,), bool).at[jnp.asarray(list(dims), jnp.int32)].set(True) if len(dims) else jnp.zeros((d,), bool)

    def sae(x, x_hat, key):
        return x_hat

    def error_massive_only(x, x_hat, key):
        return jnp.where(m, x_hat, x)

    def error_rest_only(x, x_hat, key):
        return jnp.where(m, x, x_hat)

    def sae_norm_matched(x, x_hat, key):
        nx = jnp.linalg.norm(x, axis=-1, keepdims=True)
        nh = jnp.linalg.norm(x_hat, axis=-1, keepdims=True)
        return x_hat * nx / jnp.maximum(nh, 1e-6)

    def random_rest_same_norm(x, x_hat, key):
        err = jnp.where(m, 0.0, x_hat - x)
        noise = jnp.where(m, 0.0, jax.random.normal(key, x.shape, x.dtype))
        scale = jnp.linalg.norm(err, axis=-1, keepdims=True) / jnp.maximum(
            jnp.linalg.norm(noise, axis=-1, keepdims=True), 1e-6
        )
        return x + noise * scale

    return {
        "sae": sae,
        "error_massive_only": error_massive_only,
        "error_rest_only": error_rest_only,
        "sae_norm_matched": sae_norm_matched,
        "random_rest_same_norm": random_rest_same_norm,
    }


def _batch(lm_params, sae, tokens, mask, key, *, cfg, layer, factor, variants, dims):
    """One batch: sums per variant (see :func:`probe`)."""
    L = cfg.n_layers
    start = {}
    if layer > 0:
        h_prev = forward(lm_params, tokens, cfg, capture=[(layer - 1, "res")], stop_after=layer - 1).captures
        start = dict(start_layer=layer, h_in=h_prev[(layer - 1, "res")])
    x = forward(lm_params, tokens, cfg, capture=[(layer, "res")], stop_after=layer, **start).captures[(layer, "res")]
    x = x.astype(jnp.float32)
    sel = keep_mask(x, mask, factor)
    s = sel.astype(jnp.float32)
    x_hat = sae_model.transcode(sae, x)
    later = [(l, site) for l in range(layer + 1, L) for site in LATER_SITES]

    def run(h):
        if layer == L - 1:
            return {(L - 1, "res"): h}
        return forward(lm_params, tokens, cfg, capture=later, start_layer=layer + 1, h_in=h, stop_after=L - 1).captures

    clean = run(x)
    att_layers = list(range(layer + 1, L))

    def entering(h, caps):  # the residual entering each later layer
        return [h if l == layer + 1 else caps[(l - 1, "res")] for l in att_layers]

    def row_sum(a):  # [B, H, T] -> [H]: summed over the selected query positions
        return jnp.sum(a * s[:, None, :], axis=(0, 2))

    pat_c = layer_patterns(lm_params, cfg, entering(x, clean), att_layers)
    outs, finals = {}, []
    keys = jax.random.split(key, len(variants))
    norms = jnp.linalg.norm(x, axis=-1)
    big = s * (norms >= jnp.quantile(jnp.where(sel, norms, -jnp.inf), 0.99))  # top 1% rows by norm
    m = jnp.zeros((x.shape[-1],), jnp.float32).at[jnp.asarray(list(dims), jnp.int32)].set(1.0) if len(dims) else 0.0
    for (name, fn), k in zip(variants.items(), keys):
        rep = jnp.where(sel[..., None], fn(x, x_hat, k).astype(jnp.float32), x)
        caps = run(rep)
        finals.append(caps[(L - 1, "res")])
        err = (rep - x) ** 2
        o = {
            "err_sq": jnp.sum(jnp.sum(err, -1) * s),
            "err_sq_massive": jnp.sum(jnp.sum(err * m, -1) * s),
            "err_sq_big_rows": jnp.sum(jnp.sum(err, -1) * big),
        }
        for l, site in later:
            a, c = caps[(l, site)].astype(jnp.float32), clean[(l, site)].astype(jnp.float32)
            o[f"d_{l}_{site}"] = jnp.sum(jnp.sum((a - c) ** 2, -1) * s)
            o[f"n_{l}_{site}"] = jnp.sum(jnp.sum(c**2, -1) * s)
        for l in range(layer + 1, L):
            h_in_s = rep if l == layer + 1 else caps[(l - 1, "res")]
            h_in_c = x if l == layer + 1 else clean[(l - 1, "res")]
            rms_s = jnp.sqrt(jnp.mean(h_in_s.astype(jnp.float32) ** 2, -1))
            rms_c = jnp.sqrt(jnp.mean(h_in_c.astype(jnp.float32) ** 2, -1))
            o[f"scale_{l}"] = jnp.sum(jnp.abs(rms_s / rms_c - 1.0) * s)
        for l, pc, ps in zip(att_layers, pat_c, layer_patterns(lm_params, cfg, entering(rep, caps), att_layers)):
            o[f"tv_{l}"] = row_sum(0.5 * jnp.sum(jnp.abs(ps - pc), axis=-1))
            o[f"sink_c_{l}"] = row_sum(pc[..., 0])
            o[f"sink_s_{l}"] = row_sum(ps[..., 0])
        outs[name] = o
    ce_clean, ce, kl = next_token_ce_and_kl(lm_params, clean[(L - 1, "res")], jnp.stack(finals), tokens, cfg=cfg)
    w = mask[:, 1:].astype(jnp.float32)
    for i, name in enumerate(variants):
        outs[name]["ce"] = jnp.sum(ce[i] * w)
        outs[name]["kl"] = jnp.sum(kl[i] * w)
    common = {"ce_clean": jnp.sum(ce_clean * w), "n_targets": jnp.sum(w), "n_rows": jnp.sum(s)}
    common["x_sq_sum"] = jnp.sum(jnp.sum(x**2, -1) * s)
    common["x_sum"] = jnp.sum(x * s[..., None], axis=(0, 1))
    return common, outs


def probe(
    lm_params,
    cfg: LMConfig,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    sae: Mapping[str, Any],
    layer: int,
    variants: Mapping[str, Variant],
    dims: Sequence[int],
    outlier_norm_factor: float = 10.0,
    max_tokens: int = 4096,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The diagnosis of one raw-unit SAE at ``(layer, "res")`` over held-out ``batches`` of
    ``(tokens [n, T], mask [n, T])`` until ``max_tokens`` text tokens (module doc for the keys).
    Returns ``{"clean_loss", "n_tokens", "variants": {name: {...}}}``."""
    sae = {k: jnp.asarray(v) for k, v in sae.items()}
    fn = jax.jit(
        lambda p, s, t, m, k: _batch(
            p, s, t, m, k, cfg=cfg, layer=layer, factor=outlier_norm_factor, variants=variants, dims=tuple(dims)
        )
    )
    tot_c: dict[str, Any] = {}
    tot: dict[str, dict[str, Any]] = {}
    seen, key = 0, jax.random.PRNGKey(seed)
    for tokens, mask in batches:
        key, sub = jax.random.split(key)
        common, outs = jax.device_get(fn(lm_params, sae, jnp.asarray(tokens), jnp.asarray(mask), sub))
        for k, v in common.items():
            tot_c[k] = tot_c.get(k, 0.0) + np.asarray(v, np.float64)
        for name, o in outs.items():
            t = tot.setdefault(name, {})
            for k, v in o.items():
                t[k] = t.get(k, 0.0) + np.asarray(v, np.float64)
        seen += int(np.sum(mask))
        log(f"[probe] {seen:,} / {max_tokens:,} tokens")
        if seen >= max_tokens:
            break
    n_t, n_r = tot_c["n_targets"], tot_c["n_rows"]
    clean = float(tot_c["ce_clean"] / n_t)
    var = float(tot_c["x_sq_sum"] - np.sum(tot_c["x_sum"] ** 2) / n_r)
    out: dict[str, Any] = {"clean_loss": clean, "n_tokens": int(n_t), "massive_dims": [int(d) for d in dims]}
    res = {}
    for name, t in tot.items():
        r = {
            "delta_loss": float(t["ce"] / n_t) - clean,
            "kl": float(t["kl"] / n_t),
            "fvu": float(t["err_sq"] / var),
            "err_share_massive_dims": float(t["err_sq_massive"] / t["err_sq"]) if t["err_sq"] else 0.0,
            "err_share_big_rows": float(t["err_sq_big_rows"] / t["err_sq"]) if t["err_sq"] else 0.0,
            "later": {},
            "scale": {},
            "attention": {},
        }
        for l in range(layer + 1, cfg.n_layers):
            r["scale"][l] = float(t[f"scale_{l}"] / n_r)
            r["attention"][l] = {
                k: [float(v) for v in t[f"{key}_{l}"] / n_r]
                for k, key in (("tv", "tv"), ("sink_clean", "sink_c"), ("sink_spliced", "sink_s"))
            }
            for site in LATER_SITES:
                r["later"][f"{l}_{site}"] = float(t[f"d_{l}_{site}"] / t[f"n_{l}_{site}"])
        res[name] = r
    out["variants"] = res
    return out
