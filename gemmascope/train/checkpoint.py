"""Orbax checkpoints: the train state and the data-stream position as two separate items, plus a
digest of both.

A restarted run calls :meth:`Checkpoints.restore_latest` and continues from the last saved step
with the data stream at the position it had then, so the result equals an uninterrupted run.

Corruption never passes: orbax writes a step into a temporary folder and renames it when complete
(a kill mid-save leaves no step), and every save also stores a ``digest`` item: a position-weighted
uint32 sum of every state leaf's bits (computed on device, so any single flipped bit changes it)
and a sha256 of the data state's JSON. Restore recomputes both; a checkpoint that fails to load or
whose digest differs is moved aside to ``<directory>.corrupt/`` and the previous one is tried,
saying which. Only when no checkpoint is usable does restore raise :class:`CheckpointError`.

A full disk (ENOSPC, EDQUOT) during a save raises :class:`gemmascope.common.DiskFullError` naming the
step's folder and its size (about: the arrays uncompressed plus the JSON items), from ``save``
(orbax saves in the background, so a failed save surfaces at the next ``save``, ``wait`` or
``close``). The partial step's temp folder is removed; every completed step is kept, and a rerun
resumes from the newest one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gemmascope.common import disk_full_error

_ITEMS = ("state", "data", "digest")
_ODD = np.uint32(2654435761)  # Knuth's multiplicative constant; weights are 2 * idx * K + 1 (odd)


class CheckpointError(RuntimeError):
    """No usable checkpoint although some exist; the message lists each and why it was refused."""


@jax.jit
def _leaf_digests(tree) -> list[jax.Array]:
    """One uint32 per leaf: ``sum_i bits_i * (2 i K + 1) mod 2^32`` over the leaf's flattened bits.
    Every weight is odd, so flipping any single bit changes the sum; integer sums do not depend
    on the reduction order, so the value is the same under any sharding."""
    out = []
    for x in jax.tree.leaves(tree):
        x = jnp.asarray(x)
        if x.dtype == jnp.bool_:
            u = x.astype(jnp.uint32)
        else:
            width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
            u = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
        u = u.reshape(-1)
        idx = jax.lax.iota(jnp.uint32, u.size)
        out.append(jnp.sum(u * (idx * _ODD * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32))
    return out


def state_digest(state: Any) -> list[int]:
    """The per-leaf digests of a state pytree, as Python ints (same on every process)."""
    return [int(np.asarray(d.addressable_data(0) if isinstance(d, jax.Array) else d)) for d in _leaf_digests(state)]


def json_digest(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _settle(timeout: float = 20.0) -> None:
    """Waits (at most ``timeout`` seconds in all) for the background threads of orbax's failed save:
    orbax reports the first part of a save that fails while other parts (the arrays, written by
    tensorstore from asyncio executor threads) may still be writing into, and creating folders in,
    the step's temp folder, which must not be removed under them. A temp folder that survives
    anyway is removed when the next run opens the checkpoints (``cleanup_tmp_directories``)."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        mine = type(t).__module__.startswith("orbax") or t.name == "async_save" or t.name.startswith("asyncio")
        if mine and t is not threading.current_thread():
            threading.Thread.join(t, max(0.0, deadline - time.monotonic()))  # orbax's join re-raises


class Checkpoints:
    def __init__(self, directory: str, max_to_keep: int = 2, log=print):
        self.directory = os.path.abspath(directory)
        self.log = log
        self._sizes: dict[int, int] = {}  # step -> bytes its save writes (about), for a full disk
        self.manager = self._manager(max_to_keep)
        self.max_to_keep = max_to_keep

    def _manager(self, max_to_keep: int) -> ocp.CheckpointManager:
        # cleanup_tmp_directories: a save killed or stopped by a full disk leaves its temp folder
        # (never a step); the next run removes it
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
            item_names=_ITEMS,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], force: bool = False) -> None:
        digest = {"state": state_digest(state), "data": json_digest(data_state)}
        arrays = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
        self._sizes[int(step)] = arrays + len(json.dumps(data_state)) + len(json.dumps(digest))
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    digest=ocp.args.JsonSave(digest),
                ),
                force=force,
            )
        except Exception as e:
            raise self._disk_full(e, step) from e

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._disk_full(e, None) from e

    def _disk_full(self, exc: Exception, step: int | None) -> Exception:
        """``exc`` as a DiskFullError naming the step whose save failed, after removing the temp
        folders of unfinished saves (never checkpoints, and they hold space); any other exception
        unchanged. Which step: the one in orbax's error, else the one whose temp folder is left
        (with async saves an earlier one than ``step``), else ``step``."""
        if disk_full_error(exc, self.directory, None) is None:
            return exc
        _settle()
        tmp = [n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n]
        m = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(exc))
        partial = sorted(int(n.split(".")[0]) for n in tmp if n.split(".")[0].isdigit())
        if m or partial:
            step = int(m.group(1)) if m else partial[0]
        elif step is None:
            step = max(self._sizes, default=0)
        if jax.process_index() == 0:
            for name in tmp:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        done = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
        kept = (
            f"Completed checkpoints (step{'s' * (len(done) > 1)} {', '.join(map(str, done))}) are intact "
            f"(orbax writes a step to a temp folder and renames it when complete); the partial step {step} "
            f"was removed, and a rerun resumes from step {done[-1]}."
            if done
            else f"No checkpoint was complete yet; the partial step {step} was removed and a rerun starts over."
        )
        return disk_full_error(
            exc,
            os.path.join(self.directory, str(step)),
            self._sizes.get(step),
            what=f"checkpoint step {step} to",
            kept=kept,
            bound="about ",
        )

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """One checkpoint, checked against its digest; raises (any exception) if unusable."""
        has_digest = os.path.isdir(os.path.join(self.directory, str(step), "digest"))
        args = {"state": ocp.args.StandardRestore(target), "data": ocp.args.JsonRestore()}
        if has_digest:
            args["digest"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        state, data = restored["state"], dict(restored["data"])
        if not has_digest:
            self.log(
                f"[checkpoint] step {step} in {self.directory} has no digest (written before digests); "
                "restored unchecked"
            )
            return state, data
        digest = dict(restored["digest"])
        if json_digest(data) != digest.get("data"):
            raise ValueError("the data-stream position does not match its digest")
        got, want = state_digest(state), digest.get("state")
        if got != want:
            leaves = jax.tree_util.tree_flatten_with_path(state)[0]
            bad = [jax.tree_util.keystr(p) for (p, _), g, w in zip(leaves, got, want or []) if g != w]
            raise ValueError(f"the restored state does not match its digest (leaves {bad[:4] or 'all'})")
        return state, data

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """``(step, state, data_state)`` of the newest usable checkpoint, or None if there is none.

        ``abstract_state`` (e.g. from ``jax.eval_shape``) gives the tree, shapes, dtypes and
        shardings to restore into, so a checkpoint saved under one mesh restores under another.
        A checkpoint that fails to load or to match its digest is moved aside and the previous one
        tried (logged); CheckpointError if checkpoints exist but none is usable.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
            abstract_state,
        )
        refused = []
        for step in steps:
            try:
                state, data = self._restore_step(step, target)
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore/json raise many types
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                self.log(
                    f"[checkpoint] step {step} in {self.directory} is unusable ({reason}); trying the previous one"
                )
                refused.append((step, reason))
                continue
            if refused:
                self._move_aside([s for s, _ in refused])
                self.log(
                    f"[checkpoint] fell back to step {step} (refused: "
                    f"{', '.join(str(s) for s, _ in refused)}; moved to {self.directory}.corrupt/)"
                )
            return step, state, data
        listing = "; ".join(f"step {s}: {r}" for s, r in refused)
        raise CheckpointError(
            f"{self.directory}: no usable checkpoint ({listing}). If the run's config "
            f"changed, use a new workdir; otherwise delete {self.directory} to train this "
            "location from the start"
        )

    def _move_aside(self, steps: list[int]) -> None:
        """Moves refused step folders out of the manager's directory (a later save of the same
        step must not collide with them; kept for inspection)."""
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            aside = f"{self.directory}.corrupt"
            os.makedirs(aside, exist_ok=True)
            for s in steps:
                src = os.path.join(self.directory, str(s))
                if os.path.exists(src):
                    os.replace(src, os.path.join(aside, f"{s}-{int(time.time())}"))
        if jax.process_count() > 1:  # every process reopens after the move
            multihost_utils.sync_global_devices("gemmascope_checkpoint_move_aside")
        self.manager.reload()  # re-reads the steps on disk

    def close(self) -> None:
        self.wait()
        self.manager.close()
