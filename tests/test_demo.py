"""The demo pipeline on the embedded default (SmolLM2-135M + embedded corpus), at runlocal size:
generate the store, train from it, export; resume of generation; online mode; missing store."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.config.experiments import demo
from gemmascope.data import store as store_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=900):
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", script), f"--config={REPO}/configs/demo.py", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("demo"))
    gen = _run("generate_activations.py", f"--workdir={wd}", "--config.runlocal=True")
    train = _run("train.py", f"--workdir={wd}", "--config.runlocal=True")
    return wd, gen, train


def test_demo_store_has_every_site_and_no_special_tokens(demo_workdir):
    wd, gen, _ = demo_workdir
    info = store_lib.open_store(os.path.join(wd, "activations", "train"))
    assert sorted(info.sites) == ["att_L15", "mlp_L15", "res_L15"]
    cfg = demo.get_config()
    for meta in info.sites.values():
        assert meta["d_in"] == 576  # SmolLM2: d_model 576, 9 heads x 64
        assert meta["model"].startswith("SmolLM2-135M")
        # Every stored row is a real text token: at most 127 per 128-token sequence (BOS first).
        assert meta["n_rows"] <= meta["n_batches"] * cfg.lm.batch_sequences * (cfg.lm.context_length - 1)
        assert meta["n_rows"] >= 40_000 - 1000  # max_tokens of runlocal, less dropped outliers
    res = info.sites["res_L15"]
    s = res["norm_summary_this_run"]["res_L15"]
    # With BOS excluded and sink outliers dropped, no stored row is far from the median norm.
    assert s["norm_max"] <= 10 * s["norm_median"] * 1.5
    assert 100 < res["norm_scale"] < 300  # C near the median norm (~170), not dragged up by outliers
    assert "tok/s" in gen


def test_demo_trains_from_store_and_exports(demo_workdir):
    wd, _, train = demo_workdir
    assert "tok/s" in train and "ETA" in train
    metas = [
        json.load(open(p))
        for p in glob.glob(os.path.join(wd, "saes", "res", "layer_15", "width_1k", "*", "*", "metadata.json"))
    ]
    # The default recipe: target L0s 20 .. 160 (quadratic penalty, batch form, centred), one
    # variant folder; each SAE's held-out L0 rises with its target.
    metas.sort(key=lambda m: m["target_l0"])
    assert [m["target_l0"] for m in metas] == config_lib.sweep_values(demo.get_config())
    l0 = [m["l0"] for m in metas]
    assert all(a < b for a, b in zip(l0, l0[1:])), l0
    for m in metas:
        assert m["model"].startswith("SmolLM2-135M") and m["site"] == "res" and m["layer"] == 15
        assert (m["sparsity_loss"], m["quadratic_form"], m["variant"]) == (
            "quadratic",
            "batch",
            "jumprelu_quadratic_batch_centred",
        )
        assert 0 < m["fvu"] < 1
    from gemmascope.sae.files import io as sae_io

    p = sae_io.load_params(os.path.dirname(glob.glob(os.path.join(wd, "saes", "**", "params.npz"), recursive=True)[0]))
    assert p["W_enc"].shape == (576, 1024)


def test_train_without_store_says_how_to_create_it(tmp_path):
    c = demo.get_config()
    from gemmascope.train.loop import train_and_evaluate

    with pytest.raises(store_lib.StoreError, match="generate_activations.py"):
        train_and_evaluate(c, str(tmp_path / "empty"), log=lambda *a: None)


def test_generation_resumes_after_a_crash_with_every_row_once(tmp_path, monkeypatch, load_lm_once):
    from gemmascope.data import activations, generate

    def small():  # 1 held-out batch and 7 train batches of 4 sequences (~495 rows each)
        c = demo.get_config()
        with c.unlocked():
            c.store.max_tokens, c.store.heldout_rows = 3_000, 250
            c.lm.batch_sequences = 4
            c.store.rows_per_flush = 256  # durable after every batch
        return c

    ref = str(tmp_path / "ref")
    generate.generate(small(), ref, log=lambda *a: None)

    real = activations.LMActivations.activations
    calls = {"n": 0}

    def crashing(self, tokens, mask, stats=None):  # unit-test mock: the 3rd train batch dies
        calls["n"] += 1
        if calls["n"] == 4:  # 1 held-out batch, then train batches 0, 1, 2
            raise KeyboardInterrupt("simulated kill")
        return real(self, tokens, mask, stats)

    wd = str(tmp_path / "crash")
    monkeypatch.setattr(activations.LMActivations, "activations", crashing)
    with pytest.raises(KeyboardInterrupt):
        generate.generate(small(), wd, log=lambda *a: None)
    with pytest.raises(store_lib.StoreError, match="incomplete"):
        store_lib.open_store(os.path.join(wd, "activations", "train"))
    monkeypatch.setattr(activations.LMActivations, "activations", real)
    logs = []
    generate.generate(small(), wd, log=logs.append)
    assert any("already complete" in line for line in logs)  # the held-out store was finished before
    assert any("resuming" in line and "at batch 2" in line for line in logs), logs
    for site in ("res_L15", "att_L15"):
        a = store_lib.ActivationReader(os.path.join(ref, "activations", "train"), site, 1, 0)
        b = store_lib.ActivationReader(os.path.join(wd, "activations", "train"), site, 1, 0)
        assert a.n_rows == b.n_rows
        np.testing.assert_array_equal(a._array.read().result(), b._array.read().result())


def test_online_mode_trains_straight_from_the_lm(tmp_path, load_lm_once):
    from gemmascope.train.loop import train_and_evaluate

    c = demo.get_config("recipe=gemma_scope")  # the lambda sweep
    with c.unlocked():
        c.source = "online"
        c.layers, c.widths, c.lambdas = (3,), (128,), (1e-3, 1e-2)
        c.lm.context_length, c.lm.batch_sequences = 32, 8
        c.batch_size, c.num_tokens = 256, 256 * 12
        c.norm_sample_rows = c.eval_rows = 512
        c.log_every, c.checkpoint_every = 6, 6
    recs = train_and_evaluate(c, str(tmp_path / "online"), log=lambda *a: None)
    assert len(recs) == 2 and all(r["model"].startswith("SmolLM2") for r in recs)
    assert all(np.isfinite(r["fvu"]) for r in recs)


def test_evaluate_writes_eval_json_table_plots_and_resumes(demo_workdir):
    wd, _, _ = demo_workdir
    # Held-out batches of 10 sequences (~1,240 text tokens): one batch reaches --max_tokens=1000
    # (runlocal's 32-sequence batch would evaluate four times the tokens asked for).
    small = ("--config.runlocal=True", "--config.lm.batch_sequences=10", "--max_tokens=1000")
    out = _run("evaluate.py", f"--workdir={wd}", *small)
    evals = [json.load(open(p)) for p in glob.glob(os.path.join(wd, "saes", "**", "eval.json"), recursive=True)]
    assert len(evals) == 4
    for e in evals:
        assert e["ce_clean"] < e["ce_sae"] < e["ce_zero"]  # a trained SAE sits between clean and ablated
        assert 0 < e["fvu"] < 1 and e["l0"] > 0 and e["n_tokens"] >= 1000
        assert e["err_by_position"][0] is None  # BOS is never evaluated
    table = open(os.path.join(wd, "eval", "table.md")).read()
    assert table.count("| jumprelu_quadratic_batch_centred |") == 4
    for png in ("l0_vs_delta_loss.png", "l0_vs_fvu.png"):
        assert open(os.path.join(wd, "eval", png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    again = _run("evaluate.py", f"--workdir={wd}", *small)
    assert "4 already evaluated, 0 to go" in again and "delta loss" not in again
    assert "delta loss" in out


def test_evaluator_and_dashboard_see_exactly_the_stored_rows(demo_workdir, load_lm_once):
    """One site-activation path: the held-out store's rows are, in order, the site's activations at
    the positions the dashboard encodes, and the evaluator splices exactly those positions (same
    real-text mask, same norm outliers dropped)."""
    import itertools

    import tensorstore as ts

    from gemmascope import config as config_lib
    from gemmascope.analysis import dashboard
    from gemmascope.data import sites
    from gemmascope.data.activations import LMActivations
    from gemmascope.eval import metrics

    wd = demo_workdir[0]
    cfg = config_lib.resolve(demo.get_config("runlocal=True"))
    factor = float(cfg.lm.outlier_norm_factor)
    lm = LMActivations(cfg, [(15, "res")], log=lambda *_: None)
    batches = list(itertools.islice(lm.packed_batches("heldout"), 1))
    mask = np.concatenate([m for _, m in batches])
    d, w = 576, 8
    zero_sae = {
        "W_enc": np.zeros((d, w), np.float32),
        "b_enc": np.zeros(w, np.float32),
        "threshold": np.ones(w, np.float32),
        "W_dec": np.zeros((w, d), np.float32),
        "b_dec": np.zeros(d, np.float32),
    }

    scanned = dashboard.scan(
        lm.params, lm.lm_cfg, zero_sae, layer=15, site="res", batches=batches, k=1, outlier_norm_factor=factor, log=None
    )
    valid = scanned.valid
    assert valid.shape == mask.shape and not (valid & ~mask).any()
    assert 0 < (mask & ~valid).sum() < 50  # the attention sinks after BOS were dropped, few others
    n = int(valid.sum())
    arr = ts.open(store_lib.Root(os.path.join(wd, "activations", "heldout")).array_spec("res_L15")).result()
    stored = arr[:n].read().result()
    acts = np.concatenate(
        [np.asarray(sites.capture(lm.lm, t, m, [(15, "res")], factor)[(15, "res")][0]) for t, m in batches]
    )
    # Row for row: a kept outlier or a dropped real row would shift every later row.
    np.testing.assert_allclose(stored, acts[valid], rtol=1e-5, atol=1e-4)

    # The evaluator with a zero SAE: its error at a position is ||x||^2, so the per-position mean
    # over the spliced rows equals the stored rows' only if it splices exactly those rows.
    r = metrics.evaluate_saes(
        lm.params, lm.lm_cfg, batches, saes=[zero_sae], layer=15, site="res", outlier_norm_factor=factor
    )[0]
    assert r["n_tokens"] == n and r["n_outliers_kept_clean"] == int(mask.sum()) - n
    pos = np.nonzero(valid)[1]
    sq = np.sum(stored.astype(np.float64) ** 2, axis=-1)
    want = np.full(mask.shape[1], np.nan)
    for p in np.unique(pos):
        want[p] = sq[pos == p].mean()
    np.testing.assert_allclose(r["err_by_position"], want, rtol=1e-5)
