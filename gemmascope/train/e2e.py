"""The end-to-end stage: the SAE spliced into the frozen LM, trained on the KL between the clean
and the spliced next-token distributions plus its usual loss.

For the last ``config.e2e.fraction`` of the steps each SAE's loss becomes::

    arch.loss(params, x_rows)  +  kl_coefficient * mean_t KL(p_clean(t) || p_spliced(t))

``x_rows`` is the usual training batch (the reconstruction and sparsity terms, unchanged), and
the KL is over a batch of ``config.e2e.sequences`` packed text sequences: the LM runs to the SAE's
``res`` site, the site is replaced at real-text positions (norm outliers kept, as evaluation
does) by the SAE's reconstruction in raw units, the LM finishes, and the KL is averaged over
positions whose target is real text. The LM is frozen (no gradient reaches its weights); the
gradient reaches the SAE through the later layers, and reaches its thresholds through the
straight-through estimator like the reconstruction's does. The KL fine-tune of Karvonen et al.
(arXiv 2503.17272) reports a 20-50% smaller CE-loss gap from such a stage.

``config.e2e.kl_reaches``: ``"all"`` (the KL's gradient reaches every parameter, thresholds
through the straight-through estimator) or ``"decoder"`` (the codes are held constant in the KL:
it trains ``W_dec`` and ``b_dec`` only, so it cannot move which latents fire, and L0 stays where the
reconstruction and sparsity terms, and the target controller, hold it).

Cost: each step adds, per SAE, one LM forward and backward from the site to the logits over
``sequences * context_length`` tokens (the whole vocabulary: 262k rows for Gemma 3), so the
stage is kept short and its token batches small.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.data.sites import keep_mask
from gemmascope.lm.loss import unembedding_chunks
from gemmascope.lm.model import final_norm, forward, softcap_logits
from gemmascope.sae import archs, jumprelu
from gemmascope.sae.common import SAEConfig
from gemmascope.train.step import normalise


def start_step(config, total: int) -> int:
    """The last step before the end-to-end stage (``total`` when it is off): steps
    ``start_step + 1 .. total`` train end to end."""
    frac = float(config.e2e.fraction)
    return total if frac <= 0 else total - max(1, int(round(frac * total)))


def log_probs(params, lm_cfg, h: jax.Array) -> jax.Array:
    """``[B, T-1, V]`` next-token log-probabilities from the last block's output ``h [B, T, d]``
    (final norm, unembedding, soft-cap as :func:`gemmascope.lm.model.forward`). Full logits are
    formed, which is why the stage's token batches stay small."""
    w = unembedding_chunks(params, lm_cfg, 1)[0][0]  # [V, d]: one chunk, no padding
    lg = softcap_logits((final_norm(params, h, lm_cfg)[:, :-1] @ w.T).astype(jnp.float32), lm_cfg)
    return jax.nn.log_softmax(lg, axis=-1)


def next_token_kl(lp_clean: jax.Array, lp_spliced: jax.Array, mask: jax.Array) -> jax.Array:
    """``mean_t KL(p_clean || p_spliced)`` (nats) over positions whose target is real text
    (``mask [B, T]``), from log-probabilities ``[B, T-1, V]``."""
    kl = jnp.sum(jnp.exp(lp_clean) * (lp_clean - lp_spliced), axis=-1)  # [B, T-1]
    w = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)


class KLTerm:
    """The stage's KL for one location. :meth:`prepare` runs what does not depend on the SAE once
    per step (the LM up to the site, the splice positions, the clean run's log-probabilities);
    calling it with one SAE's training params splices that SAE's reconstruction (encoded in
    training units ``x / (C s)``, scaled back to raw units) and finishes the LM."""

    def __init__(self, config, lm_params, lm_cfg, layer: int, arch):
        self.cfg = SAEConfig.from_config(config)
        self.factor = float(config.lm.outlier_norm_factor)
        self.decoder_only = config.e2e.kl_reaches == "decoder"
        self.lm_params, self.lm_cfg, self.layer, self.arch = lm_params, lm_cfg, int(layer), arch

    def _suffix(self, h, tokens):
        L = self.lm_cfg.n_layers
        if self.layer == L - 1:
            return h
        return forward(
            self.lm_params,
            tokens,
            self.lm_cfg,
            capture=[(L - 1, "res")],
            stop_after=L - 1,
            start_layer=self.layer + 1,
            h_in=h,
        ).captures[(L - 1, "res")]

    def prepare(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
        """``(tokens, mask, x [B, T, d] the site, sel [B, T] spliced positions, lp_clean)``, no gradient."""
        layer, p, c = self.layer, self.lm_params, self.lm_cfg
        start = {}
        if layer > 0:
            caps = forward(p, tokens, c, capture=[(layer - 1, "res")], stop_after=layer - 1).captures
            start = dict(start_layer=layer, h_in=caps[(layer - 1, "res")])
        x = forward(p, tokens, c, capture=[(layer, "res")], stop_after=layer, **start).captures[(layer, "res")]
        sel = keep_mask(x, mask, self.factor)
        lp_clean = log_probs(p, c, self._suffix(x, tokens))
        return jax.lax.stop_gradient((tokens, mask, x, sel, lp_clean))

    def __call__(self, params, norm_scale, dim_scale, prepared) -> jax.Array:
        tokens, mask, x, sel, lp_clean = prepared
        B, T, d = x.shape
        u = normalise(x.reshape(B * T, d), norm_scale, d, dim_scale)
        # kl_reaches="decoder": the codes are a constant of the KL, so only W_dec and b_dec learn
        # from it and which latents fire (L0) is left to the reconstruction and sparsity terms
        enc = jax.lax.stop_gradient(params) if self.decoder_only else params
        u_hat = self.arch.decode_train(params, self.arch.encode_train(enc, u, self.cfg))
        scale = norm_scale if dim_scale is None else norm_scale * dim_scale
        x_hat = (u_hat * scale).reshape(B, T, d)
        h_s = jnp.where(sel[..., None], x_hat.astype(x.dtype), x)
        return next_token_kl(lp_clean, log_probs(self.lm_params, self.lm_cfg, self._suffix(h_s, tokens)), mask)


class TokenBatches:
    """Batches of ``config.e2e.sequences`` packed train-split sequences for the end-to-end stage,
    a deterministic function of the stage's step index (wrapping around the corpus), so a resumed
    run sees the same batches: ``batch(j)`` re-reads the text up to batch ``j`` only when it is
    not the next one."""

    def __init__(self, lm, n_seq: int):
        self.lm, self.n_seq = lm, int(n_seq)
        self._it: Iterator | None = None
        self._next = 0

    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            empty = True
            for toks, mask in self.lm.packed_batches("train"):
                for a in range(0, len(toks), self.n_seq):
                    t, m = toks[a : a + self.n_seq], mask[a : a + self.n_seq]
                    if len(t) == self.n_seq and m.any():
                        empty = False
                        yield t, m
            if empty:
                raise ValueError(f"end-to-end stage: the train split has no batch of {self.n_seq} sequences")

    def batch(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        if self._it is None or j != self._next:
            self._it = itertools.islice(self._chunks(), j, None)
        self._next = j + 1
        return next(self._it)


@functools.partial(jax.jit, static_argnames="cfg")
def _calibrate_stack(params, u, targets, cfg: SAEConfig):
    return jax.lax.map(lambda pt: jumprelu.calibrated_thresholds(pt[0], u, pt[1], cfg), (params, targets))


def calibrate_l0(
    state: dict[str, Any], x_raw: jax.Array, targets: jax.Array, config
) -> tuple[dict[str, Any], jax.Array]:
    """``(state, factors [K])``: each of the ``K`` stacked SAEs' thresholds times the one factor
    that puts its mean L0 on the raw training rows ``x_raw [n, d_in]`` at its target
    (:func:`gemmascope.sae.jumprelu.calibrated_thresholds`), one SAE at a time (``[n, width]``
    pre-activations each). The rest of the state is unchanged."""
    u = normalise(x_raw, state["norm_scale"], x_raw.shape[-1], state.get("dim_scale"))
    cfg = SAEConfig.from_config(config)
    params, factors = _calibrate_stack(state["params"], u, targets, cfg=cfg)
    return {**state, "params": params}, factors


def calibration_rows(config) -> int:
    """The training rows of the L0 calibration after the stage (``e2e.calibrate_rows`` where a
    stage runs on a target-L0 sweep, else 0)."""
    if float(config.e2e.fraction) <= 0 or archs.sweep_axis(config).kind != "target_l0":
        return 0
    return int(config.e2e.calibrate_rows)


def describe(config) -> dict[str, Any]:
    """The ``metadata.json`` fields of the stage (``{}`` when off)."""
    if float(config.e2e.fraction) <= 0:
        return {}
    return {
        "e2e_fraction": float(config.e2e.fraction),
        "e2e_kl_coefficient": float(config.e2e.kl_coefficient),
        "e2e_sequences": int(config.e2e.sequences),
        "e2e_lr_scale": float(config.e2e.lr_scale),
        "e2e_kl_reaches": str(config.e2e.kl_reaches),
        "e2e_controller_gain": float(config.e2e.controller_gain),
        "e2e_calibrate_rows": calibration_rows(config),
    }
