"""``attribute(max_feature_nodes=k)``: the features attributed are chosen greedily by their
influence on the logits through the edges known so far, exactly as a NumPy re-run of that rule on
the full graph's rows chooses them (rows do not depend on which other rows were computed); the
capped graph's rows are the full graph's restricted to the kept features' columns; no cap (or a
cap above the active count) gives the full graph bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from gemmascope.circuits import attribution
from gemmascope.circuits.attribution import feature_influence
from tests.test_attribution import _lm, _stack
from tests.tiny import tiny_llama


@pytest.fixture(scope="module")
def case():
    cfg = tiny_llama(n_layers=3)
    params = _lm(cfg, seed=1)
    stack = _stack(cfg, cross_layer=False, skip=False)
    tokens = np.array([cfg.bos_id, 5, 9, 17, 5, 30, 11], np.int64)
    full = attribution.attribute(params, cfg, tokens, stack, max_n_logits=3, desired_logit_prob=0.99, batch_size=4)
    return cfg, params, stack, tokens, full


def test_the_cap_keeps_the_greedy_influence_order_and_the_full_rows(case):
    cfg, params, stack, tokens, full = case
    n_feat, k, nb = full.n_features, full.n_features // 3, 4
    assert n_feat >= 12
    g = attribution.attribute(
        params, cfg, tokens, stack, max_n_logits=3, desired_logit_prob=0.99, batch_size=nb, max_feature_nodes=k
    )
    # The rule re-run on the full graph's rows (features' rows over every source).
    rows = full.adjacency[:, : full.logit_start]
    logit_rows = rows[full.logit_start :]
    done: dict[int, np.ndarray] = {}
    while len(done) < k:
        score = feature_influence(logit_rows, done, n_feat, full.logit_probabilities)
        score[list(done)] = -np.inf
        for i in np.argsort(-score, kind="stable")[: min(nb, k - len(done))]:
            done[int(i)] = rows[i]
    keep = np.array(sorted(done))
    np.testing.assert_array_equal(g.active_features, full.active_features[keep])
    assert g.n_features == k and g.info["active_features_total"] == n_feat
    # Its rows are the full graph's, restricted to the kept features (and every error and token).
    cols = np.concatenate([keep, np.arange(n_feat, full.logit_start)])
    target_rows = np.concatenate([keep, np.arange(full.logit_start, full.n_nodes)])
    np.testing.assert_allclose(
        g.adjacency[:, : g.logit_start][np.r_[:k, g.logit_start : g.n_nodes]],
        full.adjacency[np.ix_(target_rows, cols)],
        rtol=1e-6,
        atol=1e-7,
    )
    # The first batch holds the features of largest direct influence (the logits' rows alone).
    direct = feature_influence(logit_rows, {}, n_feat, full.logit_probabilities)
    assert set(np.argsort(-direct, kind="stable")[:nb]) <= set(keep)


def test_no_cap_or_a_cap_above_the_active_count_is_the_full_graph(case):
    cfg, params, stack, tokens, full = case
    g = attribution.attribute(
        params,
        cfg,
        tokens,
        stack,
        max_n_logits=3,
        desired_logit_prob=0.99,
        batch_size=4,
        max_feature_nodes=full.n_features + 5,
    )
    np.testing.assert_array_equal(g.adjacency, full.adjacency)
    with pytest.raises(ValueError, match="max_feature_nodes"):
        attribution.attribute(params, cfg, tokens, stack, max_feature_nodes=0)
