"""Sparse probing (gemmascope.eval.probing): a planted latent is found with k = 1, the fit is the
optimum of scikit-learn's objective, splits never share a document, the topic labels are the
fortunes files, and a toy workdir gets its eval.json fields and tables."""

import json
import os

import jax
import numpy as np
import pytest
import scipy.optimize

from gemmascope.data import topics
from gemmascope.eval import evaluate
from gemmascope.eval import probing as P
from gemmascope.lm import model
from gemmascope.lm.loading import LM
from tests.tiny import tiny_llama


def _tasks_for(labels, names, seed=0, **kw):
    settings = P.ProbingSettings(min_train=20, min_test=10, seed=seed, **kw)
    is_test = np.random.default_rng(seed + 1).random(len(labels)) < settings.test_fraction
    return P.make_tasks(labels, names, is_test, settings), settings


def test_k1_probe_finds_the_planted_latent():
    """Three classes; latent 37 / 91 / 150 fires (0.5..1.5) on class 0 / 1 / 2 texts with prob.
    0.95, and every latent (planted ones included) fires at random with prob. 0.05: the k = 1 probe
    of each task must pick its class's latent and reach >= 0.9 test accuracy ("fires" alone is right
    on about 95% of a balanced test set of 200: 0.9 is over 3 standard deviations below); with the
    planted latents removed the probes must stay near chance (<= 0.65)."""
    rng = np.random.default_rng(0)
    n, d, planted = 1500, 200, (37, 91, 150)
    labels = rng.integers(0, 3, n)
    x = (rng.random((n, d)) < 0.05) * rng.uniform(0.5, 1.5, (n, d))
    for c, j in enumerate(planted):
        on = (labels == c) & (rng.random(n) < 0.95)
        x[on, j] = rng.uniform(0.5, 1.5, on.sum())
    tasks, settings = _tasks_for(labels, ("a", "b", "c"), k_values=(1, 5))
    res = P.probe_features(x.astype(np.float32), tasks, settings)
    for c, j in enumerate(planted):
        row = res["tasks"]["abc"[c]]
        assert row["dims"]["top_1"] == [j]
        assert row["top_1"] >= 0.9, row
    blind = P.probe_features(np.delete(x, planted, 1), tasks, settings)
    assert max(r["top_1"] for r in blind["tasks"].values()) <= 0.65, blind["mean"]


def test_newton_fit_is_the_optimum_of_the_l2_logistic_objective():
    """Badly scaled features (0.01 .. 1000, as raw residual dimensions are): the gradient of
    scikit-learn's objective at our fit, per unit of each feature's scale, is below 1e-6 relative, and a float64 BFGS run started
    from it finds no lower objective (within 1e-9 relative)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)) * np.array([0.01, 1.0, 100.0, 1000.0])
    y = (x[:, 1] + x[:, 3] / 1000 + 0.5 * rng.normal(size=400) > 0).astype(np.int32)
    theta = P.fit_logistic(x, y, C=1.0)
    loss, grad = P._loss_grad(theta, x, y.astype(float), 1.0)
    scale = np.append(x.std(0), 1.0)  # d loss / d w_j grows with the scale of feature j
    assert np.max(np.abs(grad) / scale) <= 1e-6 * max(1.0, loss), grad
    ref = scipy.optimize.minimize(P._loss_grad, theta, args=(x, y.astype(float), 1.0), jac=True, method="BFGS")
    assert loss <= ref.fun * (1 + 1e-9)
    assert P.accuracy(theta, x, y) > 0.7


def test_top_k_by_mean_diff_orders_by_the_absolute_difference():
    x = np.array([[0.0, 5.0, 1.0, -3.0], [0.0, 5.0, 0.0, -3.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    y = np.array([1, 1, 0, 0])
    # |diffs| = 1, 5, 0.5, 3 (the negative one counts by its size)
    assert P.top_k_by_mean_diff(x, y, 3).tolist() == [1, 3, 0]


def test_splits_never_share_a_document_and_tasks_are_balanced():
    texts, labels, names = topics.fortune_topics()
    settings = P.ProbingSettings()
    is_test = P.split_of(texts, settings.test_fraction, settings.salt)
    tasks = P.make_tasks(labels, names, is_test, settings)
    assert len(tasks) >= 10
    for t in tasks:
        train = {topics.normalise(texts[i]) for i in t.train}
        test = {topics.normalise(texts[i]) for i in t.test}
        assert not train & test, t.name
        assert not is_test[t.train].any() and is_test[t.test].all()
        assert t.train_y.sum() * 2 == len(t.train) and t.test_y.sum() * 2 == len(t.test)
        assert (labels[t.train[t.train_y == 1]] == names.index(t.name)).all()
        assert (labels[t.train[t.train_y == 0]] != names.index(t.name)).all()
    # copies of a text (whitespace aside) land on the same side, whatever their order
    docs = [f"doc {i}" for i in range(300)] + [f"doc  {i}\n" for i in range(300)]
    side = P.split_of(docs, 0.3, "s")
    assert (side[:300] == side[300:]).all() and 0.2 < side.mean() < 0.4


def test_fortune_topics_label_by_source_file_and_refuse_another_corpus():
    from gemmascope.data.text import embedded_corpus

    docs = embedded_corpus()
    texts, labels, names = topics.fortune_topics(docs)
    topic = {t: names[l] for t, l in zip(texts, labels)}
    assert topic[docs[11738]] == "tao" and docs[11738].startswith("The Way")
    assert topic[docs[464]] == "art" and topic[docs[465]] == "computers"
    assert topic[docs[13422]] == "zippy"
    assert len(set(map(P.normalise, texts))) == len(texts)  # duplicates resolved
    with pytest.raises(ValueError, match="topic 'computers' should start at document 465"):
        topics.fortune_topics(docs[:465] + docs[466:] + ["x"])


class _WordIds:
    """A tokenizer for texts of space-separated integers."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def test_probe_workdir_adds_eval_json_fields_and_tables(tmp_path):
    """A tiny random Llama, texts of three classes drawn from disjoint token ranges, and a toy
    SAE (random JumpReLU on the layer-1 residual) in a workdir that already has eval.json: probing
    writes per-task accuracies for SAE and raw activations, SAEBench-named means, the table's
    probing columns and probing.md. The raw activations separate such classes well above chance
    (measured 0.84 at k = 5, 0.87 on all 16 dimensions; asserted >= 0.75 and >= 0.8 on 80 test
    texts per task); a rerun finds nothing to do (no LM given, none needed)."""
    cfg = tiny_llama()
    lm = LM(cfg, model.init_params(jax.random.PRNGKey(0), cfg, std=0.4), _WordIds(), "tiny")
    rng = np.random.default_rng(0)
    ranges = [(3, 15), (15, 27), (27, 40)]
    labels = rng.integers(0, 3, 600)
    texts = [" ".join(map(str, rng.integers(*ranges[c], rng.integers(10, 15)))) for c in labels]
    d_sae = 24
    sae = {
        "W_enc": rng.normal(size=(16, d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, 16)).astype(np.float32),
        "b_enc": np.zeros(d_sae, np.float32),
        "b_dec": np.zeros(16, np.float32),
        "threshold": np.full(d_sae, 0.1, np.float32),
    }
    sae_dir = tmp_path / "saes" / "res" / "layer_1" / "width_24" / "jumprelu" / "average_l0_5"
    os.makedirs(sae_dir)
    np.savez(sae_dir / "params.npz", **sae)
    (sae_dir / "metadata.json").write_text(json.dumps({"layer": 1, "site": "res", "architecture": "jumprelu"}))
    row = {"architecture": "jumprelu", "site": "res", "layer": 1, "d_sae": d_sae, "l0": 5.0, "fvu": 0.5}
    row.update(delta_loss=0.1, path=str(sae_dir / "params.npz"))
    (sae_dir / "eval.json").write_text(json.dumps(row))

    class Config:
        class lm:  # noqa: N801
            outlier_norm_factor = 0.0

    settings = P.ProbingSettings(k_values=(1, 5, None), n_train=120, n_test=40, min_train=60, min_test=20)
    corpus = (texts, labels.astype(np.int32), ("a", "b", "c"))
    rows = P.probe_workdir(Config, str(tmp_path), settings, log=lambda s: None, lm=lm, corpus=corpus)
    out = json.loads((sae_dir / "eval.json").read_text())
    assert out["fvu"] == 0.5 and rows[0]["sae_top_1_test_accuracy"] == out["sae_top_1_test_accuracy"]
    sp = out["sparse_probing"]
    assert sp["tasks"] == ["a", "b", "c"] and sp["texts_without_tokens"] == 0
    assert set(sp["sae"]["tasks"]["a"]) == {"top_1", "top_5", "all", "dims"}
    assert all(0 <= j < d_sae for j in sp["sae"]["tasks"]["b"]["dims"]["top_5"])
    assert out["llm_top_5_test_accuracy"] >= 0.75 and out["llm_test_accuracy"] >= 0.8, sp["llm"]["mean"]
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "sae_top_1_test_accuracy" in table.splitlines()[0]
    assert f"{out['sae_top_1_test_accuracy']:.4g}" in table.splitlines()[2]
    assert "raw activations, res L1" in (tmp_path / "eval" / "probing.md").read_text()
    again = P.probe_workdir(None, str(tmp_path), settings, log=lambda s: None, corpus=corpus)
    assert again[0]["sparse_probing"] == sp


def test_pooled_codes_are_the_mean_of_token_codes_not_the_code_of_the_mean():
    """On the tiny LM: pooled SAE features equal a NumPy encode of every kept token's activation,
    averaged per text (1e-5 relative), and differ from encoding the pooled activation."""
    cfg = tiny_llama()
    lm = LM(cfg, model.init_params(jax.random.PRNGKey(1), cfg, std=0.4), _WordIds(), "tiny")
    rng = np.random.default_rng(2)
    texts = [" ".join(map(str, rng.integers(3, 40, n))) for n in (2, 5, 9, 3)]
    sae = {
        "W_enc": rng.normal(size=(16, 8)).astype(np.float32),
        "W_dec": rng.normal(size=(8, 16)).astype(np.float32),
        "b_enc": rng.normal(size=8).astype(np.float32),
        "b_dec": np.zeros(16, np.float32),
        "threshold": np.full(8, 0.5, np.float32),
    }
    settings = P.ProbingSettings(batch_texts=3)
    raw, (codes,), n_tok = P.pooled_features(lm, texts, 2, "res", [sae], settings, factor=0.0)
    assert n_tok.tolist() == [2, 5, 9, 3]
    toks = np.full((len(texts), 16), cfg.pad_id, np.int32)  # one right-padded batch: causal, so exact
    toks[:, 0] = cfg.bos_id
    for i, t in enumerate(texts):
        toks[i, 1 : 1 + n_tok[i]] = [int(w) for w in t.split()]
    acts = np.asarray(model.capture_activations(lm.params, toks, cfg, [(2, "res")])[(2, "res")])
    for i in range(len(texts)):
        act = acts[i, 1 : 1 + n_tok[i]]
        pre = act @ sae["W_enc"] + sae["b_enc"]
        f = pre * (pre > sae["threshold"])
        np.testing.assert_allclose(raw[i], act.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(codes[i], f.mean(0), rtol=1e-5, atol=1e-5)
    pre_mean = raw @ sae["W_enc"] + sae["b_enc"]
    assert not np.allclose(codes, pre_mean * (pre_mean > sae["threshold"]), atol=1e-3)


def test_table_columns_name_the_probing_means():
    assert set(evaluate.SPARSE_PROBING) <= set(evaluate.COLUMNS)
    fields = P.result_fields({"mean": {"top_1": 0.7, "all": 0.9}}, {"mean": {"top_1": 0.6}})
    assert fields == {"sae_top_1_test_accuracy": 0.7, "sae_test_accuracy": 0.9, "llm_top_1_test_accuracy": 0.6}
