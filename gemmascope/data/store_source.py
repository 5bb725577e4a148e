"""The trainer's view of the activation store (``config.source = "store"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gemmascope.data import store as store_lib
from gemmascope.data.generate import part_root, store_root


class StoreSource:
    """Shuffled, resumable batches of one location from ``<store>/train``; held-out rows from
    ``<store>/heldout``. A missing or incomplete store is an error that says how to create it.

    Multi-host: with ``process_count = n > 1`` this process reads its own disjoint slice of the
    store's chunks (slice ``process_index``) and yields ``batch_size / n`` rows per step, its
    share of the global batch.
    """

    def __init__(
        self,
        config,
        workdir: str,
        key: str,
        expected_d_in: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        root = store_root(config, workdir)
        self.train_root, self.heldout_root = part_root(root, "train"), part_root(root, "heldout")
        try:
            info = store_lib.open_store(self.train_root)
            store_lib.open_store(self.heldout_root)
        except store_lib.StoreError as e:
            if e.fault not in ("missing store", "incomplete"):
                raise  # a damaged store: the error says what to do
            raise store_lib.StoreError(
                f"{e}\nCreate the activation store first (it resumes if interrupted):\n"
                "  python launch/generate_activations.py --config=<the same config and overrides> "
                f"--workdir={workdir}\n"
                f"or train straight from the LM with --config.source=online"
            ) from None
        if key not in info.sites:
            raise store_lib.StoreError(
                f"activation store at {self.train_root} has no location {key!r} "
                f"(it has {sorted(info.sites)}); regenerate it with this config's layers/sites"
            )
        if int(config.batch_size) % int(process_count):
            raise store_lib.StoreError(
                f"batch_size {int(config.batch_size)} is not divisible by {int(process_count)} "
                f"processes feeding the batch"
            )
        self.key = key
        self.meta = info.sites[key]
        self.model_name = self.meta.get("model", "unknown")
        self.reader = store_lib.ActivationReader(
            self.train_root,
            key,
            batch_size=int(config.batch_size) // int(process_count),
            seed=int(config.seed),
            shuffle_buffer_rows=int(config.store.shuffle_buffer_rows),
            expected_d_in=expected_d_in,
            process_index=process_index,
            process_count=process_count,
        )
        self.d_in = self.reader.d_in

    def get_state(self) -> dict[str, Any]:
        return {"kind": "store", "key": self.key, "reader": self.reader.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "store" or state.get("key") != self.key:
            raise ValueError(f"store source: checkpointed data state {state} is not for {self.key}")
        self.reader.set_state(state["reader"])

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self.reader)

    def sample(self, n_rows: int) -> np.ndarray:
        return self.reader.sample(n_rows, seed=1)

    def heldout(self, n_rows: int) -> np.ndarray:
        r = store_lib.ActivationReader(self.heldout_root, self.key, batch_size=1, seed=0, expected_d_in=self.d_in)
        try:
            return r.sample(min(n_rows, r.n_rows), seed=0)
        finally:
            r.close()
