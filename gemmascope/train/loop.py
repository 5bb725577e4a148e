"""The sweep trainer: ``train_and_evaluate(config, workdir)``.

For every location ``(site, layer, width)`` of the config, all lambdas train together (one
compiled step on the same batches, sharded over the
config's device mesh). Per-SAE metrics go to ``workdir/metrics.jsonl``,
a progress line shows tokens/s and ETA, orbax checkpoints hold the state and the data position,
and at the end every SAE is exported in the Gemma Scope layout under ``workdir/saes``. Rerunning
the same command on the same workdir resumes: finished locations are skipped, an unfinished one
continues from its last checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope import config as config_lib
from gemmascope.sae import io as sae_io
from gemmascope.train import step as step_lib
from gemmascope.train.checkpoint import Checkpoints


class NonFiniteError(FloatingPointError):
    """A NaN or inf loss; the message names the step and the SAE."""


def locations(config) -> list[tuple[str, int, int]]:
    return [(s, int(l), int(w)) for s in config.sites for l in config.layers for w in config.widths]


def location_name(site: str, layer: int, width: int, arch: str = "jumprelu") -> str:
    """``res_layer15_width4k`` (JumpReLU) or ``res_layer15_width4k_topk`` (other architectures)."""
    base = f"{site}_layer{layer}_width{sae_io.width_name(width)}"
    return base if arch == "jumprelu" else f"{base}_{arch}"


def make_source(config, workdir: str, site: str, layer: int, slot: int = 0, n_slots: int = 1):
    """The activation stream for one location (``get_state``/``set_state``/``__next__``,
    ``sample(n)``, ``heldout(n)``, ``d_in``).

    With several processes (``n_slots > 1``) each yields only its rows of every global batch:
    rows ``[slot * B / n_slots, (slot + 1) * B / n_slots)``. The store reads a disjoint slice of
    its chunks per slot; the toy and online sources compute the global batch and keep their rows
    (the toy batch is a pure function of its index, so the union equals the one-process batch).
    """
    if config.source == "toy":
        from gemmascope.data.toy import ToySource

        src = ToySource(config.toy.d_in, config.toy.n_features, config.toy.mean_active, config.batch_size,
                        seed=config.seed, noise_std=config.toy.noise_std)
        if jax.process_index() == 0:
            src.save_ground_truth(workdir)
        return _RowSlice(src, slot, n_slots) if n_slots > 1 else src
    if config.source == "online":
        from gemmascope.data.activations import LMActivations, OnlineSource, location_key

        lm = LMActivations(config, [(layer, site)])
        src = OnlineSource(lm, location_key(site, layer), config.batch_size, config.seed)
        return _RowSlice(src, slot, n_slots) if n_slots > 1 else src
    if config.source == "store":
        from gemmascope.data.activations import location_key
        from gemmascope.data.store_source import StoreSource

        return StoreSource(config, workdir, location_key(site, layer), process_index=slot, process_count=n_slots)
    raise config_lib.ConfigError(f"config.source: unknown source {config.source!r}")


class _RowSlice:
    """This process's rows of every batch of a source that yields whole global batches."""

    def __init__(self, source, slot: int, n_slots: int):
        self.source, self.slot, self.n_slots = source, int(slot), int(n_slots)

    def __getattr__(self, name):  # d_in, model_name, get_state, set_state, sample, heldout
        return getattr(self.source, name)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        x = next(self.source)
        n = x.shape[0] // self.n_slots
        return x[self.slot * n:(self.slot + 1) * n]


class Progress:
    """One line per report: step, tokens/s, ETA, and the L0 of each SAE."""

    def __init__(self, name: str, total_steps: int, start_step: int, batch_size: int, stream=None):
        self.name, self.total, self.batch = name, total_steps, batch_size
        self.start_step, self.t0 = start_step, time.time()
        self.stream = stream or sys.stdout

    def report(self, step: int, l0: np.ndarray, fvu: np.ndarray) -> str:
        done = max(step - self.start_step, 1)
        dt = max(time.time() - self.t0, 1e-9)
        tok_s = done * self.batch / dt
        eta = (self.total - step) * dt / done
        l0s = " ".join(f"{v:.1f}" for v in l0)
        fv = " ".join(f"{v:.3f}" for v in fvu)
        line = (f"[{self.name}] step {step}/{self.total} ({100 * step / self.total:.0f}%) "
                f"{tok_s:,.0f} tok/s ETA {_fmt_time(eta)} | L0 {l0s} | FVU {fv}")
        print(line, file=self.stream, flush=True)
        return line


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"


def _check_finite(state, step: int, lambdas, name: str) -> None:
    bad = np.asarray(_fetch(state["bad_step"]))
    if np.any(bad >= 0):
        k = int(np.argmax(bad >= 0))
        raise NonFiniteError(
            f"[{name}] loss became NaN or inf at step {int(bad[k])} for SAE {k} (lambda={lambdas[k]}); "
            f"stopped at step {step}. Check the activations (NaN/inf rows, huge norms) and the learning rate."
        )


def evaluate_exported(params: dict[str, np.ndarray], x: np.ndarray) -> dict[str, float]:
    """L0 and FVU of a raw-unit SAE on raw held-out rows ``[n, d_in]`` (dataset-mean FVU)."""
    from gemmascope.sae import model as sae_model

    x = jnp.asarray(x, jnp.float32)
    f = sae_model.encode(params, x)
    x_hat = sae_model.decode(params, f)
    l0 = float(jnp.mean(jnp.sum(f != 0, axis=-1)))
    fvu = float(jnp.sum((x - x_hat) ** 2) / jnp.sum((x - x.mean(0)) ** 2))
    return {"l0": l0, "fvu": fvu}


def train_location(config, workdir: str, site: str, layer: int, width: int, log=print,
                   mesh=None) -> list[dict[str, Any]]:
    """Trains all lambdas at one location; returns the export records (path, metrics) per SAE.

    ``mesh``: the ``("data", "model")`` device mesh (default: from ``config.mesh``). With several
    processes every process runs this; process 0 alone writes metrics, progress and exports.
    """
    from gemmascope.train import distributed, sharding

    main = distributed.is_main()
    log = log if main else (lambda *a, **k: None)
    name = location_name(site, layer, width, config_lib.variant_name(config))
    run_dir = os.path.join(workdir, "runs", name)
    done_marker = os.path.join(run_dir, "exported.json")
    if os.path.exists(done_marker):
        with open(done_marker) as fh:
            records = json.load(fh)
        log(f"[{name}] already trained and exported; skipping ({len(records)} SAEs)")
        return records

    mesh = sharding.make_mesh(config) if mesh is None else mesh
    slot, n_slots = sharding.process_rows(mesh, int(config.batch_size))
    source = make_source(config, workdir, site, layer, slot, n_slots)
    d_in = int(source.d_in)
    lambdas = config_lib.sweep_values(config)  # sparsity coefficients, or k for TopK
    k = len(lambdas)
    total = config_lib.total_steps(config)
    dead_window_steps = max(1, math.ceil(config.dead_window_tokens / config.batch_size))
    ckpt = Checkpoints(os.path.join(run_dir, "checkpoints"), max_to_keep=config.max_checkpoints)

    key = jax.random.PRNGKey(config.seed)
    shapes = jax.eval_shape(lambda: step_lib.init_state(key, config, d_in, width, k, 1.0))
    sweep = sharding.ShardedSweep(config, mesh, shapes, d_in, width)
    restored = ckpt.restore_latest(sweep.abstract_state())
    if restored is None:
        sample = np.asarray(source.sample(config.norm_sample_rows), np.float32)
        _require_finite(sample, f"[{name}] normalisation sample")
        norm_scale = float(np.sqrt(np.mean(np.sum(sample.astype(np.float64) ** 2, axis=-1))))
        norm_scale = distributed.broadcast_float(norm_scale)  # one C for every process
        sample_n = step_lib.init_sample(config, sample, norm_scale)  # None unless quantile threshold init
        state = sweep.init(lambda: step_lib.init_state(key, config, d_in, width, k, norm_scale, sample_n))
        start = 0
        log(f"[{name}] {k} SAEs d_in={d_in} d_sae={width}, {total} steps of {config.batch_size}; "
            f"normalisation C={norm_scale:.6g} from {len(sample)} rows; mesh data={mesh.shape['data']} "
            f"model={mesh.shape['model']} sweep={config.mesh.sweep} over {jax.process_count()} process(es)")
    else:
        start, state, data_state = restored
        source.set_state(_own_data_state(data_state))
        log(f"[{name}] resumed from step {start} (C={_scalar(state['norm_scale']):.6g})")

    train_step = sweep.jit_step(step_lib.make_train_step(config, dead_window_steps))
    lam_arr = sweep.put_values(lambdas)
    progress = Progress(name, total, start, config.batch_size)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    step = start
    with open(metrics_path, "a") if main else _NullFile() as mfile:
        for step in range(start + 1, total + 1):
            x = sweep.put_batch(next(source))
            state, metrics = train_step(state, x, lam_arr)
            if step % config.log_every == 0 or step == total:
                _check_finite(state, step, lambdas, name)
                m = _fetch(metrics)
                for i in range(k):
                    row = {"location": name, "arch": config.sae.arch, "site": site, "layer": layer, "width": width, "sae": i,
                           "lambda": lambdas[i], "step": step, "tokens": step * config.batch_size}
                    row.update({mk: float(mv[i]) for mk, mv in m.items()})
                    mfile.write(json.dumps(row) + "\n")
                mfile.flush()
                if main:
                    progress.report(step, m["l0"], m["fvu"])
            if step % config.checkpoint_every == 0 and step != total:
                ckpt.save(step, state, _all_data_states(source))
    _check_finite(state, step, lambdas, name)
    ckpt.save(total, state, _all_data_states(source), force=True)
    ckpt.close()
    if main:
        records = export_location(config, workdir, distributed.host_view(state), source, site, layer, width,
                                  lambdas, total, log)
    else:  # same collectives as process 0 (one SAE gathered at a time), files to a scratch dir
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            export_location(config, scratch, distributed.host_view(state), source, site, layer, width, lambdas,
                            total, log)
        records = []
    if main:
        os.makedirs(run_dir, exist_ok=True)
        with open(done_marker, "w") as fh:
            json.dump(records, fh, indent=2)
    records = distributed.allgather_json(records)[0]  # every process returns process 0's records
    return records


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _):
        pass

    def flush(self):
        pass


def _fetch(tree):
    """Device arrays -> numpy on this host (a collective when several processes share them)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _scalar(a) -> float:
    return float(np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a)


def _all_data_states(source) -> dict[str, Any]:
    """The data position to checkpoint: this source's state, or every process's when several."""
    from gemmascope.train import distributed

    if jax.process_count() == 1:
        return source.get_state()
    return {"per_process": distributed.allgather_json(source.get_state())}


def _own_data_state(data_state: dict[str, Any]) -> dict[str, Any]:
    if "per_process" not in data_state:
        return data_state
    states = data_state["per_process"]
    if len(states) != jax.process_count():
        raise ValueError(f"checkpointed data state is for {len(states)} processes, this run has "
                         f"{jax.process_count()}; resume with the same process count")
    return states[jax.process_index()]


def _require_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        rows = np.where(~np.all(np.isfinite(x), axis=-1))[0]
        raise NonFiniteError(f"{what}: {len(rows)} rows hold NaN or inf (first row {int(rows[0])})")


def export_location(config, workdir, state, source, site, layer, width, lambdas, total, log=print):
    """Writes ``saes/<site>/layer_<L>/width_<W>/average_l0_<N>/{params.npz,metadata.json}``."""
    heldout = np.asarray(source.heldout(config.eval_rows), np.float32)
    records, used = [], set()
    for i, lam in enumerate(lambdas):
        params = step_lib.export_params(state, i, config)
        ev = evaluate_exported(params, heldout)
        folder = sae_io.sae_dir(os.path.join(workdir, "saes"), site, layer, width, ev["l0"],
                                config_lib.variant_name(config))
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
            "normalisation_constant": float(state["norm_scale"]),
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
        log(f"[export] {config_lib.variant_name(config)} {config_lib.sweep_field(config)}={lam:g}: "
            f"L0={ev['l0']:.1f} FVU={ev['fvu']:.4f} -> {path}")
        records.append({"path": path, **meta})
    return records


def train_and_evaluate(config, workdir: str, log=print) -> list[dict[str, Any]]:
    """Validates the config (before any compute), starts the multi-process runtime when launched
    that way, checks the mesh against the devices, trains every location, exports every SAE."""
    from gemmascope.train import distributed, sharding

    config = config_lib.validate(config_lib.resolve(config))
    distributed.maybe_initialize(config)
    mesh = sharding.make_mesh(config)  # data * model must equal the devices: fails before compute
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main():
        with open(os.path.join(workdir, "config.json"), "w") as fh:
            fh.write(config.to_json_best_effort(indent=2))
    records = []
    for site, layer, width in locations(config):
        records += train_location(config, workdir, site, layer, width, log=log, mesh=mesh)
    return records


def iter_metrics(workdir: str) -> Iterator[dict[str, Any]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        for line in fh:
            yield json.loads(line)
