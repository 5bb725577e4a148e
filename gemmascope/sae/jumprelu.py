"""JumpReLU sparse autoencoder as pure functions over a parameter dict.

Layout (the released Gemma Scope layout, ``x @ W_enc`` convention, fp32)::

    W_enc [d_in, d_sae]   W_dec [d_sae, d_in]   b_enc [d_sae]   b_dec [d_in]   threshold [d_sae] (> 0)

Forward::

    pre   = (x - b_dec) @ W_enc + b_enc          # pre-encoder bias while training (folded at export)
    f     = pre * H(pre - threshold)              # JumpReLU
    x_hat = f @ W_dec + b_dec

Loss per example ``||x - x_hat||^2 + lambda * sum_i H(pre_i - threshold_i)``, averaged over the batch.

H has zero derivative almost everywhere, so the threshold learns through straight-through
pseudo-derivatives with the rectangle kernel ``K(u) = 1[|u| < 1/2]`` and bandwidth ``eps``
(Rajamanoharan et al. 2024, arXiv 2407.14435):

* ``jumprelu(z, t)``: d/dz = H(z - t) (exact), d/dt = -(t / eps) K((z - t) / eps)
* ``step(z, t)``:     d/dz = 0,                d/dt = -(1 / eps) K((z - t) / eps)

Threshold parametrisation while training: ``"log"`` keeps ``log_threshold`` in the trainable
params (the reference code), ``"direct"`` keeps ``threshold`` itself (clamped positive after each
update). :func:`layout_params` turns either into the released layout.

Everything here works in training units (see :mod:`gemmascope.sae.common`); the raw-unit forward
of exported files is :mod:`gemmascope.sae.files.model`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from gemmascope.sae import sparse
from gemmascope.sae.common import (  # noqa: F401  (decode_train, pre_activations: this module's contract)
    LAMBDA_AXIS,
    TARGET_L0_AXIS,
    Params,
    SAEConfig,
    SweepAxis,
    as_sae_config,
    decode_train,
    encoder_bias,
    init_base,
    no_update,
    pre_activations,
    recon_aux,
    reconstruction_loss,
)
from gemmascope.sae.topk import with_auxk

LAYOUT_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def rectangle(u: jax.Array) -> jax.Array:
    """The rectangle kernel ``K(u) = 1 if |u| < 1/2 else 0`` (same dtype as u)."""
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _sum_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a broadcast cotangent back to ``shape`` (the batch summation of a parameter gradient)."""
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    keep = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if a != b)
    if keep:
        g = g.sum(axis=keep, keepdims=True)
    return g.reshape(shape)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: jax.Array, threshold: jax.Array, eps: float) -> jax.Array:
    """``z * H(z - threshold)``; z ``[..., d_sae]``, threshold ``[d_sae]`` -> ``[..., d_sae]``."""
    return z * (z > threshold).astype(z.dtype)


def _jumprelu_fwd(z, threshold, eps):
    return jumprelu(z, threshold, eps), (z, threshold)


def _jumprelu_bwd(eps, res, g):
    z, threshold = res
    dz = g * (z > threshold).astype(z.dtype)
    dt = g * (-(threshold / eps) * rectangle((z - threshold) / eps))
    return dz, _sum_to_shape(dt, threshold.shape)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(z: jax.Array, threshold: jax.Array, eps: float) -> jax.Array:
    """Heaviside ``H(z - threshold)`` as floats; no gradient to z, a pseudo-gradient to threshold."""
    return (z > threshold).astype(z.dtype)


def _step_fwd(z, threshold, eps):
    return step(z, threshold, eps), (z, threshold)


def _step_bwd(eps, res, g):
    z, threshold = res
    dt = g * (-(1.0 / eps) * rectangle((z - threshold) / eps))
    return jnp.zeros_like(z), _sum_to_shape(dt, threshold.shape)


step.defvjp(_step_fwd, _step_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu_and_l0(z: jax.Array, threshold: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """``(jumprelu(z, t), sum_i step(z_i, t_i))`` with both pseudo-derivatives in one backward pass.

    Same values and gradients as :func:`jumprelu` and :func:`step` (tested); one fused pass over
    ``[batch, d_sae]`` instead of two in the backward, which is most of the step's non-matmul time.
    z ``[batch, d_sae]`` -> ``([batch, d_sae], [batch])``.
    """
    mask = (z > threshold).astype(z.dtype)
    return z * mask, jnp.sum(mask, axis=-1)


def _jumprelu_and_l0_fwd(z, threshold, eps):
    return jumprelu_and_l0(z, threshold, eps), (z, threshold)


def _jumprelu_and_l0_bwd(eps, res, g):
    z, threshold = res
    g_f, g_l0 = g
    mask = (z > threshold).astype(z.dtype)
    k = rectangle((z - threshold) / eps)
    dz = g_f * mask
    dt = k * (g_f * (-(threshold / eps)) + g_l0[..., None] * (-1.0 / eps))
    return dz, _sum_to_shape(dt, threshold.shape)


jumprelu_and_l0.defvjp(_jumprelu_and_l0_fwd, _jumprelu_and_l0_bwd)


# ----------------------------------------------------------------------------------------------
# The architecture contract (gemmascope.sae.common.Architecture)

NAME = "jumprelu"
UNIT_NORM_DECODER = True  # rows renormalised after each update, gradients projected
FILE_LAYOUT = "jumprelu"
MATRYOSHKA = True
# The fields only JumpReLU reads: another architecture must leave them at their defaults.
OWN_FIELDS = ("sparsity_loss", "frequency_penalty", "threshold_init_mode", "jumprelu_auxk", "revive_dead_every")
after_update = no_update


def sweep_axis(cfg: SAEConfig) -> SweepAxis:
    """Target L0s with the quadratic loss (Gemma Scope 2), else sparsity coefficients (Gemma Scope)."""
    return TARGET_L0_AXIS if as_sae_config(cfg).sparsity_loss == "quadratic" else LAMBDA_AXIS


def sparsity_argument(cfg: SAEConfig, value: Any, warmup: jax.Array, nu: jax.Array) -> tuple[Any, jax.Array]:
    """What :func:`sparsity_penalty` takes: ``lambda * warmup`` for the "l0" loss; for the quadratic
    loss ``(T, coef * warmup)``, with the controller's ``nu`` appended when it runs. The
    warmed-up coefficient is what the metrics report."""
    cfg = as_sae_config(cfg)
    if cfg.sparsity_loss != "quadratic":
        return value * warmup, value * warmup
    coef = cfg.quadratic_coefficient * warmup
    return ((value, coef, nu) if cfg.l0_controller_rate else (value, coef)), coef


def uses_auxk(cfg: SAEConfig) -> bool:
    return bool(as_sae_config(cfg).jumprelu_auxk)


def variant_suffix(cfg: SAEConfig) -> str:
    """``_quadratic`` (``_batch`` for the batch form), ``_auxk``, ``_revive``, in that order."""
    cfg = as_sae_config(cfg)
    out = ""
    if cfg.sparsity_loss == "quadratic":
        out += "_quadratic_batch" if cfg.quadratic_form == "batch" else "_quadratic"
    out += "_auxk" if cfg.jumprelu_auxk else ""
    return out + ("_revive" if cfg.revive_dead_every else "")


def metadata(cfg: SAEConfig) -> dict[str, Any]:
    """The sparsity loss and, where set, its quadratic form and coefficient, the frequency
    penalty, the threshold init, the revival period and the L0 controller's rate."""
    cfg = as_sae_config(cfg)
    meta: dict[str, Any] = {"sparsity_loss": cfg.sparsity_loss}
    if cfg.sparsity_loss == "quadratic":
        meta.update(quadratic_form=cfg.quadratic_form, quadratic_coefficient=cfg.quadratic_coefficient)
    if cfg.frequency_penalty:
        meta.update(frequency_penalty=cfg.frequency_penalty, frequency_max=cfg.frequency_max)
    meta["threshold_init_mode"] = cfg.threshold_init_mode
    if cfg.revive_dead_every:
        meta["revive_dead_every"] = cfg.revive_dead_every
    if cfg.l0_controller_rate and cfg.sparsity_loss == "quadratic":
        meta["l0_controller_rate"] = cfg.l0_controller_rate
    return meta


def init(key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> Params:
    """Gemma Scope initialisation, in the training parametrisation of ``cfg.threshold_param``.

    ``W_dec`` He-uniform then every row scaled to unit norm; ``W_enc = W_dec.T`` (untied after);
    ``b_enc = b_dec = 0``; ``threshold = cfg.threshold_init`` (0.001 in normalised units).
    """
    cfg = as_sae_config(cfg)
    params = init_base(key, d_in, d_sae)
    t0 = jnp.full((d_sae,), float(cfg.threshold_init), jnp.float32)
    return with_threshold(params, t0, cfg)


def with_threshold(params: Mapping[str, jax.Array], threshold: jax.Array, cfg: SAEConfig) -> Params:
    """``params`` with ``threshold [d_sae]`` stored in the parametrisation of ``cfg.threshold_param``."""
    out = {k: v for k, v in params.items() if k not in ("threshold", "log_threshold")}
    if cfg.threshold_param == "log":
        out["log_threshold"] = jnp.log(threshold)
    else:
        out["threshold"] = threshold
    return out


def layout_params(params: Mapping[str, jax.Array]) -> Params:
    """Training params (either threshold parametrisation) -> the released layout."""
    out = {k: params[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    out["threshold"] = jnp.exp(params["log_threshold"]) if "log_threshold" in params else params["threshold"]
    return out


def encode_train(
    params: Mapping[str, jax.Array], x: jax.Array, cfg: SAEConfig | Mapping[str, Any], sparsity: Any = None
) -> jax.Array:
    """Codes ``f [batch, d_sae]`` of normalised ``x [batch, d_in]`` (training units)."""
    del sparsity
    cfg = as_sae_config(cfg)
    p = layout_params(params)
    pre = pre_activations(p, x, cfg.pre_encoder_bias)
    return jumprelu(pre, p["threshold"], cfg.bandwidth)


def export_layout(params: Mapping[str, jax.Array], cfg: SAEConfig, sparsity: Any = None) -> Params:
    """The released layout, still in training units (see :func:`gemmascope.sae.files.layouts.fold_normalisation`)."""
    return layout_params(params)


def thresholds(params: Mapping[str, jax.Array]) -> jax.Array:
    return layout_params(params)["threshold"]


def sparsity_penalty(l0_per_example: jax.Array, cfg: SAEConfig, sparsity: Any) -> jax.Array:
    """The sparsity term of the loss from ``l0_per_example [batch]`` (the step STE's sums).

    * ``cfg.sparsity_loss == "l0"``: ``sparsity`` is lambda; ``lambda * mean_i L0_i`` (Gemma Scope).
    * ``"quadratic"``: ``sparsity`` is ``(T, coef)`` (target L0, warmed-up coefficient), around
      the target (Gemma Scope 2). ``cfg.quadratic_form == "batch"`` (the default):
      ``coef * (mean_i L0_i - T)^2 / T``; ``"per_example"`` (the form a widely used PyTorch
      library implements): ``coef * mean_i (2 / T) (L0_i - T)^2``. The per-example form also pulls
      each example's L0 towards T (its gradient is ``4 coef (L0_i - T) / (T B)`` per example,
      against ``2 coef (mean L0 - T) / (T B)`` for the batch form), so it penalises the spread of
      L0 as well as the miss. The frontier prefers the batch form (docs/frontier.md, 1x budget:
      delta LM loss 0.93x / 0.72x / 0.87x the per-example form's at matched L0 40 / 80 / 160),
      which lets hard tokens use more latents; at the same coefficient it lands further above T.

    With the L0 controller (``cfg.l0_controller_rate > 0``) ``sparsity`` is ``(T, coef, nu)`` and
    ``nu * mean_i L0_i`` is added: the controller's multiplier, a constant here (the trainer
    updates it by dual ascent after each step, :func:`controller_update`).
    """
    if cfg.sparsity_loss == "l0":
        return sparsity * jnp.mean(l0_per_example)
    target, coef = sparsity[0], sparsity[1]
    if cfg.quadratic_form == "per_example":
        pen = coef * jnp.mean((2.0 / target) * (l0_per_example - target) ** 2)
    else:
        pen = coef * (jnp.mean(l0_per_example) - target) ** 2 / target
    if len(sparsity) > 2:
        pen = pen + jax.lax.stop_gradient(sparsity[2]) * jnp.mean(l0_per_example)
    return pen


def controller_update(
    nu: jax.Array, batch_l0: jax.Array, target: jax.Array, rate: float, warmup: jax.Array | float = 1.0
) -> jax.Array:
    """Dual ascent on the constraint ``E[L0] = T``: ``nu + rate * warmup * clip((L0 - T) / T, -1, 1)``.

    ``nu`` is the Lagrange multiplier of the constraint (an L0 coefficient in training units, may
    go negative to raise L0). Summed over steps it is the integral of the relative miss, so it
    keeps moving until the batch L0 sits on the target on average: the steady-state miss of the
    quadratic penalty alone (its equilibrium with the reconstruction's pull) goes to zero.

    Anti-windup: ``warmup`` (the sparsity warm-up factor, 0 -> 1) and the clip keep the early
    steps, where the warming coefficient lets L0 run far from T, from charging ``nu`` with a
    multiplier the rest of training must spend unwinding (measured on the toy: without them
    nu reached 20x its final value in 200 steps and L0 sat 20-30% under its target for 1,500)."""
    miss = jnp.clip((batch_l0 - target) / target, -1.0, 1.0)
    return nu + rate * warmup * miss


def frequency_penalty(pre: jax.Array, threshold: jax.Array, cfg: SAEConfig) -> jax.Array:
    """``coef * sum_j relu(p_j - p_max)^2 / p_max`` with ``p_j`` the fraction of the batch on which
    latent j fires (``mean_i step(pre_ij, t_j)``, so it trains the thresholds only).

    Latents firing on at most ``p_max = cfg.frequency_max`` of the tokens are untouched; above it
    the penalty acts on latent j like an extra L0 coefficient ``2 coef (p_j / p_max - 1)``
    (scale free in p_max), raising only that latent's threshold. A smooth hinge rather than a
    log-frequency target: dense latents are the failure it guards against (Gemma Scope 2 pairs a
    frequency penalty with the quadratic loss; its form is not public).
    """
    return frequency_term(jnp.mean(step(pre, threshold, cfg.bandwidth), axis=0), cfg)


def frequency_term(p: jax.Array, cfg: SAEConfig) -> jax.Array:
    """:func:`frequency_penalty` of the firing fractions ``p [d_sae]``."""
    excess = jax.nn.relu(p - cfg.frequency_max)
    return cfg.frequency_penalty * jnp.sum(excess**2) / cfg.frequency_max


def loss(
    params: Mapping[str, jax.Array],
    x: jax.Array,
    cfg: SAEConfig | Mapping[str, Any],
    sparsity: Any,
    dead: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over the batch of ``||x - x_hat||^2`` plus :func:`sparsity_penalty` (``lambda * L0`` by
    default) plus :func:`frequency_penalty` when configured; x ``[batch, d_in]`` normalised.

    With ``cfg.matryoshka_prefixes`` the reconstruction term is summed over the nested prefixes
    (:func:`gemmascope.sae.common.reconstruction_loss`; aux's ``mse`` stays the full one).
    ``sparsity``: lambda (``"l0"``) or ``(target, coef)`` (``"quadratic"``). Returns
    ``(loss, aux)`` (see :func:`gemmascope.sae.common.recon_aux`).

    ``dead [d_sae]`` (given by the trainer with ``sae.jumprelu_auxk``): TopK's AuxK term
    (:func:`gemmascope.sae.topk.with_auxk`) reconstructs the residual from the largest ReLU'd
    pre-activations of the dead latents, so a latent whose pre-activations never reach the
    threshold's kernel window (no gradient from the sparsity loss or the reconstruction) is
    pulled toward inputs it could help with until it crosses its threshold.
    """
    cfg = as_sae_config(cfg)
    p = layout_params(params)
    pre = pre_activations(p, x, cfg.pre_encoder_bias)
    f, l0_per_example = jumprelu_and_l0(pre, p["threshold"], cfg.bandwidth)
    if cfg.matryoshka_prefixes:  # the reconstruction term summed over nested prefixes
        recon, x_hat = reconstruction_loss(p, f, x, cfg.matryoshka_prefixes)
    else:
        recon, x_hat = None, decode_train(p, f)
    sparsity_term = sparsity_penalty(l0_per_example, cfg, sparsity)
    if cfg.frequency_penalty:
        sparsity_term = sparsity_term + frequency_penalty(pre, p["threshold"], cfg)
    mse, aux = recon_aux(x, x_hat, f, l0_per_example, sparsity_term)
    total = (mse if recon is None else recon) + sparsity_term
    return with_auxk(total, aux, p, pre=pre, x=x, x_hat=x_hat, dead=dead, cfg=cfg)


def sparse_capacity(cfg: SAEConfig, value: Any) -> int:
    """The sparse path's default slots per row (``cfg.sparse_capacity == 0``): 4x the target L0 with
    the quadratic loss (``value``), else :data:`SPARSE_CAPACITY` (a lambda says nothing of L0)."""
    if as_sae_config(cfg).sparsity_loss == "quadratic":
        return max(64, 4 * math.ceil(float(value)))
    return SPARSE_CAPACITY


# The sparse path's slots per row for a lambda sweep: 4x the L0 of the recipe's sweeps (~64).
SPARSE_CAPACITY = 256


def sparse_select(
    params: Mapping[str, jax.Array], x: jax.Array, cfg: SAEConfig | Mapping[str, Any], sparsity: Any, capacity: int
) -> dict[str, Any]:
    """The sparse path's slots (:mod:`gemmascope.sae.sparse`): the dense ``pre [B, d_sae]``
    (stop-gradient) and ``idx [B, cap]`` holding each row's firing latents and those within half
    the bandwidth of the threshold (where the straight-through pseudo-derivatives are non-zero),
    with ``overflow`` when a row has more than ``capacity``."""
    cfg = as_sae_config(cfg)
    p = jax.lax.stop_gradient(layout_params(params))
    pre = pre_activations(p, x, cfg.pre_encoder_bias)
    t = p["threshold"]
    active = (pre > t) | (rectangle((pre - t) / cfg.bandwidth) > 0)
    idx, used, overflow = sparse.active_slots(active, capacity)
    return {"pre": pre, "idx": idx, "used": used, "overflow": overflow}


def sparse_loss(
    params: Mapping[str, jax.Array],
    x: jax.Array,
    cfg: SAEConfig | Mapping[str, Any],
    sparsity: Any,
    dead: jax.Array | None = None,
    sel: Mapping[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`loss` over the slots ``sel`` of :func:`sparse_select` (no row overflowing): the same
    value and gradients, with the decoder and both weight gradients over ``[B, cap]`` slots."""
    cfg = as_sae_config(cfg)
    p = layout_params(params)
    idx, d_sae = sel["idx"], p["b_enc"].shape[-1]
    f, l0_per_example, sparsity_term = sparse_codes(p, x, encoder_bias(p, cfg.pre_encoder_bias), cfg, sparsity, sel)
    recon, x_hat = reconstruction_loss(p, f, x, cfg.matryoshka_prefixes, (idx, sel["used"]))
    _, aux = recon_aux(x, x_hat, f, l0_per_example, sparsity_term, idx, d_sae)
    return with_auxk(recon + sparsity_term, aux, p, pre=None, x=x, x_hat=x_hat, dead=dead, cfg=cfg, sel=sel)


def sparse_codes(
    p: Mapping[str, jax.Array], x: jax.Array, b: jax.Array, cfg: SAEConfig, sparsity: Any, sel: Mapping[str, Any]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(f [B, cap], l0_per_example [B], sparsity term)`` at the slots ``sel`` of the encoder
    ``x [B, d_in] @ W_enc + b`` (``p`` in :func:`layout_params` form): the JumpReLU codes, their
    L0 and :func:`sparsity_penalty` (plus the frequency penalty), with the same straight-through
    gradients as the dense ones (shared by the SAE and the transcoder)."""
    idx, d_sae = sel["idx"], p["b_enc"].shape[-1]
    z = sparse.gather_pre(x, p["W_enc"], b, idx, sel["pre"], sel["used"])
    t = p["threshold"][idx]
    f, l0_per_example = jumprelu_and_l0(z, t, cfg.bandwidth)
    term = sparsity_penalty(l0_per_example, cfg, sparsity)
    if cfg.frequency_penalty:
        fraction = sparse.per_latent_sum(idx, step(z, t, cfg.bandwidth), d_sae) / x.shape[0]
        term = term + frequency_term(fraction, cfg)
    return f, l0_per_example, term


def quantile_thresholds(params: Mapping[str, jax.Array], x: jax.Array, target_l0: Any, cfg: SAEConfig) -> Params:
    """``params`` with each threshold at the ``1 - T / d_sae`` quantile of its pre-activations on
    the normalised sample ``x [n, d_in]`` (at least ``cfg.threshold_min``), so every latent fires on
    about ``T / d_sae`` of the rows and the mean L0 starts near ``T``."""
    return with_threshold(params, target_quantile(layout_params(params), x, target_l0, cfg), cfg)


def target_quantile(p: Params, x: jax.Array, target_l0: Any, cfg: SAEConfig) -> jax.Array:
    """``[d_sae]``: each latent's ``1 - T / d_sae`` quantile of its pre-activations on the normalised
    rows ``x [n, d_in]`` (at least ``cfg.threshold_min``), the threshold at which it fires on about
    ``T / d_sae`` of them; ``p`` in :func:`layout_params` form."""
    pre = pre_activations(p, x, cfg.pre_encoder_bias)
    q = 1.0 - jnp.asarray(target_l0, jnp.float32) / pre.shape[-1]
    return jnp.maximum(jnp.quantile(pre, q, axis=0), cfg.threshold_min).astype(jnp.float32)


def calibrated_thresholds(
    params: Mapping[str, jax.Array], x: jax.Array, target_l0: Any, cfg: SAEConfig, iters: int = 40
) -> tuple[Params, jax.Array]:
    """``(params, a)``: every threshold times one factor ``a`` (bisection on ``log a`` in [-3, 3],
    ``iters`` halvings) so that the mean L0 on the normalised rows ``x [n, d_in]`` is the target
    ``T`` (as near as whole counts allow). The latents' relative thresholds are kept, so the
    dictionary is unchanged but for how many latents clear their thresholds.

    Why: the end-to-end stage's KL moves the thresholds faster than the L0 controller answers
    within the stage's few steps (docs/gemma3.md); the mean L0 is non-increasing in ``a``.
    """
    p = layout_params(params)
    pre = pre_activations(p, x, cfg.pre_encoder_bias)  # [n, d_sae]
    t = p["threshold"]
    target = jnp.asarray(target_l0, jnp.float32)

    def mean_l0(log_a):
        return jnp.mean(jnp.sum(pre > t * jnp.exp(log_a), axis=-1))

    def halve(_, lo_hi):
        lo, hi = lo_hi
        mid = 0.5 * (lo + hi)
        above = mean_l0(mid) > target  # still too many: raise the thresholds
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, halve, (jnp.float32(-3.0), jnp.float32(3.0)))
    # the end whose L0 is nearer the target
    log_a = jnp.where(jnp.abs(mean_l0(lo) - target) <= jnp.abs(mean_l0(hi) - target), lo, hi)
    a = jnp.exp(log_a)
    return with_threshold(params, jnp.maximum(t * a, cfg.threshold_min).astype(jnp.float32), cfg), a


def revive_thresholds(
    params: Mapping[str, jax.Array], x: jax.Array, dead: jax.Array, target_l0: Any, cfg: SAEConfig
) -> Params:
    """``params`` with each ``dead [d_sae]`` latent's threshold lowered to the ``1 - T / d_sae``
    quantile of its pre-activations on the normalised batch ``x [B, d_in]`` (at least
    ``cfg.threshold_min``; a threshold already below it is kept), so it fires on about
    ``T / d_sae`` of the rows, where its encoder row reads most strongly, and the reconstruction
    loss trains it again; live latents are untouched.

    Why: a latent dies when the sparsity loss has pushed its threshold above every pre-activation
    it sees; the straight-through estimator then gives the threshold no gradient (none reaches the
    kernel window) and nothing brings it back (docs/frontier.md: dead latents' thresholds sit
    well above the live ones', above their largest pre-activations).
    """
    p = layout_params(params)
    fresh = target_quantile(p, x, target_l0, cfg)
    thr = jnp.where(dead, jnp.minimum(fresh, p["threshold"]), p["threshold"]).astype(jnp.float32)
    return with_threshold(params, thr, cfg)
