"""One writer per workdir (gemmascope.lease): a held lease stops a second run, in this process or
another, with the holder named; a dead holder's lease on this host is taken over, loudly, so a
killed run's rerun resumes; another host's is never judged from here; ``force`` takes over; a
release never removes another run's lease; ``launch/train.py`` refuses a held workdir and takes it
with ``--force_unlock``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from gemmascope import lease
from gemmascope.lease import LeaseHeldError
from tests.test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
HOST = socket.gethostname()


def write_lock(path, **over):
    record = {"host": HOST, "pid": os.getpid(), "started": "2024-01-01T00:00:00.000000+00:00", "argv": ["x"]}
    record.update(over)
    with open(path, "w") as fh:
        json.dump(record, fh)
    return record


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    wd = str(tmp_path / "w")
    lk = lease.acquire(wd, "train")
    path = os.path.join(wd, ".lock-train")
    holder = json.load(open(path))
    assert holder == {"host": HOST, "pid": os.getpid(), "started": lk.started, "argv": list(sys.argv)}
    assert lk.started.endswith("+00:00")
    assert lk.release() and not os.path.exists(path)
    assert not lk.release()  # twice: nothing left to remove
    with lease.acquire(wd, "generate") as g:  # a context manager; the roles are independent leases
        with lease.acquire(wd, "train"):
            assert os.path.exists(g.path) and os.path.exists(path)
    assert not os.listdir(wd)
    with pytest.raises(RuntimeError, match="boom"), lease.acquire(wd, "train"):
        raise RuntimeError("boom")
    assert not os.path.exists(path)  # released on error too
    with pytest.raises(ValueError, match="role"):
        lease.acquire(wd, "eval")


def test_second_acquire_in_this_process_names_the_holder(tmp_path):
    with lease.acquire(str(tmp_path), "train") as lk:
        with pytest.raises(LeaseHeldError) as e:
            lease.acquire(str(tmp_path), "train")
        msg = str(e.value)
        for part in (lk.path, f"host {HOST}", f"pid {os.getpid()}", lk.started, "--force_unlock", "this very process"):
            assert part in msg, (part, msg)
        assert isinstance(e.value, RuntimeError)
        assert json.load(open(lk.path))["started"] == lk.started  # untouched


def test_second_acquire_in_another_process_fails_naming_host_and_pid(tmp_path):
    with lease.acquire(str(tmp_path), "generate") as lk:
        code = f"from gemmascope import lease; lease.acquire({str(tmp_path)!r}, 'generate')"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
        assert r.returncode != 0
        assert "LeaseHeldError" in r.stderr and lk.path in r.stderr, r.stderr[-2000:]
        assert f"host {HOST}, pid {os.getpid()}" in r.stderr and f"pid {os.getpid()} is alive" in r.stderr
        assert os.path.exists(lk.path)
    assert not os.path.exists(lk.path)


def test_a_dead_holders_lease_on_this_host_is_taken_over_loudly(tmp_path):
    """A killed run cannot release its lease; its rerun must still resume, saying whose it took."""
    path = str(tmp_path / ".lock-train")
    pid = dead_pid()
    record = write_lock(path, pid=pid, argv=["train.py", "--workdir=w"])
    logged = []
    lk = lease.acquire(str(tmp_path), "train", log=logged.append)
    assert len(logged) == 1 and f"pid {pid}" in logged[0] and "not running" in logged[0] and "train.py" in logged[0]
    assert json.load(open(path))["pid"] == os.getpid() and json.load(open(f"{path}.stale-{os.getpid()}")) == record
    lk.release()
    assert not os.path.exists(path)


def test_a_live_holder_is_never_taken_over(tmp_path):
    path = str(tmp_path / ".lock-train")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = write_lock(path, pid=holder.pid)
        with pytest.raises(LeaseHeldError, match=f"pid {holder.pid} is alive"):
            lease.acquire(str(tmp_path), "train")
        assert json.load(open(path)) == record
    finally:
        holder.kill()
        holder.wait()


def test_lease_from_another_host_says_it_cannot_tell(tmp_path):
    path = str(tmp_path / ".lock-train")
    record = write_lock(path, host="elsewhere-7", pid=dead_pid())
    with pytest.raises(LeaseHeldError) as e:
        lease.acquire(str(tmp_path), "train")
    msg = str(e.value)
    assert "host elsewhere-7" in msg and "cannot tell" in msg and "stale" not in msg
    assert json.load(open(path)) == record


def test_force_takes_over_and_says_what_it_removed(tmp_path):
    path = str(tmp_path / ".lock-train")
    write_lock(path, pid=dead_pid(), argv=["old", "command"])
    logged = []
    lk = lease.acquire(str(tmp_path), "train", force=True, log=logged.append)
    assert len(logged) == 1 and path in logged[0] and "old" in logged[0]
    assert json.load(open(path))["started"] == lk.started
    lk.release()
    assert not os.path.exists(path)
    lease.acquire(str(tmp_path), "train", force=True, log=logged.append).release()  # nothing to remove
    assert len(logged) == 1


def test_release_leaves_a_lease_that_is_not_ours(tmp_path):
    first = lease.acquire(str(tmp_path), "train")
    second = lease.acquire(str(tmp_path), "train", force=True, log=lambda *a: None)
    assert not first.release()  # taken over: the file is the second holder's now
    assert json.load(open(second.path))["started"] == second.started
    record = write_lock(second.path, started="2020-01-01T00:00:00.000000+00:00")  # same pid, other start
    assert not second.release() and json.load(open(second.path)) == record
    os.remove(second.path)
    assert not second.release()  # gone: nothing to do


def test_malformed_lock_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(lease.time, "sleep", lambda s: None)
    path = str(tmp_path / ".lock-generate")
    for text in ("not json {", "", json.dumps({"host": HOST})):
        with open(path, "w") as fh:
            fh.write(text)
        with pytest.raises(LeaseHeldError, match="malformed") as e:
            lease.acquire(str(tmp_path), "generate")
        assert path in str(e.value) and "--force_unlock" in str(e.value)
        assert open(path).read() == text
    lease.acquire(str(tmp_path), "generate", force=True, log=lambda *a: None).release()


def test_training_holds_the_lease_and_releases_it_even_on_error(tmp_path):
    from gemmascope.train import loop

    wd = str(tmp_path)
    marker = os.path.join(wd, "runs", "toy_layer0_width32", "exported.json")
    os.makedirs(os.path.dirname(marker))
    with open(marker, "w") as fh:
        fh.write("[]")
    seen = []
    assert (
        loop.train_and_evaluate(tiny_config(), wd, log=lambda m: seen.append(os.path.exists(wd + "/.lock-train"))) == []
    )
    assert seen == [True] and not os.path.exists(wd + "/.lock-train")
    with open(marker, "w") as fh:
        fh.write("[")  # the loop fails reading it
    with pytest.raises(json.JSONDecodeError):
        loop.train_and_evaluate(tiny_config(), wd, log=lambda *a: None)
    assert not os.path.exists(wd + "/.lock-train")
    with lease.acquire(wd, "train"):
        with pytest.raises(LeaseHeldError):
            loop.train_and_evaluate(tiny_config(), wd, log=lambda *a: None)


def test_train_command_refuses_a_held_workdir_and_takes_it_with_force_unlock(tmp_path):
    wd = str(tmp_path / "toy")
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch/train.py"),
        f"--config={REPO}/configs/toy.py",
        "--config.runlocal=True",
        "--config.num_tokens=20480",
        f"--workdir={wd}",
    ]
    with lease.acquire(wd, "train") as held:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
        assert r.returncode != 0
        assert held.path in r.stderr and f"host {HOST}, pid {os.getpid()}" in r.stderr, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        assert not os.path.exists(os.path.join(wd, "config.json"))  # refused before writing anything
        r = subprocess.run(cmd + ["--force_unlock"], capture_output=True, text=True, timeout=600, env=ENV)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"removed {held.path}" in r.stdout + r.stderr
        assert not os.path.exists(held.path)  # the forced run released it at its end
        assert not held.release()


def test_generation_takes_the_store_lease_before_loading_the_lm(tmp_path, monkeypatch):
    from gemmascope.config.experiments import demo
    from gemmascope.data import generate

    class Loaded(Exception):
        pass

    def no_lm(*a, **k):  # reached only with the lease held: stands in for the LM
        assert os.path.exists(os.path.join(store, ".lock-generate"))
        raise Loaded

    monkeypatch.setattr(generate, "LMActivations", no_lm)
    wd = str(tmp_path)
    store = os.path.join(wd, "activations")  # a local store: the lease is in its root
    with lease.acquire(store, "generate") as held:
        with pytest.raises(LeaseHeldError, match=held.path):
            generate.generate(demo.get_config(), wd, log=lambda *a: None)
        logged = []
        with pytest.raises(Loaded):
            generate.generate(demo.get_config(), wd, log=logged.append, force_unlock=True)
        assert f"removed {held.path}" in logged[0]
    assert not os.path.exists(held.path)  # the forced run released it, on error too
    c = demo.get_config()
    with c.unlocked():
        c.store.path = "memory://acts"  # a URL holds no lock file: the workdir's lease instead
    with lease.acquire(wd, "generate") as held, pytest.raises(LeaseHeldError, match=held.path):
        generate.generate(c, wd, log=lambda *a: None)
