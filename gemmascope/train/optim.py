"""The Gemma Scope training recipe as optax transforms and schedules.

* :func:`project_out_decoder_parallel` removes from each ``W_dec`` row's gradient its component
  parallel to that row (rows are unit norm, so the update does not change the norm to first order).
* :func:`scale_by_adam_no_momentum`: Adam with ``b1 = 0``. Its first moment is the gradient
  itself, so no first-moment buffer is stored: state is ``(count, nu)`` only.
* :func:`make_optimizer` chains them, optionally after global-norm gradient clipping
  (``grad_clip_norm``, off by default; SAELens clips at 1.0).
* :func:`lr_schedule`: cosine warm-up from ``0.1 * lr`` to ``lr`` over the warm-up steps, then
  constant (or cosine decay to ``lr * final_fraction`` if configured).
* :func:`sparsity_schedule`: linear warm-up of lambda from 0 over the warm-up steps.
* :func:`renormalise_decoder` and :func:`clamp_threshold` run after each update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ProjectState(NamedTuple):
    pass


def project_out_decoder_parallel(key: str = "W_dec") -> optax.GradientTransformation:
    """``g_i <- g_i - (g_i . w_i) w_i / ||w_i||^2`` for every row i of ``params[key]``."""

    def init_fn(params):
        del params
        return ProjectState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_out_decoder_parallel needs params")
        w = params[key]
        g = updates[key]
        coef = jnp.sum(g * w, axis=-1, keepdims=True) / jnp.sum(w * w, axis=-1, keepdims=True)
        updates = dict(updates)
        updates[key] = g - coef * w
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class AdamNoMomentumState(NamedTuple):
    count: jax.Array
    nu: Any


def scale_by_adam_no_momentum(b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam with ``b1 = 0``: ``u = g / (sqrt(nu / (1 - b2^t)) + eps)``; stores no first moment."""

    def init_fn(params):
        nu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
        return AdamNoMomentumState(count=jnp.zeros([], jnp.int32), nu=nu)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
        correction = 1.0 - b2 ** count.astype(jnp.float32)
        updates = jax.tree.map(lambda g, v: g / (jnp.sqrt(v / correction) + eps), updates, nu)
        return updates, AdamNoMomentumState(count=count, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def lr_schedule(cfg: Mapping[str, Any]) -> optax.Schedule:
    """Cosine warm-up ``lr * (0.1 + 0.9 * (1 - cos(pi * s / W)) / 2)`` for ``s < W``, then constant
    (``lr_decay == "constant"``) or cosine decay to ``lr * lr_final_fraction`` by ``total_steps``."""
    lr = float(cfg["lr"])
    warm = int(cfg["lr_warmup_steps"])
    decay = str(cfg.get("lr_decay", "constant"))
    total = int(cfg.get("total_steps", 0) or 0)
    final = float(cfg.get("lr_final_fraction", 0.0))

    def schedule(count):
        s = jnp.asarray(count, jnp.float32)
        if warm > 0:
            frac = jnp.clip(s / warm, 0.0, 1.0)
            warm_lr = lr * (0.1 + 0.9 * 0.5 * (1.0 - jnp.cos(jnp.pi * frac)))
        else:
            warm_lr = jnp.asarray(lr, jnp.float32)
        if decay == "cosine" and total > warm:
            d = jnp.clip((s - warm) / (total - warm), 0.0, 1.0)
            after = lr * (final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * d)))
        else:
            after = jnp.asarray(lr, jnp.float32)
        return jnp.where(s < warm, warm_lr, after)

    return schedule


def sparsity_schedule(warmup_steps: int) -> optax.Schedule:
    """Multiplier of lambda: ``min(1, s / warmup_steps)`` (1 from the start when warmup is 0)."""

    def schedule(count):
        if warmup_steps <= 0:
            return jnp.ones([], jnp.float32)
        return jnp.clip(jnp.asarray(count, jnp.float32) / warmup_steps, 0.0, 1.0)

    return schedule


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformation:
    """[Global-norm clipping] -> decoder projection -> Adam (no first moment when ``adam_b1 == 0``)
    -> ``-lr(s)``.

    ``cfg["grad_clip_norm"] > 0`` scales the whole gradient tree by ``min(1, c / ||g||)`` with
    ``||g||`` the L2 norm over every parameter of the tree (one SAE: the trainer maps this per SAE),
    before anything else, as SAELens's trainer clips its raw gradients; 0 (default) = off.

    ``cfg["threshold_adam_b1"] >= 0`` gives JumpReLU's thresholds their own Adam ``b1`` (-1, the
    default: ``adam_b1`` for every parameter). Why: a threshold only gets a gradient while some
    pre-activation sits inside the kernel window (``bandwidth`` wide) around it. With momentum a
    threshold that the sparsity loss pushes up keeps rising after the last pre-activation has
    left the window, by about ``lr / (1 - b1)`` (ten steps' worth at b1 0.9, about 10x the
    bandwidth at lr 1e-3): it lands above every pre-activation it will see, gets no gradient again,
    and the latent is dead for good (measured in docs/frontier.md).

    ``cfg["threshold_lr_scale"]`` (default 1) multiplies the thresholds' learning rate. Why: Adam
    moves every parameter by about ``lr`` a step whatever its gradient's scale; at the demo's lr
    1e-3 that is 3-6% of a normalised threshold (about 0.02) and one bandwidth, so a threshold whose
    noisy straight-through gradient flips sign keeps jittering by that much (docs/frontier.md measures a
    smaller step).
    """
    b1 = float(cfg["adam_b1"])
    adam = _adam(b1, cfg)
    b1_thr = float(cfg.get("threshold_adam_b1", -1.0))
    b1_thr = b1 if b1_thr < 0.0 else b1_thr
    thr_scale = float(cfg.get("threshold_lr_scale", 1.0))
    if b1_thr != b1 or thr_scale != 1.0:  # the thresholds' own first moment and step size
        thr = _adam(b1_thr, cfg) if thr_scale == 1.0 else optax.chain(_adam(b1_thr, cfg), optax.scale(thr_scale))
        adam = optax.multi_transform(
            {"threshold": thr, "rest": adam},
            lambda params: {k: "threshold" if k in THRESHOLD_KEYS else "rest" for k in params},
        )
    parts = []
    clip = float(cfg.get("grad_clip_norm", 0.0))
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if cfg.get("project_decoder_grads", True):
        parts.append(project_out_decoder_parallel("W_dec"))
    parts += [adam, optax.scale_by_learning_rate(lr_schedule(cfg))]
    return optax.chain(*parts)


# Parameter keys that hold JumpReLU thresholds (``threshold_adam_b1``, ``threshold_lr_scale``).
THRESHOLD_KEYS = ("threshold", "log_threshold")


def _adam(b1: float, cfg: Mapping[str, Any]) -> optax.GradientTransformation:
    """Adam with ``b1`` (no first-moment buffer when ``b1 == 0``), ``cfg``'s b2 and eps."""
    if b1 == 0.0:
        return scale_by_adam_no_momentum(b2=float(cfg["adam_b2"]), eps=float(cfg["adam_eps"]))
    return optax.scale_by_adam(b1=b1, b2=float(cfg["adam_b2"]), eps=float(cfg["adam_eps"]))


def renormalise_decoder(params: dict[str, jax.Array], key: str = "W_dec") -> dict[str, jax.Array]:
    """Scales every row of ``params[key]`` to unit norm."""
    params = dict(params)
    w = params[key]
    params[key] = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    return params


def clamp_threshold(params: dict[str, jax.Array], minimum: float) -> dict[str, jax.Array]:
    """Keeps a directly-trained threshold positive (no-op for ``log_threshold``)."""
    if "threshold" not in params:
        return params
    params = dict(params)
    params["threshold"] = jnp.maximum(params["threshold"], minimum)
    return params
