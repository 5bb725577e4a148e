"""One path from a loaded LM (:func:`gemmascope.lm.loading.load_lm`) and text to the activations of
LM sites.

Generation and the online stream (:mod:`gemmascope.data.activations`), evaluation
(:mod:`gemmascope.eval.metrics`), dashboards (:mod:`gemmascope.analysis.dashboard`) and steering
(``launch/steer.py``) all go through these functions, so an SAE is scored and read on exactly the
rows it was trained on:

* :func:`packed_batches`: ``(tokens [n_seq, T] int32, mask [n_seq, T] bool)`` with BOS first,
  mask True at real text only; the last batch is padded with fully masked rows so every batch has
  one shape (one compilation).
* :func:`keep_mask`: the norm-outlier filter. A row is kept when it is real text and its norm is
  at most ``factor`` times the median norm of the batch's real-text rows (attention sinks right
  after BOS reach ~140x the median; training never sees them, so evaluation never splices them
  and dashboards never encode them). ``factor <= 0`` keeps every real-text row.
* :func:`site_rows`: per location, the kept rows ``[n, d]`` of a batch, as the store holds them.
  The locations of a group (``groups``: a transcoder's two sites, a cross-layer transcoder's input
  and output at every layer) share one keep mask, the AND of theirs, so row ``i`` of each is the
  same token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.data import text as text_lib
from gemmascope.lm.loading import LM
from gemmascope.lm.model import capture_activations

Site = tuple[int, str]  # (layer, site name)


def location_key(site: str, layer: int) -> str:
    """``("res", 15) -> "res_L15"``: the array name of a location in the activation store."""
    return f"{site}_L{layer}"


def pad_batch(tokens: np.ndarray, mask: np.ndarray, n_seq: int, bos: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads ``tokens/mask [n, T]`` to ``n_seq`` rows with fully masked ``BOS pad pad ...`` rows."""
    extra = n_seq - len(tokens)
    if extra <= 0:
        return tokens, mask
    filler = np.full((extra, tokens.shape[1]), pad, np.int32)
    filler[:, 0] = bos
    return np.concatenate([tokens, filler]), np.concatenate([mask, np.zeros((extra, tokens.shape[1]), bool)])


def packed_batches(
    tokenizer, lm_cfg, texts: Iterable[str], seq_len: int, n_seq: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(tokens [n_seq, seq_len] int32, mask [n_seq, seq_len] bool)`` packed with BOS first, in
    the order of ``texts``; the last batch padded (see :func:`pad_batch`)."""
    bos, eos, pad = lm_cfg.bos_id, lm_cfg.eos_id, lm_cfg.pad_id
    for toks, mask in text_lib.iter_packed(
        tokenizer, texts, seq_len, bos_id=bos, eos_id=eos, pad_id=pad, batch_size=n_seq
    ):
        yield pad_batch(toks, mask, n_seq, bos, pad)


def keep_mask(act: jax.Array, mask: jax.Array, factor: float) -> jax.Array:
    """``[B, T]`` bool: real-text positions (``mask``) whose norm is at most ``factor`` times the
    median norm of the batch's real-text rows. ``act [B, T, d]``; ``factor <= 0`` returns ``mask``.

    Traceable (evaluation calls it inside its jitted step); the norm is taken in float32.
    """
    if factor <= 0:
        return mask
    norms = jnp.linalg.norm(act.astype(jnp.float32), axis=-1)
    med = jnp.nanmedian(jnp.where(mask, norms, jnp.nan))
    return mask & (norms <= factor * med)


_keep_mask_jit = jax.jit(keep_mask, static_argnames=("factor",))


def capture(
    lm: LM, tokens: np.ndarray, mask: np.ndarray, sites: Iterable[Site], factor: float
) -> dict[Site, tuple[jax.Array, jax.Array]]:
    """``{(layer, site): (act [B, T, d] float32, keep [B, T] bool)}`` for one batch; the LM stops
    after the deepest requested layer."""
    sites = sorted({(int(l), s) for l, s in sites})
    caps = capture_activations(lm.params, jnp.asarray(tokens, jnp.int32), lm.cfg, sites)
    m = jnp.asarray(mask, bool)
    out = {}
    for key, a in caps.items():
        a = a.astype(jnp.float32)
        out[key] = (a, _keep_mask_jit(a, m, factor=float(factor)) if mask.any() else m)
    return out


def site_rows(
    lm: LM,
    tokens: np.ndarray,
    mask: np.ndarray,
    sites: Iterable[Site],
    *,
    factor: float,
    stats: dict[str, Any] | None = None,
    groups: Iterable[Iterable[Site]] = (),
) -> dict[str, np.ndarray]:
    """``{location_key: float32 [n_rows, d]}``: the kept rows of one batch in row-major
    ``(sequence, position)`` order, as the store holds them. Dropped outliers are counted by
    position into ``stats[location_key]`` when given.

    ``groups``: sets of ``(layer, site)`` locations (each in ``sites``) read together: a
    transcoder's input and output, a cross-layer transcoder's inputs and outputs at every layer.
    Every location of a group keeps the rows kept by all of them, so their arrays align row by
    row. Locations in no group keep their own mask (unchanged)."""
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    caps = capture(lm, tokens, mask, sites, factor)
    keeps = {k: np.asarray(keep) for k, (_, keep) in caps.items()}
    for group in groups:
        group = [(int(l), s) for l, s in group]
        missing = [location_key(s, l) for l, s in group if (l, s) not in keeps]
        if missing:
            raise ValueError(f"site_rows: the group's locations {missing} are not among the captured sites")
        joint = np.logical_and.reduce([keeps[k] for k in group])
        for k in group:
            keeps[k] = joint
    out = {}
    for (layer, site), (a, _) in caps.items():
        key = location_key(site, layer)
        keep = keeps[(layer, site)]
        dropped = mask & ~keep
        if stats is not None and dropped.any():
            st = stats.setdefault(key, {"dropped_rows": 0, "dropped_at_position": {}})
            st["dropped_rows"] += int(dropped.sum())
            for p in positions[dropped]:
                st["dropped_at_position"][str(int(p))] = st["dropped_at_position"].get(str(int(p)), 0) + 1
        out[key] = np.asarray(jax.device_get(a), np.float32)[keep]
    return out
