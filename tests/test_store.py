"""Activation store: round trip, crash-and-rerun of the writer, shuffled resumable reader, errors.

Small shapes (d_in 8/12, chunks of 4-8 rows, shards of 3 chunks) on real tensorstore files under
tmp_path. Every row's column 0 holds its global row id, so multisets of rows are sets of ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorstore as ts

from gemmascope.data import store as st

SITES = {"res_L3": 8, "att_L3": 12}
META = {"model": "toy-lm", "tokenizer": "toy-tok", "corpus": "fortunes@v1", "seq_len": 16}


def rows_per_batch(b: int) -> int:
    return 5 + (b * 7) % 6  # 5..10 rows: batches straddle chunk and shard boundaries


def batch(b: int, sites=SITES) -> dict[str, np.ndarray]:
    """Batch b's activations: column 0 is the global row id, the rest a function of (b, site)."""
    start = sum(rows_per_batch(i) for i in range(b))
    n = rows_per_batch(b)
    out = {}
    for k, (name, d) in enumerate(sorted(sites.items())):
        x = np.random.default_rng([b, k]).standard_normal((n, d)).astype(np.float32)
        x[:, 0] = np.arange(start, start + n)
        out[name] = x
    return out


def expected(n_batches: int, site: str, sites=SITES) -> np.ndarray:
    return np.concatenate([batch(b, sites)[site] for b in range(n_batches)])


def write_store(root, n_batches=12, sites=SITES, **kw) -> st.StoreInfo:
    kw = {"chunk_rows": 4, "chunks_per_shard": 3, **kw}
    with st.ActivationWriter(str(root), sites, META, **kw) as w:
        for b in range(w.resume_from_batch, n_batches):
            w.write_batch(b, batch(b, sites))
    return st.open_store(str(root))


def read_all(reader) -> np.ndarray:
    return np.concatenate(list(reader))


def stored_rows(root, site, rows=slice(None)) -> np.ndarray:
    """The site's array as stored (before finalize it is capacity-long: pass a slice)."""
    arr = ts.open(st.Root(str(root)).array_spec(site), open=True, context=st.CONTEXT).result()
    return arr[rows].read().result()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "acts"
    write_store(root)
    return str(root)


N_ROWS = sum(rows_per_batch(b) for b in range(12))


# -- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,spec",
    [
        ("/a/b", {"driver": "file", "path": "/a/b/"}),
        ("file:///a/b/", {"driver": "file", "path": "/a/b/"}),
        ("gs://bucket/acts/run1", {"driver": "gcs", "bucket": "bucket", "path": "acts/run1/"}),
        ("s3://bucket/acts", {"driver": "s3", "bucket": "bucket", "path": "acts/"}),
        ("gs://bucket", {"driver": "gcs", "bucket": "bucket", "path": ""}),
        ("memory://t1", {"driver": "memory", "path": "t1/"}),
    ],
)
def test_kvstore_spec(path, spec):
    assert st.kvstore_spec(path) == spec


def test_default_chunk_rows():
    # ~2 MiB inner chunks: d_in 576 -> 1024 rows, 2304 -> 256, 3584 -> 128.
    assert [st.default_chunk_rows(d) for d in (576, 2304, 3584, 4608)] == [1024, 256, 128, 128]


def test_kvstore_spec_relative_and_bad(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.kvstore_spec("acts") == {"driver": "file", "path": str(tmp_path / "acts") + "/"}
    with pytest.raises(st.StoreError, match="unsupported URL scheme"):
        st.kvstore_spec("ftp://x/y")
    with pytest.raises(st.StoreError, match="absolute"):
        st.kvstore_spec("file://rel/path")


# -- round trip -----------------------------------------------------------------------------------


def test_round_trip_layout_and_metadata(store):
    info = st.open_store(store)
    assert set(info.sites) == set(SITES) and info.n_batches == 12 and info.metadata == META
    for site, d in SITES.items():
        want = expected(12, site)
        np.testing.assert_array_equal(stored_rows(store, site), want)  # generation order, bitwise
        m = info.sites[site]
        assert (m["site"], m["kind"], m["layer"], m["d_in"], m["dtype"]) == (site, site[:3], 3, d, "float32")
        assert m["n_rows"] == m["n_tokens"] == N_ROWS and m["n_batches"] == 12
        assert (m["model"], m["tokenizer"], m["corpus"]) == ("toy-lm", "toy-tok", "fortunes@v1")
        c = np.sqrt(np.mean(np.sum(want.astype(np.float64) ** 2, axis=1)))
        assert m["norm_scale"] == pytest.approx(c, rel=1e-6)
        assert st.estimate_norm_scale(store, site) == m["norm_scale"]
        assert st.estimate_norm_scale(store, site, n_rows=N_ROWS) == pytest.approx(c, rel=1e-5)
        arr = ts.open(st.Root(store).array_spec(site), open=True, context=st.CONTEXT).result()
        assert list(arr.chunk_layout.read_chunk.shape) == [4, d]
        assert list(arr.chunk_layout.write_chunk.shape) == [12, d]
        assert arr.spec().to_json()["metadata"]["codecs"][0]["name"] == "sharding_indexed"


@pytest.mark.parametrize("batch_size,buffer_rows", [(7, 8), (32, 1000), (1, 4)])
def test_each_row_once_per_epoch(store, batch_size, buffer_rows):
    r = st.ActivationReader(
        store, "att_L3", batch_size, seed=3, shuffle_buffer_rows=buffer_rows, epochs=1, expected_d_in=12
    )
    batches = list(r)
    assert all(b.shape == (batch_size, 12) and b.dtype == np.float32 for b in batches[:-1])
    got = np.concatenate(batches)
    want = expected(12, "att_L3")
    order = np.argsort(got[:, 0])
    np.testing.assert_array_equal(got[order], want)  # every row exactly once, values bitwise
    assert not np.array_equal(got[:, 0], want[:, 0])  # and shuffled


def test_memory_url_round_trip():
    root = "memory://store_test_rt"
    write_store(root, n_batches=4)
    got = read_all(st.ActivationReader(root, "res_L3", 5, seed=0, epochs=1))
    assert sorted(got[:, 0]) == list(range(sum(rows_per_batch(b) for b in range(4))))


def test_sample(store):
    r = st.ActivationReader(store, "res_L3", 4, seed=0)
    x = r.sample(10, seed=1)
    assert x.shape == (10, 8) and len(set(x[:, 0])) == 10
    np.testing.assert_array_equal(x, r.sample(10, seed=1))
    np.testing.assert_array_equal(x, expected(12, "res_L3")[x[:, 0].astype(int)])


# -- crash safety ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_store import batch, SITES, META
    from gemmascope.data import store as st
    kill_at, mode = {kill_at}, {mode!r}
    w = st.ActivationWriter({root!r}, SITES, META, chunk_rows=4, chunks_per_shard=3, rows_per_flush=9)
    if mode == "before_progress":  # the data of a flush is durable, its progress record never written
        calls = [0]
        real = w._write_progress
        def write_progress():
            calls[0] += 1
            if calls[0] == 3:
                os._exit(3)
            real()
        w._write_progress = write_progress
    for b in range(w.resume_from_batch, 12):
        if mode == "mid_loop" and b == kill_at:
            os._exit(3)  # killed: no flush, no finalize
        w.write_batch(b, batch(b))
    os._exit(4)
""")


@pytest.mark.parametrize("mode", ["mid_loop", "before_progress"])
def test_killed_writer_rerun_completes_exactly_once(tmp_path, mode):
    root = str(tmp_path / "acts")
    code = CHILD.format(tests=str(__import__("pathlib").Path(__file__).parent), kill_at=7, mode=mode, root=root)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    with pytest.raises(st.StoreError, match="incomplete.*rerun"):
        st.open_store(root)
    w = st.ActivationWriter(root, SITES, META, chunk_rows=4, chunks_per_shard=3, rows_per_flush=9)
    assert 0 < w.resume_from_batch < 12
    if mode == "before_progress":  # rows past the recorded count exist on disk and get overwritten
        rows = w._progress()["sites"]["res_L3"]["rows"]
        assert stored_rows(root, "res_L3", slice(rows, rows + 3)).any()
    for b in range(w.resume_from_batch, 12):
        assert w.write_batch(b, batch(b))
    w.finalize()
    info = st.open_store(root)
    for site in SITES:
        assert info.sites[site]["n_rows"] == N_ROWS
        np.testing.assert_array_equal(stored_rows(root, site), expected(12, site))
        c = np.sqrt(np.mean(np.sum(expected(12, site).astype(np.float64) ** 2, axis=1)))
        assert info.sites[site]["norm_scale"] == pytest.approx(c, rel=1e-6)
    got = read_all(st.ActivationReader(root, "res_L3", 9, seed=1, epochs=1))
    assert sorted(got[:, 0]) == list(range(N_ROWS))


def test_exception_mid_way_then_rerun(tmp_path):
    root = str(tmp_path / "acts")
    with pytest.raises(RuntimeError, match="lm crashed"):
        with st.ActivationWriter(root, SITES, META, chunk_rows=4, chunks_per_shard=3, rows_per_flush=1000) as w:
            for b in range(12):
                if b == 5:
                    raise RuntimeError("lm crashed")
                w.write_batch(b, batch(b))
    with pytest.raises(st.StoreError) as e:
        st.ActivationReader(root, "res_L3", 4, seed=0)
    assert root in str(e.value) and "incomplete" in str(e.value) and "rerun the generate command" in str(e.value)
    w = st.ActivationWriter(root, SITES, META, chunk_rows=4, chunks_per_shard=3)
    assert w.resume_from_batch == 5  # the whole batches buffered before the error were flushed on exit
    assert not w.write_batch(2, batch(2))  # an outer loop starting from 0 is skipped over done batches
    with pytest.raises(st.StoreError, match="expected batch 5, got 6"):
        w.write_batch(6, batch(6))
    for b in range(5, 12):
        w.write_batch(b, batch(b))
    w.finalize()
    np.testing.assert_array_equal(stored_rows(root, "att_L3"), expected(12, "att_L3"))
    # Rerunning the finished command does nothing.
    w = st.ActivationWriter(root, SITES, META, chunk_rows=4, chunks_per_shard=3)
    assert w.complete and w.resume_from_batch == 12 and not w.write_batch(0, batch(0))
    w.finalize()
    with pytest.raises(st.StoreError, match="complete"):
        w.write_batch(12, batch(12))


def test_killed_inside_finalize_then_rerun(tmp_path, monkeypatch):
    root = str(tmp_path / "acts")
    w = st.ActivationWriter(root, SITES, META, chunk_rows=4, chunks_per_shard=3)
    for b in range(12):
        w.write_batch(b, batch(b))

    def die(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(st.ActivationWriter, "_site_metadata", die)  # after the arrays were resized
    with pytest.raises(KeyboardInterrupt):
        w.finalize()
    monkeypatch.undo()
    with pytest.raises(st.StoreError, match="incomplete"):
        st.open_store(root)
    w = st.ActivationWriter(root, SITES, META, chunk_rows=4, chunks_per_shard=3)
    assert w.resume_from_batch == 12 and not w.complete
    info = w.finalize()
    assert info.sites["res_L3"]["n_rows"] == N_ROWS
    np.testing.assert_array_equal(stored_rows(root, "res_L3"), expected(12, "res_L3"))


def test_rerun_with_other_sites_or_metadata_refused(tmp_path):
    root = str(tmp_path / "acts")
    w = st.ActivationWriter(root, SITES, META, chunk_rows=4)
    w.write_batch(0, batch(0))
    w.flush()
    with pytest.raises(st.StoreError, match="sites"):
        st.ActivationWriter(root, {"res_L3": 8}, META)
    with pytest.raises(st.StoreError, match="metadata"):
        st.ActivationWriter(root, SITES, {**META, "model": "other"})


# -- the shuffled stream ----------------------------------------------------------------------------


def take(reader, n):
    return [next(reader).copy() for _ in range(n)]


def test_deterministic_per_seed(store):
    a = take(st.ActivationReader(store, "res_L3", 6, seed=5, shuffle_buffer_rows=8), 15)
    b = take(st.ActivationReader(store, "res_L3", 6, seed=5, shuffle_buffer_rows=8), 15)
    c = take(st.ActivationReader(store, "res_L3", 6, seed=6, shuffle_buffer_rows=8), 15)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


@pytest.mark.parametrize("k,prefetch", [(0, 2), (3, 1), (9, 4), (13, 2)])
def test_resume_bitwise(store, k, prefetch):
    r = st.ActivationReader(store, "res_L3", 7, seed=2, shuffle_buffer_rows=12, prefetch=prefetch)
    take(r, k)
    state = json.loads(json.dumps(r.get_state()))  # through JSON, as a checkpoint would
    assert state["batches"] == k and state["rows"] == 7 * k
    rest = take(r, 12)  # crosses windows and an epoch (12 batches of 7 > 98 rows)
    resumed = st.ActivationReader(store, "res_L3", 7, seed=2, shuffle_buffer_rows=12, state=state)
    for x, y in zip(rest, take(resumed, 12)):
        np.testing.assert_array_equal(x, y)
    r.set_state(state)  # and the same reader rewound while its prefetch thread is running
    for x, y in zip(rest, take(r, 12)):
        np.testing.assert_array_equal(x, y)
    r.close()


def test_state_of_other_stream_refused(store):
    state = st.ActivationReader(store, "res_L3", 4, seed=1).get_state()
    with pytest.raises(st.StoreError, match="seed=1.*seed=2"):
        st.ActivationReader(store, "res_L3", 4, seed=2, state=state)


def test_multi_epoch(store):
    r = st.ActivationReader(store, "res_L3", 5, seed=0, shuffle_buffer_rows=8, epochs=3)
    got = read_all(r)[:, 0]
    assert got.shape == (3 * N_ROWS,)
    epochs = got.reshape(3, N_ROWS)
    for e in epochs:
        assert sorted(e) == list(range(N_ROWS))
    assert not np.array_equal(epochs[0], epochs[1])
    with pytest.raises(StopIteration):
        next(r)
    assert r.get_state()["epoch"] == 3
    # An endless stream is the same rows, continuing past the epochs.
    endless = st.ActivationReader(store, "res_L3", 5, seed=0, shuffle_buffer_rows=8)
    np.testing.assert_array_equal(np.concatenate(take(endless, 3 * N_ROWS // 5))[:, 0], got[: 3 * N_ROWS // 5 * 5])
    # drop_remainder keeps every batch full.
    full = list(st.ActivationReader(store, "res_L3", 5, seed=0, shuffle_buffer_rows=8, epochs=1, drop_remainder=True))
    assert len(full) == N_ROWS // 5 and all(b.shape == (5, 8) for b in full)


@pytest.mark.parametrize("count", [2, 3])
def test_process_slices_disjoint_and_covering(store, count):
    for epoch_rows in range(2):
        seen = []
        for p in range(count):
            r = st.ActivationReader(store, "att_L3", 4, seed=9, process_index=p, process_count=count, epochs=2)
            rows = read_all(r)[:, 0]
            n0 = r.rows_per_epoch(0)
            assert rows.shape == (n0 + r.rows_per_epoch(1),)
            seen.append(rows[:n0] if epoch_rows == 0 else rows[n0:])
        allrows = np.concatenate(seen)
        assert sorted(allrows) == list(range(N_ROWS))  # disjoint and covering, in each epoch
    with pytest.raises(st.StoreError, match="process_index"):
        st.ActivationReader(store, "att_L3", 4, seed=0, process_index=2, process_count=2)


# -- errors ---------------------------------------------------------------------------------------


def test_missing_store(tmp_path):
    root = str(tmp_path / "nothing")
    with pytest.raises(st.StoreError, match="no activation store at .*nothing"):
        st.ActivationReader(root, "res_L3", 4, seed=0)


def test_wrong_d_in_and_site(store):
    with pytest.raises(st.StoreError) as e:
        st.ActivationReader(store, "res_L3", 4, seed=0, expected_d_in=2304)
    assert "8" in str(e.value) and "2304" in str(e.value) and "res_L3" in str(e.value)
    with pytest.raises(st.StoreError, match="no site 'mlp_L3'"):
        st.ActivationReader(store, "mlp_L3", 4, seed=0)


def test_writer_refuses_bad_input(tmp_path):
    w = st.ActivationWriter(str(tmp_path / "acts"), SITES, META, chunk_rows=4)
    good = batch(0)
    bad = {k: v.copy() for k, v in good.items()}
    bad["att_L3"][2, 5] = np.nan
    bad["att_L3"][3, 1] = np.inf
    with pytest.raises(st.StoreError, match=r"site att_L3, batch 0: NaN or inf in rows 2\.\.3"):
        w.write_batch(0, bad)
    with pytest.raises(st.StoreError, match=r"res_L3, batch 0: shape \(5, 7\), expected \[n_rows, 8\]"):
        w.write_batch(0, {**good, "res_L3": good["res_L3"][:, :7]})
    with pytest.raises(st.StoreError, match="missing"):
        w.write_batch(0, {"res_L3": good["res_L3"]})
    assert w.rows_written() == {"res_L3": 0, "att_L3": 0}  # nothing half-buffered
    assert w.write_batch(0, good)
    with pytest.raises(st.StoreError, match="reserved"):
        st.ActivationWriter(str(tmp_path / "b"), SITES, {"d_in": 3})


def test_reader_detects_nan_on_disk(tmp_path):
    root = str(tmp_path / "acts")
    write_store(root, n_batches=6)
    arr = ts.open(st.Root(root).array_spec("res_L3"), open=True, context=st.CONTEXT).result()
    arr[13:15, 2].write(np.array([np.nan, np.inf], np.float32)).result()  # corrupt rows 13..14
    r = st.ActivationReader(root, "res_L3", 4, seed=0, epochs=1)
    with pytest.raises(st.StoreError) as e:
        read_all(r)
    assert "res_L3" in str(e.value) and "rows 13..14" in str(e.value) and "[12, 16)" in str(e.value)


def test_dropped_reader_stops_its_thread(store):
    import gc
    import threading
    import time

    def alive():
        return [t for t in threading.enumerate() if t.name == "ActivationReader[res_L3]" and t.is_alive()]

    before = len(alive())
    r = st.ActivationReader(store, "res_L3", 3, seed=0, prefetch=1)
    next(r)
    assert len(alive()) == before + 1
    del r
    gc.collect()
    deadline = time.time() + 5
    while len(alive()) > before and time.time() < deadline:
        time.sleep(0.02)
    assert len(alive()) == before


def test_finalize_removes_stale_rows_past_the_end(tmp_path):
    """Rows an earlier, killed run left beyond the final row count do not survive finalize."""
    root = tmp_path / "acts"
    w = st.ActivationWriter(str(root), SITES, META, chunk_rows=4, chunks_per_shard=3)
    for b in range(3):
        w.write_batch(b, batch(b))
    n = sum(w.rows_written().values()) // 2
    arr = w._sites["res_L3"].array
    arr[n : n + 2].write(np.ones((2, 8), np.float32)).result()  # same shard as the last rows
    arr[60:62].write(np.ones((2, 8), np.float32)).result()  # a later shard (rows 60..71)
    assert (root / "res_L3" / "c" / "5" / "0").exists()
    w.finalize()
    assert not (root / "res_L3" / "c" / "5" / "0").exists()
    shards = sorted(int(p.parent.name) for p in (root / "res_L3" / "c").glob("*/0"))
    assert shards == list(range(-(-n // 12)))
    arr = ts.open(st.Root(str(root)).array_spec("res_L3"), open=True, context=st.CONTEXT).result()
    assert arr.shape == (n, 8)
    grown = arr.resize(exclusive_max=[-(-n // 12) * 12, None], resize_metadata_only=True).result()
    assert not grown[n:].read().result().any()  # the padded tail of the last shard is zeros
