"""Disk full (ENOSPC, EDQUOT) at every stage: the named error (:class:`gemmascope.common.DiskFullError`)
names the path and the bytes needed, nothing already written is lost or left truncated, and the
same call rerun once space is freed completes, bitwise equal to a run that never failed.

Two ways to fill a disk: injection (the lowest write primitive of each stage fails once its budget
is spent: the file object under ``atomic_write``, ``os.write`` of ``metrics.jsonl``, orbax's JSON
item write, tensorstore's write futures) and, where ``unshare`` may mount one, a real 1 MiB tmpfs
filled by a filler file (skipped without user namespaces).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gemmascope.common import DiskFullError, disk_full_as_error, disk_full_error
from gemmascope.data import store as st
from tests.test_store import SITES, expected, stored_rows, write_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ts_full(path: str) -> ValueError:
    """What tensorstore raises for a full disk (its message, as seen on a full tmpfs)."""
    return ValueError(
        f'RESOURCE_EXHAUSTED: Error writing local file "{path}": Failed writing: "{path}.__lock": '
        "Failed to write 448 bytes to file 4: No space left on device [os_error_code='28']"
    )


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


# -- the one conversion --------------------------------------------------------------------------


def chained() -> RuntimeError:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("orbax: a save failed") from e
    except RuntimeError as e:
        return e


@pytest.mark.parametrize(
    "exc,code",
    [
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
        (ts_full("/d/s/res_L3/c/0/0"), errno.ENOSPC),
        (chained(), errno.ENOSPC),
    ],
)
def test_disk_full_error_names_path_bytes_and_cause(tmp_path, exc, code):
    err = disk_full_error(exc, str(tmp_path / "f.bin"), 123_456, what="file", kept="Old files kept.")
    assert isinstance(err, DiskFullError) and isinstance(err, OSError) and err.errno == code
    assert err.path == err.filename == str(tmp_path / "f.bin") and err.needed == 123_456 and err.free > 0
    text = str(err)
    assert str(tmp_path / "f.bin") in text and "123,456 bytes" in text and "Old files kept." in text
    assert ("ENOSPC" if code == errno.ENOSPC else "EDQUOT") in text and "rerun the same command" in text
    if "os_error_code" in str(exc):
        assert "(the file being written: /d/s/res_L3/c/0/0)" in text
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DiskFullError and str(back) == text and back.needed == err.needed


@pytest.mark.parametrize(
    "exc", [OSError(errno.EACCES, "Permission denied"), ValueError("RESOURCE_EXHAUSTED: out of memory"), KeyError(3)]
)
def test_other_errors_pass_through_unchanged(tmp_path, exc):
    assert disk_full_error(exc, str(tmp_path), 1) is None
    with pytest.raises(type(exc)) as e, disk_full_as_error(str(tmp_path), 1):
        raise exc
    assert e.value is exc


# -- export: every SAE file layout, the file write under atomic_write fails ------------------------


class FullDisk:
    """Files opened by ``os.fdopen`` (atomic_write's) accept ``budget`` bytes in all, then fail
    with ENOSPC (the bytes that fit reach the temp file first), until :meth:`free`."""

    def __init__(self, monkeypatch, budget: int):
        self.left, self.real = budget, os.fdopen
        monkeypatch.setattr(os, "fdopen", self.fdopen)

    def free(self):
        self.left = None

    def fdopen(self, fd, *a, **k):
        fh, disk = self.real(fd, *a, **k), self

        class Limited:
            def __getattr__(self, name):
                return getattr(fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                if disk.left is not None and len(data) > disk.left:
                    fh.write(data[: disk.left])
                    fh.flush()
                    disk.left = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                if disk.left is not None:
                    disk.left -= len(data)
                return fh.write(data)

        return Limited()


def tiny_sae(scale: float) -> dict:
    rng = np.random.default_rng(0)
    return {
        "W_enc": rng.standard_normal((6, 10)).astype(np.float32) * scale,
        "W_dec": rng.standard_normal((10, 6)).astype(np.float32),
        "b_enc": np.zeros(10, np.float32),
        "b_dec": np.full(6, scale, np.float32),
        "threshold": np.full(10, 0.5, np.float32),
    }


def files_of(folder) -> dict[str, bytes]:
    return {
        os.path.relpath(p, folder): open(p, "rb").read()
        for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if os.path.isfile(p)
    }


def export_once(kind: str, scale: float, src_root, out: str):
    from gemmascope.sae.files import export as sae_export
    from gemmascope.sae.files import io as sae_io
    from gemmascope.sae.files import multilayer
    from tests.test_clt_files import rand_clt

    if kind == "clt":
        p = rand_clt(seed=int(scale))
        return multilayer.save_gemma_scope_2_clt(out, p, metadata={"model": "tiny", "layers": [0, 1, 2]})
    src = os.path.join(str(src_root), f"src{scale}")
    if not os.path.exists(src):
        sae_io.save_params(os.path.join(src, "params.npz"), tiny_sae(scale), {"architecture": "jumprelu"})
    return sae_export.export(src, kind, out)


@pytest.mark.parametrize("kind", ["gemma_scope", "sae_lens", "gemma_scope_2", "clt"])
@pytest.mark.parametrize("budget", [0, 700])
def test_export_disk_full_keeps_every_file_whole_and_rerun_completes(tmp_path, monkeypatch, kind, budget):
    out, ref = str(tmp_path / "out"), str(tmp_path / "ref")
    export_once(kind, 1.0, tmp_path, out)  # an earlier export of another SAE into the same folder
    old = files_of(out)
    export_once(kind, 2.0, tmp_path, ref)
    new = files_of(ref)
    disk = FullDisk(monkeypatch, budget)
    with pytest.raises(DiskFullError) as e:
        export_once(kind, 2.0, tmp_path, out)
    err = e.value
    name = os.path.relpath(err.path, out)
    assert err.errno == errno.ENOSPC and name in new and err.needed == len(new[name]), str(err)
    assert f"{len(new[name]):,} bytes" in str(err) and err.path in str(err)
    now = files_of(out)
    assert not [f for f in now if ".tmp-" in f], now  # no temp file left
    assert set(now) == set(old)  # nothing half written, nothing lost: each file is the old or the new one
    assert all(now[f] in (old[f], new.get(f)) for f in now) and now[name] == old[name]
    disk.free()
    export_once(kind, 2.0, tmp_path, out)
    assert files_of(out) == new  # the rerun: bitwise the export that never failed


def test_release_tree_disk_full_leaves_nothing_and_rerun_completes(tmp_path, monkeypatch):
    """``write_release`` builds the tree in a hidden folder renamed at the end: a full disk part way
    raises DiskFullError naming the file, leaves no tree and no partial folder; the rerun writes the
    tree an undisturbed run writes, bitwise."""
    from gemmascope.sae.files import release
    from tests.test_release import add_clt, add_sae

    wd = str(tmp_path / "wd")
    add_sae(wd, "res", 9, 1024, 20, 19.2, seed=0)
    add_sae(wd, "transcoder", 9, 1024, 20, 21.0, arch="transcoder", seed=6)
    add_clt(wd)
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    release.write_release(wd, ref, log=None)
    disk = FullDisk(monkeypatch, sum(len(v) for v in files_of(ref).values()) // 2)  # full half way
    with pytest.raises(DiskFullError) as e:
        release.write_release(wd, out, log=None)
    assert ".gemma-scope-2-270m-pt.partial" in e.value.path and e.value.needed > 0, str(e.value)
    assert os.listdir(out) == []  # nothing half written stays
    disk.free()
    release.write_release(wd, out, log=None)
    assert files_of(out) == files_of(ref)


# -- evaluation's files: eval.json, fire_counts.npy, tables, plots --------------------------------


def eval_rows():
    return [
        {"architecture": "jumprelu", "site": "res", "layer": 3, "d_sae": 64, "l0": l0, "fvu": f, "delta_loss": d}
        for l0, f, d in ((10.0, 0.3, 0.2), (20.0, 0.2, 0.1), (40.0, 0.1, 0.05))
    ]


@pytest.mark.parametrize("budget", [0, 500, 20_000])
def test_eval_tables_disk_full_keeps_files_and_rerun_completes(tmp_path, monkeypatch, budget):
    from gemmascope.eval import evaluate

    ref, out = str(tmp_path / "ref"), str(tmp_path / "eval")
    evaluate.write_table_and_plots(eval_rows(), ref)
    evaluate.write_table_and_plots(eval_rows()[:2], out)  # an earlier evaluation, fewer SAEs
    new, old = files_of(ref), files_of(out)
    disk = FullDisk(monkeypatch, budget)
    with pytest.raises(DiskFullError) as e:
        evaluate.write_table_and_plots(eval_rows(), out)
    name = os.path.relpath(e.value.path, out)
    assert e.value.needed == len(new[name]) and e.value.path in str(e.value)
    now = files_of(out)
    assert set(now) == set(old) and all(now[f] in (old[f], new[f]) for f in now) and now[name] == old[name]
    disk.free()
    evaluate.write_table_and_plots(eval_rows(), out)
    assert files_of(out) == new


def test_eval_json_and_fire_counts_are_written_whole(tmp_path, monkeypatch):
    from gemmascope.eval import evaluate

    counts = np.arange(1000, dtype=np.int64)
    FullDisk(monkeypatch, 100)
    with pytest.raises(DiskFullError) as e:
        evaluate._write_npy(str(tmp_path / "fire_counts.npy"), counts)
    assert e.value.needed == counts.nbytes + 128 and os.listdir(tmp_path) == []  # .npy: 128-byte header
    with pytest.raises(DiskFullError, match="eval.json"):
        evaluate._write_json(str(tmp_path / "eval.json"), {"l0": 1.0})
    assert os.listdir(tmp_path) == []


def fake_result(sae: dict) -> dict:
    """What :func:`gemmascope.eval.metrics.evaluate_saes` returns for one SAE, made from its weights."""
    v = float(np.abs(sae["W_enc"]).sum())
    return {
        **{k: v for k in ("l0", "fvu", "delta_loss", "ce_clean", "ce_sae", "ce_zero", "dead_fraction")},
        **{k: v for k in ("ce_loss_score", "kl_div_with_sae", "explained_variance", "cossim", "l2_ratio")},
        **{k: v for k in ("relative_reconstruction_bias", "frac_alive", "freq_over_1_percent")},
        "freq_over_10_percent": v,
        "n_tokens": 10,
        "n_outliers_kept_clean": 0,
        "tokens_per_second": 1.0,
        "fire_counts": np.arange(10) * int(v),
        "err_by_position": np.array([1.0, v]),
    }


def test_evaluate_workdir_disk_full_then_rerun_evaluates_the_rest(tmp_path, monkeypatch):
    """``evaluate_workdir`` (the LM and the metrics stubbed: this is about its files) stopped by a
    full disk at the second SAE's eval.json: the first SAE's files stay whole, the rerun evaluates
    only the SAEs without eval.json, and every file ends equal to an uninterrupted evaluation's."""
    from gemmascope import config as config_lib
    from gemmascope.eval import evaluate
    from gemmascope.sae.files import io as sae_io

    wd, evaluated = str(tmp_path / "wd"), []
    for i in range(3):
        folder = os.path.join(wd, "saes", "res", "layer_1", "width_10", f"average_l0_{i}")
        meta = {"architecture": "jumprelu", "site": "res", "layer": 1, "d_sae": 10}
        sae_io.save_params(os.path.join(folder, "params.npz"), tiny_sae(i + 1.0), meta)

    class LM:
        model_name, params, lm_cfg = "toy", None, None

        def __init__(self, *a, **k):
            pass

        def packed_batches(self, part):
            return iter([])

    def evaluate_saes(params, cfg, batches, *, saes, **kw):
        evaluated.extend(float(s["W_enc"][0, 0]) for s in saes)
        return [fake_result(s) for s in saes]

    monkeypatch.setattr(evaluate, "LMActivations", LM)
    monkeypatch.setattr(evaluate, "evaluate_saes", evaluate_saes)

    def run():
        return evaluate.evaluate_workdir(config_lib.base_config(), wd, 100, log=lambda *a: None, saes_per_pass=1)

    run()
    ref = {k: v for k, v in files_of(wd).items() if "params.npz" not in k and "metadata.json" not in k}
    for name in ref:
        os.remove(os.path.join(wd, name))
    real_fdopen, n = os.fdopen, [0]

    def fdopen(fd, *a, **k):
        if fd_path(fd).endswith("eval.json"):
            n[0] += 1
            if n[0] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fdopen(fd, *a, **k)

    evaluated.clear()
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", fdopen)
        with pytest.raises(DiskFullError) as e:
            run()
    name = os.path.relpath(e.value.path, wd)
    assert name.endswith("average_l0_1/eval.json") and e.value.needed == len(ref[name]), str(e.value)
    now = files_of(wd)
    kept = {k for k in now if "params.npz" not in k and "metadata.json" not in k}
    assert {now[k] == ref[k] for k in kept} == {True}  # every file written is whole and final
    assert not any(".tmp-" in k for k in now) and name not in now
    w = [float(tiny_sae(i + 1.0)["W_enc"][0, 0]) for i in range(3)]
    assert evaluated == w[:2]  # SAE 0 written, SAE 1 evaluated but its eval.json did not fit
    evaluated.clear()
    run()  # space freed: the same call
    assert evaluated == w[1:]  # only the SAEs without eval.json
    after = files_of(wd)
    assert {k: v for k, v in after.items() if k in ref} == ref and set(after) - set(ref) == set(now) - kept


# -- generation: the store writer's tensorstore writes fail ---------------------------------------


class FullStore:
    """The ``k``-th tensorstore write of the store (a shard, or a JSON file) returns a future
    that fails as tensorstore's does on a full disk; so does every later one."""

    def __init__(self, monkeypatch, k: int):
        self.k, self.n = k, 0
        real_open, real_init, disk = st.ActivationWriter._open_array, st.Root.__init__, self
        monkeypatch.setattr(st.ActivationWriter, "_open_array", lambda w, *a: Proxy(real_open(w, *a), disk, "shard"))

        def init(root, path):
            real_init(root, path)
            root.kv = Proxy(root.kv, disk, "json")

        monkeypatch.setattr(st.Root, "__init__", init)

    def full(self) -> bool:
        self.n += 1
        return self.n >= self.k


class Failed:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


class Proxy:
    def __init__(self, real, disk, kind):
        self._real, self._disk, self._kind = real, disk, kind

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __getitem__(self, index):
        return Proxy(self._real[index], self._disk, self._kind)

    def write(self, *a):
        if self._disk.full():
            return Failed(ts_full(f"/store/{self._kind}"))
        return self._real.write(*a)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "acts"
    write_store(root)
    return str(root)


@pytest.mark.parametrize("k", [1, 3, 4, 17, 29, 31])  # of 31 writes: store.json, shards, progress, site.json, COMPLETE
def test_generation_disk_full_keeps_durable_rows_and_resumes_bitwise(tmp_path, monkeypatch, clean, k):
    root = str(tmp_path / "acts")
    FullStore(monkeypatch, k)
    with pytest.raises(DiskFullError) as e:
        write_store(root, rows_per_flush=9)
    err = e.value
    assert err.path.startswith(root) and err.path in str(err) and "progress.json is intact" in str(err)
    assert err.needed and err.needed > 0, str(err)  # a shard flush: the flush's bytes; a JSON file: its own
    monkeypatch.undo()  # space freed
    progress = st.Root(root).read_json("progress.json") or {"sites": {}}
    for site in SITES:  # every row recorded durable before the failure is there, unchanged
        n = progress["sites"].get(site, {}).get("rows", 0)
        if n:
            np.testing.assert_array_equal(stored_rows(root, site, slice(0, n)), expected(12, site)[:n])
    write_store(root, rows_per_flush=9)  # the same call again
    assert st.verify_store(root).ok
    for site in SITES:
        np.testing.assert_array_equal(stored_rows(root, site), stored_rows(clean, site))  # bitwise
        assert st.open_store(root).sites[site]["norm_scale"] == st.open_store(clean).sites[site]["norm_scale"]


# -- training: a full disk at a checkpoint, at metrics.jsonl, at the export; then the rerun ---------


def train_config():
    from tests.test_train import tiny_config

    return tiny_config(num_tokens=64 * 30, checkpoint_every=10, log_every=5, tensorboard=False)


def test_training_disk_full_at_each_stage_resumes_bitwise(tmp_path, monkeypatch):
    """Three runs on one workdir, each stopped by a full disk: at checkpoint step 20 (orbax's JSON
    item write fails; async, so it surfaces at the next save), at the metric rows of step 15
    (``os.write``), at the second SAE's ``params.npz`` (the export). Each error names its path and
    size; the fourth run completes, its SAEs equal to an uninterrupted run's bit for bit."""
    from etils import epath

    from gemmascope.train import loop
    from gemmascope.train import writers as writers_lib
    from tests.test_train import _final_params

    ref_dir, wd = str(tmp_path / "ref"), str(tmp_path / "full")
    loop.train_and_evaluate(train_config(), ref_dir, log=lambda *a: None)
    ckpts = os.path.join(wd, "runs", "toy_layer0_width32", "checkpoints")
    enospc = OSError(errno.ENOSPC, "No space left on device")

    gpath = type(epath.Path("/"))
    real_write_text = gpath.write_text

    def write_text(self, *a, **k):  # orbax's JsonSave writes its item with Path.write_text
        if "20.orbax-checkpoint-tmp" in str(self):
            raise enospc
        return real_write_text(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(gpath, "write_text", write_text)
        with pytest.raises(DiskFullError) as e:
            loop.train_and_evaluate(train_config(), wd, log=lambda *a: None)
    err = str(e.value)
    assert f"checkpoint step 20 to {ckpts}/20" in err and "Completed checkpoints (step 10) are intact" in err
    assert e.value.needed > 4 * 32 * 8 * 2 and sorted(os.listdir(ckpts)) == ["10"]  # no partial step left

    real_write = os.write

    def write(fd, data):  # metrics.jsonl: half of step 15's rows reach the file, then the disk is full
        if fd_path(fd).endswith("metrics.jsonl") and b'"step": 15' in bytes(data):
            real_write(fd, bytes(data)[: len(data) // 2])
            raise enospc
        return real_write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(writers_lib.os, "write", write)
        with pytest.raises(DiskFullError, match="metric rows of step 15 to .*metrics.jsonl"):
            loop.train_and_evaluate(train_config(), wd, log=lambda *a: None)  # resumed from step 10
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]  # whole lines only
    assert [r["step"] for r in rows].count(15) == 2 and rows[-1]["step"] == 30  # 2 SAEs' rows of the first run
    assert sorted(os.listdir(ckpts)) == ["10"]

    real_fdopen, seen = os.fdopen, []

    def fdopen(fd, *a, **k):  # the export: the second SAE's params.npz does not fit
        if fd_path(fd).endswith("params.npz"):
            seen.append(fd_path(fd))
            if len(seen) == 2:
                raise enospc
        return real_fdopen(fd, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", fdopen)
        with pytest.raises(DiskFullError, match="params.npz") as e:
            loop.train_and_evaluate(train_config(), wd, log=lambda *a: None)
    assert "average_l0_" in e.value.path and e.value.needed > 0
    assert not os.path.exists(os.path.join(wd, "runs", "toy_layer0_width32", "exported.json"))
    assert not glob.glob(os.path.join(wd, "saes", "**", ".tmp-*"), recursive=True)

    loop.train_and_evaluate(train_config(), wd, log=lambda *a: None)  # space freed: the same call
    got, ref = _final_params(wd), _final_params(ref_dir)
    assert sorted(got) == sorted(ref)
    for lam in ref:
        for k in ref[lam]:
            np.testing.assert_array_equal(got[lam][k], ref[lam][k], err_msg=f"lambda={lam} {k}")


def test_tensorboard_disk_full_is_raised_not_a_hang(tmp_path, monkeypatch):
    """tensorboardX writes from a background thread; unguarded, a full disk ends that thread and
    the trainer then blocks forever on the full event queue (seen on a full tmpfs). Guarded, a later
    ``write`` raises DiskFullError naming the run's folder."""
    import threading

    from tensorboardX import record_writer

    from gemmascope.train.writers import TensorBoardWriter

    real, n = record_writer.RecordWriter.write, [0]

    def write(self, data):  # the event file's record write: the disk is full from the 5th on
        n[0] += 1
        if n[0] >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    w = TensorBoardWriter(str(tmp_path / "tb"), ["sae0_lambda0.1"])
    out = {}

    def steps():
        try:
            for step in range(500):
                w.write(step, [{"loss": float(step), "l0": 1.0, "fvu": 0.5}])
                threading.Event().wait(0.005)
        except Exception as e:  # noqa: BLE001 - checked below
            out["error"] = e

    t = threading.Thread(target=steps, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the trainer's metric writes blocked: a hang instead of an error"
    err = out.get("error")
    assert isinstance(err, DiskFullError) and err.path == str(tmp_path / "tb" / "sae0_lambda0.1"), err
    w.close()


# -- a real full filesystem: a 1 MiB tmpfs in a private mount namespace ---------------------------

TMPFS_CHILD = textwrap.dedent("""
    import errno, json, os, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from gemmascope.common import DiskFullError
    from gemmascope.data import store as st
    from tests.test_store import SITES, batch, stored_rows, write_store
    M, clean = sys.argv[1], sys.argv[2]
    out = {{}}

    def fill():  # the filesystem left with no free block
        fd = os.open(os.path.join(M, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free():
        os.remove(os.path.join(M, "filler"))

    # generation: the disk fills before the third flush
    real, n = st.ActivationWriter.flush, [0]
    def flush(self, *a, **k):
        n[0] += 1
        if n[0] == 3:
            fill()
        return real(self, *a, **k)
    st.ActivationWriter.flush = flush
    root = os.path.join(M, "acts")
    try:
        write_store(root, rows_per_flush=9)
    except DiskFullError as e:
        out["store_error"], out["store_needed"] = str(e), e.needed
    st.ActivationWriter.flush = real
    out["store_durable"] = st.Root(root).read_json("progress.json")["batches_done"]
    free()
    write_store(root, rows_per_flush=9)
    out["store_ok"] = st.verify_store(root).ok and all(
        np.array_equal(stored_rows(root, s), stored_rows(clean, s)) for s in SITES)

    # checkpoints: the disk fills after step 10 is saved
    import jax.numpy as jnp
    from gemmascope.train.checkpoint import Checkpoints
    def state(v):
        return {{"w": jnp.arange(40_000, dtype=jnp.float32) * v, "step": jnp.int32(v)}}
    d = os.path.join(M, "ckpt")
    c = Checkpoints(d, log=lambda *a: None)
    c.save(10, state(10), {{"row": 10}})
    c.wait()
    fill()
    try:
        c.save(20, state(20), {{"row": 20}})
        c.save(30, state(30), {{"row": 30}})
        c.close()
    except DiskFullError as e:
        out["ckpt_error"], out["ckpt_needed"] = str(e), e.needed
    out["ckpt_left"] = sorted(os.listdir(d))
    free()
    c = Checkpoints(d, log=lambda *a: None)
    step, s, data = c.restore_latest(state(0))
    out["ckpt_restored"] = [step, data, bool(np.array_equal(np.asarray(s["w"]), np.asarray(state(10)["w"])))]
    c.save(20, state(20), {{"row": 20}})
    c.close()
    out["ckpt_after"] = sorted(os.listdir(d))

    # export: params.npz over an older one
    from gemmascope.sae.files import io as sae_io
    from tests.test_disk_full import tiny_sae
    p = os.path.join(M, "sae", "params.npz")
    sae_io.save_params(p, tiny_sae(1.0), {{"architecture": "jumprelu"}})
    old = open(p, "rb").read()
    fill()
    try:
        sae_io.save_params(p, tiny_sae(2.0), {{"architecture": "jumprelu"}})
    except DiskFullError as e:
        out["export_error"], out["export_needed"] = str(e), e.needed
    out["export_kept"] = open(p, "rb").read() == old and sorted(os.listdir(os.path.dirname(p)))
    free()
    sae_io.save_params(p, tiny_sae(2.0), {{"architecture": "jumprelu"}})
    out["export_ok"] = bool(np.array_equal(sae_io.load_params(p)["W_enc"], tiny_sae(2.0)["W_enc"]))

    # TensorBoard events: written from a background thread; the trainer's next write raises
    from gemmascope.train.writers import TensorBoardWriter
    w = TensorBoardWriter(os.path.join(M, "tb"), ["sae0"])
    fill()
    try:
        for step in range(200):
            w.write(step, [{{"loss": 1.0, "l0": 2.0}}])
            import time; time.sleep(0.01)
    except DiskFullError as e:
        out["tb_error"] = str(e)
    w.close()
    free()
    print("RESULT " + json.dumps(out))
""")


def test_real_full_tmpfs_every_stage(tmp_path, clean):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"])
    if probe.returncode:
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    mnt = str(tmp_path / "fs")
    os.makedirs(mnt)
    child = str(tmp_path / "child.py")
    with open(child, "w") as fh:
        fh.write(TMPFS_CHILD.format(repo=REPO))
    script = f"mount -t tmpfs -o size=1m tmpfs {mnt} && exec {sys.executable} {child} {mnt} {clean}"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT ") :])
    # generation: the error names the shard file and the flush's bytes; the durable batches stay
    assert f"{mnt}/acts/" in out["store_error"] and "/c/" in out["store_error"] and out["store_needed"] > 0
    assert out["store_durable"] >= 1 and out["store_ok"]
    # checkpoints: step 20 named with its size (40,000 float32 + JSON), step 10 kept, no temp folder
    assert f"checkpoint step 20 to {mnt}/ckpt/20" in out["ckpt_error"] and out["ckpt_needed"] > 160_000
    assert out["ckpt_left"] == ["10"] and out["ckpt_restored"] == [10, {"row": 10}, True]
    assert out["ckpt_after"] == ["10", "20"]
    # export: the file and its size named; the old file whole, no temp file
    assert f"{mnt}/sae/params.npz" in out["export_error"] and out["export_needed"] > 0
    assert out["export_kept"] == ["metadata.json", "params.npz"] and out["export_ok"]
    # TensorBoard: an error naming the run's folder, not a trainer blocked on tensorboardX's queue
    assert f"TensorBoard events to {mnt}/tb/sae0" in out["tb_error"]
