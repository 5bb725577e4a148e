"""The trainer's view of the activation store (``config.source = "store"``): one location
(:class:`StoreSource`), or a transcoder's pair of aligned locations (:class:`PairedStoreSource`)."""

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
        *,
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


class PairedStoreSource:
    """A transcoder's aligned rows ``[B, d_in + d_out] = concat(x_in, y)`` from two arrays of the
    store written as a pair (one joint outlier mask, equal chunk rows: see
    :mod:`gemmascope.data.generate`).

    Two :class:`StoreSource` readers with the same seed, chunk rows, row count and shuffle buffer
    draw the same permutation, so row ``i`` of both batches is the same token; their positions
    advance together and are checkpointed together. Checked before any read: both locations
    exist, belong to the same layer, hold the same number of rows (train and held-out), and were
    written as a pair; each failure names both locations.
    """

    def __init__(
        self,
        config,
        workdir: str,
        in_key: str,
        *,
        out_key: str,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.key, self.out_key = in_key, out_key
        root = store_root(config, workdir)
        for part in ("train", "heldout"):
            try:
                info = store_lib.open_store(part_root(root, part))
            except store_lib.StoreError:
                break  # StoreSource below says how to create it
            check_pair(info, in_key, out_key, part_root(root, part))
        kw = dict(process_index=process_index, process_count=process_count)
        self.inp = StoreSource(config, workdir, in_key, **kw)
        self.out = StoreSource(config, workdir, out_key, **kw)
        self.d_in, self.d_out = self.inp.d_in, self.out.d_in
        self.model_name = self.inp.model_name

    def get_state(self) -> dict[str, Any]:
        return {"kind": "store_pair", "key": self.key, "reader": self.inp.reader.get_state(),
                "out_key": self.out_key, "out_reader": self.out.reader.get_state()}  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "store_pair" or (state.get("key"), state.get("out_key")) != (self.key, self.out_key):
            raise ValueError(
                f"paired store source: checkpointed data state {state} is not for {self.key} -> {self.out_key}"
            )
        self.inp.reader.set_state(state["reader"])
        self.out.reader.set_state(state["out_reader"])

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return np.concatenate([next(self.inp), next(self.out)], axis=-1)

    def sample(self, n_rows: int) -> np.ndarray:
        return np.concatenate([self.inp.sample(n_rows), self.out.sample(n_rows)], axis=-1)

    def heldout(self, n_rows: int) -> np.ndarray:
        return np.concatenate([self.inp.heldout(n_rows), self.out.heldout(n_rows)], axis=-1)


def check_pair(info, in_key: str, out_key: str, where: str) -> None:
    """StoreError naming both locations unless ``in_key`` and ``out_key`` of the store ``info``
    (at ``where``) can be read as one transcoder's aligned rows."""
    pair = f"{in_key} -> {out_key}"
    missing = [k for k in (in_key, out_key) if k not in info.sites]
    if missing:
        raise store_lib.StoreError(
            f"activation store at {where} lacks {missing} of the transcoder pair {pair} (it has "
            f"{sorted(info.sites)}); regenerate it with store.sites including the pair, e.g. 'transcoder'"
        )
    a, b = info.sites[in_key], info.sites[out_key]
    if a.get("layer") != b.get("layer"):
        raise store_lib.StoreError(
            f"activation store at {where}: the transcoder pair {pair} joins layer {a.get('layer')} "
            f"({in_key}) and layer {b.get('layer')} ({out_key}); a pair reads one layer"
        )
    if int(a["n_rows"]) != int(b["n_rows"]):
        raise store_lib.StoreError(
            f"activation store at {where}: {in_key} has {a['n_rows']} rows but {out_key} has "
            f"{b['n_rows']}; the transcoder pair {pair} needs the same token in the same row of both"
        )
    if [in_key, out_key] not in a.get("paired_arrays", []) or int(a["chunk_rows"]) != int(b["chunk_rows"]):
        raise store_lib.StoreError(
            f"activation store at {where}: {in_key} and {out_key} were not written as a pair (one "
            f"joint row mask; metadata paired_arrays={a.get('paired_arrays')}), so their rows need "
            f"not align; regenerate the store with store.sites including 'transcoder'"
        )
