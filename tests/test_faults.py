"""Fault injection: every fault a disk, a bucket or a kill can produce in a file we write raises the
named error (or recovers as specified) and never returns changed data.

Store faults on the small stores of test_store (d_in 8/12, chunks of 4 rows, shards of 3 chunks);
checkpoint faults on a tiny state; export faults on a tiny SAE; kill loops in subprocesses.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.data import store as st
from tests.test_store import META, N_ROWS, SITES, batch, expected, read_all, stored_rows, write_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD_ROWS = 12  # 3 chunks of 4 rows
INDEX_BYTES = 3 * 16 + 4  # per shard: (offset, length) uint64 per chunk, then its crc32c


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "clean"
    write_store(root)
    return str(root)


@pytest.fixture
def copy(clean, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(clean, dst)
    return str(dst)


def shard_path(root, site, i):
    return os.path.join(root, site, "c", str(i), "0")


def read_everything(root, site):
    """Every row of a site through the reader, in row order (one epoch)."""
    got = read_all(st.ActivationReader(root, site, 7, seed=0, epochs=1))
    return got[np.argsort(got[:, 0])]


def assert_fault(root, site, fault, path, rows=None):
    """The reader fails with the named fault (never data), and verify_store reports the same."""
    with pytest.raises(st.StoreError) as e:
        read_everything(root, site)
    err = e.value
    assert err.fault in fault and err.site == site and err.path == path, str(err)
    assert path in str(err) and "verify_store.py" in str(err) and "rows affected" in str(err)
    if rows is not None:
        assert err.rows == rows
    report = st.verify_store(root)
    assert not report.ok and any(f.path == path and f.fault in fault for f in report.faults), report.summary()
    return err


def flip(path, offset, bit=1):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ bit]))


# -- chunk data, shard index, truncation, missing shard -------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_byte_flip_in_chunk_data(copy, seed):
    rng = np.random.default_rng(seed)
    site = sorted(SITES)[seed % 2]
    shard = int(rng.integers(0, -(-N_ROWS // SHARD_ROWS)))
    path = shard_path(copy, site, shard)
    data_bytes = os.path.getsize(path) - INDEX_BYTES
    off = int(rng.integers(0, data_bytes))
    flip(path, off, bit=1 << int(rng.integers(0, 8)))
    chunk_bytes = 4 * SITES[site] * 4 + 4  # rows x d_in fp32 + crc32c
    a = shard * SHARD_ROWS + (off // chunk_bytes) * 4
    assert_fault(copy, site, ("corrupt chunk",), path, rows=(a, min(a + 4, N_ROWS)))


@pytest.mark.parametrize("seed", range(3))
def test_byte_flip_in_shard_index(copy, seed):
    rng = np.random.default_rng(100 + seed)
    path = shard_path(copy, "res_L3", seed)
    size = os.path.getsize(path)
    flip(path, int(rng.integers(size - INDEX_BYTES, size)), bit=1 << int(rng.integers(0, 8)))
    assert_fault(copy, "res_L3", ("corrupt shard",), path)


@pytest.mark.parametrize("keep", [0, 1, 100, -1])
def test_truncated_shard(copy, keep):
    path = shard_path(copy, "att_L3", 2)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(keep if keep >= 0 else size + keep)
    assert_fault(copy, "att_L3", ("corrupt shard",), path)


def test_deleted_shard_fails_on_open_naming_file_and_rows(copy):
    path = shard_path(copy, "res_L3", 3)
    os.remove(path)
    with pytest.raises(st.StoreError) as e:
        st.ActivationReader(copy, "res_L3", 4, seed=0)  # before any batch: never zeros
    assert e.value.fault == "missing shard" and e.value.path == path and e.value.rows == (36, 48)
    assert st.verify_store(copy).faults[0].path == path


def test_chunk_missing_inside_a_shard(copy):
    """A shard whose index records no chunk for rows inside the row count (as tensorstore leaves
    for fill-value chunks in stores written without store_data_equal_to_fill_value)."""
    import tensorstore as ts

    spec = st.Root(copy).array_spec("res_L3")
    spec["store_data_equal_to_fill_value"] = False
    arr = ts.open(spec, open=True, context=st.CONTEXT).result()
    arr[16:20].write(np.zeros((4, 8), np.float32)).result()  # chunk 4 of shard 1 dropped from its index
    assert_fault(copy, "res_L3", ("missing chunk",), shard_path(copy, "res_L3", 1), rows=(16, 20))


# -- metadata files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["store.json", "COMPLETE", "res_L3/site.json"])
@pytest.mark.parametrize("damage", ["delete", "garble", "edit"])
def test_metadata_file_faults(copy, name, damage):
    path = os.path.join(copy, name)
    text = open(path).read()
    if damage == "delete":
        os.remove(path)
    elif damage == "garble":
        open(path, "w").write(text[: len(text) // 2])
    else:  # still valid JSON, one number changed: only the checksum sees it
        obj = json.loads(text)
        if name == "store.json":
            obj["sites"]["res_L3"]["chunk_rows"] = 8
        else:
            obj["batches_done" if name == "COMPLETE" else "n_rows"] += 1
        open(path, "w").write(json.dumps(obj))
    with pytest.raises(st.StoreError) as e:
        st.ActivationReader(copy, "res_L3", 4, seed=0)
    msg = str(e.value)
    assert (path in msg or copy in msg) and ("what to do" in msg or "rerun" in msg), msg
    assert not st.verify_store(copy).ok


def test_garbled_progress_json(copy):
    path = os.path.join(copy, "progress.json")
    open(path, "w").write("{not json")
    report = st.verify_store(copy)
    assert [f.path for f in report.faults] == [path] and report.faults[0].fault == "malformed metadata"
    os.remove(os.path.join(copy, "COMPLETE"))  # as for a killed writer: progress.json is what it resumes from
    with pytest.raises(st.StoreError, match="progress.json: not valid JSON"):  # a resuming writer refuses
        st.ActivationWriter(copy, SITES, META, chunk_rows=4, chunks_per_shard=3)
    assert st.repair_store(copy, st.verify_store(copy), log=lambda *a: None) == 0  # nothing known durable
    write_store(copy)
    for site in SITES:
        np.testing.assert_array_equal(stored_rows(copy, site), expected(12, site))


def test_complete_marker_with_fewer_rows_than_recorded(copy):
    kv = st.Root(copy)
    done = kv.read_json(st.COMPLETE)
    done["sites"]["att_L3"]["rows"] -= 5
    kv.write_json(st.COMPLETE, done)  # a consistent checksum: the counts disagree, not the bytes
    with pytest.raises(st.StoreError) as e:
        st.open_store(copy)
    assert e.value.fault == "row count mismatch" and e.value.site == "att_L3"
    assert e.value.rows == (N_ROWS - 5, N_ROWS)


def test_store_without_chunk_checksums_is_read_with_a_warning(tmp_path):
    root = str(tmp_path / "old")
    write_store(root, chunk_checksums=False)
    with pytest.warns(st.StoreWarning, match="written before per-chunk checksums"):
        got = read_everything(root, "res_L3")
    np.testing.assert_array_equal(got, expected(12, "res_L3"))
    report = st.verify_store(root)
    assert report.ok and "NONE (written before checksums)" in report.summary()
    os.remove(shard_path(root, "res_L3", 1))  # missing data is still caught
    with pytest.raises(st.StoreError, match="missing"), warnings.catch_warnings():
        warnings.simplefilter("ignore", st.StoreWarning)
        st.ActivationReader(root, "res_L3", 4, seed=0)


# -- repair: roll back, rerun, bitwise ---------------------------------------------------------


def test_repair_then_rerun_rewrites_only_what_follows(copy):
    flip(shard_path(copy, "att_L3", 5), 7)  # rows 60..71 of att_L3
    report = st.verify_store(copy)
    assert [f.fault for f in report.faults] == ["corrupt chunk"]
    logs = []
    resume = st.repair_store(copy, report, log=logs.append)
    assert "rolled back to batch" in logs[0]
    w = st.ActivationWriter(copy, SITES, META, chunk_rows=4, chunks_per_shard=3)
    assert w.resume_from_batch == resume and 0 < resume < 12
    assert len(expected(resume, "att_L3")) <= 60  # no att_L3 row at or after the damaged shard kept
    for b in range(resume, 12):
        w.write_batch(b, batch(b))
    w.finalize()
    assert st.verify_store(copy).ok
    for site in SITES:
        np.testing.assert_array_equal(stored_rows(copy, site), expected(12, site))


def test_verify_reports_non_finite_rows(copy):
    import tensorstore as ts

    arr = ts.open(st.Root(copy).array_spec("res_L3"), open=True, context=st.CONTEXT).result()
    arr[25, 3].write(np.float32(np.inf)).result()  # a valid chunk (checksum rewritten) holding an inf
    faults = st.verify_store(copy).faults
    assert [(f.fault, f.rows) for f in faults] == [("non-finite values", (24, 28))]
    assert "rows 25 " in str(faults[0])


def test_garbled_zarr_json_then_repair(copy):
    path = os.path.join(copy, "att_L3", "zarr.json")
    open(path, "w").write('{"zarr_format": 3, "shape": [')
    with pytest.raises(st.StoreError) as e:
        st.ActivationReader(copy, "att_L3", 4, seed=0)
    assert e.value.fault == "malformed metadata" and e.value.path == path
    assert st.repair_store(copy, st.verify_store(copy), log=lambda *a: None) == 12  # only metadata to redo
    write_store(copy)  # the rerun: every batch durable, so it only finalizes
    assert st.verify_store(copy).ok
    for site in SITES:
        np.testing.assert_array_equal(stored_rows(copy, site), expected(12, site))


def test_verify_incomplete_store_says_so(copy):
    os.remove(os.path.join(copy, "COMPLETE"))
    report = st.verify_store(copy)
    assert report.incomplete and report.summary().startswith("INCOMPLETE") and "rerun the generate" in report.summary()
    assert st.repair_store(copy, report) is None and st.ActivationWriter(copy, SITES, META).resume_from_batch == 12


def test_verify_command(clean, copy):
    cmd = [sys.executable, os.path.join(REPO, "launch", "verify_store.py")]
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run(cmd + [f"--store={clean}"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"OK {clean}: 2 sites, {2 * N_ROWS:,} rows") and "GB/s" in r.stdout
    assert "crc32c" in r.stdout
    os.remove(shard_path(copy, "res_L3", 0))
    flip(shard_path(copy, "att_L3", 4), 3)
    r = subprocess.run(cmd + [f"--store={copy}"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "DAMAGED" in r.stdout and "2 fault(s)" in r.stdout, r.stdout
    assert shard_path(copy, "res_L3", 0) in r.stdout and shard_path(copy, "att_L3", 4) in r.stdout


# -- the writer killed at random points, rerun until done ---------------------------------------

WRITER_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from tests.test_store import batch, SITES, META
    from gemmascope.data import store as st
    kill_at, events = {kill_at}, [0]

    def event():
        events[0] += 1
        if events[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def hook(cls, name, after=False):
        real = getattr(cls, name)
        def wrapped(*a, **k):
            event()
            out = real(*a, **k)
            if after:
                event()
            return out
        setattr(cls, name, wrapped)

    hook(st.Root, "write_json", after=True)        # before/after every JSON file (progress, COMPLETE)
    hook(st.Root, "delete")                        # inside finalize's trimming
    hook(st.ActivationWriter, "flush")              # before the data of a flush is written
    with st.ActivationWriter({root!r}, SITES, META, chunk_rows=4, chunks_per_shard=3, rows_per_flush=9) as w:
        for b in range(w.resume_from_batch, 12):
            event()
            w.write_batch(b, batch(b))
""")


def test_writer_killed_at_random_points_ends_bitwise_equal(tmp_path, clean):
    root = str(tmp_path / "acts")
    rng = np.random.default_rng(7)
    kills = 0
    for attempt in range(12):  # a run makes about 50 events; kills early in each rerun
        kill_at = int(rng.integers(1, 12)) if attempt < 8 else 0
        code = WRITER_CHILD.format(repo=REPO, kill_at=kill_at, root=root)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
        kills += 1
    assert r.returncode == 0 and kills >= 4, (kills, r.stderr[-2000:])
    assert st.verify_store(root).ok
    info = st.open_store(root)
    for site in SITES:
        assert info.sites[site]["n_rows"] == N_ROWS
        np.testing.assert_array_equal(stored_rows(root, site), stored_rows(clean, site))  # bitwise
        assert info.sites[site]["norm_scale"] == st.open_store(clean).sites[site]["norm_scale"]
    assert sorted(read_all(st.ActivationReader(root, "att_L3", 5, seed=0, epochs=1))[:, 0]) == list(range(N_ROWS))


# -- checkpoints ---------------------------------------------------------------------------------


def tiny_state(v):
    return {"w": jnp.arange(300, dtype=jnp.float32) * v, "step": jnp.int32(v), "ok": jnp.ones(3, bool)}


def saved(tmp_path):
    from gemmascope.train.checkpoint import Checkpoints

    d = str(tmp_path / "ckpt")
    c = Checkpoints(d, max_to_keep=3, log=lambda *a: None)
    for s in (10, 20, 30):
        c.save(s, tiny_state(s), {"row": s})
    c.close()
    return d


def restore(d):
    from gemmascope.train.checkpoint import Checkpoints

    logs = []
    c = Checkpoints(d, max_to_keep=3, log=logs.append)
    out = c.restore_latest(tiny_state(0))
    c.close()
    return out, " ".join(logs)


def damage_files(step_dir, how, rng):
    files = sorted(
        p
        for p in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
        if os.path.isfile(p) and not p.endswith("commit_success.txt")
    )
    if how == "flip_all":  # one random byte in every file of the step
        for p in files:
            if os.path.getsize(p):
                flip(p, int(rng.integers(0, os.path.getsize(p))), 1 << int(rng.integers(0, 8)))
    elif how == "truncate_data":
        big = max(files, key=os.path.getsize)
        with open(big, "r+b") as fh:
            fh.truncate(os.path.getsize(big) // 2)
    elif how == "delete_state":
        shutil.rmtree(os.path.join(step_dir, "state"))
    elif how == "edit_position":  # valid JSON, another data position: only the digest sees it
        p = os.path.join(step_dir, "data", "metadata")
        obj = json.load(open(p))
        obj["row"] += 1
        json.dump(obj, open(p, "w"))
    elif how == "flip_state_values":  # bits of the stored values, wherever the state's bytes lie
        big = max((p for p in files if "/state/" in p), key=os.path.getsize)
        for off in rng.choice(os.path.getsize(big), 3, replace=False):
            flip(big, int(off), 1 << int(rng.integers(0, 8)))


@pytest.mark.parametrize("how", ["flip_all", "truncate_data", "delete_state", "edit_position", "flip_state_values"])
def test_corrupted_latest_checkpoint_falls_back(tmp_path, how):
    d = saved(tmp_path)
    damage_files(os.path.join(d, "30"), how, np.random.default_rng(0))
    (step, state, data), logs = restore(d)
    assert step == 20 and data == {"row": 20} and "fell back to step 20" in logs and "step 30" in logs
    for k, v in tiny_state(20).items():
        np.testing.assert_array_equal(np.asarray(state[k]), np.asarray(v))
    assert os.listdir(d + ".corrupt") and not os.path.exists(os.path.join(d, "30"))


def test_checkpoint_whose_values_differ_from_its_digest_is_refused(tmp_path, monkeypatch):
    """Values that load cleanly but are not what was saved (here: saved with another state's digest,
    as a bit flip that the storage layer does not see would be) are never restored."""
    from gemmascope.train import checkpoint

    d = saved(tmp_path)
    c = checkpoint.Checkpoints(d, max_to_keep=4, log=lambda *a: None)
    real = checkpoint.state_digest
    monkeypatch.setattr(checkpoint, "state_digest", lambda s: real(tiny_state(41)))
    c.save(40, tiny_state(40), {"row": 40})
    c.close()
    monkeypatch.undo()
    (step, state, _), logs = restore(d)
    assert step == 30 and "does not match its digest" in logs and "['w']" in logs and "fell back to step 30" in logs


def test_state_digest_sees_every_single_bit_flip():
    from gemmascope.train.checkpoint import state_digest

    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    base = state_digest({"x": jnp.asarray(x), "i": jnp.arange(5), "b": jnp.ones(4, bool)})
    bits = x.view(np.uint32)
    for pos in np.random.default_rng(1).choice(1000 * 32, 200, replace=False):
        y = bits.copy()
        y[pos // 32] ^= np.uint32(1) << np.uint32(pos % 32)
        got = state_digest({"x": jnp.asarray(y.view(np.float32)), "i": jnp.arange(5), "b": jnp.ones(4, bool)})
        assert got[2] != base[2] and got[:2] == base[:2]  # leaves in key order: b, i, x
    swapped = x.copy()
    swapped[[3, 7]] = swapped[[7, 3]]  # same values, other positions
    assert state_digest({"x": jnp.asarray(swapped)})[0] != base[2]


def test_no_usable_checkpoint_is_a_named_error(tmp_path):
    from gemmascope.train.checkpoint import CheckpointError

    d = saved(tmp_path)
    for s in ("10", "20", "30"):
        damage_files(os.path.join(d, s), "delete_state", None)
    with pytest.raises(CheckpointError, match="no usable checkpoint.*step 30.*step 20.*step 10"):
        restore(d)


# -- exports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncate", "flip", "flip_no_metadata"])
def test_corrupted_export_is_a_named_error(tmp_path, how):
    from gemmascope.sae.files import io as sae_io

    rng = np.random.default_rng(1)
    p = {
        "W_enc": rng.standard_normal((6, 10)).astype(np.float32),
        "W_dec": rng.standard_normal((10, 6)).astype(np.float32),
        "b_enc": np.zeros(10, np.float32),
        "b_dec": np.zeros(6, np.float32),
        "threshold": np.full(10, 0.5, np.float32),
    }
    path = str(tmp_path / "sae" / "params.npz")
    sae_io.save_params(path, p, {"architecture": "jumprelu"})
    assert json.load(open(tmp_path / "sae" / "metadata.json"))["params_sha256"]
    np.testing.assert_array_equal(sae_io.load_params(path)["W_enc"], p["W_enc"])
    size = os.path.getsize(path)
    if how == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(size - 100)
        match = "sha256 does not match"
    else:
        if how == "flip_no_metadata":  # a released-style file: the zip's CRC-32 catches it
            os.remove(tmp_path / "sae" / "metadata.json")
        flip(path, open(path, "rb").read().find(p["W_enc"].tobytes()) + 4 * 17, 4)  # inside W_enc's values
        match = "sha256 does not match" if how == "flip" else "not a readable .npz.*CRC"
    with pytest.raises(sae_io.SAEFileError, match=match):
        sae_io.load_params(path)


# -- training killed at random points (checkpoint saves), rerun until done: bitwise ---------------

TRAIN_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from tests.test_faults import train_config
    from gemmascope.train import checkpoint
    from gemmascope.train.loop import train_and_evaluate
    kill_save, where, n = {kill_save}, {where!r}, [0]
    real = checkpoint.Checkpoints.save

    def save(self, *a, **k):
        n[0] += 1
        if n[0] == kill_save and where == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, *a, **k)
        if n[0] == kill_save and where == "after":
            self.wait()
        if n[0] == kill_save:  # "during": the async save is still being written
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpoints.save = save
    train_and_evaluate(train_config(), {wd!r})
""")


def train_config():
    from tests.test_train import tiny_config

    return tiny_config(num_tokens=64 * 80, checkpoint_every=20, log_every=40)


def test_training_killed_at_random_points_with_a_corrupted_checkpoint_ends_bitwise_equal(tmp_path, capsys):
    """Two SIGKILLed runs (one after its third save, one at a random save, before or while it is
    written) with the latest checkpoint damaged in between, then a clean rerun: the exported
    parameters equal an uninterrupted run's bit for bit."""
    from gemmascope.train import loop
    from tests.test_train import _final_params

    ref_dir = str(tmp_path / "ref")
    loop.train_and_evaluate(train_config(), ref_dir, log=lambda *a: None)
    ref = _final_params(ref_dir)
    wd = str(tmp_path / "killed")
    ckpt_dir = os.path.join(wd, "runs", "toy_layer0_width32", "checkpoints")
    rng = np.random.default_rng(3)
    # Saves at steps 20, 40, 60 and 80 (the last one forced). Save 3 completed: steps 40 and 60
    # kept (max 2). Then 60 is damaged; the next run falls back to 40 and is killed at save 1 (step
    # 60) or 2 (step 80), before or while it is written.
    plan = [(3, "after"), (int(rng.integers(1, 3)), str(rng.choice(["before", "during"])))]
    outputs = []
    for i, (kill_save, where) in enumerate(plan):
        code = TRAIN_CHILD.format(repo=REPO, kill_save=kill_save, where=where, wd=wd)
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        outputs.append(r.stdout + r.stderr)
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        if i == 0:
            steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
            assert steps == [40, 60], steps
            damage_files(os.path.join(ckpt_dir, "60"), "flip_state_values", rng)
    assert "fell back to step 40" in outputs[1] and "resumed from step 40" in outputs[1], outputs[1][-2000:]
    # (no crash: each run ended by our SIGKILL at a save, after the fallback; orbax may print an
    # "Exception ignored ... Event loop is closed" note from its aborted read of the bad step)
    loop.train_and_evaluate(train_config(), wd)  # the last rerun, in this process
    assert "resumed from step" in capsys.readouterr().out
    got = _final_params(wd)
    assert sorted(got) == sorted(ref)
    for lam in ref:
        for k in ref[lam]:
            np.testing.assert_array_equal(got[lam][k], ref[lam][k], err_msg=f"lambda={lam} {k}")
