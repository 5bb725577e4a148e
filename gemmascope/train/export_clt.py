"""Export of multi-layer models when their training ends: every SAE of the sweep in its file
layout (:data:`WRITERS`: a cross-layer transcoder and a weakly causal crosscoder in Gemma Scope
2's per-layer files, :func:`gemmascope.sae.files.multilayer.save_gemma_scope_2_clt`, one
``params_layer_<i>.safetensors`` per layer plus ``config.json``; an acausal crosscoder as one
JumpReLU SAE on the concatenated layers), scored on the source's held-out rows.

Folders: ``workdir/saes/<site>/<layers>/width_<W>/average_l0_<N>`` with ``<layers>`` e.g.
``layers0-17`` and ``N`` the held-out L0 (per layer for the per-layer dictionaries, the quantity
a target L0 names, as for the per-layer transcoders a CLT is compared with; the one dictionary's
for an acausal crosscoder). The metrics: ``l0``, ``l0_total`` (summed over layers: what the
replacement model's graph has per token), ``fvu`` (every layer's target together, dataset-mean
variance) and ``fvu_per_layer``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gemmascope import config as config_lib
from gemmascope.common import fvu
from gemmascope.sae.files import formats, multilayer
from gemmascope.sae.files.io import width_name
from gemmascope.sites import layers_name, span_of
from gemmascope.train import e2e as e2e_lib
from gemmascope.train import step as step_lib

#: file layout -> (the raw-unit NumPy forward ``x [n, L, d_in] -> (f, y_hat [n, L, d_out])``,
#: the writer ``(folder, params, metadata)``); an acausal crosscoder is one JumpReLU SAE on the
#: concatenated layers, written and read as any other.
WRITERS = {
    "clt": (multilayer.clt_forward, multilayer.save_gemma_scope_2_clt),
    "jumprelu": (multilayer.concat_forward, formats.save_gemma_scope_2),
}


def evaluate_clt(
    params: dict[str, np.ndarray], rows: np.ndarray, d_in: int, *, n_layers: int | None = None, forward=None
) -> dict[str, Any]:
    """Held-out scores of a raw-unit multi-layer model on raw rows ``[n, L * d_in + L * d_out]``
    (every layer's input, then every layer's target): ``l0`` (mean per layer when each layer has
    its own features, ``f [n, L, d_sae]``; the one dictionary's, ``f [n, d_sae]``, otherwise),
    ``l0_total``, ``fvu`` (all layers' targets as one row) and ``fvu_per_layer [L]``.
    ``forward`` defaults to the CLT's, ``n_layers`` to its ``W_enc.shape[0]``."""
    forward = multilayer.clt_forward if forward is None else forward
    n_layers = int(params["W_enc"].shape[0] if n_layers is None else n_layers)
    rows = np.asarray(rows, np.float32)
    x = rows[:, : n_layers * d_in].reshape(len(rows), n_layers, d_in)
    y = rows[:, n_layers * d_in :].reshape(len(rows), n_layers, -1)
    f, y_hat = forward(params, x)
    l0 = np.mean(np.sum(f != 0, axis=-1), axis=0)  # [L] per-layer dictionaries, or the one dictionary's
    per_layer = [float(fvu(np.sum((y[:, m] - y_hat[:, m]) ** 2), y[:, m])) for m in range(n_layers)]
    flat, flat_hat = y.reshape(len(rows), -1), y_hat.reshape(len(rows), -1)
    out = {
        "l0": float(np.mean(l0)),
        "l0_total": float(np.sum(l0)),
        "fvu": float(fvu(np.sum((flat - flat_hat) ** 2), flat)),
        "fvu_per_layer": per_layer,
    }
    if np.ndim(l0):
        out["l0_per_layer"] = [float(v) for v in l0]
    return out


def clt_dir(root: str, site: str, layers, *, width: int, l0: float) -> str:
    """``root/<site>/<layers>/width_<W>/average_l0_<N>`` (``<layers>``: :func:`layers_name`)."""
    return os.path.join(root, site, layers_name(layers), f"width_{width_name(width)}", f"average_l0_{int(round(l0))}")


class _LayerRows:
    """One layer's view of a cross-layer source whose input and target are the same LM site: its
    held-out rows are that layer's block ``[n, d]``, as a single-location source's are."""

    def __init__(self, source, layer_index: int):
        self.source, self.j = source, int(layer_index)
        self.d_in = int(source.d_in)
        self.model_name = getattr(source, "model_name", "toy")

    def heldout(self, n_rows: int) -> np.ndarray:
        rows = np.asarray(self.source.heldout(n_rows), np.float32)
        return rows[:, self.j * self.d_in : (self.j + 1) * self.d_in]


def export_layer_saes(
    config, workdir: str, state, *, source, site: str, layers, width: int, lambdas, total: int, log, export_one
) -> list[dict[str, Any]]:
    """Per-layer SAEs trained side by side (:class:`gemmascope.sae.layer_saes.LayerSAEs`): each
    layer exported by ``export_one`` (:func:`gemmascope.train.loop.export_location`) as the
    JumpReLU SAE of its LM site and layer, from that layer's slice of the state and constant."""
    scale = np.asarray(state["norm_scale"], np.float64).reshape(-1)
    records = []
    for j, layer in enumerate(layers):
        view = {**state, "params": {k: v[:, j] for k, v in state["params"].items()}, "norm_scale": scale[j]}
        records += export_one(
            config,
            workdir,
            view,
            source=_LayerRows(source, j),
            site=span_of(site).input_site,
            layer=int(layer),
            width=width,
            lambdas=lambdas,
            total=total,
            log=log,
        )
    return records


def export_clt_location(
    config,
    workdir: str,
    state,
    *,
    source,
    site: str,
    layers,
    width: int,
    lambdas,
    total: int,
    log=print,
    arch,
    export_one=None,
) -> list[dict[str, Any]]:
    """Writes every SAE of the sweep (see the module docstring); returns the records (path and
    metadata) as :func:`gemmascope.train.loop.export_location` (``export_one``) does for
    one-layer SAEs. Per-layer SAEs trained side by side go to :func:`export_layer_saes`."""
    if arch.FILE_LAYOUT == "layer_saes":
        kw = dict(source=source, site=site, layers=layers, width=width, lambdas=lambdas, total=total, log=log)
        return export_layer_saes(config, workdir, state, export_one=export_one, **kw)
    heldout = np.asarray(source.heldout(config.eval_rows), np.float32)
    span = span_of(site)
    d_in = int(source.d_in)
    scale = np.asarray(state["norm_scale"], np.float64).reshape(-1)
    n = len(layers)
    records, used = [], set()
    forward, write = WRITERS[arch.FILE_LAYOUT]
    for i, value in enumerate(lambdas):
        params = step_lib.export_params(state, i, config, arch)
        ev = evaluate_clt(params, heldout, d_in, n_layers=n, forward=forward)
        folder = clt_dir(os.path.join(workdir, "saes"), site, layers, width=width, l0=ev["l0"])
        if folder in used:  # two sweep values landed on the same rounded L0
            folder = f"{folder}_sae{i}"
        used.add(folder)
        meta = {
            "architecture": arch.NAME,
            "encoder": "jumprelu",
            "site": site,
            "input_site": span.input_site,
            "output_site": span.output_site,
            "affine_skip": bool(span.affine),
            "layers": [int(l) for l in layers],
            "d_in": int(params["W_enc"].shape[-2]),  # one layer's width; an acausal crosscoder's: all layers'
            "d_out": int(params["W_dec"].shape[-1]),
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
        write(folder, params, meta)
        log(
            f"[export] {arch.NAME} {config_lib.sweep_field(config)}={value:g}: L0/layer={ev['l0']:.1f} "
            f"(total {ev['l0_total']:.0f}) FVU={ev['fvu']:.4f} -> {folder}"
        )
        records.append({"path": folder, **meta})
    return records
