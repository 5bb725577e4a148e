"""Evaluation metrics at a site: identity and zero SAEs, and L0/FVU against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.eval import metrics
from gemmascope.lm import loss as lm_loss
from gemmascope.lm import model
from gemmascope.lm.config import LMConfig
from tests.tiny import tiny_batches, tiny_llama

CFG = tiny_llama()
D = CFG.d_model


@pytest.fixture(scope="module")
def lm():
    params = model.init_params(jax.random.PRNGKey(0), CFG, std=0.4)
    return params, tiny_batches(CFG)


def _log_softmax(lg: np.ndarray) -> np.ndarray:
    m = lg.max(-1, keepdims=True)
    return lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))


def identity_sae():
    eye = np.eye(D, dtype=np.float32)
    return {
        "W_enc": np.concatenate([eye, -eye], 1),
        "W_dec": np.concatenate([eye, -eye], 0),
        "b_enc": np.zeros(2 * D, np.float32),
        "b_dec": np.zeros(D, np.float32),
        "threshold": np.full(2 * D, 1e-12, np.float32),
    }


def test_identity_sae_has_fvu_0_and_delta_loss_0(lm):
    params, batches = lm
    r = metrics.evaluate_sae(params, CFG, batches, sae=identity_sae(), layer=1, site="res", outlier_norm_factor=0)
    assert r["fvu"] < 1e-10
    assert abs(r["delta_loss"]) < 1e-6
    assert abs(r["ce_zero"] - r["ce_clean"]) > 1e-3  # ablation changes the loss (random model: either way)
    assert r["n_tokens"] == sum(int(m.sum()) for _, m in batches)
    np.testing.assert_allclose(r["l0"], D, atol=0.01)  # every coordinate is + or - (never exactly 0)
    # SAEBench core metrics of a perfect reconstruction: every ratio 1, no KL, every latent alive
    # (each of the 2D latents fires on about half the tokens: denser than 10%).
    for key in ("ce_loss_score", "explained_variance", "cossim", "l2_ratio", "relative_reconstruction_bias"):
        np.testing.assert_allclose(r[key], 1.0, rtol=0, atol=1e-5, err_msg=key)
    assert abs(r["kl_div_with_sae"]) < 1e-6
    assert r["frac_alive"] == r["freq_over_1_percent"] == r["freq_over_10_percent"] == 1.0


def test_zero_sae_gives_zero_ablation_loss_and_mean_sae_gives_fvu_1(lm):
    params, batches = lm
    zero = {
        "W_enc": np.zeros((D, 8), np.float32),
        "W_dec": np.zeros((8, D), np.float32),
        "b_enc": np.zeros(8, np.float32),
        "b_dec": np.zeros(D, np.float32),
        "threshold": np.ones(8, np.float32),
    }
    r = metrics.evaluate_sae(params, CFG, batches, sae=zero, layer=1, site="mlp", outlier_norm_factor=0)
    np.testing.assert_allclose(r["ce_sae"], r["ce_zero"], rtol=1e-6)
    assert r["l0"] == 0 and r["dead_fraction"] == 1.0
    # SAEBench core metrics of the zero SAE: none of the gap recovered, x_hat = 0 so cos (taken as 0),
    # L2 ratio 0, shrinkage undefined (0 / 0 = NaN), EV = 1 - E||x||^2 / E||x - E[x]||^2, no latent alive.
    # The score divides ce_zero - ce_sae (equal to rtol 1e-6 above, float32 rounding) by the gap
    # ce_zero - ce_clean, which this random model makes small (about 5e-3 nats): the score's
    # tolerance is that same rtol carried through the division, not a fixed atol.
    tol = 1e-6 * r["ce_zero"] / abs(r["ce_zero"] - r["ce_clean"])
    np.testing.assert_allclose(r["ce_loss_score"], 0.0, atol=tol)
    assert r["cossim"] == 0.0 and r["l2_ratio"] == 0.0 and np.isnan(r["relative_reconstruction_bias"])
    assert r["frac_alive"] == r["freq_over_1_percent"] == r["freq_over_10_percent"] == 0.0
    assert r["kl_div_with_sae"] > 1e-4
    # An SAE that always outputs the dataset mean explains no variance: FVU = 1.
    xs = np.concatenate(
        [np.asarray(model.forward(params, t, CFG, capture=[(1, "mlp")]).captures[(1, "mlp")])[m] for t, m in batches]
    )
    mean_sae = dict(zero, b_dec=xs.mean(0).astype(np.float32))
    r = metrics.evaluate_sae(params, CFG, batches, sae=mean_sae, layer=1, site="mlp", outlier_norm_factor=0)
    np.testing.assert_allclose(r["fvu"], 1.0, rtol=1e-4)
    zero_r = metrics.evaluate_sae(params, CFG, batches, sae=zero, layer=1, site="mlp", outlier_norm_factor=0)
    xs64 = xs.astype(np.float64)
    ev_zero = 1 - (xs64**2).sum() / ((xs64 - xs64.mean(0)) ** 2).sum()
    np.testing.assert_allclose(zero_r["explained_variance"], ev_zero, rtol=1e-4)


def test_l0_fvu_and_positions_match_numpy(lm):
    params, batches = lm
    rng = np.random.default_rng(1)
    sae = {
        "W_enc": rng.standard_normal((D, 24)).astype(np.float32) * 0.3,
        "W_dec": rng.standard_normal((24, D)).astype(np.float32) * 0.3,
        "b_enc": rng.standard_normal(24).astype(np.float32) * 0.1,
        "b_dec": rng.standard_normal(D).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.05, 0.5, 24).astype(np.float32),
    }
    r = metrics.evaluate_sae(params, CFG, batches, sae=sae, layer=2, site="att", outlier_norm_factor=0)
    xs, pos = [], []
    for t, m in batches:
        a = np.asarray(model.forward(params, t, CFG, capture=[(2, "att")]).captures[(2, "att")], np.float64)
        xs.append(a[m])
        pos.append(np.nonzero(m)[1])
    x, pos = np.concatenate(xs), np.concatenate(pos)
    pre = x @ sae["W_enc"] + sae["b_enc"]
    f = np.where(pre > sae["threshold"], pre, 0.0)
    x_hat = f @ sae["W_dec"] + sae["b_dec"]
    err = ((x - x_hat) ** 2).sum(1)
    np.testing.assert_allclose(r["l0"], (f != 0).sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(r["fvu"], err.sum() / ((x - x.mean(0)) ** 2).sum(), rtol=1e-4)
    np.testing.assert_array_equal(r["fire_counts"], (f != 0).sum(0))
    for p in (1, 5, 11):
        np.testing.assert_allclose(r["err_by_position"][p], err[pos == p].mean(), rtol=1e-4)
    assert np.isnan(r["err_by_position"][0])  # BOS is never evaluated
    counts, edges, dead = metrics.firing_histogram(r["fire_counts"], r["n_tokens"])
    assert counts.sum() + dead == 24 and dead == int((r["fire_counts"] == 0).sum())
    # SAEBench core metrics against NumPy (definitions: gemmascope.eval.metrics module doc)
    nx, nxh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    freq = (f != 0).mean(0)
    ref = {
        "explained_variance": 1 - err.sum() / ((x - x.mean(0)) ** 2).sum(),
        "cossim": ((x * x_hat).sum(1) / (nx * nxh)).mean(),
        "l2_ratio": (nxh / nx).mean(),
        "relative_reconstruction_bias": (nxh**2).mean() / (x * x_hat).sum(1).mean(),
        "frac_alive": (freq > 0).mean(),
        "freq_over_1_percent": (freq > 0.01).mean(),
        "freq_over_10_percent": (freq > 0.1).mean(),
        "ce_loss_score": (r["ce_zero"] - r["ce_sae"]) / (r["ce_zero"] - r["ce_clean"]),
    }
    for key, v in ref.items():
        np.testing.assert_allclose(r[key], v, rtol=1e-5, err_msg=key)
    # not degenerate: some latents alive, the two density fractions differ
    assert 0 < ref["frac_alive"] and ref["freq_over_10_percent"] < ref["freq_over_1_percent"] <= 1


@pytest.mark.parametrize("layer,site", [(1, "res"), (2, "res"), (0, "mlp"), (2, "att")])
def test_losses_match_full_forwards_with_the_splice(lm, layer, site):
    """Clean, zero-ablation and SAE losses from evaluate_sae (shared prefix; for ``res`` resuming
    after the site's layer; chunked cross-entropy) equal three whole forwards of the LM with the
    splice applied at the real-text positions, scored by next_token_loss on the full logits."""
    params, batches = lm
    rng = np.random.default_rng(4)
    n = 24
    sae = {
        "W_enc": rng.standard_normal((D, n)).astype(np.float32) * 0.3,
        "W_dec": rng.standard_normal((n, D)).astype(np.float32) * 0.3,
        "b_enc": rng.standard_normal(n).astype(np.float32) * 0.1,
        "b_dec": rng.standard_normal(D).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.05, 0.5, n).astype(np.float32),
    }
    r = metrics.evaluate_sae(params, CFG, batches, sae=sae, layer=layer, site=site, outlier_norm_factor=0)
    jsae = {k: jnp.asarray(v) for k, v in sae.items()}
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl_sum, n_targets = 0.0, 0
    for toks, mask in batches:
        m = jnp.asarray(mask)[..., None]
        splices = {
            "clean": None,
            "sae": {(layer, site): lambda a, m=m: jnp.where(m, metrics.reconstruct(jsae, a)[0], a)},
            "zero": {(layer, site): lambda a, m=m: jnp.where(m, 0.0, a)},
        }
        w = mask[:, 1:].astype(np.float64)
        logp = {}
        for name, sp in splices.items():
            logits = model.forward(params, toks, CFG, splice=sp).logits
            ce = lm_loss.next_token_loss(logits, toks)[1]
            sums[name] += float((np.asarray(ce, np.float64) * w).sum())
            logp[name] = _log_softmax(np.asarray(logits, np.float64)[:, :-1])
        kl = (np.exp(logp["clean"]) * (logp["clean"] - logp["sae"])).sum(-1)  # KL(clean || sae) per position
        kl_sum += float((kl * w).sum())
        n_targets += w.sum()
    for name in sums:
        np.testing.assert_allclose(r[f"ce_{name}"], sums[name] / n_targets, rtol=1e-5)
    assert kl_sum / n_targets > 1e-3  # the SAE changes the distribution: a test of the KL, not of 0 = 0
    np.testing.assert_allclose(r["kl_div_with_sae"], kl_sum / n_targets, rtol=1e-4, atol=1e-6)
    assert abs(r["ce_sae"] - r["ce_clean"]) > 1e-3 and abs(r["ce_zero"] - r["ce_clean"]) > 1e-3


def test_outlier_positions_keep_their_activation():
    act = jnp.asarray([[[100.0, 0], [1.0, 0], [1.2, 0], [0.9, 0]]])
    mask = jnp.asarray([[True, True, True, True]])
    sel = metrics.splice_positions(act, mask, 10.0)
    np.testing.assert_array_equal(sel, [[False, True, True, True]])


def test_several_saes_in_one_pass_and_cached_baselines_match_one_at_a_time(lm):
    """evaluate_saes (shared LM prefix, one clean and one zero-ablation run for all SAEs, cached
    baselines on a second pass) gives what evaluating each SAE alone gives; TopK and ReLU files
    included."""
    params, batches = lm
    rng = np.random.default_rng(3)

    def rand(n, **extra):
        return {
            "W_enc": rng.standard_normal((D, n)).astype(np.float32) * 0.3,
            "W_dec": rng.standard_normal((n, D)).astype(np.float32) * 0.3,
            "b_enc": rng.standard_normal(n).astype(np.float32) * 0.1,
            "b_dec": rng.standard_normal(D).astype(np.float32) * 0.1,
            **extra,
        }

    saes = [rand(24, threshold=rng.uniform(0.05, 0.5, 24).astype(np.float32)), rand(32, k=np.float32(5)), rand(16)]
    alone = [
        metrics.evaluate_sae(params, CFG, batches, sae=s, layer=2, site="res", outlier_norm_factor=0) for s in saes
    ]
    cache: dict = {}
    together = metrics.evaluate_saes(
        params, CFG, batches, saes=saes, layer=2, site="res", outlier_norm_factor=0, baseline_cache=cache
    )
    assert len(cache) == len(batches)
    again = metrics.evaluate_saes(
        params, CFG, batches, saes=saes[1:], layer=2, site="res", outlier_norm_factor=0, baseline_cache=cache
    )
    for a, b in zip(alone, together):
        for key in ("l0", "fvu", "ce_clean", "ce_sae", "ce_zero", "delta_loss", "kl_div_with_sae", "cossim"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(b["fire_counts"], a["fire_counts"])
    for a, b in zip(alone[1:], again):
        for key in ("ce_clean", "ce_zero", "delta_loss", "l0"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert alone[1]["l0"] <= 5.0  # TopK keeps at most k


def test_clean_loss_is_shared_across_sites(lm):
    """A site never evaluated before takes the clean loss from ``clean_cache`` (filled at another
    site) and gives the same metrics as a cold evaluation; the clean loss is the cached entry, not a
    recomputed one (a poisoned entry shows it; the clean run still feeds the KL)."""
    params, batches = lm
    sae = identity_sae()
    clean_cache: dict = {}
    r_res = metrics.evaluate_saes(
        params,
        CFG,
        batches,
        saes=[sae],
        layer=1,
        site="res",
        outlier_norm_factor=0,
        baseline_cache={},
        clean_cache=clean_cache,
    )[0]
    assert len(clean_cache) == len(batches)
    cold = metrics.evaluate_sae(params, CFG, batches, sae=sae, layer=2, site="res", outlier_norm_factor=0)
    site_cache: dict = {}
    shared = metrics.evaluate_saes(
        params,
        CFG,
        batches,
        saes=[sae],
        layer=2,
        site="res",
        outlier_norm_factor=0,
        baseline_cache=site_cache,
        clean_cache=clean_cache,
    )[0]
    for key in ("ce_clean", "ce_zero", "ce_sae", "delta_loss", "fvu"):
        np.testing.assert_allclose(shared[key], cold[key], rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(r_res["ce_clean"], cold["ce_clean"], rtol=1e-6)
    poisoned = {k: v + 1000.0 for k, v in clean_cache.items()}
    r = metrics.evaluate_saes(
        params,
        CFG,
        batches,
        saes=[sae],
        layer=0,
        site="mlp",
        outlier_norm_factor=0,
        baseline_cache={},
        clean_cache=poisoned,
    )[0]
    np.testing.assert_allclose(r["ce_clean"] - cold["ce_clean"], 1000.0 * len(batches) / r["n_targets"], rtol=1e-5)


def test_forward_resumed_from_a_layer_equals_the_full_forward(lm):
    params, batches = lm
    toks = jnp.asarray(batches[0][0])
    full = model.forward(params, toks, CFG, capture=[(0, "res"), (2, "mlp")])
    resumed = model.forward(params, toks, CFG, capture=[(2, "mlp")], start_layer=1, h_in=full.captures[(0, "res")])
    np.testing.assert_allclose(np.asarray(resumed.logits), np.asarray(full.logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(resumed.captures[(2, "mlp")]), np.asarray(full.captures[(2, "mlp")]), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="before start_layer"):
        model.forward(params, toks, CFG, capture=[(0, "mlp")], start_layer=1, h_in=full.captures[(0, "res")])


def test_matched_l0_interpolates_in_log_l0_and_never_extrapolates():
    from gemmascope.eval.evaluate import matched_l0, matched_l0_markdown, matched_l0_report

    rows = [
        {"architecture": "jumprelu", "l0": 10.0, "delta_loss": 1.0, "fvu": 0.5},
        {"architecture": "jumprelu", "l0": 100.0, "delta_loss": 0.1, "fvu": 0.2},
        {"architecture": "topk", "k": 16, "l0": 16.0, "delta_loss": 1.2, "fvu": 0.6},
        {"architecture": "topk", "k": 64, "l0": 64.0, "delta_loss": 0.3, "fvu": 0.3},
    ]
    m = matched_l0(rows, (10**1.5, 80.0))
    assert m["jumprelu"][10**1.5]["delta_loss"] == pytest.approx(0.55)  # halfway in log L0
    assert m["topk"][80.0]["fvu"] is None  # beyond TopK's largest L0
    md = matched_l0_markdown(rows, (32.0,))
    topk_32 = 1.2 + (0.3 - 1.2) * np.log(2.0) / np.log(4.0)
    jr_32 = 1.0 + (0.1 - 1.0) * np.log(3.2) / np.log(10.0)
    assert f"{topk_32:.4g} ({topk_32 / jr_32:.2f}x)" in md
    # The written report adds the ratios to each series swept over k (its rows carry k): the
    # TopK-type baselines the frontier is stated against.
    report = matched_l0_report(rows, (32.0,))
    assert report.count("Ratios to ") == 2 and "Ratios to topk:" in report
    assert f"{jr_32:.4g} ({jr_32 / topk_32:.2f}x)" in report.split("Ratios to topk:")[1]


def _head_cfg(arch: str) -> LMConfig:
    """The tiny Llama (tied head, no soft-cap), or a tiny Gemma 2 / Gemma 3 with a final soft-cap and
    an untied head: the output-head variants the chunked losses must reproduce (Gemma's final
    norm scales by 1 + w)."""
    if arch == "llama":
        return CFG
    return LMConfig(
        arch=arch,
        vocab_size=41,
        d_model=16,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        head_dim=8,
        d_mlp=24,
        final_softcap=3.0,
        tie_embeddings=False,
        bos_id=1,
        eos_id=2,
        pad_id=0,
    )


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_chunked_cross_entropy_matches_the_full_logits(arch):
    """next_token_ce_from_residual (vocabulary in chunks, running log-sum-exp; the last chunk
    padded; positions in blocks, the last block padded) equals next_token_loss on forward's logits, with Gemma 2's soft-cap and an untied head."""
    cfg = _head_cfg(arch)
    params = model.init_params(jax.random.PRNGKey(1), cfg, std=0.5)
    toks = jnp.asarray(np.random.default_rng(2).integers(3, cfg.vocab_size, size=(3, 9)), jnp.int32)
    out = model.forward(params, toks, cfg, capture=[(cfg.n_layers - 1, "res")])
    ref = lm_loss.next_token_loss(out.logits, toks)[1]
    for n, tb in ((1, 1024), (3, 5), (8, 1), (8, 24)):  # 24 = 3 x (9 - 1) positions: one block
        got = lm_loss.next_token_ce_from_residual(
            params, out.captures[(cfg.n_layers - 1, "res")], toks, cfg, n_chunks=n, token_block=tb
        )
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_splicing_the_last_layer_residual_changes_the_loss(lm):
    params, batches = lm
    ident = metrics.evaluate_sae(params, CFG, batches, sae=identity_sae(), layer=2, site="res", outlier_norm_factor=0)
    assert abs(ident["delta_loss"]) < 1e-6 and abs(ident["ce_zero"] - ident["ce_clean"]) > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_chunked_kl_matches_the_full_logits(arch):
    """next_token_ce_and_kl (vocabulary chunks with running maxima, blocks of positions, the clean
    logits shared by K spliced runs) equals NumPy's KL(softmax(a) || softmax(b)) and cross-entropy
    on forward's full logits, with Gemma 2's soft-cap and an untied head; float64 reference."""
    from gemmascope.eval.kl import next_token_ce_and_kl

    cfg = _head_cfg(arch)
    params = model.init_params(jax.random.PRNGKey(1), cfg, std=0.5)
    toks = jnp.asarray(np.random.default_rng(2).integers(3, cfg.vocab_size, size=(3, 9)), jnp.int32)
    last = (cfg.n_layers - 1, "res")
    runs = [None, {(0, "mlp"): lambda a: 0 * a}, {(0, "mlp"): lambda a: 3 * a}]
    outs = [model.forward(params, toks, cfg, capture=[last], splice=sp) for sp in runs]
    logp = [_log_softmax(np.asarray(o.logits, np.float64)[:, :-1]) for o in outs]
    tgt = np.asarray(toks)[:, 1:, None]
    ref_ce = [-np.take_along_axis(lp, tgt, -1)[..., 0] for lp in logp]
    ref_kl = [(np.exp(logp[0]) * (logp[0] - lp)).sum(-1) for lp in logp[1:]]
    assert min(k.mean() for k in ref_kl) > 1e-3
    for n, tb in ((1, 1024), (3, 5), (8, 1), (8, 24)):
        ce0, ce, kl = next_token_ce_and_kl(
            params,
            outs[0].captures[last],
            jnp.stack([o.captures[last] for o in outs[1:]]),
            toks,
            cfg=cfg,
            n_chunks=n,
            token_block=tb,
        )
        np.testing.assert_allclose(np.asarray(ce0), ref_ce[0], rtol=1e-5, atol=1e-5)
        for i in range(2):
            np.testing.assert_allclose(np.asarray(ce[i]), ref_ce[i + 1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(kl[i]), ref_kl[i], rtol=1e-4, atol=1e-5)


def test_eval_rows_and_table_carry_the_saebench_core_metrics(tmp_path):
    """eval.json rows hold every SAEBench core metric (undefined ones as JSON null, not NaN) and the
    table gains their columns."""
    import json

    from gemmascope.eval import evaluate

    r = {
        "l0": 3.0,
        "fvu": 0.25,
        "delta_loss": 0.5,
        "ce_clean": 2.0,
        "ce_sae": 2.5,
        "ce_zero": 4.0,
        "dead_fraction": 0.5,
        "n_tokens": 10,
        "n_outliers_kept_clean": 0,
        "tokens_per_second": 1.0,
        "fire_counts": np.array([0, 5, 1, 0]),
        "err_by_position": np.array([np.nan, 1.0]),
        "ce_loss_score": 0.75,
        "kl_div_with_sae": 0.1,
        "explained_variance": 0.75,
        "cossim": 0.9,
        "l2_ratio": 0.8,
        "relative_reconstruction_bias": float("nan"),
        "frac_alive": 0.5,
        "freq_over_1_percent": 0.5,
        "freq_over_10_percent": 0.25,
    }
    row = evaluate._row("s/params.npz", {"architecture": "jumprelu", "site": "res", "layer": 1}, r, "toy")
    assert json.loads(json.dumps(row, allow_nan=False))["relative_reconstruction_bias"] is None
    assert all(k in row for k in evaluate.SAEBENCH_CORE) and row["ce_loss_score"] == 0.75
    evaluate.write_table_and_plots([row], str(tmp_path))
    head = open(tmp_path / "table.md").read().splitlines()[0]
    assert "| ce_loss_score | kl_div_with_sae | explained_variance | cossim | l2_ratio |" in head
    assert "| 0.75 | 0.1 | 0.75 | 0.9 | 0.8 |  | 0.5 | 0.5 | 0.25 |" in open(tmp_path / "table.md").read()
