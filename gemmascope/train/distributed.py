"""Multi-host start (opt-in) and the few cross-process helpers the loop needs.

A run is multi-process only when launched that way: :func:`maybe_initialize` calls
``jax.distributed.initialize`` when ``config.distributed`` or the environment names more than
one process, and does nothing otherwise (MaxText's ``maybe_initialize_jax_distributed_system``).

Where the arguments come from, first match wins:

* ``config.distributed.coordinator_address`` / ``num_processes`` / ``process_id``;
* the environment: ``JAX_COORDINATOR_ADDRESS`` (or ``COORDINATOR_ADDRESS``), ``JAX_NUM_PROCESSES``
  (or ``NUM_PROCESSES``), ``JAX_PROCESS_ID`` (or ``PROCESS_ID``);
* ``coordinator_address = "auto"``: ``jax.distributed.initialize()`` with no arguments, which
  detects TPU pods, SLURM and Open MPI by itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from gemmascope.config import ConfigError

_ENV = {
    "coordinator_address": ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS"),
    "num_processes": ("JAX_NUM_PROCESSES", "NUM_PROCESSES"),
    "process_id": ("JAX_PROCESS_ID", "PROCESS_ID"),
}


def _env(name: str) -> str | None:
    for var in _ENV[name]:
        if os.environ.get(var, "") != "":
            return os.environ[var]
    return None


def resolve_args(config) -> dict[str, Any] | None:
    """``jax.distributed.initialize`` kwargs, ``{}`` for auto-detection, or None (single process)."""
    d = config.distributed
    addr = str(d.coordinator_address) or _env("coordinator_address") or ""
    n = int(d.num_processes) if int(d.num_processes) > 0 else int(_env("num_processes") or 0)
    pid = int(d.process_id) if int(d.process_id) >= 0 else int(_env("process_id") or -1)
    if addr == "auto":
        return {}
    if not addr and n <= 1:
        return None
    if not addr:
        raise ConfigError(
            f"config.distributed.coordinator_address: num_processes={n} but no coordinator address "
            f"(set it, or JAX_COORDINATOR_ADDRESS, e.g. 10.0.0.1:8476)"
        )
    if n <= 0 or not (0 <= pid < n):
        raise ConfigError(
            f"config.distributed: coordinator {addr!r} needs num_processes > 0 and 0 <= process_id < "
            f"num_processes, got num_processes={n}, process_id={pid} "
            f"(or set JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
        )
    if n == 1:
        return None
    return {"coordinator_address": addr, "num_processes": n, "process_id": pid}


def maybe_initialize(config) -> bool:
    """Starts the multi-process runtime when launched as several processes; True if it did."""
    args = resolve_args(config)
    if args is None:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(**args)
    return True


def is_main() -> bool:
    """Process 0 writes metrics, progress lines and exports."""
    return jax.process_index() == 0


def allgather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (one list on every process)."""
    if jax.process_count() == 1:
        return [obj]

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = int(np.max(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))))
    buf = np.zeros((n,), np.uint8)
    buf[: raw.size] = raw
    every = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), n)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in every]


def broadcast_float(value: float) -> float:
    """Process 0's ``value`` on every process (e.g. the normalisation constant)."""
    if jax.process_count() == 1:
        return float(value)

    return float(multihost_utils.broadcast_one_to_all(np.asarray(value, np.float64)))


def broadcast_array(value: np.ndarray) -> np.ndarray:
    """Process 0's float32 array on every process (e.g. the per-dimension input scales)."""
    if jax.process_count() == 1:
        return np.asarray(value, np.float32)

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value, np.float32)), np.float32)


class GatherOnIndex:
    """A stacked ``[K, ...]`` global array that gathers one SAE to the host when indexed.

    ``a[i]`` is a collective (every process must index the same i in the same order), and no
    host ever holds more than one SAE of the stack: a 1m-wide 9B SAE is 30 GB, the stack 6x that.
    """

    def __init__(self, array: jax.Array):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, index):

        part = jax.jit(lambda a: a[index])(self.array)  # still sharded; only SAE ``index``
        return np.asarray(multihost_utils.process_allgather(part, tiled=True))

    def __array__(self, dtype=None, copy=None):
        raise TypeError("GatherOnIndex: index one SAE (a[i]) instead of converting the whole stack")


def host_view(state: dict[str, Any]) -> dict[str, Any]:
    """A view of a (possibly multi-process) state for export: params gather per SAE on ``[i]``,
    scalars come back as numpy. Single process: the state itself (device_get works there)."""
    if jax.process_count() == 1:
        return state
    out = dict(state)
    out["params"] = {k: GatherOnIndex(v) for k, v in state["params"].items()}
    out["norm_scale"] = np.asarray(_replicated_value(state["norm_scale"]))
    if "dim_scale" in state:
        out["dim_scale"] = np.asarray(_replicated_value(state["dim_scale"]))
    return out


def _replicated_value(a: jax.Array) -> np.ndarray:
    return np.asarray(a.addressable_data(0))
