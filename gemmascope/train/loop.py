"""The sweep trainer: ``train_and_evaluate(config, workdir)``.

For every location ``(site, layer, width)`` of the config, all lambdas train together (one
compiled step on the same batches, sharded over the
config's device mesh). Per-SAE metrics go to ``workdir/metrics.jsonl`` and TensorBoard
(``workdir/tensorboard``; :mod:`gemmascope.train.writers`),
a progress line shows tokens/s and ETA, orbax checkpoints hold the state and the data position,
and at the end every SAE is exported in the Gemma Scope layout under ``workdir/saes``. A transcoder
site (``config.sites`` entry ``"transcoder"``/``"transcoder_affine"``) trains the same way on
its paired source's rows ``concat(x_in, y)``, with one normalisation constant per part. Rerunning
the same command on the same workdir resumes: finished locations are skipped, an unfinished one
continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from gemmascope import config as config_lib
from gemmascope import lease as lease_lib
from gemmascope.common import write_bytes_atomic, write_json_atomic
from gemmascope.data.activations import LMActivations
from gemmascope.data.sources import make_source
from gemmascope.eval.exported import evaluate_exported
from gemmascope.progress import TrainingProgress as Progress
from gemmascope.sae import archs
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.files import export as sae_export
from gemmascope.sae.files import io as sae_io
from gemmascope.sites import layers_name, pair_of, span_of
from gemmascope.train import distributed, init_from, sharding, writers
from gemmascope.train import e2e as e2e_lib
from gemmascope.train import step as step_lib
from gemmascope.train.checkpoint import Checkpoints
from gemmascope.train.export_clt import export_clt_location


class NonFiniteError(FloatingPointError):
    """A NaN or inf loss; the message names the step and the SAE."""


def locations(config) -> list[tuple[str, int | tuple[int, ...], int]]:
    """``(site, layer, width)`` of every model the config trains: one per layer for a site of one
    layer; one over all of ``config.layers`` (``layer`` their tuple) for a cross-layer site
    (:data:`gemmascope.sites.SPAN_SITES`)."""
    out = []
    for s in config.sites:
        layers = [tuple(int(l) for l in config.layers)] if span_of(s) else [int(l) for l in config.layers]
        out += [(s, layer, int(w)) for layer in layers for w in config.widths]
    return out


def location_name(site: str, layer: int | tuple[int, ...], width: int, arch: str = "jumprelu") -> str:
    """``res_layer15_width4k`` (JumpReLU) or ``res_layer15_width4k_topk`` (other architectures);
    ``clt_layers0-17_width4k`` for a cross-layer site (:func:`gemmascope.sites.layers_name`)."""
    base = f"{site}_{layers_name(layer)}_width{sae_io.width_name(width)}"
    return base if arch == "jumprelu" else f"{base}_{arch}"


def _check_finite(state, step: int, lambdas, name: str) -> None:
    bad = np.asarray(_fetch(state["bad_step"]))
    if np.any(bad >= 0):
        k = int(np.argmax(bad >= 0))
        raise NonFiniteError(
            f"[{name}] loss became NaN or inf at step {int(bad[k])} for SAE {k} (lambda={lambdas[k]}); "
            f"stopped at step {step}. Check the activations (NaN/inf rows, huge norms) and the learning rate."
        )


@dataclasses.dataclass(kw_only=True)
class _Location:
    """What the three phases of one location share: names, the stream, the sweep and checkpoints."""

    config: Any
    workdir: str
    site: str
    layer: int
    width: int
    name: str
    source: Any
    sweep: Any
    ckpt: Checkpoints
    key: jax.Array
    d_in: int
    values: list  # the sweep values: sparsity coefficients, or k for TopK
    total: int
    log: Callable
    arch: Any = None  # the location's architecture (archs.for_site)
    d_out: int | None = None  # a transcoder's target width (its rows are d_in + d_out wide)
    n_layers: int = 1  # a cross-layer transcoder's layers (its rows are n_layers * (d_in + d_out) wide)


def train_location(
    config, workdir: str, site: str, *, layer: int, width: int, log=print, mesh=None
) -> list[dict[str, Any]]:
    """Trains all lambdas at one location; returns the export records (path, metrics) per SAE.

    Three phases: :func:`_init_or_restore` (fresh state with the normalisation constant, or the
    latest checkpoint and data position), :func:`_run` (the steps, metrics and checkpoints) and
    :func:`_export_and_mark` (files for every SAE and the ``exported.json`` marker).

    ``mesh``: the ``("data", "model")`` device mesh (default: from ``config.mesh``). With several
    processes every process runs this; process 0 alone writes metrics, progress and exports.
    """
    log = log if distributed.is_main() else (lambda *a, **k: None)
    name = location_name(site, layer, width, config_lib.variant_name(config))
    done_marker = os.path.join(workdir, "runs", name, "exported.json")
    if os.path.exists(done_marker):
        with open(done_marker) as fh:
            records = json.load(fh)
        log(f"[{name}] already trained and exported; skipping ({len(records)} SAEs)")
        return records

    mesh = sharding.make_mesh(config) if mesh is None else mesh
    slot, n_slots = sharding.process_rows(mesh, int(config.batch_size))
    source = make_source(config, workdir, site, layer=layer, slot=slot, n_slots=n_slots)
    d_in = int(source.d_in)
    d_out = getattr(source, "d_out", None)  # a paired (transcoder) source
    n_layers = int(getattr(source, "n_layers", 1))  # a cross-layer source's layers
    arch = archs.for_site(config, site, d_out, n_layers=n_layers)
    values = config_lib.sweep_values(config)
    key = jax.random.PRNGKey(config.seed)
    k = len(values)
    ones = 1.0 if d_out is None else (1.0,) * (2 * n_layers)
    row_width = n_layers * (d_in + (d_out or 0))
    ones_s = np.ones((row_width,), np.float32) if config_lib.scales_dims(config) else None
    shapes = jax.eval_shape(
        lambda: step_lib.init_state(
            key, config, d_in, d_sae=width, n_saes=k, norm_scale=ones, arch=arch, dim_scale=ones_s
        )
    )
    loc = _Location(
        config=config,
        workdir=workdir,
        site=site,
        layer=layer,
        width=width,
        name=name,
        source=source,
        sweep=sharding.ShardedSweep(config, mesh, shapes, row_width, width),
        ckpt=Checkpoints(os.path.join(workdir, "runs", name, "checkpoints"), max_to_keep=config.max_checkpoints),
        key=key,
        d_in=d_in,
        values=values,
        total=config_lib.total_steps(config),
        log=log,
        arch=arch,
        d_out=None if d_out is None else int(d_out),
        n_layers=n_layers,
    )
    start, state = _init_or_restore(loc, mesh)
    state = _run(loc, start, state)
    state = _calibrate(loc, state)
    return _export_and_mark(loc, state, done_marker)


def _calibrate(loc: _Location, state: Any) -> Any:
    """After the end-to-end stage of a target-L0 sweep (``e2e.calibrate_rows``,
    :func:`gemmascope.train.e2e.calibration_rows`): each SAE's thresholds times one factor so its
    mean L0 on the next ``calibrate_rows`` training rows is its target
    (:func:`gemmascope.train.e2e.calibrate_l0`). The rows come from the source after the last
    step's, restored with the final checkpoint, so a resumed run calibrates on the same rows."""
    config = loc.config
    n = e2e_lib.calibration_rows(config)
    if n <= 0:
        return state
    batches = [loc.sweep.put_batch(next(loc.source)) for _ in range(-(-n // int(config.batch_size)))]
    x = jnp.concatenate(batches)[:n]
    state, factors = e2e_lib.calibrate_l0(state, x, jnp.asarray(loc.values, jnp.float32), config)
    factors = np.asarray(jax.device_get(factors))
    loc.log(f"[{loc.name}] L0 calibration on {len(x)} training rows: thresholds x {np.round(factors, 4).tolist()}")
    return state


def _init_or_restore(loc: _Location, mesh) -> tuple[int, Any]:
    """``(start_step, state)``: the latest checkpoint (and its data position), else a fresh state
    whose normalisation constant ``C = sqrt(E||x||^2)`` comes from ``config.norm_sample_rows``."""
    config, k = loc.config, len(loc.values)
    restored = loc.ckpt.restore_latest(loc.sweep.abstract_state())
    if restored is not None:
        start, state, data_state = restored
        loc.source.set_state(_own_data_state(data_state))
        loc.log(f"[{loc.name}] resumed from step {start} (C={_norm_text(state['norm_scale'])})")
        return start, state
    sample = np.asarray(loc.source.sample(config.norm_sample_rows), np.float32)
    _require_finite(sample, f"[{loc.name}] normalisation sample")

    def scale_of(rows):  # one C for every process
        return distributed.broadcast_float(float(np.sqrt(np.mean(np.sum(rows.astype(np.float64) ** 2, axis=-1)))))

    dim_scale, rows = None, sample
    if config_lib.scales_dims(config):  # per-dimension scales (of a paired row's both parts), then C(s)
        s = step_lib.dim_scales(sample, float(config.dim_scale_power), float(config.dim_std_cap))
        dim_scale = distributed.broadcast_array(s)
        rows = sample / dim_scale
    if loc.d_out is None:
        norm_scale = scale_of(rows)
    else:  # a transcoder: (C_in, C_out), one per part of the paired rows; a CLT's per layer
        n, d_in, d_out = loc.n_layers, loc.d_in, loc.d_out
        ins = [scale_of(rows[:, l * d_in : (l + 1) * d_in]) for l in range(n)]
        outs = [scale_of(rows[:, n * d_in + m * d_out : n * d_in + (m + 1) * d_out]) for m in range(n)]
        norm_scale = tuple(ins + outs)
    if config.init_from:  # an exported SAE's weights, un-folded into this run's normalisation
        state = init_from.start_state(loc, norm_scale, dim_scale)
    else:
        sample_n = step_lib.init_sample(config, sample, norm_scale, loc.d_in, dim_scale)  # None without a data init
        state = loc.sweep.init(
            lambda s: step_lib.init_state(
                loc.key,
                config,
                loc.d_in,
                d_sae=loc.width,
                n_saes=k,
                norm_scale=norm_scale,
                init_sample=s,
                arch=loc.arch,
                dim_scale=dim_scale,
            ),
            sample_n,
        )
    shape = f"d_in={loc.d_in}" + ("" if loc.d_out is None else f" d_out={loc.d_out}")
    loc.log(
        f"[{loc.name}] {k} {loc.arch.NAME} {shape} d_sae={loc.width}, {loc.total} steps of {config.batch_size}; "
        f"normalisation C={_norm_text(norm_scale)} from {len(sample)} rows; mesh data={mesh.shape['data']} "
        f"model={mesh.shape['model']} sweep={config.mesh.sweep} over {jax.process_count()} process(es)"
    )
    return 0, state


def _run(loc: _Location, start: int, state: Any) -> Any:
    """Steps ``start + 1 .. total``: metrics every ``log_every`` steps (process 0 writes them),
    a NaN/inf check, checkpoints every ``checkpoint_every`` steps and a final one."""
    config, values, name = loc.config, loc.values, loc.name
    sweep_kind = loc.arch.sweep_axis(SAEConfig.from_config(config)).kind  # names values[i] in the rows
    main = distributed.is_main()
    dead_window_steps = max(1, math.ceil(config.dead_window_tokens / config.batch_size))
    train_step = loc.sweep.jit_step(step_lib.make_train_step(config, dead_window_steps, arch=loc.arch))
    lam_arr = loc.sweep.put_values(values)
    e2e_from = e2e_lib.start_step(config, loc.total)
    e2e_step = tokens = None
    progress = Progress(name, loc.total, start, batch_size=config.batch_size)
    step = start
    with writers.for_location(config, loc.workdir, name, enabled=main) as mwriter:
        for step in range(start + 1, loc.total + 1):
            x = loc.sweep.put_batch(next(loc.source))
            if step > e2e_from:  # the end-to-end stage: the SAEs spliced into the frozen LM
                if e2e_step is None:
                    e2e_step, tokens = _e2e_pieces(loc, dead_window_steps)
                    loc.log(f"[{name}] end-to-end stage: steps {e2e_from + 1}..{loc.total}")
                t, m = tokens.batch(step - e2e_from - 1)
                state, metrics = e2e_step(state, x, lam_arr, jnp.asarray(t), jnp.asarray(m))
            else:
                state, metrics = train_step(state, x, lam_arr)
            if step % config.log_every == 0 or step == loc.total:
                _check_finite(state, step, values, name)
                m = _fetch(metrics)
                rows = []
                for i in range(len(values)):
                    row = {
                        "location": name,
                        "arch": loc.arch.NAME,
                        "site": loc.site,
                        "layer": loc.layer,
                        "width": loc.width,
                        "sae": i,
                        "sweep_kind": sweep_kind,
                        "sweep_value": values[i],
                        "step": step,
                        "tokens": step * config.batch_size,
                    }
                    row.update({mk: float(mv[i]) for mk, mv in m.items()})
                    rows.append(row)
                mwriter.write(step, rows)
                if main:
                    progress.report(step, m["l0"], m["fvu"])
            if step % config.checkpoint_every == 0 and step != loc.total:
                loc.ckpt.save(step, state, _all_data_states(loc.source))
    _check_finite(state, step, values, name)
    if step > start:  # restored at the last step (killed between it and the export): nothing new
        loc.ckpt.save(loc.total, state, _all_data_states(loc.source), force=True)
    loc.ckpt.close()
    return state


def _e2e_pieces(loc: _Location, dead_window_steps: int):
    """``(step, token_batches)`` of the end-to-end stage: the LM (the online source's, or loaded
    once for a store) and the step with its KL term, jitted with the state donated."""
    config = loc.config
    lm = getattr(loc.source, "lm", None) or LMActivations(config, [(loc.layer, loc.site)], log=loc.log)
    kl_term = e2e_lib.KLTerm(config, lm.params, lm.lm_cfg, loc.layer, loc.arch)
    step = jax.jit(
        step_lib.make_train_step(config, dead_window_steps, arch=loc.arch, kl_term=kl_term), donate_argnums=(0,)
    )
    return step, e2e_lib.TokenBatches(lm, int(config.e2e.sequences))


def _export_and_mark(loc: _Location, state: Any, done_marker: str) -> list[dict[str, Any]]:
    """Exports every SAE (process 0 to ``workdir/saes``; other processes run the same collectives
    into a scratch folder), writes the ``exported.json`` marker, returns process 0's records."""

    def export_to(root: str) -> list[dict[str, Any]]:
        export = export_clt_location if span_of(loc.site) else export_location
        kw = {"layers": loc.layer} if span_of(loc.site) else {"layer": loc.layer}
        return export(
            loc.config,
            root,
            distributed.host_view(state),
            source=loc.source,
            site=loc.site,
            width=loc.width,
            lambdas=loc.values,
            total=loc.total,
            log=loc.log,
            arch=loc.arch,
            **kw,
            **({"export_one": export_location} if span_of(loc.site) else {}),
        )

    if distributed.is_main():
        records = export_to(loc.workdir)
        write_json_atomic(done_marker, records)  # a full disk leaves no truncated marker
    else:  # same collectives as process 0 (one SAE gathered at a time), files to a scratch dir
        with tempfile.TemporaryDirectory() as scratch:
            export_to(scratch)
        records = []
    return distributed.allgather_json(records)[0]  # every process returns process 0's records


def _fetch(tree):
    """Device arrays -> numpy on this host (a collective when several processes share them)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _norm_text(a) -> str:
    """The normalisation constant(s) for a log line: ``C`` or ``(C_in, C_out)``."""
    v = np.asarray(a.addressable_data(0) if isinstance(a, jax.Array) else a, np.float64).reshape(-1)
    return f"{v[0]:.6g}" if len(v) == 1 else "(" + ", ".join(f"{c:.6g}" for c in v) + ")"


def _all_data_states(source) -> dict[str, Any]:
    """The data position to checkpoint: this source's state, or every process's when several."""
    if jax.process_count() == 1:
        return source.get_state()
    return {"per_process": distributed.allgather_json(source.get_state())}


def _own_data_state(data_state: dict[str, Any]) -> dict[str, Any]:
    if "per_process" not in data_state:
        return data_state
    states = data_state["per_process"]
    if len(states) != jax.process_count():
        raise ValueError(
            f"checkpointed data state is for {len(states)} processes, this run has "
            f"{jax.process_count()}; resume with the same process count"
        )
    return states[jax.process_index()]


def _require_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        rows = np.where(~np.all(np.isfinite(x), axis=-1))[0]
        raise NonFiniteError(f"{what}: {len(rows)} rows hold NaN or inf (first row {int(rows[0])})")


def export_location(config, workdir, state, *, source, site, layer, width, lambdas, total, log=print, arch=None):
    """Writes ``saes/<site>/layer_<L>/width_<W>/average_l0_<N>/{params.npz,metadata.json}``."""
    heldout = np.asarray(source.heldout(config.eval_rows), np.float32)
    d_out = getattr(source, "d_out", None)
    d_in = int(source.d_in) if d_out is not None else None
    records, used = [], set()
    for i, lam in enumerate(lambdas):
        params = step_lib.export_params(state, i, config, arch)
        ev = evaluate_exported(params, heldout, d_in)
        folder = sae_io.sae_dir(
            os.path.join(workdir, "saes"), site, layer, width=width, l0=ev["l0"], arch=config_lib.variant_name(config)
        )
        if folder in used:  # two lambdas landed on the same rounded L0
            folder = f"{folder}_sae{i}"
        used.add(folder)
        meta = {
            "architecture": config.sae.arch,
            "d_in": int(params["W_enc"].shape[0]),
            "d_sae": int(width),
            "site": site,
            "layer": int(layer),
            "model": getattr(source, "model_name", "toy"),
            **step_lib.sweep_metadata(config, lam),
            **_norm_metadata(state["norm_scale"], site, d_out),
            **({"dim_scale_power": float(config.dim_scale_power)} if config.dim_scale_power else {}),
            **({"dim_std_cap": float(config.dim_std_cap)} if config.dim_std_cap else {}),
            **e2e_lib.describe(config),
            **({"init_from": init_from.path_for(config, width)} if config.init_from else {}),
            "tokens_trained": int(total * config.batch_size),
            "steps": int(total),
            "l0": ev["l0"],
            "fvu": ev["fvu"],
            "eval_rows": int(len(heldout)),
            "units": "raw activations (normalisation and pre-encoder bias folded)",
            "threshold_param": config.sae.threshold_param,
            "bandwidth": float(config.sae.bandwidth),
        }
        path = os.path.join(folder, "params.npz")
        sae_io.save_params(path, params, meta)
        sae_export.export_layouts(config.export.layouts, workdir, folder, heldout, log=log)  # other layouts
        log(
            f"[export] {config_lib.variant_name(config)} {config_lib.sweep_field(config)}={lam:g}: "
            f"L0={ev['l0']:.1f} FVU={ev['fvu']:.4f} -> {path}"
        )
        records.append({"path": path, **meta})
    return records


def _norm_metadata(norm_scale, site: str, d_out: int | None) -> dict[str, Any]:
    """``normalisation_constant`` of an SAE; a transcoder's two constants, its sites and shape."""
    c = np.asarray(norm_scale, np.float64).reshape(-1)
    if d_out is None:
        return {"normalisation_constant": float(c[0])}
    pair = pair_of(site)
    return {
        "architecture": "transcoder",
        "encoder": "jumprelu",
        "input_site": pair.input_site,
        "output_site": pair.output_site,
        "affine_skip": bool(pair.affine),
        "d_out": int(d_out),
        "normalisation_constant_in": float(c[0]),
        "normalisation_constant_out": float(c[1]),
    }


def train_and_evaluate(
    config, workdir: str, log=print, prepared: bool = False, force_unlock: bool = False
) -> list[dict[str, Any]]:
    """Validates the config (before any compute), starts the multi-process runtime when launched
    that way, checks the mesh against the devices, takes the workdir's "train" lease (process 0;
    :mod:`gemmascope.lease`: a second run on the same workdir would overwrite this one's
    checkpoints), trains every location, exports every SAE, and releases the lease, also on error.
    ``force_unlock`` removes a lease left by a run known to be dead."""
    config = config if prepared else config_lib.prepare(config)
    init_from.check(config, workdir, log=log)  # the files of config.init_from, before any compute
    distributed.maybe_initialize(config)
    mesh = sharding.make_mesh(config)  # data * model must equal the devices: fails before compute
    os.makedirs(workdir, exist_ok=True)
    held, refusal = None, None
    if distributed.is_main():
        try:
            held = lease_lib.acquire(workdir, "train", force=force_unlock, log=log)
        except lease_lib.LeaseHeldError as e:
            refusal = str(e)
    refusal = distributed.allgather_json(refusal)[0]  # every process stops, not only process 0
    if refusal is not None:
        raise lease_lib.LeaseHeldError(refusal)
    forget = distributed.on_lost_exit(held.release if held is not None else lambda: None)  # a lost peer's exit
    try:
        if distributed.is_main():
            write_bytes_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2).encode())
        records = []
        for site, layer, width in locations(config):
            records += train_location(config, workdir, site, layer=layer, width=width, log=log, mesh=mesh)
        distributed.stop_watchdog()  # finished: the other processes stop watching this one
        return records
    finally:
        forget()
        if held is not None:
            held.release()
