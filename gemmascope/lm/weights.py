"""What every weight loader shares: the error type, empty parameter trees, dtypes, and the check
that a checkpoint filled every parameter. :mod:`gemmascope.lm.hf` (Hugging Face) and
:mod:`gemmascope.lm.loading` (GGUF and the dispatch) build on it."""

from __future__ import annotations

from typing import Any

import jax
import ml_dtypes
import numpy as np

from gemmascope.lm.config import LMConfig
from gemmascope.lm.model import param_shapes


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or cannot be read; the message says what was looked for."""


# ----------------------------------------------------------------------------- shared


def empty_params(cfg: LMConfig, dtype) -> dict[str, Any]:
    """Uninitialised numpy arrays in the layout of :func:`gemmascope.lm.model.init_params`."""
    return jax.tree_util.tree_map(lambda x: np.empty(x.shape, dtype), param_shapes(cfg))


def maybe_device(params, to_device: bool):
    if not to_device:
        return params

    return jax.device_put(params)


def np_dtype(dtype: str):
    if dtype == "bfloat16":
        return ml_dtypes.bfloat16
    return np.dtype(dtype)


# Checkpoint norm tensors -> our key. Per arch, since Llama's "post_attention_layernorm" is the
# pre-MLP norm while Gemma's follows attention.
GEMMA_NORMS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attn_norm",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "post_mlp_norm",
}


def check_filled(params, filled: set, where: str):
    missing = []
    for k in ("embed", "final_norm", "lm_head"):
        if k in params and k not in filled:
            missing.append(k)
    for k, arr in params["layers"].items():
        for i in range(arr.shape[0]):
            if ("layers", k, i) not in filled:
                missing.append(f"layers.{k}[{i}]")
    if missing:
        raise CheckpointError(f"{where}: no tensor found for {missing[:8]}{' ...' if len(missing) > 8 else ''}")
