"""configs/clt.py end to end on the embedded Gemma 3 270M (its runlocal, as CI runs it): a CLT
over all 18 layers trains online from one LM pass per batch, exports Gemma Scope 2's CLT files
for both target L0s, the replacement model (all 18 MLPs replaced at once) is scored, and
colabs/circuits.ipynb traces a prompt through the CLT (graph, files, page, an intervention)."""

import json
import os

import numpy as np

from gemmascope import config as config_lib
from gemmascope.config.experiments import clt as clt_config
from gemmascope.eval.replacement import evaluate_replacements
from gemmascope.sae.files import multilayer
from gemmascope.train.loop import train_and_evaluate
from tests.test_colabs import _run as run_notebook


def test_clt_demo_runlocal_trains_exports_and_scores_the_replacement_model(tmp_path, monkeypatch, load_lm_once):
    wd = str(tmp_path)
    config = config_lib.prepare(clt_config.get_config("runlocal=True"))
    assert tuple(config.layers) == tuple(range(18)) and tuple(config.sites) == ("clt",)
    recs = train_and_evaluate(config, wd, log=lambda *a: None)
    assert [r["sweep_value"] for r in recs] == list(clt_config.TARGET_L0S)
    for r in recs:
        p = multilayer.load_gemma_scope_2_clt(r["path"])
        assert p["W_enc"].shape == (18, 640, 64) and p["W_dec"].shape == (18, 64, 18, 640)
        assert len(r["fvu_per_layer"]) == 18 and all(np.isfinite(r["fvu_per_layer"]))
        assert r["l0"] > 0 and r["model"].startswith("Gemma 3 270M")
    # Scored on one held-out batch of 2 sequences (~250 text tokens, 237 kept: enough for max_tokens=200;
    # runlocal's 8-sequence batch would score four times the tokens asked for).
    scoring = config_lib.prepare(clt_config.get_config("runlocal=True"))
    scoring.lm.batch_sequences = 2
    rows = evaluate_replacements(scoring, wd, max_tokens=200, log=lambda *a: None)
    assert len(rows) == 2
    for row in rows:
        assert np.isfinite(row["delta_loss"]) and row["kl"] > 0 and row["l0_total"] > 0
        assert row["ce_zero"] > row["ce_clean"]
    with open(os.path.join(wd, "eval", "replacement.json")) as fh:
        assert len(json.load(fh)) == 2
    # The CLT traced by colabs/circuits.ipynb: the graph, its files and page, one intervention.
    monkeypatch.setenv("GEMMASCOPE_CLT", recs[-1]["path"])
    out, _ = run_notebook("circuits.ipynb", wd, monkeypatch)
    assert "active features" in out and "change in the" in out
    with open(os.path.join(wd, "graphs", "summary.json")) as fh:
        summary = json.load(fh)
    assert summary["clt"] == recs[-1]["path"]
    assert 0 < summary["replacement_score"] <= 1 and 0 < summary["completeness_score"] <= 1
    assert all(np.isfinite(summary[k]) for k in ("predicted", "lm", "replacement")) and summary["predicted"] != 0
    with open(os.path.join(wd, "graphs", "capital.json")) as fh:
        data = json.load(fh)
    assert data["links"] and 0 < sum(n["feature_type"] == "logit" for n in data["nodes"]) <= 5
    html = open(os.path.join(wd, "graphs", "capital.html")).read()
    assert html.count('"path"') == sum(n["feature_type"] == "logit" for n in data["nodes"])
