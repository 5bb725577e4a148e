"""Activation sources: what the trainer reads, behind one :class:`ActivationSource` protocol.

Three implementations, picked by ``config.source``:

* ``"toy"``: :class:`gemmascope.data.toy.ToySource`, synthetic rows with known sparse directions.
* ``"store"``: :class:`gemmascope.data.store_source.StoreSource`, shuffled rows of the tensorstore
  activation store written by ``launch/generate_activations.py``.
* ``"online"``: :class:`gemmascope.data.activations.OnlineSource`, rows straight from the LM.

Every source yields float32 batches ``[batch_size / n_slots, d_in]`` and saves its position as a
JSON-able dict, so a resumed run sees exactly the batches an uninterrupted run would.

A *paired* source (a transcoder's location, :data:`gemmascope.sites.PAIR_SITES`) yields
``[B, d_in + d_out] = concat(x_in, y)``: the input site's row then the target site's row of the
same token, shuffled together; it has ``d_in`` (the input width) and ``d_out``. ``sample`` and
``heldout`` return the same concatenated rows.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from gemmascope.config import ConfigError
from gemmascope.data.activations import LMActivations, OnlineSource
from gemmascope.data.sites import location_key
from gemmascope.data.store_source import PairedStoreSource, StoreSource
from gemmascope.data.toy import ToySource
from gemmascope.sites import pair_of, span_of


@runtime_checkable
class ActivationSource(Protocol):
    """The stream interface the sweep trainer uses.

    ``d_in``: row width (a paired source: the input part's, with ``d_out`` the target's).
    ``model_name``: recorded in exported metadata (``"toy"`` for the toy).
    ``__next__() -> [B, d_in]`` float32: the next training batch (this process's rows of it).
    ``get_state() / set_state(state)``: the stream position (a JSON-able dict).
    ``sample(n) -> [n, d_in]``: rows for the normalisation constant (not consuming the stream).
    ``heldout(n) -> [<= n, d_in]``: rows the SAE never trains on, for the export metrics.
    """

    d_in: int

    def __iter__(self) -> ActivationSource: ...

    def __next__(self) -> np.ndarray: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...

    def sample(self, n_rows: int) -> np.ndarray: ...

    def heldout(self, n_rows: int) -> np.ndarray: ...


def make_source(
    config, workdir: str, site: str, *, layer: int | tuple[int, ...], slot: int = 0, n_slots: int = 1
) -> ActivationSource:
    """The activation stream for one location ``(site, layer)`` (a cross-layer site: ``layer`` the
    tuple of its layers, rows ``[B, L * d_in + L * d_out]`` from one LM pass per batch).

    With several processes (``n_slots > 1``) each yields only its rows of every global batch:
    rows ``[slot * B / n_slots, (slot + 1) * B / n_slots)``. The store reads a disjoint slice of
    its chunks per slot; the toy and online sources compute the global batch and keep their rows
    (the toy batch is a pure function of its index, so the union equals the one-process batch).
    """
    pair = pair_of(site)
    span = span_of(site)

    if span is not None:  # a cross-layer site: every layer's input and output from one LM pass
        if config.source != "online":
            raise ConfigError(f"config.source: the cross-layer site {site!r} trains online, not from {config.source!r}")
        ins = [(int(l), span.input_site) for l in layer]
        outs = [(int(l), span.output_site) for l in layer]
        lm = LMActivations(config, [], groups=[ins + outs])
        keys = [location_key(s, l) for l, s in ins], [location_key(s, l) for l, s in outs]
        src = OnlineSource(lm, keys[0], config.batch_size, config.seed, out_key=keys[1])
        return RowSlice(src, slot, n_slots) if n_slots > 1 else src
    if config.source == "toy":
        src = ToySource(
            config.toy.d_in,
            config.toy.n_features,
            config.toy.mean_active,
            config.batch_size,
            seed=config.seed,
            noise_std=config.toy.noise_std,
        )
        if jax.process_index() == 0:
            src.save_ground_truth(workdir)
        return RowSlice(src, slot, n_slots) if n_slots > 1 else src
    if config.source == "online":
        if pair is None:
            lm = LMActivations(config, [(layer, site)])
            src = OnlineSource(lm, location_key(site, layer), config.batch_size, config.seed)
        else:
            lm = LMActivations(config, [], pairs=[(layer, pair.input_site, pair.output_site)])
            keys = location_key(pair.input_site, layer), location_key(pair.output_site, layer)
            src = OnlineSource(lm, keys[0], config.batch_size, config.seed, out_key=keys[1])
        return RowSlice(src, slot, n_slots) if n_slots > 1 else src
    if config.source == "store":
        if pair is not None:
            keys = location_key(pair.input_site, layer), location_key(pair.output_site, layer)
            return PairedStoreSource(
                config, workdir, keys[0], out_key=keys[1], process_index=slot, process_count=n_slots
            )
        return StoreSource(config, workdir, location_key(site, layer), process_index=slot, process_count=n_slots)
    raise ConfigError(f"config.source: unknown source {config.source!r}")


class RowSlice:
    """This process's rows of every batch of a source that yields whole global batches."""

    def __init__(self, source: ActivationSource, slot: int, n_slots: int):
        self.source, self.slot, self.n_slots = source, int(slot), int(n_slots)

    def __getattr__(self, name):  # d_in, d_out, model_name, get_state, set_state, sample, heldout
        return getattr(self.source, name)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        x = next(self.source)
        n = x.shape[0] // self.n_slots
        return x[self.slot * n : (self.slot + 1) * n]
