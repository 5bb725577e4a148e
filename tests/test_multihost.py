"""Two processes on localhost (CPU, gloo collectives) train the toy sweep with the global batch
split between them, and match a one-process run of the same config.

Each process has 2 fake CPU devices; the mesh is data=2 x model=2, so each process feeds half of
every batch (its own rows of the toy stream) and the latents are split within a process. Only
process 0 writes metrics.jsonl, config.json and the exports; orbax checkpoints are written by
both together (a mid-run save is included).

Tolerance: exported parameters within 1e-5 (absolute below 1, relative above) of the
one-process run after 12 steps; the runs differ only in the order of fp32 sums.
"""

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np

from gemmascope.config.files import config_file_path
from gemmascope.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
STEPS = 12
OVERRIDES = {
    "toy.d_in": 16,
    "toy.n_features": 32,
    "widths": (64,),
    "batch_size": 64,
    "num_tokens": 64 * STEPS,
    "lambdas": (0.01, 0.1),
    "lr": 1e-2,
    "lr_warmup_steps": 2,
    "lambda_warmup_steps": 4,
    "norm_sample_rows": 512,
    "eval_rows": 512,
    "log_every": 4,
    "checkpoint_every": 6,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _flags(over: dict) -> list[str]:
    out = []
    for k, v in over.items():
        v = ",".join(str(x) for x in v) if isinstance(v, tuple) else v
        out.append(f"--config.{k}={v}")
    return out


def _exports(workdir: str) -> dict[float, dict[str, np.ndarray]]:
    out = {}
    for path in glob.glob(os.path.join(workdir, "saes", "*", "*", "*", "*", "params.npz")):
        meta = json.load(open(os.path.join(os.path.dirname(path), "metadata.json")))
        with np.load(path) as z:
            out[meta["sparsity_coefficient"]] = {k: z[k] for k in z.files}
    return out


def test_two_processes_match_one(tmp_path):
    multi = str(tmp_path / "multi")
    port = _free_port()
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch/train.py"),
        f"--config={REPO}/configs/toy.py",
        f"--workdir={multi}",
        "--config.mesh.data=2",
        "--config.mesh.model=2",
    ] + _flags(OVERRIDES)
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-4000:]
    assert "over 2 process(es)" in outs[0] and "mesh data=2 model=2" in outs[0]
    assert "step 12/12" in outs[0] and "step 12/12" not in outs[1]  # progress from process 0 only

    # The same config in this (one-process, one-device) test process.
    spec = importlib.util.spec_from_file_location(
        "toy_config", config_file_path(os.path.join(REPO, "configs", "toy.py"))
    )
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    c = toy.get_config()  # the config file the processes loaded, with the same overrides
    with c.unlocked():
        for k, v in OVERRIDES.items():
            parent = c
            *path, last = k.split(".")
            for part in path:
                parent = parent[part]
            parent[last] = v
    single = str(tmp_path / "single")
    loop.train_and_evaluate(c, single, log=lambda *a: None)

    rows_multi = [json.loads(ln) for ln in open(os.path.join(multi, "metrics.jsonl"))]
    rows_single = [json.loads(ln) for ln in open(os.path.join(single, "metrics.jsonl"))]
    assert len(rows_multi) == len(rows_single) == 2 * STEPS // 4  # one writer: no duplicated rows
    for a, b in zip(rows_multi, rows_single):
        assert (a["step"], a["sae"]) == (b["step"], b["sae"])
        assert abs(a["loss"] - b["loss"]) <= TOL * max(1.0, abs(b["loss"])), (a, b)
        assert a["l0"] == b["l0"], (a, b)

    em, es = _exports(multi), _exports(single)
    assert sorted(em) == sorted(es) == [0.01, 0.1]
    for lam in es:
        for name, ref in es[lam].items():
            diff = np.max(np.abs(em[lam][name] - ref) / np.maximum(1.0, np.abs(ref)))
            assert diff <= TOL, (lam, name, diff)
    # The checkpoint's data position holds both processes' stream states.
    saved = []
    for path in glob.glob(os.path.join(multi, "runs", "*", "checkpoints", "6", "data", "*")):
        try:
            saved.append(json.load(open(path)))
        except ValueError:
            pass
    assert {"per_process": [{"kind": "toy", "next_batch": 6, "seed": 0}] * 2} in saved, saved
