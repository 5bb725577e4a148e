r"""A long toy run, SIGKILLed and resumed ten times, against the same run uninterrupted (issue 35 item 5).

    python bench/bench_long_run.py                          # 20,000 steps, 10 kills (~5 min on 2 cores)
    python bench/bench_long_run.py --steps=200 --kills=3 --no-write   # a quick look

``configs/toy.py`` at tiny shapes (d_in 16, 32 true features, width 64, 2 lambdas, batch 64), one
process on the CPU, TensorBoard on, logging every ``steps / 400`` steps and checkpointing every
``steps / 40`` (20,000 steps: every 50 and 500). Measured in one run:

* **Bitwise resume.** The run is killed with SIGKILL at ``--kills`` steps (seeded: half right as a
  checkpoint step is logged, so during its asynchronous save, half anywhere), rerun each time, then
  run to the end. Its exported ``params.npz`` arrays must equal the uninterrupted run's bit for bit,
  and every metric row it logged (rows between a checkpoint and a kill are logged twice) must equal
  the uninterrupted run's row of that step and SAE.
* **Memory.** The uninterrupted run's resident set (``VmRSS``) at every logged step; the goal is
  step ``steps`` within 10% of step ``steps / 20`` (20,000 against 1,000).
* **Files.** ``metrics.jsonl``, the TensorBoard events and the checkpoints at the end: the logs
  grow by a constant number of bytes per logged step (see docs/results.md for why that is fine),
  the checkpoints stay at ``max_checkpoints``.

Appends a row to BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "Long runs: kill-and-resume cycles, memory and log growth (bench/bench_long_run.py)"


def overrides(steps: int) -> dict:
    return {
        "toy.d_in": 16,
        "toy.n_features": 32,
        "widths": (64,),
        "batch_size": 64,
        "num_tokens": 64 * steps,
        "lambdas": (0.01, 0.1),
        "norm_sample_rows": 512,
        "eval_rows": 512,
        "log_every": max(1, steps // 400),
        "checkpoint_every": max(10, steps // 40),
    }


def child(workdir: str, steps: int, rss_path: str) -> None:
    """One training process: the toy config with :func:`overrides`, and after every logged step a
    line ``<step> <VmRSS kB>`` appended to ``rss_path`` (the parent kills and measures by it)."""
    from gemmascope.config.files import load_config_file
    from gemmascope.train import loop, writers

    c = load_config_file(os.path.join(REPO, "configs", "toy.py"))
    with c.unlocked():
        for key, v in overrides(steps).items():
            parent, *path = c, *key.split(".")
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = v
    real = writers.JsonlWriter.write

    def write(self, step, rows):
        real(self, step, rows)
        with open(rss_path, "a") as fh:
            fh.write(f"{step} {rss_kb()}\n")

    writers.JsonlWriter.write = write
    loop.train_and_evaluate(c, workdir)


def rss_kb(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln for ln in fh if ln.startswith("VmRSS:")).split()[1])


def launch(workdir: str, steps: int, tag: str) -> tuple[subprocess.Popen, str, str]:
    rss, log = f"{workdir}.rss.{tag}", f"{workdir}.log.{tag}"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", workdir, "--steps", str(steps), "--rss", rss]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT), rss, log


def last_step(rss: str) -> int:
    try:
        with open(rss) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return 0
    return int(lines[-1].split()[0]) if lines else 0


def kill_plan(steps: int, kills: int, seed: int) -> list[int]:
    """``kills`` sorted steps: every other one a checkpoint step (killed during its save)."""
    o, rng = overrides(steps), random.Random(seed)
    ck, log = o["checkpoint_every"], o["log_every"]
    saves = list(range(ck, steps - log, ck))
    anywhere = list(range(ck + 1, steps - log))
    plan = set(rng.sample(saves, min(len(saves), (kills + 1) // 2)))
    while len(plan) < kills:
        plan.add(rng.choice(anywhere))
    return sorted(plan)


def killed_run(workdir: str, steps: int, plan: list[int]) -> list[dict]:
    """Runs, SIGKILLs at each step of ``plan`` (as soon as the child logs it or a later step), reruns;
    returns per launch the step it resumed from and the step it was killed after."""
    out = []
    for i, target in enumerate(plan):
        proc, rss, log = launch(workdir, steps, f"kill{i}")
        while last_step(rss) < target:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"launch {i} ended (status {proc.returncode}) before step {target}: {open(log).read()[-3000:]}"
                )
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = open(log).read()
        resumed = int(text.split("resumed from step ")[1].split()[0]) if "resumed from step " in text else 0
        out.append({"target": target, "killed_after": last_step(rss), "resumed_from": resumed})
    proc, rss, log = launch(workdir, steps, "final")
    if proc.wait() != 0:
        raise RuntimeError(f"the final rerun failed (status {proc.returncode}): {open(log).read()[-3000:]}")
    out.append(
        {
            "target": steps,
            "killed_after": None,
            "resumed_from": int(open(log).read().split("resumed from step ")[1].split()[0]),
        }
    )
    return out


def exports(workdir: str) -> dict[float, dict[str, np.ndarray]]:
    out = {}
    for p in sorted(glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True)):
        meta = json.load(open(os.path.join(os.path.dirname(p), "metadata.json")))
        with np.load(p) as z:
            out[meta["sparsity_coefficient"]] = {k: z[k] for k in z.files}
    return out


def compare(ref: str, run: str) -> tuple[int, int]:
    """Raises unless the exports are bitwise equal and every row ``run`` logged equals the reference's
    row of its step and SAE; returns (arrays compared, rows compared)."""
    a, b = exports(ref), exports(run)
    if sorted(a) != sorted(b) or not a:
        raise AssertionError(f"exported SAEs differ: {sorted(a)} against {sorted(b)}")
    arrays = 0
    for lam in a:
        for k in a[lam]:
            if not np.array_equal(a[lam][k], b[lam][k]):
                raise AssertionError(f"lambda={lam} {k}: max diff {np.max(np.abs(a[lam][k] - b[lam][k]))}")
            arrays += 1
    want = {(r["step"], r["sae"]): r for r in map(json.loads, open(os.path.join(ref, "metrics.jsonl")))}
    rows = [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl"))]
    for r in rows:
        if r != want.get((r["step"], r["sae"])):
            raise AssertionError(
                f"metric row differs at step {r['step']}, SAE {r['sae']}: {r} against {want.get((r['step'], r['sae']))}"
            )
    if {(r["step"], r["sae"]) for r in rows} != set(want):
        raise AssertionError("the killed run's metrics miss steps the uninterrupted run logged")
    return arrays, len(rows)


def du(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def measure(steps: int, kills: int, seed: int, root: str) -> dict:
    """The uninterrupted run, the killed run and their comparison, in ``root``; the numbers."""
    ref, run = os.path.join(root, "ref"), os.path.join(root, "killed")
    t = time.perf_counter()
    proc, rss, log = launch(ref, steps, "ref")
    if proc.wait() != 0:
        raise RuntimeError(f"the uninterrupted run failed: {open(log).read()[-3000:]}")
    t_ref = time.perf_counter() - t
    rss_at = dict(tuple(map(int, ln.split())) for ln in open(rss))
    early = min(s for s in rss_at if s >= steps // 20)
    t = time.perf_counter()
    cycles = killed_run(run, steps, kill_plan(steps, kills, seed))
    t_run = time.perf_counter() - t
    arrays, rows = compare(ref, run)
    metrics = os.path.join(ref, "metrics.jsonl")
    early_bytes = sum(len(ln) for ln in open(metrics, "rb") if json.loads(ln)["step"] <= early)
    return {
        "steps": steps,
        "cycles": cycles,
        "arrays": arrays,
        "rows": rows,
        "rss_early": (early, rss_at[early]),
        "rss_end": (steps, rss_at[steps]),
        "rss_max": max(rss_at.values()),
        "metrics_bytes": (early_bytes, du(metrics)),
        "tensorboard_bytes": du(os.path.join(ref, "tensorboard")),
        "checkpoints": sorted(
            int(s) for s in os.listdir(glob.glob(os.path.join(ref, "runs", "*", "checkpoints"))[0]) if s.isdigit()
        ),
        "checkpoint_bytes": du(glob.glob(os.path.join(ref, "runs", "*", "checkpoints"))[0]),
        "seconds": (t_ref, t_run),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--rss", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps, args.rss)
    with tempfile.TemporaryDirectory() as root:
        m = measure(args.steps, args.kills, args.seed, root)
    (s0, r0), (s1, r1) = m["rss_early"], m["rss_end"]
    growth = r1 / r0 - 1
    kills = ", ".join(f"{c['killed_after']}" for c in m["cycles"][:-1])
    resumed = ", ".join(f"{c['resumed_from']}" for c in m["cycles"][1:])
    b0, b1 = m["metrics_bytes"]
    print(f"killed after steps {kills}; the reruns resumed from {resumed}, the last ran to {m['steps']}")
    print(f"bitwise: {m['arrays']} exported arrays equal; {m['rows']} logged rows equal the uninterrupted run's")
    print(
        f"RSS: {r0 / 1024:.1f} MiB at step {s0}, {r1 / 1024:.1f} MiB at step {s1} ({growth:+.1%}; max {m['rss_max'] / 1024:.1f} MiB)"
    )
    print(
        f"files at step {m['steps']}: metrics.jsonl {b1:,} B ({b0:,} B at step {s0}), TensorBoard {m['tensorboard_bytes']:,} B, "
        f"checkpoints {m['checkpoints']} {m['checkpoint_bytes']:,} B"
    )
    print(
        f"seconds: uninterrupted {m['seconds'][0]:.0f}, killed {len(m['cycles']) - 1} times and rerun {m['seconds'][1]:.0f}"
    )
    if not args.no_write:
        from bench.report import append_rows, machine

        append_rows(
            SECTION,
            "| machine | run | kills (after step) | bitwise | RSS first / last | metrics.jsonl, TensorBoard, checkpoints | seconds: plain, killed |\n"
            "|---|---|---|---|---|---|---|",
            [
                f"| {machine()} | toy d_in 16, width 64, K=2, batch 64, {m['steps']:,} steps, log every "
                f"{overrides(m['steps'])['log_every']}, checkpoint every {overrides(m['steps'])['checkpoint_every']} "
                f"| {len(m['cycles']) - 1} ({kills}; resumed from {resumed}) | {m['arrays']} arrays, {m['rows']} metric rows equal "
                f"| {r0 / 1024:.1f} MiB (step {s0}) / {r1 / 1024:.1f} MiB (step {s1}): **{growth:+.1%}** (goal within 10%) "
                f"| {b1:,} B ({b0:,} at step {s0}), {m['tensorboard_bytes']:,} B, {len(m['checkpoints'])} kept: "
                f"{m['checkpoint_bytes']:,} B | {m['seconds'][0]:.0f}, {m['seconds'][1]:.0f} |"
            ],
        )
    return None


if __name__ == "__main__":
    main()
