"""configs/clt.py end to end on the embedded Gemma 3 270M (its runlocal, as CI runs it): a CLT
over all 18 layers trains online from one LM pass per batch, exports Gemma Scope 2's CLT files
for both target L0s, the replacement model (all 18 MLPs replaced at once) is scored, and a
prompt's attribution graph through the CLT is built, pruned and written."""

import json
import os

import numpy as np

from gemmascope import config as config_lib
from gemmascope.circuits import attribution, graph_file, page, prune
from gemmascope.circuits.transcoders import load_stack
from gemmascope.config.experiments import clt as clt_config
from gemmascope.eval.replacement import evaluate_replacements
from gemmascope.lm import model as lm_model
from gemmascope.lm.loading import load_lm
from gemmascope.sae.files import multilayer
from gemmascope.train.loop import train_and_evaluate


def test_clt_demo_runlocal_trains_exports_and_scores_the_replacement_model(tmp_path):
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
    rows = evaluate_replacements(config, wd, max_tokens=200, log=lambda *a: None)
    assert len(rows) == 2
    for row in rows:
        assert np.isfinite(row["delta_loss"]) and row["kl"] > 0 and row["l0_total"] > 0
        assert row["ce_zero"] > row["ce_clean"]
    with open(os.path.join(wd, "eval", "replacement.json")) as fh:
        assert len(json.load(fh)) == 2
    # The CLT traced: a prompt's attribution graph, pruned, written as circuit-tracer's file.
    lm = load_lm(config.lm.checkpoint)
    stack = load_stack(recs[0]["path"])
    ids = [lm.cfg.bos_id] + list(lm.tokenizer("The capital of France", add_special_tokens=False)["input_ids"])
    g = attribution.attribute(lm.params, lm.cfg, np.array(ids), stack, max_n_logits=3, batch_size=256)
    assert g.n_features > 0 and 0 < len(g.logit_tokens) <= 3
    logits = lm_model.forward(lm.params, np.array([ids]), lm.cfg).logits[0, -1]
    assert int(g.logit_tokens[0]) == int(np.argmax(logits))
    sc = prune.scores(g)
    assert 0 < sc["replacement_score"] <= 1 and 0 < sc["completeness_score"] <= 1
    texts = [lm.tokenizer.decode([i]) for i in ids]
    path = graph_file.write_graph(
        os.path.join(wd, "graphs"), graph_file.graph_record(g, slug="p", scan="t", prompt_tokens=texts)
    )
    with open(path) as fh:
        data = json.load(fh)
    assert data["links"] and sum(n["feature_type"] == "logit" for n in data["nodes"]) == len(g.logit_tokens)
    html = open(page.write_page(os.path.join(wd, "graphs"), data)).read()
    assert html.count('"path"') == len(g.logit_tokens)
