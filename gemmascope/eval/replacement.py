"""The replacement model: the MLPs of a span of layers all replaced at once by what a cross-layer
transcoder (or a set of per-layer transcoders) predicts, scored by the LM's next-token loss and
its KL from the clean model (the comparison that motivates CLTs, Ameisen et al. 2025).

Each replacement reads its input site in the *replacement* model's own forward (errors compound
through the layers, as in circuit-tracer's replacement model) and writes the MLP output (``mlp``,
after Gemma's post-MLP norm). Two implementations of :class:`Replacement`:

* :class:`CLTReplacement`: raw-unit stacked CLT arrays (:mod:`gemmascope.sae.files.multilayer`),
  reading ``res_mid``; layer ``m``'s MLP output is ``sum_{l <= m} f_l W_dec[l, :, m] + b_dec[m]
  (+ x_m W_skip[m])``, ``f_l`` the codes of layer ``l``'s read in this same forward.
* :class:`TranscoderSet`: one raw-unit transcoder per layer (``params.npz`` layout), reading
  ``mlp_in``.

Positions replaced: real text kept by the outlier rule at every read and written location of
the clean run (the rows training saw: the all-layer source's joint mask); BOS and the attention
sinks keep their MLP outputs. Losses average over positions whose target is a real token.
``l0_total``: codes per replaced token summed over the layers (the number of feature nodes an
attribution graph has per token).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.data.sites import keep_mask
from gemmascope.eval.kl import next_token_ce_and_kl
from gemmascope.lm.model import forward, next_token_ce_from_residual
from gemmascope.sae.files import model as sae_model


class Replacement(Protocol):
    """What replaces the MLPs of ``layers``: ``encode(i, a [B, T, d_in]) -> codes [B, T, n]`` of
    the ``i``-th layer's read, and ``write(i, codes, reads) -> [B, T, d_out]``, layer ``i``'s MLP
    output from the codes and reads of layers ``0..i`` (lists, in layer order)."""

    read_site: str
    layers: tuple[int, ...]

    def encode(self, i: int, a: jax.Array) -> jax.Array: ...

    def write(self, i: int, codes: Sequence[jax.Array], reads: Sequence[jax.Array]) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class CLTReplacement:
    """A raw-unit CLT (``W_enc [L, d_in, d_sae]`` ...) over ``layers``."""

    params: Mapping[str, Any]
    layers: tuple[int, ...]
    read_site: str = "res_mid"

    def encode(self, i, a):
        p = self.params
        pre = a.astype(jnp.float32) @ p["W_enc"][i] + p["b_enc"][i]
        return jnp.where(pre > p["threshold"][i], pre, 0.0)

    def write(self, i, codes, reads):
        p = self.params
        y = p["b_dec"][i] + sum(codes[l] @ p["W_dec"][l, :, i] for l in range(i + 1))
        if "W_skip" in p:
            y = y + reads[i].astype(jnp.float32) @ p["W_skip"][i]
        return y


@dataclasses.dataclass(frozen=True)
class TranscoderSet:
    """One raw-unit transcoder per layer of ``layers`` (``params[i]`` for ``layers[i]``)."""

    params: Sequence[Mapping[str, Any]]
    layers: tuple[int, ...]
    read_site: str = "mlp_in"

    def encode(self, i, a):
        return sae_model.encode(self.params[i], a.astype(jnp.float32))

    def write(self, i, codes, reads):
        return sae_model.transcode(self.params[i], reads[i].astype(jnp.float32))


def _batch(lm_params, rep_params, tokens, mask, *, cfg, rep: Replacement, factor: float):
    """Sums over one batch: real targets, clean / replaced / zero-ablated CE, KL and codes."""
    rep = dataclasses.replace(rep, params=rep_params)
    last = (cfg.n_layers - 1, "res")
    locs = [(l, s) for l in rep.layers for s in (rep.read_site, "mlp")]
    clean = forward(lm_params, tokens, cfg, capture=locs + [last], stop_after=cfg.n_layers - 1).captures
    sel = mask
    for loc in locs:
        sel = sel & keep_mask(clean[loc].astype(jnp.float32), mask, factor)
    reads, codes, l0 = [], [], []

    def read_fn(i):
        def fn(a):
            reads.append(a)
            codes.append(rep.encode(i, a))
            l0.append(jnp.sum((codes[-1] != 0) & sel[..., None]))
            return a

        return fn

    def write_fn(i):
        return lambda a: jnp.where(sel[..., None], rep.write(i, codes, reads).astype(a.dtype), a)

    splice = {}
    for i, l in enumerate(rep.layers):
        splice[(l, rep.read_site)] = read_fn(i)
        splice[(l, "mlp")] = write_fn(i)
    h_rep = forward(lm_params, tokens, cfg, capture=[last], splice=splice, stop_after=cfg.n_layers - 1).captures[last]
    zero = {(l, "mlp"): (lambda a: jnp.where(sel[..., None], jnp.zeros_like(a), a)) for l in rep.layers}
    h_zero = forward(lm_params, tokens, cfg, capture=[last], splice=zero, stop_after=cfg.n_layers - 1).captures[last]
    ce_clean, ce_rep, kl = next_token_ce_and_kl(lm_params, clean[last], h_rep[None], tokens, cfg=cfg)
    w = mask[:, 1:].astype(jnp.float32)
    return {
        "n_targets": jnp.sum(w),
        "n_tokens": jnp.sum(sel),
        "ce_clean": jnp.sum(ce_clean * w),
        "ce_replaced": jnp.sum(ce_rep[0] * w),
        "kl_sum": jnp.sum(kl[0] * w),
        "ce_zero": jnp.sum(next_token_ce_from_residual(lm_params, h_zero, tokens, cfg) * w),
        "l0_sum": sum(l0),
    }


def replacement_scores(
    lm, rep: Replacement, batches: Iterable[tuple[np.ndarray, np.ndarray]], *, outlier_norm_factor: float
) -> dict[str, float]:
    """``{ce_clean, ce_replaced, delta_loss, kl, ce_zero, ce_loss_score, l0_total, n_tokens}`` of
    the replacement model over ``batches`` of ``(tokens [B, T], mask [B, T])`` (module doc);
    ``ce_loss_score`` is the fraction of the all-MLPs-zeroed loss gap recovered."""
    step = jax.jit(lambda lp, rp, t, m: _batch(lp, rp, t, m, cfg=lm.cfg, rep=rep, factor=float(outlier_norm_factor)))
    rep_params = jax.tree.map(jnp.asarray, rep.params)
    acc: dict[str, float] = {}
    for tokens, mask in batches:
        out = jax.device_get(step(lm.params, rep_params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool)))
        for k, v in out.items():
            acc[k] = acc.get(k, 0.0) + float(v)
    n = max(acc["n_targets"], 1.0)
    ce_clean, ce_rep, ce_zero = acc["ce_clean"] / n, acc["ce_replaced"] / n, acc["ce_zero"] / n
    return {
        "ce_clean": ce_clean,
        "ce_replaced": ce_rep,
        "delta_loss": ce_rep - ce_clean,
        "kl": acc["kl_sum"] / n,
        "ce_zero": ce_zero,
        "ce_loss_score": (ce_zero - ce_rep) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        "l0_total": acc["l0_sum"] / max(acc["n_tokens"], 1.0),
        "n_tokens": acc["n_tokens"],
    }
