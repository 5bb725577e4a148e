"""A process of a multi-process run dies: the others stop within a bound, naming it, and rerunning
all processes resumes bitwise (issue 35 item 3; :class:`gemmascope.train.distributed.Watchdog`).

The localhost set-up of ``tests/test_multihost.py`` (2 processes x 2 fake CPU devices, gloo,
mesh 2x2), 60 steps with checkpoints every 10. One run goes uninterrupted (the reference). A second
is killed twice: process 1 (SIGKILL) after step 22, then, rerun, process 0 (the coordinator) after
step 42; the third launch finishes it. Its exports must equal the reference's bit for bit (the same
processes, mesh and batches: no tolerance).

The bound: a survivor of a lost non-coordinator exits with status 75 within ``peer_timeout_s + 2 *
beat`` (here 4 + 0.8 s) of the kill, naming the lost process; ``SLACK`` (8 s) is the allowance for a
loaded 2-core machine (process start-up of a kill is not part of it). Without the watchdog JAX's
coordination service aborts it after its 100 s heartbeat timeout. A killed coordinator closes its
sockets and JAX itself aborts the survivor within about a second ("the leader task ... died").
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gemmascope.config import ConfigError, prepare
from gemmascope.config.files import load_config_file
from gemmascope.train.distributed import LOST_EXIT, Watchdog
from tests.test_multihost import OVERRIDES, REPO, _exports, _flags, _free_port

STEPS = 60
PEER_TIMEOUT = 4.0
BOUND = PEER_TIMEOUT + 2 * min(1.0, PEER_TIMEOUT / 10)
SLACK = 8.0
RUN = dict(OVERRIDES, num_tokens=64 * STEPS, log_every=2, checkpoint_every=10)


def _launch(workdir: str, tag: str) -> tuple[list[subprocess.Popen], list[str]]:
    """Both processes of one run, their output to ``<workdir>.<tag>.<pid>.log``. They share JAX's
    persistent compilation cache next to the workdir: the later launches load what the first
    ones compiled (a third less time on this machine; the same executables, so still bitwise)."""
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch/train.py"),
        f"--config={REPO}/configs/toy.py",
        f"--workdir={workdir}",
        "--config.mesh.data=2",
        "--config.mesh.model=2",
        f"--config.distributed.peer_timeout_s={PEER_TIMEOUT}",
        "--config.tensorboard=False",  # tensorboardX imports torch: seconds per launch
    ] + _flags(RUN)
    port, procs, logs = _free_port(), [], []
    for pid in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
        logs.append(f"{workdir}.{tag}.{pid}.log")
        with open(logs[-1], "w") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs, logs


def _last_step(workdir: str) -> int:
    try:
        with open(os.path.join(workdir, "metrics.jsonl"), "rb") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return 0
    return max((int(ln.split(b'"step": ')[1].split(b",")[0]) for ln in lines if b'"step": ' in ln), default=0)


def _finish(procs, logs, timeout=240) -> list[str]:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [open(path).read() for path in logs]


def _kill_after(workdir: str, tag: str, step: int, victim: int) -> tuple[float, int, str]:
    """Launches both processes, SIGKILLs ``victim`` once the metrics pass ``step``; returns the
    survivor's seconds from the kill to its exit, its status and its output."""
    procs, logs = _launch(workdir, tag)
    deadline = time.monotonic() + 240
    while _last_step(workdir) < step:
        running = all(p.poll() is None for p in procs)
        assert running and time.monotonic() < deadline, _finish(procs, logs, 5)
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor = procs[1 - victim]
    try:
        survivor.wait(timeout=120)
    finally:
        outs = _finish(procs, logs, 5)
    return time.monotonic() - killed, survivor.returncode, outs[1 - victim]


def test_lost_process_stops_the_survivor_and_the_rerun_resumes_bitwise(tmp_path):
    ref = str(tmp_path / "ref")
    outs = _finish(*_launch(ref, "ref"))  # first: it fills the compilation cache
    assert "step 60/60" in outs[0], outs[0][-3000:]
    run = str(tmp_path / "run")
    took, rc, out = _kill_after(run, "kill1", 22, victim=1)
    assert rc == LOST_EXIT, (rc, out[-3000:])
    assert "lost process 1 of 2" in out and "Rerun all 2 processes" in out, out[-3000:]
    assert took <= BOUND + SLACK, (took, out[-3000:])
    assert not os.path.exists(os.path.join(run, ".lock-train"))  # released on the way out

    took0, rc0, out0 = _kill_after(run, "kill0", 42, victim=0)
    assert "resumed from step" in open(f"{run}.kill0.0.log").read()
    assert rc0 != 0 and took0 <= BOUND + SLACK, (rc0, took0, out0[-3000:])
    assert "lost process 0" in out0 or "leader task" in out0, out0[-3000:]  # ours, or JAX's abort

    procs, logs = _launch(run, "rerun")
    outs = _finish(procs, logs)
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "resumed from step" in outs[0] and "step 60/60" in outs[0], outs[0][-3000:]
    got, want = _exports(run), _exports(ref)
    assert sorted(got) == sorted(want) == [0.01, 0.1]
    for lam in want:
        for name, a in want[lam].items():
            np.testing.assert_array_equal(got[lam][name], a, err_msg=f"lambda={lam} {name}")
    print(f"survivor of process 1: {took:.1f} s; of process 0: {took0:.1f} s (bound {BOUND:.1f} s)")


class _Store:
    """The coordination service's key-value store, in memory; ``down`` makes every call hang up."""

    def __init__(self):
        self.kv, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        self.kv[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


def test_watchdog_verdicts():
    store, now = _Store(), [0.0]
    dogs = [Watchdog(store, p, 3, 10.0, on_lost=print, clock=lambda: now[0]) for p in range(3)]
    for t in range(12):  # all three beat for 11 s
        now[0] = float(t)
        for d in dogs:
            d.beat()
    assert [d.verdict() for d in dogs] == [None] * 3
    dogs[2].stop()  # finished: never lost
    for t in range(12, 30):  # process 1 dies after its beat at 11 s (process 0 reads it at 12 s)
        now[0] = float(t)
        dogs[0].beat()
        if t == 22:
            assert dogs[0].verdict() is None  # silent for 10 s: not yet more than the timeout
    assert dogs[0].verdict().startswith("lost process 1 of 3: its heartbeat stopped 17.0 s ago (last beat 12")
    # A process stalled itself (no reads for 30 s) blames nobody for the silence it did not see...
    d = Watchdog(store, 0, 2, 10.0, on_lost=print, clock=lambda: now[0])
    d.beat()
    now[0] += 5
    assert d.verdict() is None
    # ...but a coordinator that stops answering is lost process 0, also to process 0 itself.
    store.down = True
    now[0] += 6
    with pytest.raises(RuntimeError) as e:  # the beat thread keeps the error and tries again
        d.beat()
    d.last_error = e.value
    assert d.verdict().startswith(
        "lost process 0 (the coordinator): its coordination service has not answered for 11.0 s"
    )


def test_peer_timeout_is_validated():
    c = load_config_file(os.path.join(REPO, "configs", "toy.py"))
    c.distributed.peer_timeout_s = -1.0
    with pytest.raises(ConfigError, match="distributed.peer_timeout_s"):
        prepare(c)
