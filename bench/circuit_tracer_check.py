r"""Loads our Gemma Scope 2 CLT folders with circuit-tracer's own loader and compares its codes and
reconstructions with ours; run by ``bench/bench_circuit_tracer.py`` inside circuit-tracer's venv.

    python bench/circuit_tracer_check.py OUT.json CASE_DIR [CASE_DIR ...]

Imports only numpy, torch and circuit_tracer (circuit-tracer pins transformers<=4.57.3, which our
environment does not have), never gemmascope. Each ``CASE_DIR`` holds ``clt/params_layer_<i>
.safetensors`` (written by ``save_gemma_scope_2_clt``) and ours: ``x.npy [n, L, d_in]``,
``f.npy [n, L, d_sae]``, ``y_hat.npy [n, L, d_out]`` from ``clt_forward``.

Per case, three loads of ``load_gemma_scope_2_clt(paths, device=cpu, dtype=float32)``:

* ``as_shipped``: ``paths = {0: file_0, ..., L-1: file_{L-1}}``, what circuit-tracer's own
  caching code passes. Its loop ``for layer_idx in range(max(paths.keys()))`` reads only layers
  ``0 .. L-2``; what that does (an error, or a CLT one layer short) is recorded as it happens,
  and when it loads, its layers are compared with our first ``L - 1``.
* ``extra_key``: the same plus a dummy key ``L`` (never read): the workaround that loads all
  ``L`` layers; compared in full.
* ``forward``: ``clt.forward(x)`` on the ``extra_key`` load (for an affine CLT it calls
  ``decode`` without the inputs the skip needs: recorded as it happens).

Their layout: ``x [L, n, d]`` (layer first), ``W_enc [L, d_sae, d]``, threshold ``[L, 1, d_sae]``;
``encode(x)`` gives the codes, ``decode(features, input_acts)`` the reconstruction (skip included
when ``input_acts`` is given). Relative error: ``max |theirs - ours| / max |ours|`` per tensor.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import traceback
from importlib.metadata import version

import numpy as np
import torch
from circuit_tracer.transcoder.cross_layer_transcoder import load_gemma_scope_2_clt

CPU = torch.device("cpu")


def rel_err(theirs: np.ndarray, ours: np.ndarray) -> float:
    """``max |theirs - ours| / max |ours|`` (inf when the shapes differ)."""
    if theirs.shape != ours.shape:
        return float("inf")
    return float(np.max(np.abs(theirs - ours)) / max(float(np.max(np.abs(ours))), 1e-30))


def _error(e: BaseException) -> str:
    last = traceback.extract_tb(e.__traceback__)[-1]
    msg = " ".join(str(e).split())
    return f"{type(e).__name__} at {os.path.basename(last.filename)}:{last.lineno}: {msg[:400]}"


def compare(clt, x: np.ndarray, f: np.ndarray, y: np.ndarray) -> dict:
    """Their codes and reconstruction of our inputs ``x [n, L', d_in]`` against ours (``L'``: the
    layers their CLT holds)."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))  # [L', n, d_in]
    with torch.no_grad():
        feats = clt.encode(xt)
        recon = clt.decode(feats.to_sparse(), xt if clt.W_skip is not None else None)
    f_t = feats.numpy().transpose(1, 0, 2)
    y_t = recon.numpy().transpose(1, 0, 2)
    return {
        "n_layers_loaded": int(clt.n_layers),
        "fire_rate": float(np.mean(f > 0)),
        "firing_mismatches": int(np.sum((f_t > 0) != (f > 0))),
        "features_rel_err": rel_err(f_t, f),
        "recon_rel_err": rel_err(y_t, y),
    }


def check_case(case: str) -> dict:
    x, f, y = (np.load(os.path.join(case, f"{k}.npy")) for k in ("x", "f", "y_hat"))
    files = glob.glob(os.path.join(case, "clt", "params_layer_*.safetensors"))
    paths = {int(re.search(r"params_layer_(\d+)", p).group(1)): p for p in files}
    n = len(paths)
    out: dict = {
        "case": os.path.basename(case),
        "n_layers": n,
        "affine": bool(np.load(os.path.join(case, "affine.npy"))),
    }
    try:
        clt = load_gemma_scope_2_clt(dict(paths), device=CPU, dtype=torch.float32)
        res = compare(clt, x[:, : clt.n_layers], f[:, : clt.n_layers], y[:, : clt.n_layers])
        out["as_shipped"] = {"loaded": True, **res}
    except Exception as e:  # what their loader does with the paths it is meant to get
        out["as_shipped"] = {"loaded": False, "error": _error(e)}
    padded = {**paths, n: "unused (circuit-tracer reads keys 0 .. max - 1)"}
    try:
        clt = load_gemma_scope_2_clt(padded, device=CPU, dtype=torch.float32)
        out["extra_key"] = {"loaded": True, **compare(clt, x, f, y)}
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)))
        try:
            with torch.no_grad():
                y_fw = clt.forward(xt).numpy().transpose(1, 0, 2)
            out["forward"] = {"ran": True, "recon_rel_err": rel_err(y_fw, y)}
        except Exception as e:
            out["forward"] = {"ran": False, "error": _error(e)}
    except Exception as e:
        out["extra_key"] = {"loaded": False, "error": _error(e)}
    return out


def main(argv: list[str]) -> None:
    out_path, cases = argv[0], argv[1:]
    result = {
        "circuit_tracer": version("circuit-tracer"),
        "torch": torch.__version__,
        "cases": [check_case(c) for c in cases],
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
