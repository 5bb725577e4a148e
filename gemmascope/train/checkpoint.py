"""Orbax checkpoints: the train state and the data-stream position as two separate items.

A restarted run calls :meth:`Checkpoints.restore_latest` and continues from the last saved step
with the data stream at the position it had then, so the result equals an uninterrupted run.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], force: bool = False) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=force,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """``(step, state, data_state)`` of the newest checkpoint, or None if there is none.

        ``abstract_state`` (e.g. from ``jax.eval_shape``) gives the tree, shapes, dtypes and
        shardings to restore into, so a checkpoint saved under one mesh restores under another.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), abstract_state
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        )
        return step, restored["state"], dict(restored["data"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
