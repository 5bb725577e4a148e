"""Validation of the sparsity fields: JumpReLU's sparsity loss and target L0s, the frequency
penalty, the dead-latent remedies, the threshold init, Matryoshka prefixes and BatchTopK's
threshold estimate (part of :func:`gemmascope.config.validation.validate`)."""

from __future__ import annotations

import math

import ml_collections

from gemmascope.config.checks import nonneg_number, require
from gemmascope.sae import archs
from gemmascope.sae.common import SAEConfig


def validate_sparsity(c: ml_collections.ConfigDict) -> None:
    """JumpReLU's sparsity loss, its target L0s, the frequency penalty and the threshold init."""
    sae = c.sae
    require(
        sae.sparsity_loss in ("l0", "quadratic"),
        "sae.sparsity_loss",
        f"must be 'l0' or 'quadratic', got {sae.sparsity_loss!r}",
    )
    require(
        sae.quadratic_form in ("per_example", "batch"),
        "sae.quadratic_form",
        f"must be 'per_example' or 'batch', got {sae.quadratic_form!r}",
    )
    # Fields an architecture owns (its OWN_FIELDS) must keep their defaults under any other.
    defaults = SAEConfig()
    for field, owners in archs.own_fields().items():
        used = sae[field] != getattr(defaults, field)
        require(
            not used or sae.arch in owners,
            f"sae.{field}",
            f"applies to arch {' or '.join(repr(o) for o in owners)} only, not {sae.arch!r}",
        )
    if sae.sparsity_loss == "quadratic":
        ts = c.target_l0s
        require(isinstance(ts, (tuple, list)) and len(ts) > 0, "target_l0s", f"must be a non-empty list, got {ts!r}")
        for t in ts:
            require(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0,
                "target_l0s",
                f"every target L0 must be a finite number > 0, got {t!r}",
            )
            for w in c.widths:
                require(t <= w, "target_l0s", f"target L0 {t} exceeds width {w}")
    nonneg_number(c, "sae.quadratic_coefficient")
    nonneg_number(c, "sae.l0_controller_rate")
    require(
        sae.l0_controller_rate in (0, defaults.l0_controller_rate) or archs.sweep_axis(c).kind == "target_l0",
        "sae.l0_controller_rate",
        f"the L0 controller steers JumpReLU's quadratic loss to its target; arch {sae.arch!r} with "
        f"sparsity_loss {sae.sparsity_loss!r} has no target L0 (its default is inert there; leave it or set 0)",
    )
    v = sae.revive_dead_every
    require(isinstance(v, int) and v >= 0, "sae.revive_dead_every", f"must be an integer >= 0 (steps), got {v!r}")
    nonneg_number(c, "sae.frequency_penalty")
    require(
        isinstance(sae.frequency_max, (int, float)) and 0 < sae.frequency_max <= 1,
        "sae.frequency_max",
        f"must be a fraction of tokens in (0, 1], got {sae.frequency_max!r}",
    )
    for field, value, allowed in (
        ("threshold_init_mode", sae.threshold_init_mode, ("constant", "quantile")),
        ("b_dec_init", sae.b_dec_init, ("zero", "mean")),
        ("transcoder_init", sae.transcoder_init, ("random", "regression")),
    ):
        require(value in allowed, f"sae.{field}", f"must be one of {allowed}, got {value!r}")
    prefixes = sae.matryoshka_prefixes
    if prefixes:
        require(
            sae.arch in archs.matryoshka_archs(),
            "sae.matryoshka_prefixes",
            f"Matryoshka training applies to {list(archs.matryoshka_archs())}, not {sae.arch!r}",
        )
        for m in prefixes:
            require(
                isinstance(m, int) and not isinstance(m, bool) and m > 0,
                "sae.matryoshka_prefixes",
                f"every prefix size must be a positive integer, got {m!r}",
            )
        require(
            all(a < b for a, b in zip(prefixes, prefixes[1:])),
            "sae.matryoshka_prefixes",
            f"prefix sizes must be strictly increasing, got {tuple(prefixes)}",
        )
        for w in c.widths:
            require(
                prefixes[-1] == w,
                "sae.matryoshka_prefixes",
                f"the last prefix must be the width {w} (the whole dictionary), got {prefixes[-1]}",
            )
    v = sae.batchtopk_threshold_lr
    require(isinstance(v, (int, float)) and 0 < v <= 1, "sae.batchtopk_threshold_lr", f"must be in (0, 1], got {v!r}")
    # With the 'l0' loss the quantile init and the revival aim their thresholds at this L0.
    if (sae.threshold_init_mode == "quantile" or sae.revive_dead_every) and sae.sparsity_loss == "l0":
        t = sae.threshold_init_l0
        require(
            isinstance(t, (int, float)) and t > 0,
            "sae.threshold_init_l0",
            f"must be > 0 (the L0 the quantile init and the revival aim at) with the 'l0' loss, got {t!r}",
        )
        for w in c.widths:
            require(t <= w, "sae.threshold_init_l0", f"L0 {t} exceeds width {w}")
