"""Export of cross-layer transcoders when their training ends: every SAE of the sweep in Gemma
Scope 2's CLT layout (:func:`gemmascope.sae.files.multilayer.save_gemma_scope_2_clt`, one
``params_layer_<i>.safetensors`` per layer plus ``config.json``) and a ``metadata.json`` beside
it, scored on the source's held-out rows.

Folders: ``workdir/saes/<site>/<layers>/width_<W>/average_l0_<N>`` with ``<layers>`` e.g.
``layers0-17`` and ``N`` the held-out L0 per layer (the quantity a target L0 names, as for the
per-layer transcoders a CLT is compared with). The metrics: ``l0`` (per layer, averaged),
``l0_total`` (summed over layers: what the replacement model's graph has per token), ``fvu``
(every layer's MLP output together, dataset-mean variance) and ``fvu_per_layer``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gemmascope import config as config_lib
from gemmascope.common import fvu
from gemmascope.sae.files import multilayer
from gemmascope.sae.files.io import width_name
from gemmascope.sites import layers_name, span_of
from gemmascope.train import e2e as e2e_lib
from gemmascope.train import step as step_lib


def evaluate_clt(params: dict[str, np.ndarray], rows: np.ndarray, d_in: int) -> dict[str, Any]:
    """Held-out scores of a raw-unit CLT on raw rows ``[n, L * d_in + L * d_out]`` (every layer's
    input, then every layer's MLP output): ``l0`` (mean per layer), ``l0_total``, ``fvu`` (all
    layers' targets as one row) and ``fvu_per_layer [L]``."""
    n_layers = params["W_enc"].shape[0]
    rows = np.asarray(rows, np.float32)
    x = rows[:, : n_layers * d_in].reshape(len(rows), n_layers, d_in)
    y = rows[:, n_layers * d_in :].reshape(len(rows), n_layers, -1)
    f, y_hat = multilayer.clt_forward(params, x)
    l0_layers = np.mean(np.sum(f != 0, axis=-1), axis=0)  # [L]
    per_layer = [float(fvu(np.sum((y[:, m] - y_hat[:, m]) ** 2), y[:, m])) for m in range(n_layers)]
    flat, flat_hat = y.reshape(len(rows), -1), y_hat.reshape(len(rows), -1)
    return {
        "l0": float(np.mean(l0_layers)),
        "l0_total": float(np.sum(l0_layers)),
        "l0_per_layer": [float(v) for v in l0_layers],
        "fvu": float(fvu(np.sum((flat - flat_hat) ** 2), flat)),
        "fvu_per_layer": per_layer,
    }


def clt_dir(root: str, site: str, layers, *, width: int, l0: float) -> str:
    """``root/<site>/<layers>/width_<W>/average_l0_<N>`` (``<layers>``: :func:`layers_name`)."""
    return os.path.join(root, site, layers_name(layers), f"width_{width_name(width)}", f"average_l0_{int(round(l0))}")


def export_clt_location(
    config, workdir: str, state, *, source, site: str, layers, width: int, lambdas, total: int, log=print, arch=None
) -> list[dict[str, Any]]:
    """Writes every SAE of the sweep (see the module docstring); returns the records (path and
    metadata) as :func:`gemmascope.train.loop.export_location` does for one-layer SAEs."""
    heldout = np.asarray(source.heldout(config.eval_rows), np.float32)
    span = span_of(site)
    d_in, d_out = int(source.d_in), int(source.d_out)
    scale = np.asarray(state["norm_scale"], np.float64).reshape(-1)
    n = len(layers)
    records, used = [], set()
    for i, value in enumerate(lambdas):
        params = step_lib.export_params(state, i, config, arch)
        ev = evaluate_clt(params, heldout, d_in)
        folder = clt_dir(os.path.join(workdir, "saes"), site, layers, width=width, l0=ev["l0"])
        if folder in used:  # two sweep values landed on the same rounded L0
            folder = f"{folder}_sae{i}"
        used.add(folder)
        meta = {
            "architecture": "clt",
            "encoder": "jumprelu",
            "site": site,
            "input_site": span.input_site,
            "output_site": span.output_site,
            "affine_skip": bool(span.affine),
            "layers": [int(l) for l in layers],
            "d_in": d_in,
            "d_out": d_out,
            "d_sae": int(width),
            "model": getattr(source, "model_name", "toy"),
            **step_lib.sweep_metadata(config, value),
            "normalisation_constants_in": [float(c) for c in scale[:n]],
            "normalisation_constants_out": [float(c) for c in scale[n:]],
            **e2e_lib.describe(config),
            "tokens_trained": int(total * config.batch_size),
            "steps": int(total),
            **ev,
            "eval_rows": int(len(heldout)),
            "units": "raw activations in and out (normalisation folded); features in training units",
            "bandwidth": float(config.sae.bandwidth),
        }
        multilayer.save_gemma_scope_2_clt(folder, params, meta)
        log(
            f"[export] clt {config_lib.sweep_field(config)}={value:g}: L0/layer={ev['l0']:.1f} "
            f"(total {ev['l0_total']:.0f}) FVU={ev['fvu']:.4f} -> {folder}"
        )
        records.append({"path": folder, **meta})
    return records
