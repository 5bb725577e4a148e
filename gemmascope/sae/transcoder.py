"""JumpReLU transcoder: reads one site (``x_in``, the MLP's input) and predicts another (``y``, the
MLP's output) through a sparse JumpReLU layer (Dunefsky et al. 2024, arXiv 2406.11944; Gemma
Scope 2's ``transcoder_all``, with the optional affine skip connection).

Layout (training units, ``x @ W`` convention)::

    W_enc [d_in, d_sae]   W_dec [d_sae, d_out]   b_enc [d_sae]   b_dec [d_out]   threshold [d_sae]
    W_skip [d_in, d_out]  (affine transcoders only; initialised to zero, trained)

Forward and loss on a batch ``xy [B, d_in + d_out] = concat(x_in / C_in, y / C_out)`` (the paired
sources' rows, normalised per part by the trainer)::

    pre   = x_in @ W_enc + b_enc                  # no pre-encoder bias: b_dec lives in the output space
    f     = jumprelu(pre, threshold)               # the STE of gemmascope.sae.jumprelu
    y_hat = f @ W_dec + b_dec (+ x_in @ W_skip)
    loss  = mean_batch ||y - y_hat||^2 + sparsity_penalty(L0) (+ frequency penalty)

Everything sparse is :mod:`gemmascope.sae.jumprelu`'s (STE, the L0 and quadratic target-L0
penalties, the frequency penalty, threshold parametrisations, quantile init); this module only
adds the split of the row, the other output space and the skip. ``W_dec`` rows stay unit norm
with projected gradients, as for the SAE; ``W_skip`` is a plain trained matrix.

The architecture needs the output width and whether it is affine, so it is a small frozen value
(:class:`Transcoder`) built per location by :func:`gemmascope.sae.archs.for_site`, satisfying
:class:`gemmascope.sae.common.Architecture` like the module-level architectures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gemmascope.sae import jumprelu
from gemmascope.sae.common import (
    Params,
    SAEConfig,
    as_sae_config,
    decode_train,
    init_base,
    no_update,
    pre_activations,
    recon_aux,
    sparse_decode,
)

SKIP_KEY = "W_skip"
# transcoder_init "regression", affine: the encoder's random start is scaled by this, so that the
# first codes (at the quantile thresholds' L0) add ~1% of the noise energy they would at scale 1
# to the least-squares affine map the transcoder starts from.
AFFINE_ENCODER_SCALE = 0.1
# Ridge of the least-squares fit, relative to the mean variance of an input coordinate: only there
# to keep the solve well posed in float32 (1e-3 and 1e-2 gave the same held-out FVU on the demo).
RIDGE = 1e-3


def least_squares(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ridge-regularised least-squares affine map ``y ~ x @ W + b`` on rows ``x [n, d_in]``,
    ``y [n, d_out]``: ``(W [d_in, d_out], b [d_out])``, fitted on centred rows in float32."""
    x_mean, y_mean = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    ridge = RIDGE * jnp.trace(gram) / x.shape[-1]
    w = jax.scipy.linalg.solve(gram + ridge * jnp.eye(x.shape[-1], dtype=gram.dtype), xc.T @ yc, assume_a="pos")
    return w, y_mean - x_mean @ w


def split(xy: jax.Array, d_in: int) -> tuple[jax.Array, jax.Array]:
    """``[B, d_in + d_out] -> ([B, d_in], [B, d_out])``: a paired row's input and target parts."""
    return xy[..., :d_in], xy[..., d_in:]


class JumpReLUWriter:
    """What every JumpReLU model that writes to other sites than it reads (a transcoder, a
    cross-layer transcoder) shares of the architecture contract: its sweep, sparsity argument,
    fields, variant names and metadata are JumpReLU's, and ``config.sae.arch`` names it as
    ``BASE`` (``"jumprelu"``)."""

    BASE = jumprelu.NAME
    MATRYOSHKA = False
    OWN_FIELDS = jumprelu.OWN_FIELDS
    after_update = staticmethod(no_update)
    sweep_axis = staticmethod(jumprelu.sweep_axis)
    sparsity_argument = staticmethod(jumprelu.sparsity_argument)
    uses_auxk = staticmethod(jumprelu.uses_auxk)
    variant_suffix = staticmethod(jumprelu.variant_suffix)
    metadata = staticmethod(jumprelu.metadata)


@dataclasses.dataclass(frozen=True)
class Transcoder(JumpReLUWriter):
    """A JumpReLU transcoder writing ``d_out`` features; ``affine`` adds ``x_in @ W_skip``."""

    d_out: int
    affine: bool = False

    NAME = "transcoder"
    UNIT_NORM_DECODER = True  # W_dec rows renormalised after each update, gradients projected
    FILE_LAYOUT = "transcoder"

    def init(self, key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> Params:
        """The SAE's initialisation with the decoder in the output space: ``W_dec [d_sae, d_out]``
        He-uniform with unit rows, ``W_enc [d_in, d_sae]`` its transpose when ``d_in == d_out``
        (else the transpose of an independent unit-row ``[d_sae, d_in]`` draw), biases 0,
        ``threshold = cfg.threshold_init``, ``W_skip = 0`` when affine (the run starts as a plain
        transcoder and learns the linear part)."""
        cfg = as_sae_config(cfg)
        k_dec, k_enc = jax.random.split(key)
        dec = init_base(k_dec, self.d_out, d_sae)
        enc = dec if d_in == self.d_out else init_base(k_enc, d_in, d_sae)
        params = {
            "W_enc": enc["W_enc"],
            "W_dec": dec["W_dec"],
            "b_enc": dec["b_enc"],
            "b_dec": dec["b_dec"],
        }
        if self.affine:
            params[SKIP_KEY] = jnp.zeros((d_in, self.d_out), jnp.float32)
        t0 = jnp.full((d_sae,), float(cfg.threshold_init), jnp.float32)
        return jumprelu.with_threshold(params, t0, cfg)

    def data_init(self, params: Mapping[str, jax.Array], xy: jax.Array, cfg: SAEConfig) -> Params:
        """The ``"regression"`` start (``cfg.transcoder_init``) on the normalised paired sample
        ``xy [n, d_in + d_out]``, with ``(W_lin, b_lin)`` the least-squares affine map x_in -> y:

        - plain: ``W_enc = W_lin @ W_dec.T`` and ``b_dec = mean(y)``. Each latent's pre-activation
          is then ``<x_in W_lin, d_j>``, the SAE init's ``<y, d_j>`` on the linear prediction of y,
          so the first codes reconstruct part of y instead of adding noise along random decoder
          rows (which the MSE gradient answers by closing latents that nothing reopens).
        - affine: ``W_skip = W_lin``, ``b_dec = b_lin`` (the run starts at the best linear map) and
          the random encoder scaled by :data:`AFFINE_ENCODER_SCALE`: the latents learn the residual,
          which has no linear part left to pull back.

        ``"random"`` leaves ``params`` as :meth:`init` made them."""
        cfg = as_sae_config(cfg)
        if cfg.transcoder_init != "regression":
            return dict(params)
        x_in, y = split(xy, params["W_enc"].shape[0])
        w_lin, b_lin = least_squares(x_in, y)
        out = dict(params)
        if self.affine:
            out[SKIP_KEY], out["b_dec"] = w_lin, b_lin
            out["W_enc"] = params["W_enc"] * AFFINE_ENCODER_SCALE
        else:
            out["W_enc"], out["b_dec"] = w_lin @ params["W_dec"].T, jnp.mean(y, axis=0)
        return out

    def encode_train(
        self, params: Mapping[str, jax.Array], x: jax.Array, cfg: SAEConfig | Mapping[str, Any], sparsity: Any = None
    ) -> jax.Array:
        """Codes ``f [B, d_sae]`` of the normalised input part ``x [B, d_in]`` (or a whole paired
        row ``[B, d_in + d_out]``, whose input part is used)."""
        del sparsity
        cfg = as_sae_config(cfg)
        p = jumprelu.layout_params(params)
        x_in, _ = split(x, p["W_enc"].shape[0])
        return jumprelu.jumprelu(pre_activations(p, x_in, False), p["threshold"], cfg.bandwidth)

    def decode_train(self, params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
        """``f @ W_dec + b_dec`` (without the skip, which needs ``x_in``: see :meth:`predict`)."""
        return decode_train(params, f)

    def predict(
        self,
        params: Mapping[str, jax.Array],
        f: jax.Array,
        x_in: jax.Array,
        slots: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """``y_hat [B, d_out] = f @ W_dec + b_dec (+ x_in @ W_skip)``; with the sparse path's
        ``slots = (idx [B, cap], used)``, ``f [B, cap]`` holds the codes at latents ``idx``."""
        y_hat = decode_train(params, f) if slots is None else sparse_decode(params, f, slots)
        if SKIP_KEY in params:
            y_hat = y_hat + x_in @ params[SKIP_KEY]
        return y_hat

    def loss(
        self,
        params: Mapping[str, jax.Array],
        xy: jax.Array,
        cfg: SAEConfig | Mapping[str, Any],
        sparsity: Any,
        dead: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean over the batch of ``||y - y_hat||^2`` plus jumprelu's sparsity penalty (``lambda *
        L0`` or the quadratic target-L0 form, per ``cfg.sparsity_loss``) plus its frequency
        penalty when configured. ``xy [B, d_in + d_out]`` normalised; ``d_in`` is
        ``W_enc.shape[0]``. aux's ``mse``, ``sq_err_sum`` are of the target ``y`` only."""
        del dead
        cfg = as_sae_config(cfg)
        p = {**jumprelu.layout_params(params), **({SKIP_KEY: params[SKIP_KEY]} if SKIP_KEY in params else {})}
        x_in, y = split(xy, p["W_enc"].shape[0])
        pre = pre_activations(p, x_in, False)
        f, l0_per_example = jumprelu.jumprelu_and_l0(pre, p["threshold"], cfg.bandwidth)
        y_hat = self.predict(p, f, x_in)
        sparsity_term = jumprelu.sparsity_penalty(l0_per_example, cfg, sparsity)
        if cfg.frequency_penalty:
            sparsity_term = sparsity_term + jumprelu.frequency_penalty(pre, p["threshold"], cfg)
        mse, aux = recon_aux(y, y_hat, f, l0_per_example, sparsity_term)
        return mse + sparsity_term, aux

    def sparse_capacity(self, cfg: SAEConfig, value: Any) -> int:
        """The sparse path's default slots per row: JumpReLU's."""
        return jumprelu.sparse_capacity(cfg, value)

    def sparse_select(
        self, params: Mapping[str, jax.Array], xy: jax.Array, cfg: SAEConfig, sparsity: Any, capacity: int
    ) -> dict[str, Any]:
        """JumpReLU's slots (:func:`gemmascope.sae.jumprelu.sparse_select`) of the input part."""
        x_in, _ = split(xy, params["W_enc"].shape[0])
        cfg = dataclasses.replace(as_sae_config(cfg), pre_encoder_bias=False)
        return jumprelu.sparse_select(params, x_in, cfg, sparsity, capacity)

    def sparse_loss(
        self,
        params: Mapping[str, jax.Array],
        xy: jax.Array,
        cfg: SAEConfig | Mapping[str, Any],
        sparsity: Any,
        dead: jax.Array | None = None,
        sel: Mapping[str, Any] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """:meth:`loss` over the slots ``sel`` of :meth:`sparse_select`: the same value and gradients."""
        del dead
        cfg = as_sae_config(cfg)
        p = {**jumprelu.layout_params(params), **({SKIP_KEY: params[SKIP_KEY]} if SKIP_KEY in params else {})}
        x_in, y = split(xy, p["W_enc"].shape[0])
        f, l0_per_example, sparsity_term = jumprelu.sparse_codes(p, x_in, p["b_enc"], cfg, sparsity, sel)
        y_hat = self.predict(p, f, x_in, (sel["idx"], sel["used"]))
        mse, aux = recon_aux(y, y_hat, f, l0_per_example, sparsity_term, sel["idx"], p["b_enc"].shape[-1])
        return mse + sparsity_term, aux

    def export_layout(self, params: Mapping[str, jax.Array], cfg: SAEConfig, sparsity: Any = None) -> Params:
        """The transcoder file layout (W_enc, W_dec, b_enc, b_dec, threshold, and W_skip when
        affine), still in training units (see :func:`gemmascope.sae.files.layouts.fold_transcoder`)."""
        out = jumprelu.layout_params(params)
        if SKIP_KEY in params:
            out[SKIP_KEY] = params[SKIP_KEY]
        return out

    def thresholds(self, params: Mapping[str, jax.Array]) -> jax.Array:
        return jumprelu.layout_params(params)["threshold"]

    def quantile_thresholds(self, params: Mapping[str, jax.Array], xy: jax.Array, target_l0: Any, cfg: SAEConfig):
        """jumprelu's quantile threshold init on the input part of the normalised sample ``xy``
        (without pre-encoder bias: the encoder reads ``x_in`` alone)."""
        x_in, _ = split(xy, params["W_enc"].shape[0])
        return jumprelu.quantile_thresholds(params, x_in, target_l0, dataclasses.replace(cfg, pre_encoder_bias=False))
