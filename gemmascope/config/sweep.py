"""What a config implies for its sweep: the axis (one SAE per value), the variant naming run
and export folders, and the step count."""

from __future__ import annotations

import ml_collections

from gemmascope.config.checks import get_field
from gemmascope.sae import archs
from gemmascope.sae.common import SAEConfig


def sweep_field(c: ml_collections.ConfigDict) -> str:
    """The config field holding the sweep axis (the architecture's
    :meth:`~gemmascope.sae.common.Architecture.sweep_axis`): ``sae.topk_ks`` (TopK), ``target_l0s``
    (JumpReLU with the quadratic loss) or ``lambdas``."""
    return archs.sweep_axis(c).field


def sweep_kind(c: ml_collections.ConfigDict) -> str:
    """What the sweep values are, as metrics and files name them: ``lambda``, ``target_l0`` or ``k``."""
    return archs.sweep_axis(c).kind


def scales_dims(c: ml_collections.ConfigDict) -> bool:
    """Whether the SAE trains on per-dimension scaled rows (``dim_scale_power`` or ``dim_std_cap``)."""
    return bool(c.get("dim_scale_power") or c.get("dim_std_cap"))


def variant_name(c: ml_collections.ConfigDict) -> str:
    """The architecture with its training variant, naming run and export folders: ``jumprelu``
    (Gemma Scope), ``jumprelu_quadratic``, ``jumprelu_quadratic_batch`` (the batch form of the
    quadratic loss), ``matryoshka_batchtopk`` ..., ``_auxk`` for JumpReLU with the AuxK loss
    (``sae.jumprelu_auxk``), ``_revive`` with threshold revival (``sae.revive_dead_every``), with
    ``_centred`` when ``b_dec`` starts at the data's mean (``sae.b_dec_init``), ``_dimscale<p>``
    with per-dimension input scaling (``dim_scale_power``), ``_stdcap<cap>`` with ``dim_std_cap``,
    and ``_e2e`` with the end-to-end stage."""
    name = str(c.sae.arch)
    if c.sae.matryoshka_prefixes:
        name = f"matryoshka_{name}"
    name += archs.get(c.sae.arch).variant_suffix(SAEConfig.from_config(c))
    name = f"{name}_centred" if c.sae.b_dec_init == "mean" else name
    name = f"{name}_dimscale{c.dim_scale_power:g}" if c.get("dim_scale_power") else name
    name = f"{name}_stdcap{c.dim_std_cap:g}" if c.get("dim_std_cap") else name
    return f"{name}_e2e" if c.get("e2e") and c.e2e.fraction else name


def sweep_values(c: ml_collections.ConfigDict) -> list[float]:
    """The stacked sweep axis (one SAE each), from :func:`sweep_field`."""
    return [float(v) for v in get_field(c, sweep_field(c))]


def total_steps(c: ml_collections.ConfigDict) -> int:
    return max(1, -(-int(c.num_tokens) // int(c.batch_size)))
