"""Dry run: compile a config's real-size sharded step ahead of time, allocating nothing.

``python launch/train.py --config=configs/sweep_9b.py:width=1m --dry_run`` starts JAX with
``mesh.data * mesh.model`` fake CPU devices (``XLA_FLAGS``, set before JAX starts),
builds the state as ``jax.ShapeDtypeStruct``s (``jax.eval_shape``) with the target shardings,
lowers and compiles the jitted step for each distinct (site, width) of the config, and reports per
device: the state's bytes (from the shardings), XLA's ``memory_analysis()`` (arguments, outputs,
temporaries; the state is donated so outputs alias it) and FLOPs (``cost_analysis()`` beside the
``10 * B * d_in * d_sae * K`` estimate). No LM is needed: ``d_in`` comes from the model's known
dimensions (``gemmascope.lm.config`` presets, matched by the hub id in ``config.lm.checkpoint``).

The compiled program is XLA:CPU's, so temporaries are CPU's fusion choices; a TPU/GPU compile
differs in detail but the state (most of the memory at large widths) is the same.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import numpy as np

from gemmascope import config as config_lib
from gemmascope.lm import config as lm_config
from gemmascope.sae import archs
from gemmascope.sites import pair_of, span_of
from gemmascope.train import sharding
from gemmascope.train import step as step_lib

GB = 1e9


def site_d_in(config, site: str) -> int:
    """``d_in`` of a site without loading the LM: the toy source's, or the known model's."""
    if config.source == "toy":
        return int(config.toy.d_in)

    name = os.path.basename(str(config.lm.checkpoint).rstrip("/")).lower()
    for suffix in ("-it", "-pt"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    for preset in lm_config.PRESETS.values():
        cfg = preset()
        if cfg.name == name:
            return int(lm_config.site_dim(cfg, site))
    raise config_lib.ConfigError(
        f"config.lm.checkpoint: the dry run needs a model of known size (one of "
        f"{[p().name for p in lm_config.PRESETS.values()]}), got {config.lm.checkpoint!r}"
    )


def _shard_bytes(abstract_state: Any) -> int:
    """Bytes of the state one device holds under its shardings."""
    total = 0
    for leaf in jax.tree.leaves(abstract_state):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _cost_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend reports costs
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def dry_run(config, device_memory_gb: float = 95.0, log=print, prepared: bool = False) -> list[dict[str, Any]]:
    """Compiles the step of every distinct (d_in, width) of ``config``; returns one report each."""
    config = config if prepared else config_lib.prepare(config)
    mesh = sharding.make_mesh(config)
    k = len(config_lib.sweep_values(config))
    b = int(config.batch_size)
    dead_window_steps = max(1, math.ceil(config.dead_window_tokens / b))
    dev = jax.devices()[0]
    log(
        f"dry run: mesh data={mesh.shape['data']} x model={mesh.shape['model']} ({mesh.size} fake "
        f"{dev.platform} devices), sweep={config.mesh.sweep}, K={k}, batch {b} "
        f"({b // mesh.shape['data']} rows per data shard), arch {config.sae.arch}; "
        f"budget {device_memory_gb:g} GB/device"
    )
    reports = []
    # Sites of equal shape share one compile; a transcoder's shape is (d_in, d_out, affine); a
    # cross-layer site's also its layers (one model over all of config.layers).
    shapes_of: dict[tuple[int, int, int, int, int], list[str]] = {}
    for s in config.sites:
        pair = pair_of(s) or span_of(s)
        n_layers = len(config.layers) if span_of(s) else 1
        d_in = site_d_in(config, pair.input_site if pair else s)
        d_out = site_d_in(config, pair.output_site) if pair else 0
        for w in config.widths:
            shapes_of.setdefault((d_in, int(w), d_out, int(bool(pair and pair.affine)), n_layers), []).append(s)
    for (d_in, width, d_out, _, n_layers), sites in sorted(shapes_of.items()):
        site = "/".join(sites)
        key = jax.random.PRNGKey(0)
        arch = archs.for_site(config, sites[0], d_out or None, n_layers=n_layers)
        ones = (1.0,) * (2 * n_layers) if d_out else 1.0
        shapes = jax.eval_shape(
            lambda: step_lib.init_state(key, config, d_in, d_sae=width, n_saes=k, norm_scale=ones, arch=arch)
        )
        sweep = sharding.ShardedSweep(config, mesh, shapes, n_layers * (d_in + d_out), width)
        t0 = time.time()
        fn = sweep.jit_step(step_lib.make_train_step(config, dead_window_steps, arch=arch))
        compiled = fn.lower(*sweep.abstract_args(with_shardings=True)).compile()
        seconds = time.time() - t0
        mem = compiled.memory_analysis()
        arg, out, alias, temp = (
            int(getattr(mem, f"{n}_size_in_bytes", 0) or 0) for n in ("argument", "output", "alias", "temp")
        )
        peak = arg + out - alias + temp
        state_bytes = _shard_bytes(sweep.abstract_state())
        if span_of(sites[0]) is None:
            flops = 10.0 * b * d_in * width * k
        else:  # forward 2 and backward 4 FLOPs per weight of the encoders and (whole, masked) decoders
            weights = sum(int(np.prod(shapes["params"][n].shape)) for n in ("W_enc", "W_dec"))
            flops = 6.0 * b * weights
        cost = _cost_flops(compiled)
        r = {
            "site": site,
            "width": width,
            "layers": n_layers,
            "d_in": d_in,
            "k": k,
            "batch": b,
            "mesh": dict(mesh.shape),
            "sweep": str(config.mesh.sweep),
            "devices": int(mesh.size),
            "state_gb": state_bytes / GB,
            "argument_gb": arg / GB,
            "output_gb": out / GB,
            "alias_gb": alias / GB,
            "temp_gb": temp / GB,
            "peak_gb": peak / GB,
            "fits": peak <= device_memory_gb * GB,
            "budget_gb": device_memory_gb,
            "flops_step": flops,
            "flops_per_device": flops / mesh.size,
            "cost_analysis_flops": cost,
            "compile_s": seconds,
        }
        reports.append(r)
        layers_text = f", {n_layers} layers" if n_layers > 1 else ""
        formula = "10*B*d_in*d_sae*K" if n_layers == 1 else "6*B*weights"
        log(
            f"  {site} width {width} (d_in {d_in}{layers_text}): per device state {r['state_gb']:.2f} GB, XLA "
            f"arguments {r['argument_gb']:.2f} + outputs {r['output_gb']:.2f} - aliased {r['alias_gb']:.2f} + "
            f"temporaries {r['temp_gb']:.2f} = peak {r['peak_gb']:.2f} GB -> {'fits' if r['fits'] else 'DOES NOT FIT'} "
            f"{device_memory_gb:g} GB; step {flops / 1e12:.2f} TFLOP ({formula}), "
            f"{flops / mesh.size / 1e12:.3f} per device, cost_analysis "
            f"{'n/a' if cost is None else f'{cost / 1e12:.3f}'} TFLOP/device; compiled in {seconds:.1f} s"
        )
    return reports
