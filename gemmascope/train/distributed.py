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

A lost process (killed, crashed, its host gone or hung): :class:`Watchdog`. Why our own: JAX's
coordination service (jax 0.10) does notice, after ``heartbeat_timeout_seconds`` (100 s by
default), but it then aborts every survivor from a C++ thread (SIGABRT, a core and a thread dump;
the message names the lost task only sometimes), a survivor blocked in a gloo collective on a hung
peer waits until then, and the Python callback its client accepts for this crashes (``bad_cast``).
So every process writes a heartbeat counter to the coordination service's key-value store and
reads everyone's; a process whose counter stops for ``config.distributed.peer_timeout_s`` seconds
(default 60) is lost, as is the coordinator (process 0, which holds the store) when the store
stops answering for as long. Every survivor then prints which process was lost, releases what
:func:`on_lost_exit` registered (the workdir's lease) and exits with status :data:`LOST_EXIT`
within ``peer_timeout_s + 2 * beat`` seconds of the death (``beat = min(1, peer_timeout_s / 10)``
s). JAX's own heartbeat timeout is set to ``max(100, 2 * peer_timeout_s)``, a backstop behind
ours. One case is JAX's alone: a coordinator killed outright closes its sockets, and JAX aborts
the survivors within a second ("the leader task was preempted/died"; the leader is process 0)
before any watchdog can speak. Either way, rerunning all processes resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # the coordination service's client (orbax uses it too)
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
    timeout = float(config.distributed.peer_timeout_s)
    jax.distributed.initialize(**args, heartbeat_timeout_seconds=max(100, int(2 * timeout)))
    if timeout > 0:
        start_watchdog(timeout)
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


#: The exit status of a process stopped because another was lost (EX_TEMPFAIL: rerun all of them).
LOST_EXIT = 75
_PREFIX = "gemmascope/alive/"
_DONE = "done"


class Watchdog:
    """Heartbeats through the coordination service's key-value store, and the verdict on them.

    Two daemon threads: the *beat* thread writes ``gemmascope/alive/<process>`` (a counter) every
    ``beat_s`` seconds and reads every process's key in one call; the *judge* thread only compares
    times, so it still judges while the beat thread hangs in a call to a coordinator that stopped
    answering. Times are this host's monotonic clock (hosts' clocks never meet), and a peer's
    silence counts only up to this process's last answered read: a process that was itself stalled
    blames nobody for it. ``stop`` writes ``done``: a process that finished is never lost.
    """

    def __init__(
        self,
        client,
        process_id: int,
        num_processes: int,
        timeout_s: float,
        *,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client, self.me, self.n = client, int(process_id), int(num_processes)
        self.timeout_s = float(timeout_s)
        self.beat_s = min(1.0, self.timeout_s / 10)
        self.on_lost, self.clock = on_lost, clock
        now = clock()
        self.last_round = now  # when the store last answered a full beat (write and read)
        self.changed = {p: now for p in range(self.n) if p != self.me}  # when each peer's value moved
        self.values: dict[int, str] = {}
        self.last_error: BaseException | None = None
        self.count = 0
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> Watchdog:
        for name, fn in (("beat", self._beat_loop), ("judge", self._judge_loop)):
            t = threading.Thread(target=fn, name=f"gemmascope-watchdog-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """This process finished: peers stop watching it, and it stops watching them."""
        with self._lock:
            self._stopped.set()
        try:
            self.client.key_value_set(_PREFIX + str(self.me), _DONE, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator may be gone already; nothing to tell then
            pass

    def beat(self) -> None:
        """One heartbeat: write ours, read everyone's, note whose value moved."""
        self.count += 1
        self.client.key_value_set(_PREFIX + str(self.me), str(self.count), allow_overwrite=True)
        entries = self.client.key_value_dir_get(_PREFIX)
        now = self.clock()
        for key, value in entries:
            p = int(key.rsplit("/", 1)[-1])
            if p in self.changed and self.values.get(p) != value:
                self.values[p], self.changed[p] = value, now
        self.last_round = now

    def verdict(self) -> str | None:
        """What was lost, in words, or None while everyone answers."""
        now = self.clock()
        if now - self.last_round > self.timeout_s:
            err = f"; last error: {str(self.last_error).splitlines()[0]}" if self.last_error else ""
            return (
                f"lost process 0 (the coordinator): its coordination service has not answered for "
                f"{now - self.last_round:.1f} s (distributed.peer_timeout_s={self.timeout_s:g}){err}"
            )
        for p, t in sorted(self.changed.items()):
            if self.values.get(p) != _DONE and self.last_round - t > self.timeout_s:
                seen = f"last beat {self.values[p]}" if p in self.values else "no heartbeat ever"
                return (
                    f"lost process {p} of {self.n}: its heartbeat stopped {self.last_round - t:.1f} s ago "
                    f"({seen}; distributed.peer_timeout_s={self.timeout_s:g})"
                )
        return None

    def _beat_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self.beat()
                self._judge()  # at once: a silence that just passed the timeout costs no extra beat
            except Exception as e:  # noqa: BLE001 - judged by the silence, not by one failed call
                self.last_error = e
            self._stopped.wait(self.beat_s)

    def _judge_loop(self) -> None:
        while not self._stopped.wait(self.beat_s):
            self._judge()

    def _judge(self) -> None:
        message = self.verdict()
        with self._lock:
            if message is None or self._stopped.is_set():
                return
            self._stopped.set()  # one verdict, from one thread
        self.on_lost(message)


_watchdog: Watchdog | None = None
_cleanups: list[Callable[[], Any]] = []


def start_watchdog(timeout_s: float) -> Watchdog:
    """Starts this process's :class:`Watchdog` (once); a lost process ends this one (:func:`_stop_lost`)."""
    global _watchdog
    if _watchdog is None:
        state = jax_distributed.global_state
        _watchdog = Watchdog(state.client, state.process_id, state.num_processes, timeout_s, on_lost=_stop_lost).start()
    return _watchdog


def stop_watchdog() -> None:
    """Tells the peers this process finished (``done``) and stops watching them."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None


def on_lost_exit(fn: Callable[[], Any]) -> Callable[[], None]:
    """Registers ``fn`` (e.g. a lease's release) to run before a lost-process exit; returns a
    function that unregisters it."""
    _cleanups.append(fn)
    return lambda: _cleanups.remove(fn) if fn in _cleanups else None


def _stop_lost(message: str) -> None:
    """Says what was lost and how to go on, runs the registered clean-ups, and exits at once.

    ``os._exit``, not an exception: the main thread may be blocked inside a collective (in C++,
    where no exception reaches it), and a normal exit would wait at JAX's shutdown barrier for the
    lost process. Orbax writes a checkpoint to a temporary folder and renames it when complete,
    so one in flight is simply not there for the rerun."""
    me, n = jax_distributed.global_state.process_id, jax_distributed.global_state.num_processes
    print(
        f"[distributed] {message}. This process ({me} of {n}) stops (exit status {LOST_EXIT}). Rerun all "
        f"{n} processes with the same command: the run resumes from its last checkpoint.",
        file=sys.stderr,
        flush=True,
    )
    for fn in list(_cleanups):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - exiting anyway; say what did not clean up
            print(f"[distributed] clean-up {fn!r} failed: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(LOST_EXIT)
