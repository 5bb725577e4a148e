"""LM activations at (layer, site) locations, from packed text, without special tokens.

:class:`LMActivations` loads the configured checkpoint and tokenizer (``config.lm``), packs the
configured text (``config.text``) into ``[n, context_length]`` sequences with BOS first, runs
the model up to the deepest layer needed (one pass captures every requested site) and returns,
per location, the rows at real text positions only: BOS, EOS and padding never leave this
module. Batches are deterministic functions of their index, so generation and the online
stream can resume. Loading lives in :mod:`gemmascope.lm.loading`; packing and the outlier filter in
:mod:`gemmascope.data.sites`, shared with evaluation, dashboards and steering.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from gemmascope.data import sites as sites_lib
from gemmascope.data import text as text_lib
from gemmascope.data.sites import location_key  # noqa: F401  (re-exported: the store's array names)
from gemmascope.lm import loading as lm_loading
from gemmascope.lm.config import site_dim


def text_source_dict(config) -> dict[str, Any]:
    t = config.text
    out = {
        "kind": t.kind,
        "name": t.name or None,
        "config": t.config or None,
        "split": t.split,
        "text_column": t.text_column,
        "paths": list(t.paths) or None,
        "doc_separator": t.doc_separator or None,
        "heldout_fraction": t.heldout_fraction,
    }
    if t.max_documents:
        out["limit"] = int(t.max_documents)
    return out


class LMActivations:
    """The configured LM over the configured text. ``sites``: [(layer, site)]; ``pairs``:
    [(layer, input_site, output_site)] of transcoders; ``groups``: further sets of (layer, site)
    locations read together (a cross-layer transcoder's inputs and outputs at every layer). The
    locations of a pair or group share one outlier mask (rows aligned;
    :func:`gemmascope.data.sites.site_rows`), and one LM pass captures every location.

    A thin binding of :mod:`gemmascope.data.sites` to a config: which checkpoint, text, sequence
    length, batch size and outlier factor.
    """

    def __init__(
        self,
        config,
        sites: list[tuple[int, str]],
        log=print,
        pairs: list[tuple[int, str, str]] = (),
        groups: list[list[tuple[int, str]]] = (),
    ):
        self.lm = lm_loading.load_lm(config.lm.checkpoint, config.lm.dtype, log=log)
        self.lm_cfg, self.params, self.tokenizer = self.lm.cfg, self.lm.params, self.lm.tokenizer
        self.model_name, self.tokenizer_name = self.lm.name, self.lm.tokenizer_name
        self.config = config
        self.seq_len = int(config.lm.context_length)
        self.n_seq = int(config.lm.batch_sequences)
        self.pairs = sorted({(int(l), a, b) for l, a, b in pairs})
        self.groups = [((l, a), (l, b)) for l, a, b in self.pairs] + [tuple((int(l), s) for l, s in g) for g in groups]
        self.sites = sorted({(int(l), s) for l, s in sites} | {k for g in self.groups for k in g})
        for layer, _ in self.sites:
            self.lm.check_layer(layer, "config.layers")
        self.dims = {location_key(s, l): site_dim(self.lm_cfg, s) for l, s in self.sites}
        self.text_cfg = text_source_dict(config)

    @property
    def special_ids(self) -> tuple[int, int, int]:
        return self.lm.special_ids

    def packed_batches(self, part: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(tokens [n_seq, T] int32, mask [n_seq, T] bool)`` of the ``part`` ("train" or
        "heldout") split, in a fixed order (:func:`gemmascope.data.sites.packed_batches`)."""
        texts = text_lib.iter_texts(dict(self.text_cfg, split_part=part))
        return sites_lib.packed_batches(self.tokenizer, self.lm_cfg, texts, self.seq_len, self.n_seq)

    def activations(self, tokens: np.ndarray, mask: np.ndarray, stats: dict | None = None) -> dict[str, np.ndarray]:
        """``{location_key: float32 [n_rows, d]}``: captured rows at real-text positions, less the
        norm outliers (``lm.outlier_norm_factor`` times the batch median; counted by position
        into ``stats[key]`` when given). See :func:`gemmascope.data.sites.site_rows`."""
        factor = float(self.config.lm.outlier_norm_factor)
        return sites_lib.site_rows(self.lm, tokens, mask, self.sites, factor=factor, stats=stats, groups=self.groups)

    def heldout_rows(self, n_rows: int) -> dict[str, np.ndarray]:
        """At least ``min(n_rows, all)`` held-out rows per location (whole batches)."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.dims}
        got = 0
        for toks, mask in self.packed_batches("heldout"):
            acts = self.activations(toks, mask)
            for k, v in acts.items():
                parts[k].append(v)
            got += int(mask.sum())
            if got >= n_rows:
                break
        return {k: np.concatenate(v)[:n_rows] for k, v in parts.items()}


class OnlineSource:
    """The trainer's stream straight from the LM (``config.source = "online"``, no store).

    Each LM batch of the train split gives rows that are shuffled with a seed fixed by the batch
    index; training batches are consecutive slices of that stream, wrapping around the corpus
    (epochs). The position is ``(epoch, lm_batch, offset)``, so a resumed run recomputes one LM
    batch and continues the same stream.

    ``key``: one location, or a list of locations of equal width read from the same token (a
    cross-layer transcoder's input at every layer), side by side. ``out_key``: likewise the
    target location(s) of a transcoder (``lm`` built with them grouped): rows are then
    ``concat(x_1 .. x_L [L * d_in], y_1 .. y_L [L * d_out])`` of the same token, shuffled
    together; ``d_in`` and ``d_out`` are one location's widths and ``n_layers`` is ``L``
    (1 for a single location or a transcoder).
    """

    def __init__(
        self,
        lm: LMActivations,
        key: str | list[str],
        batch_size: int,
        seed: int,
        out_key: str | list[str] | None = None,
    ):
        self.in_keys = [key] if isinstance(key, str) else list(key)
        self.out_keys = [] if out_key is None else [out_key] if isinstance(out_key, str) else list(out_key)
        if self.out_keys and len(self.out_keys) != len(self.in_keys):
            raise ValueError(f"online source: {len(self.in_keys)} input locations but {len(self.out_keys)} targets")
        for keys in (self.in_keys, self.out_keys):
            widths = {k: lm.dims[k] for k in keys}
            if len(set(widths.values())) > 1:
                raise ValueError(f"online source: the locations read side by side differ in width: {widths}")
        # the state's name of the stream: the location (as before) or every location, joined
        self.key = "+".join(self.in_keys + self.out_keys) if len(self.in_keys) > 1 else self.in_keys[0]
        self.lm, self.batch_size, self.seed = lm, int(batch_size), int(seed)
        self.n_layers = len(self.in_keys)
        self.d_in = lm.dims[self.in_keys[0]]
        width = self.n_layers * self.d_in
        if self.out_keys:
            self.d_out = lm.dims[self.out_keys[0]]
            width += self.n_layers * self.d_out
        self.model_name = lm.model_name
        self._epoch, self._lm_batch, self._offset = 0, 0, 0
        self._iter = None
        self._rows = np.zeros((0, width), np.float32)
        self._cached: tuple[int, int] | None = None  # (epoch, lm_batch) that self._rows holds

    def get_state(self) -> dict[str, Any]:
        return {
            "kind": "online",
            "key": self.key,
            "epoch": self._epoch,
            "lm_batch": self._lm_batch,
            "offset": self._offset,
            "seed": self.seed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "online" or state.get("key") != self.key:
            raise ValueError(f"online source: checkpointed data state {state} is not for {self.key}")
        self._epoch, self._lm_batch, self._offset = int(state["epoch"]), int(state["lm_batch"]), int(state["offset"])
        self._iter = None

    def _load(self, epoch: int, index: int) -> np.ndarray | None:
        if self._iter is None:
            self._iter = itertools.islice(self.lm.packed_batches("train"), index, None)
            self._iter_pos = index
        try:
            toks, mask = next(self._iter)
        except StopIteration:
            return None
        self._iter_pos += 1
        rows = self._rows_of(self.lm.activations(toks, mask))
        rng = np.random.default_rng([self.seed, epoch, index])
        return rows[rng.permutation(len(rows))]

    def _rows_of(self, acts: dict[str, np.ndarray]) -> np.ndarray:
        """This source's rows of one LM batch (every location's part side by side)."""
        keys = self.in_keys + self.out_keys
        return acts[keys[0]] if len(keys) == 1 else np.concatenate([acts[k] for k in keys], axis=-1)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        out, need = [], self.batch_size
        while need:
            if self._cached != (self._epoch, self._lm_batch):
                rows = self._load(self._epoch, self._lm_batch)
                if rows is None:  # end of the corpus: next epoch
                    if self._lm_batch == 0:
                        raise ValueError("online source: the text source produced no tokens")
                    self._epoch, self._lm_batch, self._offset, self._iter = self._epoch + 1, 0, 0, None
                    continue
                self._rows, self._cached = rows, (self._epoch, self._lm_batch)
            take = self._rows[self._offset : self._offset + need]
            out.append(take)
            need -= len(take)
            self._offset += len(take)
            if self._offset >= len(self._rows):
                self._lm_batch, self._offset = self._lm_batch + 1, 0
        return np.concatenate(out)

    def sample(self, n_rows: int) -> np.ndarray:
        rows, got = [], 0
        for toks, mask in self.lm.packed_batches("train"):
            r = self._rows_of(self.lm.activations(toks, mask))
            rows.append(r)
            got += len(r)
            if got >= n_rows:
                break
        return np.concatenate(rows)[:n_rows]

    def heldout(self, n_rows: int) -> np.ndarray:
        return self._rows_of(self.lm.heldout_rows(n_rows))
