"""L0 and FVU of an exported SAE on stored rows, without the LM.

The score every SAE gets when training ends (:func:`gemmascope.train.loop.export_location`, on
the held-out rows of its source) and the one ``experiments/frontier_peers.py`` names its peers'
folders by. The metrics of an SAE spliced into the LM (delta LM loss, SAEBench's core metrics)
are :mod:`gemmascope.eval.metrics`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gemmascope.common import fvu
from gemmascope.sae.files import model as sae_model


def evaluate_exported(params: dict[str, np.ndarray], x: np.ndarray, d_in: int | None = None) -> dict[str, float]:
    """L0 and FVU of a raw-unit SAE on raw held-out rows ``[n, d_in]`` (dataset-mean FVU). A
    transcoder (``d_in`` given): rows ``concat(x_in [d_in], y)``, the FVU of its prediction of y."""
    x = jnp.asarray(x, jnp.float32)
    x_in, target = (x, x) if d_in is None else (x[:, :d_in], x[:, d_in:])
    f = sae_model.encode(params, x_in)
    x_hat = sae_model.decode(params, f) if d_in is None else sae_model.transcode(params, x_in)
    l0 = float(jnp.mean(jnp.sum(f != 0, axis=-1)))
    return {"l0": l0, "fvu": float(fvu(jnp.sum((target - x_hat) ** 2), target))}
