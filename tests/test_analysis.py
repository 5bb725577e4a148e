"""Tests of the logit-lens statistics, the feature classes and token set enrichment.

Tolerances: the logit-lens moments are computed in fp32 (matmul and reductions over the vocabulary)
and compared with float64 scipy: relative 1e-5 on std and kurtosis, absolute 1e-5 on skew, absolute
1e-6 (in units of std) on the mean (observed errors are ~1e-7). KS p-values: within 0.02 of scipy's
asymptotic ``ks_2samp`` p-value for effective sizes >= 50 (the bound the module documents). Enrichment scores are float64 from integer ranks: 1e-12, and
exact where the hand-worked example uses dyadic fractions.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from gemmascope.analysis import enrichment as en
from gemmascope.analysis import logit_lens as ll


def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _sae_with_logits(logits: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``W_dec [n, n]`` (a random rotation) and ``W_U [n, V]`` with ``W_dec @ W_U == logits`` (fp32)."""
    q = _orthogonal(logits.shape[0], seed)
    return q.astype(np.float32), (q.T @ logits).astype(np.float32)


# ----------------------------------------------------------------------------------- logit lens


def test_moments_match_scipy_on_known_distributions():
    rng = np.random.default_rng(0)
    V = 20000
    rows = {
        "normal": rng.normal(0.3, 2.0, V),  # skew 0, kurtosis 3
        "exponential": rng.exponential(1.0, V),  # skew 2, kurtosis 9
        "uniform": rng.uniform(-1, 1, V),  # skew 0, kurtosis 1.8
        "laplace": rng.laplace(0.0, 1.0, V),  # skew 0, kurtosis 6
        "two_point": np.where(rng.random(V) < 0.3, 1.0, -1.0),  # skew 0.87, kurtosis 1/(0.21)-3
        "student_t10": rng.standard_t(10, V),  # skew 0, kurtosis 4
        "neg_gamma": -rng.gamma(2.0, 1.0, V),  # skew -sqrt(2), kurtosis 6
    }
    L = np.stack(list(rows.values()))
    W_dec = np.eye(len(rows), dtype=np.float32)  # logit weights are exactly L (in fp32)
    res = ll.logit_lens(W_dec, L.astype(np.float32), k=5, chunk_size=3)
    L32 = L.astype(np.float32).astype(np.float64)  # what the function saw
    np.testing.assert_allclose(res.mean, L32.mean(1), atol=1e-6 * L32.std(1).max())
    np.testing.assert_allclose(res.std, L32.std(1), rtol=1e-5)
    np.testing.assert_allclose(res.skew, scipy.stats.skew(L32, axis=1), atol=1e-5)
    np.testing.assert_allclose(res.kurtosis, scipy.stats.kurtosis(L32, axis=1, fisher=False), rtol=1e-5)
    np.testing.assert_allclose(res.frac_above_mean, (L32 > L32.mean(1, keepdims=True)).mean(1), atol=1e-6)
    # sanity against the population values (sampling error at V = 20000 is ~0.05-0.3 on kurtosis)
    np.testing.assert_allclose(res.kurtosis[[0, 2]], [3.0, 1.8], atol=0.1)
    assert abs(res.skew[1] - 2.0) < 0.2 and abs(res.skew[6] + np.sqrt(2)) < 0.2
    # the float64 numpy reference agrees too
    ref = ll.moments_reference(L32)
    np.testing.assert_allclose(res.kurtosis, ref["kurtosis"], rtol=1e-5)


def test_top_and_bottom_tokens():
    rng = np.random.default_rng(1)
    L = rng.standard_normal((4, 50))
    W_dec, W_U = _sae_with_logits(L)
    res = ll.logit_lens({"W_dec": W_dec}, W_U, k=3)  # params dict accepted
    np.testing.assert_array_equal(res.top_ids, np.argsort(-L, axis=1)[:, :3])
    np.testing.assert_array_equal(res.bottom_ids, np.argsort(L, axis=1)[:, :3])
    np.testing.assert_allclose(res.top_values, -np.sort(-L, axis=1)[:, :3], atol=1e-5)
    np.testing.assert_allclose(res.bottom_values, np.sort(L, axis=1)[:, :3], atol=1e-5)
    toks = [f"t{i}" for i in range(50)]
    assert list(res.top_tokens(toks, latent=2)) == [f"t{i}" for i in np.argsort(-L[2])[:3]]
    assert res.bottom_tokens(toks).shape == (4, 3)
    np.testing.assert_allclose(ll.logit_weights(W_dec, W_U, latents=[1, 3]), L[[1, 3]], atol=1e-5)


def _class_logits(V: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    half = rng.permutation(np.arange(V) < V // 2)
    gauss = rng.standard_normal(V)
    outliers = rng.choice(V, size=V // 100, replace=False)  # 1% of the vocabulary
    spiky = rng.standard_normal(V)
    spiky[outliers] += 8.0
    laplace = rng.laplace(size=V)
    rows = [
        (np.where(half, 1.0, -1.0), "partition"),  # +-1 over half: kurtosis 1, 50/50
        (np.where(half, 1.0, -1.0) + 0.3 * gauss, "partition"),  # two noisy bumps
        (spiky, "prediction"),  # Gaussian + big positive outliers
        (-spiky, "suppression"),  # the mirror image
        (gauss, "other"),  # plain Gaussian
        (laplace, "other"),  # symmetric heavy tails
        (np.where(rng.random(V) < 0.9, 1.0, -1.0), "suppression"),  # 90/10 split: skew -2.7, kurt 8.1
        (np.where(rng.random(V) < 0.75, 1.0, -1.0), "other"),  # 75/25: kurtosis 2.3, neither class
        (np.zeros(V), "other"),  # dead latent
    ]
    return np.stack([r for r, _ in rows]), [c for _, c in rows]


def test_classification_on_constructed_latents():
    L, expected = _class_logits(V=4000)
    W_dec, W_U = _sae_with_logits(L, seed=3)
    W_dec[-1] = 0.0  # dead latent: W_dec row zero
    res = ll.logit_lens(W_dec, W_U, k=5, chunk_size=3)
    assert list(res.feature_class) == expected, (res.skew, res.kurtosis, res.frac_above_mean)
    np.testing.assert_allclose(res.kurtosis[0], 1.0, atol=1e-4)
    assert np.isnan(res.skew[-1]) and np.isnan(res.kurtosis[-1]) and res.std[-1] == 0
    assert res.class_counts() == {"partition": 2, "prediction": 1, "suppression": 2, "other": 4}
    # thresholds are parameters: a stricter tail threshold turns the spiky latents into "other"
    strict = res.reclassify(ll.ClassThresholds(heavy_tail_min_kurtosis=1e3))
    assert list(strict.feature_class[2:4]) == ["other", "other"] and strict.feature_class[0] == "partition"
    with pytest.raises(ValueError, match="disjoint"):
        ll.ClassThresholds(partition_max_kurtosis=5.0, heavy_tail_min_kurtosis=4.0)


def test_classify_rule_boundaries():
    t = ll.ClassThresholds()
    skew = np.array([0.0, 0.0, 0.6, -0.6, 0.4, 0.6, np.nan])
    kurt = np.array([1.5, 1.5, 4.5, 4.5, 4.5, 3.5, np.nan])
    frac = np.array([0.5, 0.75, 0.3, 0.7, 0.5, 0.5, np.nan])
    assert list(ll.classify(skew, kurt, frac, t)) == [
        "partition",
        "other",
        "prediction",
        "suppression",
        "other",
        "other",
        "other",
    ]


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(2)
    W_dec = rng.standard_normal((37, 16)).astype(np.float32)
    W_U = rng.standard_normal((16, 300)).astype(np.float32)
    full = ll.logit_lens(W_dec, W_U, k=4, chunk_size=37).as_dict()
    for chunk in (1, 8):
        part = ll.logit_lens(W_dec, W_U, k=4, chunk_size=chunk).as_dict()
        for name, v in full.items():
            if v.dtype.kind in "iU":
                np.testing.assert_array_equal(part[name], v, err_msg=name)
            else:
                np.testing.assert_allclose(part[name], v, rtol=1e-5, atol=1e-6, err_msg=name)
    weights = np.concatenate([w for _, w in ll.iter_logit_weights(W_dec, W_U, chunk_size=5)])
    np.testing.assert_allclose(weights, W_dec.astype(np.float64) @ W_U, rtol=1e-4, atol=1e-4)
    sets = {"a": rng.random(300) < 0.3, "b": rng.random(300) < 0.05, "c": np.arange(7)}
    e_full = en.token_set_enrichment(W_dec, W_U, sets, chunk_size=37)
    e_part = en.token_set_enrichment(W_dec, W_U, sets, chunk_size=4)
    np.testing.assert_array_equal(e_part.score, e_full.score)
    np.testing.assert_array_equal(
        en.enrichment_scores(weights, sets, chunk_size=1), en.enrichment_scores(weights, sets, chunk_size=100)
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="embed.T"):
        ll.logit_lens(np.zeros((4, 8), np.float32), np.zeros((10, 8), np.float32))
    with pytest.raises(ValueError, match="vocab"):
        en.enrichment_scores(np.zeros((2, 5)), {"s": np.zeros(4, bool)})
    with pytest.raises(ValueError, match="correction"):
        en.token_set_enrichment(
            np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), {"s": np.array([0])}, correction="holm"
        )


# ----------------------------------------------------------------------------------- enrichment


def test_enrichment_hand_worked_example():
    # token:   0     1     2     3     4     5
    w = np.array([0.1, 0.9, -0.5, 0.3, 0.7, -0.2])
    # descending ranking: 1 (0.9), 4 (0.7), 3 (0.3), 0 (0.1), 5 (-0.2), 2 (-0.5); V = 6.
    # S = {1, 3}: steps +1/2 in S, -1/4 outside:
    #   token 1 in  -> +0.50;  4 out -> 0.25;  3 in -> 0.75;  0 out -> 0.50;  5 -> 0.25;  2 -> 0.00
    #   largest |running sum| = 0.75 (positive: S is promoted).
    # S = {2, 5}: -0.25, -0.50, -0.75, -1.00, then 5 in -> -0.50, 2 in -> 0.00  => -1.0 (suppressed)
    # S = {4, 5}: -0.25, +0.25, 0.00, -0.25, +0.25, 0.00 => |max| 0.25 reached both ways: the
    #   positive excursion is reported, +0.25.
    # S = {0} (|S| = 1, steps +1 and -1/5): -0.2, -0.4, -0.6, +0.4, +0.2, 0.0 => -0.6.
    # S = {} and S = everything: 0 by convention.
    sets = {
        "a": np.array([1, 3]),
        "b": np.array([2, 5]),
        "tie": np.array([4, 5]),
        "one": np.array([0]),
        "empty": np.zeros(6, bool),
        "all": np.ones(6, bool),
    }
    score = en.enrichment_scores(w, sets)
    assert score[0] == 0.75 and score[1] == -1.0 and score[2] == 0.25 and score[4] == 0 and score[5] == 0
    assert abs(score[3] - (-0.6)) < 1e-12
    p = en.ks_pvalue(score, np.array([2, 2, 2, 1, 0, 6]), 6)
    assert p[4] == 1.0 and p[5] == 1.0 and np.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize("n_set", [1, 7, 200, 1000, 1999])
def test_enrichment_equals_ks_2samp_on_ranks(n_set):
    rng = np.random.default_rng(n_set)
    V = 2000
    w = rng.standard_normal((5, V)).astype(np.float32)
    w[1, rng.choice(V, n_set, replace=False)] += 0.5  # some real signal in one latent
    members = rng.choice(V, n_set, replace=False)
    mask = np.zeros(V, bool)
    mask[members] = True
    score = en.enrichment_scores(w, {"s": mask})[:, 0]
    for i in range(5):
        order = np.argsort(-w[i], kind="stable")
        pos = np.empty(V, int)
        pos[order] = np.arange(V)  # rank position of every token
        ks = scipy.stats.ks_2samp(pos[mask], pos[~mask])
        assert abs(abs(score[i]) - ks.statistic) < 1e-12
        run = np.cumsum(np.where(mask[order], 1 / n_set, -1 / (V - n_set)))  # the walk, brute force
        up, down = max(run.max(), 0.0), min(run.min(), 0.0)
        assert abs(score[i] - (up if up >= -down else down)) < 1e-12  # signed: the larger excursion
        ne = n_set * (V - n_set) / V
        if ne >= 50:  # asymptotic p-value vs scipy's
            asymp = scipy.stats.ks_2samp(pos[mask], pos[~mask], method="asymp").pvalue
            p = en.ks_pvalue(score[i : i + 1], np.array([n_set]), V)[0]
            assert abs(p - asymp) < 0.02, (p, asymp)


def test_pvalue_adjustment():
    rng = np.random.default_rng(5)
    p = rng.random((30, 4)) ** 3
    np.testing.assert_allclose(
        en.adjust_pvalues(p, "bh"),
        scipy.stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape),
        rtol=1e-12,
    )
    np.testing.assert_allclose(en.adjust_pvalues(p, "bonferroni"), np.minimum(p * p.size, 1))
    np.testing.assert_array_equal(en.adjust_pvalues(p, "none"), p)


def test_default_token_sets():
    toks = [
        "<pad>",
        "\u2581the",
        "The",
        "\u0120USA",
        " Paris",
        "123",
        "\u2581(",
        ").",
        "\u2581",
        "\n",
        "caf\u00e9",
        "hello",
        "\u2581\u2581",
        "\u2581I",
        "A1",
    ]
    sets = en.default_token_sets(toks, lengths=(1, 3, 5))

    def members(name):
        return [t for t, m in zip(toks, sets[name]) if m]

    assert members("leading_space") == [
        "\u2581the",
        "\u0120USA",
        " Paris",
        "\u2581(",
        "\u2581",
        "\u2581\u2581",
        "\u2581I",
    ]
    assert members("capitalised") == ["The", " Paris", "\u2581I"]
    assert members("all_caps") == ["\u0120USA"]
    assert members("lowercase") == ["\u2581the", "hello"]
    assert members("digits") == ["123"]
    assert members("punctuation") == ["\u2581(", ")."]
    assert members("brackets") == ["<pad>", "\u2581(", ")."]
    assert members("open_bracket") == ["<pad>", "\u2581("]
    assert members("close_bracket") == ["<pad>", ")."]
    assert members("whitespace") == ["\u2581", "\n", "\u2581\u2581"]
    assert members("non_ascii") == ["caf\u00e9"]
    assert members("length_1") == ["\u2581(", "\n", "\u2581\u2581", "\u2581I"]
    assert members("length_3") == ["\u2581the", "The", "\u0120USA", "123"]
    assert members("length_5") == ["<pad>", " Paris", "hello"]
    assert set(sets) == {"leading_space", *en.DEFAULT_PATTERNS, "length_1", "length_3", "length_5"}
    assert all(m.dtype == bool and m.shape == (len(toks),) for m in sets.values())


def test_token_sets_from_lists_and_regex():
    toks = ["\u2581Mary", " John", "mary", "Mary", "\u0120Anne", "Maryland"]
    s = en.token_sets_from_lists(toks, {"names": ["Mary", "Anne"]})
    assert list(s["names"]) == [True, False, False, True, True, False]
    s = en.token_sets_from_lists(toks, {"names": ["mary"]}, case_sensitive=False)
    assert list(s["names"]) == [True, False, True, True, False, False]
    s = en.token_sets_from_lists(toks, {"names": [" John"]}, ignore_leading_space=False)
    assert list(s["names"]) == [False, True, False, False, False, False]
    r = en.regex_token_sets(toks, {"mary_prefix": r"Mary.*", "raw_space": r" .*"})
    assert list(r["mary_prefix"]) == [True, False, False, True, False, True]
    assert list(en.regex_token_sets(toks, {"raw_space": r" .*"}, on_body=False)["raw_space"]) == [
        False,
        True,
        False,
        False,
        False,
        False,
    ]


def test_token_set_enrichment_finds_planted_sets():
    rng = np.random.default_rng(7)
    V = 3000

    def body():  # 10% digits, 70% lowercase, 20% punctuation
        kind = rng.choice(3, p=[0.1, 0.7, 0.2])
        return [str(rng.integers(1000)), "w" * int(rng.integers(1, 6)), "," * int(rng.integers(1, 3))][kind]

    toks = [("\u2581" if rng.random() < 0.5 else "") + body() for _ in range(V)]
    sets = en.default_token_sets(toks, lengths=(1, 2))
    L = 0.2 * rng.standard_normal((3, V))
    L[0] += 1.0 * sets["leading_space"]  # latent 0 promotes leading-space tokens (partition)
    L[1] -= 3.0 * sets["digits"]  # latent 1 suppresses digits
    W_dec, W_U = _sae_with_logits(L, seed=1)  # latent 2: noise only
    res = en.token_set_enrichment(W_dec, W_U, sets, chunk_size=2)
    assert res.top_sets(0, k=1)[0][0] == "leading_space" and res.column("leading_space")[0] > 0.9
    assert res.top_sets(1, k=1)[0][0] == "digits" and res.column("digits")[1] < -0.9
    sig = res.significant(0.05)
    assert sig[0, res.set_names.index("leading_space")] and sig[1, res.set_names.index("digits")]
    assert not sig[2].any()  # no false discovery on the noise latent
    assert res.qvalue.shape == res.score.shape == (3, len(sets)) and res.correction == "bh"
    lens = ll.logit_lens(W_dec, W_U)
    assert lens.feature_class[0] == "partition" and lens.feature_class[1] == "suppression"
    # the result from precomputed weights agrees
    again = en.enrichment_from_weights(ll.logit_weights(W_dec, W_U), sets)
    np.testing.assert_allclose(again.score, res.score, atol=1e-12)
