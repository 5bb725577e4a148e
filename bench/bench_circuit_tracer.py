r"""Do our exported cross-layer transcoders load in circuit-tracer 0.5.0, and mean the same there?

    python bench/bench_circuit_tracer.py                        # venv in /tmp/circuit-tracer-0.5.0-venv
    python bench/bench_circuit_tracer.py --venv=DIR --no_write  # another venv; BENCHMARKS.md untouched

Run by hand, not by the test suite. circuit-tracer pins ``transformers<=4.57.3``, which our
environment cannot share, so this builds its own venv (``python3.11 -m venv``, then ``pip
install torch==2.13.0 circuit-tracer==0.5.0``: torch pinned, its CPU wheel; an unpinned torch
pulls gigabytes of CUDA), or reuses one that already has those versions.

In our environment: random CLTs (``L = 4``, ``d_in = d_out = 16``, ``d_sae = 32``, thresholds so
that about a third of the features fire; affine and not), written by
:func:`~gemmascope.sae.files.multilayer.save_gemma_scope_2_clt`, with our codes and
reconstructions of random inputs from :func:`~gemmascope.sae.files.multilayer.clt_forward`
saved beside them. In circuit-tracer's venv, ``bench/circuit_tracer_check.py`` (no gemmascope
import) loads each folder with circuit-tracer's ``load_gemma_scope_2_clt`` and compares (its
docstring says how, and why the layer count needs a look). Pass: codes and reconstructions within
1e-4 relative on the load that holds every layer. Prints the result and, unless ``--no_write``,
appends a section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gemmascope.sae.files import multilayer as ml  # noqa: E402

PINS = ("torch==2.13.0", "circuit-tracer==0.5.0")
TOL = 1e-4
SECTION = "## circuit-tracer 0.5.0 loads our CLT files"
CHECKER = os.path.join(ROOT, "bench", "circuit_tracer_check.py")


def random_clt(seed: int, *, n_layers: int, d_in: int, d_sae: int, d_out: int, affine: bool) -> dict[str, np.ndarray]:
    """A random causal CLT in raw units; encoder columns of norm ~1 so unit-variance inputs give
    unit-variance pre-activations, thresholds in [0.2, 0.8] (about a third fire)."""
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.standard_normal((n_layers, d_in, d_sae)) / np.sqrt(d_in),
        "b_enc": rng.standard_normal((n_layers, d_sae)) * 0.1,
        "threshold": rng.uniform(0.2, 0.8, (n_layers, d_sae)),
        "W_dec": rng.standard_normal((n_layers, d_sae, n_layers, d_out)) * 0.3 * ml.causal_mask(n_layers),
        "b_dec": rng.standard_normal((n_layers, d_out)) * 0.1,
    }
    if affine:
        p["W_skip"] = rng.standard_normal((n_layers, d_in, d_out)) * 0.2
    return {k: v.astype(np.float32) for k, v in p.items()}


def write_case(case: str, seed: int, *, n_tokens: int, affine: bool, **dims: int) -> None:
    """``case/clt/`` (our export) and our ``x.npy``, ``f.npy``, ``y_hat.npy``, ``affine.npy``."""
    params = random_clt(seed, affine=affine, **dims)
    ml.save_gemma_scope_2_clt(
        os.path.join(case, "clt"), params, metadata={"model": "random", "layers": list(range(dims["n_layers"]))}
    )
    x = np.random.default_rng(seed + 100).standard_normal((n_tokens, dims["n_layers"], dims["d_in"]))
    f, y_hat = ml.clt_forward(params, x.astype(np.float32))
    for name, arr in (("x", x.astype(np.float32)), ("f", f), ("y_hat", y_hat), ("affine", np.array(affine))):
        np.save(os.path.join(case, f"{name}.npy"), arr)


def venv_versions(python: str) -> dict[str, str] | None:
    """torch and circuit-tracer versions in the venv of ``python``; None when either is missing."""
    if not os.path.exists(python):
        return None
    code = (
        "import json; from importlib.metadata import version as v; "
        "print(json.dumps({'torch': v('torch'), 'circuit-tracer': v('circuit-tracer')}))"
    )
    run = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(run.stdout) if run.returncode == 0 else None


def ensure_venv(venv: str, base_python: str) -> str:
    """The venv's python, after creating the venv and installing :data:`PINS` when needed."""
    python = os.path.join(venv, "bin", "python")
    have = venv_versions(python)
    if have and have["torch"].split("+")[0] == "2.13.0" and have["circuit-tracer"] == "0.5.0":
        print(f"reusing {venv} (torch {have['torch']}, circuit-tracer {have['circuit-tracer']})")
        return python
    if not os.path.exists(python):
        print(f"creating {venv} with {base_python}", flush=True)
        subprocess.run([base_python, "-m", "venv", venv], check=True)
    print(f"pip install {' '.join(PINS)} (a few minutes)", flush=True)
    run = subprocess.run([python, "-m", "pip", "install", "-q", *PINS], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(
            f"pip install {' '.join(PINS)} failed (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
        )
    return python


def summarize(result: dict) -> tuple[bool, list[str]]:
    """Whether every full load passed :data:`TOL`, and one line per case and load."""
    ok, lines = True, []
    for c in result["cases"]:
        tag = f"L={c['n_layers']} {'affine' if c['affine'] else 'plain'}"
        for load in ("as_shipped", "extra_key"):
            r = c[load]
            if not r["loaded"]:
                lines.append(f"{tag} {load}: load failed: {r['error']}")
                ok = ok and load != "extra_key"
                continue
            good = r["features_rel_err"] <= TOL and r["recon_rel_err"] <= TOL
            ok = ok and (good or load != "extra_key")
            lines.append(
                f"{tag} {load}: loaded {r['n_layers_loaded']} of {c['n_layers']} layers; fire rate "
                f"{r['fire_rate']:.2f}; features rel err {r['features_rel_err']:.2e}, recon rel err "
                f"{r['recon_rel_err']:.2e}, firing mismatches {r['firing_mismatches']} "
                f"({'PASS' if good else 'FAIL'} at {TOL:g})"
            )
        fw = c.get("forward")
        if fw:
            lines.append(
                f"{tag} forward(x): "
                + (f"recon rel err {fw['recon_rel_err']:.2e}" if fw["ran"] else f"failed: {fw['error']}")
            )
    return ok, lines


def benchmarks_section(result: dict, ok: bool, lines: list[str], date: str, dims: dict) -> str:
    rows = []
    for c in result["cases"]:
        full, shipped = c["extra_key"], c["as_shipped"]
        if full["loaded"]:
            cells = f"{full['features_rel_err']:.1e} | {full['recon_rel_err']:.1e} | {full['firing_mismatches']}"
        else:
            cells = "load failed | | "
        what = f"loaded {shipped['n_layers_loaded']} of {c['n_layers']} layers" if shipped["loaded"] else ""
        if not shipped["loaded"]:
            err = shipped["error"]
            what = "fails: " + (err[err.index("size mismatch") :] if "size mismatch" in err else err)[:170] + " ..."
        fw = c.get("forward") or {}
        fw_cell = f"{fw['recon_rel_err']:.1e}" if fw.get("ran") else ("fails: " + fw.get("error", "n/a")[:120])
        rows.append(
            f"| {'affine' if c['affine'] else 'plain'} | {cells} | {what} | {fw_cell} | {date} |".replace("\n", " ")
        )
    shipped = [c["as_shipped"] for c in result["cases"]]
    if all(not r["loaded"] and "size mismatch" in r["error"] for r in shipped):
        outcome = (
            "an error, not a silent drop of the last layer (it builds an (L-1)-layer CLT, and `load_state_dict` "
            "refuses each file's `w_dec`, which spans all L target layers, with a size mismatch)"
        )
    elif all(r["loaded"] for r in shipped):
        outcome = f"it loads silently with {shipped[0]['n_layers_loaded']} layers, the last one dropped"
    else:
        outcome = "see the column above"
    return (
        f"\n{SECTION}\n\n"
        f"`bench/bench_circuit_tracer.py` (circuit-tracer {result['circuit_tracer']}, torch {result['torch']}, CPU, "
        f"float32): random CLTs with L = {dims['n_layers']}, d_in = d_out = {dims['d_in']}, d_sae = {dims['d_sae']}, "
        f"{dims['n_tokens']} tokens, written by `save_gemma_scope_2_clt`, loaded by circuit-tracer's "
        "`load_gemma_scope_2_clt({0: file_0, ..., L: dummy})` (an extra dummy key: see below); its `encode` and "
        "`decode(features, input_acts)` against our `clt_forward`. Relative error: max |diff| / max |ours|. "
        f"Result: {'PASS' if ok else 'FAIL'} at {TOL:g}.\n\n"
        "| CLT | features rel err | recon rel err | firing mismatches | paths {0..L-1} as circuit-tracer passes them | "
        "`forward(x)` | date |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "circuit-tracer 0.5.0's loader iterates `range(max(paths.keys()))`, so the paths its own caching code "
        f"passes (keys 0 .. L-1) read layers 0 .. L-2 only: {outcome}. Adding any key L (never read) loads all "
        "L layers, and those match ours. Its `forward(x)` calls `decode` without the inputs the affine skip "
        "needs; `decode(features, input_acts)` is the call that works for affine CLTs.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default="/tmp/circuit-tracer-0.5.0-venv", help="circuit-tracer's venv (made if absent)")
    ap.add_argument("--python", default="python3.11", help="the interpreter that makes the venv")
    ap.add_argument("--workdir", default=None, help="where the CLT folders go (a temp folder by default)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d_model", type=int, default=16)
    ap.add_argument("--d_sae", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--no_write", action="store_true", help="leave BENCHMARKS.md alone")
    args = ap.parse_args()

    python = ensure_venv(args.venv, args.python)
    work = args.workdir or tempfile.mkdtemp(prefix="clt-ct-")
    dims = dict(n_layers=args.layers, d_in=args.d_model, d_sae=args.d_sae, d_out=args.d_model)
    cases = []
    for seed, affine in ((0, False), (1, True)):
        case = os.path.join(work, "affine" if affine else "plain")
        write_case(case, seed, n_tokens=args.tokens, affine=affine, **dims)
        cases.append(case)
    out = os.path.join(work, "circuit_tracer.json")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    run = subprocess.run([python, CHECKER, out, *cases], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"the checker failed (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-5000:]}")
    result = json.load(open(out))
    ok, lines = summarize(result)
    print(f"circuit-tracer {result['circuit_tracer']}, torch {result['torch']}; files in {work}")
    print("\n".join(lines))
    print("RESULT:", "PASS" if ok else "FAIL", f"(features and reconstructions within {TOL:g} relative)")
    if not args.no_write:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as fh:
            fh.write(benchmarks_section(result, ok, lines, args.date, {**dims, "n_tokens": args.tokens}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
