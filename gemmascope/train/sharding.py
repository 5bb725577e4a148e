"""Mesh and partition rules for the stacked sweep step (``jax.jit`` with shardings, no ``pmap``).

The mesh has two axes, ``("data", "model")`` of shape ``(config.mesh.data, config.mesh.model)``:

* ``"model"``: tensor parallel over the latent dimension (docs/SPEC.md section 5: W_enc columns and
  W_dec rows), which needs almost no communication: the encoder is local per latent shard, the
  decoder's contraction over latents is one reduction of ``[batch, d_in]`` over "model".
* ``"data"``: batches ``[B, d_in]`` are split over it (gradients are summed across it by XLA).

The rule for a state leaf (params, optimiser state, ``last_fired``, ``bad_step``), written by
leaf name and shape so that every architecture's params follow it without a table:

* axis 1 of ``W_dec`` ``[K, d_sae, d_in]`` (its latent axis) goes over "model";
* the last axis of any other leaf of rank >= 2 whose last axis has size ``d_sae``
  (``W_enc [K, d_in, d_sae]``, ``b_enc``, ``threshold``/``log_threshold``, gated ``r_mag``,
  ``b_gate``, ``b_mag``, ``last_fired [K, d_sae]``) goes over "model";
* per-layer SAEs trained side by side (``W_dec [K, L, d_sae, d]``) likewise on axis 2;
* a cross-layer transcoder's ``W_dec [K, L, d_sae, L, d_out]``: its latent axis 2 goes over "model"
  (``W_enc [K, L, d_in, d_sae]``, ``b_enc``, ``threshold [K, L, d_sae]`` by the rule below);
* a transcoder's ``W_skip [K, d_in, d_out]`` (no latent axis) is replicated but for its K axis,
  whatever its sizes (its ``d_out`` may equal ``d_sae``);
* the optimiser's moments mirror params (same leaf names under ``nu``/``mu``), so they follow;
* the leading K axis (one SAE per sweep value) is replicated (``mesh.sweep = "replicated"``)
  or split over "data" (``"sharded"``); scalars (``step``, ``norm_scale``), a transcoder's
  ``norm_scale [2]`` (C_in, C_out) and the per-dimension ``dim_scale [d_in]`` are replicated.

With ``mesh.sweep = "sharded"`` each data group trains its own K / data SAEs on the whole batch:
the step is wrapped in a ``jax.shard_map`` that is manual over "data" only (the batch slice is
all-gathered inside; "model" stays automatic), so no device ever holds another group's SAEs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gemmascope.config import ConfigError
from gemmascope.sae import archs

AXES = ("data", "model")


def mesh_dims(config) -> tuple[int, int]:
    return int(config.mesh.data), int(config.mesh.model)


def make_mesh(config, devices: Sequence[Any] | None = None) -> Mesh:
    """The ``("data", "model")`` mesh over all devices (every process's, in process order).

    Devices are laid out row-major in ``jax.devices()`` order (process by process), so a data row
    never straddles two processes unless a process holds fewer devices than ``mesh.model``.
    Fails, naming the numbers, when ``data * model`` is not the number of devices.
    """
    data, model = mesh_dims(config)
    devices = list(jax.devices() if devices is None else devices)
    if data * model != len(devices):
        raise ConfigError(
            f"config.mesh: data * model = {data} * {model} = {data * model} devices, but "
            f"{len(devices)} {devices[0].platform} devices are available "
            f"(over {jax.process_count()} process(es)); set --config.mesh.data/--config.mesh.model "
            f"so that their product is {len(devices)}"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(data, model), AXES)


def process_rows(mesh: Mesh, batch: int) -> tuple[int, int]:
    """``(slot, n_slots)``: this process feeds rows ``[slot * B/n, (slot + 1) * B/n)`` of each batch.

    Batches are split over "data"; processes whose devices share data rows (a data row spread
    over several processes) share a slot. One process: ``(0, 1)``. Raises if this process's
    devices do not hold one contiguous block of rows.
    """
    sh = NamedSharding(mesh, P("data", None))
    blocks = sorted(
        {
            (s[0].start or 0, batch if s[0].stop is None else s[0].stop)
            for s in sh.addressable_devices_indices_map((batch, 1)).values()
        }
    )
    lo, hi = blocks[0][0], blocks[-1][1]
    if sum(e - s for s, e in blocks) != hi - lo or batch % (hi - lo):
        raise ConfigError(
            f"config.mesh: process {jax.process_index()} holds batch rows {blocks}, not one "
            f"contiguous block dividing batch_size {batch}; choose mesh.data/mesh.model so that each "
            f"process's devices form whole data rows"
        )
    return lo // (hi - lo), batch // (hi - lo)


def _leaf_name(path) -> str | None:
    for key in reversed(path):
        name = getattr(key, "key", None)
        if isinstance(name, str):
            return name
    return None


def leaf_spec(path, shape: Sequence[int], d_sae: int, k_axis: str | None) -> P:
    """The PartitionSpec of one stacked state leaf (see the module docstring)."""
    ndim = len(shape)
    name = _leaf_name(path)
    if ndim == 0 or name in ("norm_scale", "dim_scale"):
        return P(*([None] * ndim))
    axes: list[str | None] = [None] * ndim
    axes[0] = k_axis
    if name == "W_dec" and ndim == 3:
        axes[1] = "model"
    elif name == "W_dec" and ndim == 5:  # a cross-layer transcoder's [K, L, d_sae, L, d_out]
        axes[2] = "model"
    elif name == "W_dec" and ndim == 4:  # per-layer SAEs side by side: [K, L, d_sae, d]
        axes[2] = "model"
    elif name == "W_skip":
        pass
    elif ndim >= 2 and int(shape[-1]) == int(d_sae):
        axes[-1] = "model"
    return P(*axes)


def state_specs(state_shapes: Any, d_sae: int, sweep: str) -> Any:
    """PartitionSpecs for a state tree (arrays or ``ShapeDtypeStruct``s)."""
    k_axis = "data" if sweep == "sharded" else None
    return jax.tree_util.tree_map_with_path(lambda p, a: leaf_spec(p, a.shape, d_sae, k_axis), state_shapes)


def _named(mesh: Mesh, specs: Any) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def _data_only(specs: Any) -> Any:
    """The same specs with "model" dropped (shard_map in_specs name only its manual axes)."""
    return jax.tree.map(
        lambda s: P(*[a if a == "data" else None for a in s]), specs, is_leaf=lambda s: isinstance(s, P)
    )


class ShardedSweep:
    """The shardings of one location's state and the step compiled with them.

    ``state_shapes``: the state tree from ``jax.eval_shape(init_state ...)`` (no allocation).
    ``d_in``: the width of a batch row (``d_in + d_out`` for a transcoder's paired rows).
    """

    def __init__(self, config, mesh: Mesh, state_shapes: Any, d_in: int, d_sae: int):
        self.config, self.mesh, self.d_in, self.d_sae = config, mesh, int(d_in), int(d_sae)
        self.sweep = str(config.mesh.sweep)
        self.specs = state_specs(state_shapes, d_sae, self.sweep)
        self.state = _named(mesh, self.specs)
        self.batch = NamedSharding(mesh, P("data", None))
        self.values = NamedSharding(mesh, P("data") if self.sweep == "sharded" else P())
        self.replicated = NamedSharding(mesh, P())
        self.state_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state_shapes)

    def abstract_state(self) -> Any:
        """``ShapeDtypeStruct``s carrying the target shardings (restore target, AOT lowering)."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.state_shapes, self.state
        )

    @property
    def k(self) -> int:
        return int(self.state_shapes["bad_step"].shape[0])

    def abstract_args(self, with_shardings: bool = False) -> tuple[Any, Any, Any]:
        """``(state, x [B, d_in], values [K])`` as ``ShapeDtypeStruct``s (for ``.lower``)."""
        b = int(self.config.batch_size)
        if not with_shardings:
            return (
                self.state_shapes,
                jax.ShapeDtypeStruct((b, self.d_in), np.float32),
                jax.ShapeDtypeStruct((self.k,), np.float32),
            )
        return (
            self.abstract_state(),
            jax.ShapeDtypeStruct((b, self.d_in), np.float32, sharding=self.batch),
            jax.ShapeDtypeStruct((self.k,), np.float32, sharding=self.values),
        )

    def put_values(self, values: Sequence[float]) -> jax.Array:
        """The sweep values ``[K]`` as a global array (works with several processes)."""
        v = np.asarray(values, np.float32)
        return jax.make_array_from_callback(v.shape, self.values, lambda idx: v[idx])

    def put_batch(self, x_local: np.ndarray) -> jax.Array:
        """This process's rows of the global batch -> the global ``[B, d_in]`` array over "data"."""
        b = int(self.config.batch_size)
        return jax.make_array_from_process_local_data(self.batch, np.asarray(x_local), (b, self.d_in))

    def init(self, init_fn: Callable[..., Any], *args: Any) -> Any:
        """Runs ``init_fn(*args)`` (returns the state) straight into the sharded layout. Data (the
        normalisation sample of a data-dependent init) goes in ``args``, not in the closure: a
        closed-over array is a compile-time constant, and XLA constant-folds the work on it (an
        ``[8192, 576]`` Gram matrix took minutes to fold)."""
        return jax.jit(init_fn, out_shardings=self.state)(*args)

    def jit_step(self, train_step: Callable) -> Callable:
        """``jax.jit(train_step)`` with state/batch/values shardings and the state donated."""
        _, metric_shapes = jax.eval_shape(train_step, *self.abstract_args())
        fn = train_step
        # TopK's k are static per SAE index inside the step, so a group cannot run a slice of the
        # stack on its own; it keeps the plain partitioned jit (K over "data", XLA partitions it).
        if self.sweep == "sharded" and not archs.sweep_axis(self.config).static:
            fn = self._shard_over_sweep(train_step, jax.tree.map(lambda _: P("data"), metric_shapes))
        metric_sh = jax.tree.map(lambda _: self.values, metric_shapes)
        return jax.jit(
            fn,
            in_shardings=(self.state, self.batch, self.values),
            out_shardings=(self.state, metric_sh),
            donate_argnums=(0,),
        )

    def _shard_over_sweep(self, train_step: Callable, metric_specs: Any) -> Callable:
        """Manual over "data" only: each data group runs the step on its K / data SAEs."""
        specs = _data_only(self.specs)

        def body(state, x, values):
            x = jax.lax.all_gather(x, "data", tiled=True)  # every data group sees the whole batch
            return train_step(state, x, values)

        return jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(specs, P("data"), P("data")),
            out_specs=(specs, metric_specs),
            axis_names=frozenset({"data"}),
            check_vma=False,
        )
