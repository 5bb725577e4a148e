"""Transcoders (MLP input -> MLP output) in evaluation, dashboards, the logit lens and steering.

The oracles are independent of the evaluator's shared-prefix machinery: a *whole* forward of the
LM in which a splice at ``(layer, "mlp_in")`` records the MLP input and the splice at
``(layer, "mlp")`` replaces the MLP output with the transcoder's prediction from that very input,
scored by ``next_token_loss`` on the full logits; positions and L0/FVU from numpy.
"""

import dataclasses
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.analysis import dashboard as dash
from gemmascope.analysis import steering
from gemmascope.eval import evaluate, metrics
from gemmascope.lm import loss as lm_loss
from gemmascope.lm import model
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from tests.tiny import tiny_batches, tiny_llama

CFG = tiny_llama()
D = CFG.d_model
LAYER = 1
FACTOR = 1.1  # outlier rule tight enough that each site drops some rows, and the two sites differ


@pytest.fixture(scope="module")
def lm():
    params = model.init_params(jax.random.PRNGKey(0), CFG, std=0.4)
    # MLP pre-norm weights spread out, so the MLP input's norm varies and its outlier rule drops rows
    rng = np.random.default_rng(7)
    params["layers"]["mlp_norm"] = jnp.asarray(rng.uniform(0.2, 2.0, params["layers"]["mlp_norm"].shape), jnp.float32)
    return params, tiny_batches(CFG)


def transcoder(seed: int, affine: bool, d_sae: int = 24, d: int = D) -> dict[str, np.ndarray]:
    """A random raw-unit transcoder in our file layout (``W_skip`` when affine)."""
    rng = np.random.default_rng(seed)
    tc = {
        "W_enc": rng.standard_normal((d, d_sae)).astype(np.float32) * 0.4,
        "W_dec": rng.standard_normal((d_sae, d)).astype(np.float32) * 0.3,
        "b_enc": rng.standard_normal(d_sae).astype(np.float32) * 0.1,
        "b_dec": rng.standard_normal(d).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32),
    }
    if affine:
        tc["W_skip"] = rng.standard_normal((d, d)).astype(np.float32) * 0.2
    return tc


def _keep(a: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1)
    return mask & (n <= factor * np.median(n[mask]))


def _oracle_sites(params, toks, mask, factor):
    caps = model.forward(params, toks, CFG, capture=[(LAYER, "mlp_in"), (LAYER, "mlp")]).captures
    x_in, y = (np.asarray(caps[(LAYER, s)], np.float32) for s in ("mlp_in", "mlp"))
    return x_in, y, _keep(x_in, mask, factor), _keep(y, mask, factor)


def _log_softmax(lg: np.ndarray) -> np.ndarray:
    m = lg.max(-1, keepdims=True)
    return lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))


def test_losses_l0_and_fvu_equal_a_whole_forward_with_the_mlp_output_replaced(lm):
    """A plain and an affine transcoder in one pass: clean, zero-ablation (the MLP output zeroed)
    and transcoder losses and the KL equal whole forwards (the tolerances of the SAE path's test in
    test_eval.py); L0 counts the codes of the MLP input and FVU is of the MLP output, at the rows
    kept by the outlier rule at both sites."""
    params, batches = lm
    tcs = [transcoder(1, False), transcoder(2, True)]
    rs = metrics.evaluate_saes(
        params, CFG, batches, saes=tcs, layer=LAYER, site="transcoder", outlier_norm_factor=FACTOR
    )
    ce = {"clean": 0.0, "zero": 0.0, **{i: 0.0 for i in range(len(tcs))}}
    kl = np.zeros(len(tcs))
    n_t = n_sel = n_text = 0
    l0, err = np.zeros(len(tcs)), np.zeros(len(tcs))
    ys, only_in, only_out = [], 0, 0
    for toks, mask in batches:
        x_in, y, keep_in, keep_out = _oracle_sites(params, toks, mask, FACTOR)
        sel = keep_in & keep_out
        only_in += (sel != keep_in).sum()
        only_out += (sel != keep_out).sum()
        n_sel += sel.sum()
        n_text += mask.sum()
        ys.append(y[sel])
        m = jnp.asarray(sel)[..., None]
        splices = {"clean": None, "zero": {(LAYER, "mlp"): lambda a, m=m: jnp.where(m, 0.0, a)}}
        for i, tc in enumerate(tcs):
            seen = {}
            jtc = {k: jnp.asarray(v) for k, v in tc.items()}
            splices[i] = {
                (LAYER, "mlp_in"): lambda a, seen=seen: seen.setdefault("x_in", a),
                (LAYER, "mlp"): lambda a, m=m, seen=seen, jtc=jtc: jnp.where(
                    m, sae_model.transcode(jtc, seen["x_in"]), a
                ),
            }
            pre = x_in @ tc["W_enc"] + tc["b_enc"]
            f = np.where(pre > tc["threshold"], pre, 0.0)
            y_hat = f @ tc["W_dec"] + tc["b_dec"] + (x_in @ tc["W_skip"] if "W_skip" in tc else 0.0)
            l0[i] += ((f != 0) & sel[..., None]).sum()
            err[i] += (((y - y_hat) ** 2).sum(-1) * sel).sum()
        w = mask[:, 1:].astype(np.float64)
        logp = {}
        for name, sp in splices.items():
            logits = model.forward(params, toks, CFG, splice=sp).logits
            ce[name] += float((np.asarray(lm_loss.next_token_loss(logits, toks)[1], np.float64) * w).sum())
            logp[name] = _log_softmax(np.asarray(logits, np.float64)[:, :-1])
        for i in range(len(tcs)):
            kl[i] += ((np.exp(logp["clean"]) * (logp["clean"] - logp[i])).sum(-1) * w).sum()
        n_t += w.sum()
    y_all = np.concatenate(ys)
    var = ((y_all - y_all.mean(0)) ** 2).sum()
    for i, r in enumerate(rs):
        assert r["n_tokens"] == n_sel and r["n_outliers_kept_clean"] == n_text - n_sel
        np.testing.assert_allclose(r["ce_clean"], ce["clean"] / n_t, rtol=1e-5)
        np.testing.assert_allclose(r["ce_zero"], ce["zero"] / n_t, rtol=1e-5)
        np.testing.assert_allclose(r["ce_sae"], ce[i] / n_t, rtol=1e-5)
        np.testing.assert_allclose(r["kl_div_with_sae"], kl[i] / n_t, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(r["l0"], l0[i] / n_sel, rtol=1e-6)
        np.testing.assert_allclose(r["fvu"], err[i] / var, rtol=1e-4)
    # not degenerate: each site's rule drops rows the other keeps (the AND is neither mask alone),
    # the transcoders change the loss, differently, and the zero ablation changes it too
    assert only_in > 0 and only_out > 0
    assert min(abs(rs[0]["delta_loss"]), abs(rs[1]["delta_loss"]), abs(rs[0]["ce_sae"] - rs[1]["ce_sae"])) > 1e-3
    assert rs[0]["l0"] > 1 and kl[0] / n_t > 1e-3 and abs(rs[0]["ce_zero"] - rs[0]["ce_clean"]) > 1e-3


def test_bad_files_fail_before_any_compute_naming_the_problem(lm):
    params, batches = lm
    run = lambda tc, site: metrics.evaluate_saes(params, CFG, batches, saes=[tc], layer=1, site=site)  # noqa: E731
    with pytest.raises(ValueError, match="SAE 0: has 'W_skip' .* site 'mlp' is not a transcoder site"):
        run(transcoder(0, True), "mlp")
    raw = transcoder(0, False)
    raw["affine_skip_connection"] = np.zeros((D, D), np.float32)
    with pytest.raises(ValueError, match="key 'affine_skip_connection'.*load_params"):
        run(raw, "transcoder_affine")
    with pytest.raises(ValueError, match=r"'W_enc' has shape \(8, 24\), but axis 0 must be 16, the width of 'mlp_in'"):
        run(transcoder(0, False, d=8), "transcoder")
    bad = dict(transcoder(0, True), W_skip=np.zeros((D, 5), np.float32))
    with pytest.raises(ValueError, match=r"'W_skip' has shape \(16, 5\), but axis 1 must be 16, the width of 'mlp'"):
        run(bad, "transcoder_affine")


class _FakeLMActivations:
    """Stands in for :class:`gemmascope.data.activations.LMActivations`: the tiny LM and batches."""

    batches: list = []
    sites_seen: list = []

    def __init__(self, config, sites, log=print):
        type(self).sites_seen.append(list(sites))
        self.lm_cfg, self.model_name = CFG, "tiny"

    @property
    def params(self):
        return type(self)._params

    def packed_batches(self, part):
        assert part == "heldout"
        return iter(type(self).batches)


def test_evaluate_workdir_scores_plain_and_affine_transcoders_in_one_pass(lm, tmp_path, monkeypatch):
    """A workdir with a plain and an affine transcoder of one layer: they share one pass (one
    baseline cache entry, equal clean and zero-ablation losses; the LM is opened on an LM site),
    their rows equal evaluate_saes' results and name both sites, and the comparison table and plot
    are written (with SAEs on mlp beside them: the next test)."""
    params, batches = lm
    _FakeLMActivations._params, _FakeLMActivations.batches = params, batches
    _FakeLMActivations.sites_seen = []
    monkeypatch.setattr(evaluate, "LMActivations", _FakeLMActivations)
    wd = str(tmp_path)
    for name, site, tc in (
        ("tc", "transcoder", transcoder(1, False)),
        ("tca", "transcoder_affine", transcoder(2, True)),
    ):
        meta = {
            "architecture": "transcoder",
            "encoder": "jumprelu",
            "site": site,
            "input_site": "mlp_in",
            "output_site": "mlp",
            "affine_skip": site.endswith("affine"),
            "layer": LAYER,
            "d_in": D,
            "d_out": D,
            "d_sae": 24,
        }
        sae_io.save_params(os.path.join(wd, "saes", site, name, "params.npz"), tc, meta)
    config = types.SimpleNamespace(lm=types.SimpleNamespace(outlier_norm_factor=FACTOR))
    rows = evaluate.evaluate_workdir(config, wd, max_tokens=10_000, log=lambda s: None)
    by = {r["site"]: r for r in rows}
    assert set(by) == {"transcoder", "transcoder_affine"}
    assert _FakeLMActivations.sites_seen == [[(LAYER, "mlp_in")]]  # an LM site, not the pair name
    tc, tca = by["transcoder"], by["transcoder_affine"]
    assert (tc["input_site"], tc["output_site"], tc["affine_skip"], tca["affine_skip"]) == (
        "mlp_in",
        "mlp",
        False,
        True,
    )
    assert tc["ce_zero"] == tca["ce_zero"] and tc["ce_clean"] == tca["ce_clean"]
    cache = json.load(open(os.path.join(wd, "eval", "baseline_cache.json")))
    assert [k.split("|")[2] for k in cache if "site=" in k] == ["site=transcoder"]
    direct = metrics.evaluate_saes(
        params,
        CFG,
        batches,
        saes=[transcoder(1, False), transcoder(2, True)],
        layer=LAYER,
        site="transcoder",
        outlier_norm_factor=FACTOR,
    )
    for row, r in zip((tc, tca), direct):
        for key in ("l0", "fvu", "delta_loss", "ce_zero", "kl_div_with_sae"):
            np.testing.assert_allclose(row[key], r[key], rtol=1e-6, atol=1e-7, err_msg=key)
    md = open(os.path.join(wd, "eval", "transcoders_vs_saes.md")).read()
    assert "## Layer 1" in md and "| transcoder_affine |" in md and "| transcoder |" in md
    assert os.path.getsize(os.path.join(wd, "eval", f"transcoders_vs_saes_layer_{LAYER}.png")) > 1000
    assert "| transcoder |" in open(os.path.join(wd, "eval", "matched_l0.md")).read()  # a series of its own


def test_comparison_tables_interpolate_each_series_at_matched_l0(tmp_path):
    """Plain and affine transcoders and SAEs on mlp, with SAEs on res of the same layer and a
    transcoder of another layer left out; ratios are to the JumpReLU SAE on mlp."""
    mk = lambda arch, site, layer, l0, dl, fvu: dict(  # noqa: E731
        architecture=arch, site=site, layer=layer, l0=l0, delta_loss=dl, fvu=fvu
    )
    rows = [
        mk("transcoder", "transcoder", 1, 10.0, 1.0, 0.5),
        mk("transcoder", "transcoder", 1, 100.0, 0.2, 0.1),
        mk("transcoder", "transcoder_affine", 1, 10.0, 0.6, 0.3),
        mk("transcoder", "transcoder_affine", 1, 100.0, 0.1, 0.05),
        mk("jumprelu", "mlp", 1, 16.0, 0.4, 0.2),
        mk("jumprelu", "mlp", 1, 64.0, 0.1, 0.1),
        mk("jumprelu", "res", 1, 16.0, 9.0, 9.0),
        mk("jumprelu", "res", 1, 64.0, 9.0, 9.0),
        mk("transcoder", "transcoder", 2, 10.0, 5.0, 5.0),
        mk("transcoder", "transcoder", 2, 100.0, 5.0, 5.0),
    ]
    comp = evaluate.transcoder_comparisons(rows)
    assert sorted(comp) == [1, 2]
    sub, series, ref = comp[1]
    assert ref == "jumprelu SAE on mlp" and len(sub) == 6
    assert comp[2][2] == "transcoder"  # no SAE on mlp there: the plain transcoder is the reference
    m = evaluate.matched_l0(sub, (32.0,), series=series)
    t = np.log(3.2) / np.log(10.0)  # 32 in log-L0 between 10 and 100
    s = np.log(2.0) / np.log(4.0)  # 32 between 16 and 64
    want = {
        "transcoder": 1.0 + (0.2 - 1.0) * t,
        "transcoder_affine": 0.6 + (0.1 - 0.6) * t,
        "jumprelu SAE on mlp": 0.4 + (0.1 - 0.4) * s,
    }
    assert set(m) == set(want)
    for name, v in want.items():
        assert m[name][32.0]["delta_loss"] == pytest.approx(v)
    md = evaluate.matched_l0_markdown(sub, (32.0,), ref=ref, series=series)
    ratio = want["transcoder_affine"] / want["jumprelu SAE on mlp"]
    assert f"| transcoder_affine | {want['transcoder_affine']:.4g} ({ratio:.2f}x) |" in md
    assert evaluate.series_of(rows[2]) == "transcoder_affine" and evaluate.series_of(rows[4]) == "jumprelu"
    evaluate.write_table_and_plots(rows, str(tmp_path))
    md_all = open(tmp_path / "transcoders_vs_saes.md").read()
    assert md_all.count("## Layer") == 2 and (tmp_path / "transcoders_vs_saes_layer_2.png").exists()
    t20 = np.log(2.0) / np.log(10.0)  # the tables' first L0, 20, between 10 and 100
    aff, plain = 0.6 + (0.1 - 0.6) * t20, 1.0 + (0.2 - 1.0) * t20
    # affine against plain: layer 1's second table
    assert f"| transcoder_affine | {aff:.4g} ({aff / plain:.2f}x) |" in md_all.split("## Layer 2")[0]
    # a workdir of SAEs only writes no comparison
    evaluate.write_table_and_plots(rows[4:8], str(tmp_path / "saes_only"))
    assert not (tmp_path / "saes_only" / "transcoders_vs_saes.md").exists()


def test_scan_encodes_the_mlp_input_at_the_rows_kept_at_both_sites(lm):
    params, batches = lm
    tc = transcoder(1, True)
    res = dash.scan(
        params,
        CFG,
        tc,
        layer=LAYER,
        site="transcoder_affine",
        batches=batches,
        k=3,
        outlier_norm_factor=FACTOR,
        log=None,
    )
    fs, valids = [], []
    for toks, mask in batches:
        x_in, _, keep_in, keep_out = _oracle_sites(params, toks, mask, FACTOR)
        pre = x_in @ tc["W_enc"] + tc["b_enc"]
        valid = keep_in & keep_out
        fs.append(np.where((pre > tc["threshold"]) & valid[..., None], pre, 0.0))
        valids.append(valid)
    f = np.concatenate(fs)
    np.testing.assert_array_equal(res.valid, np.concatenate(valids))
    np.testing.assert_array_equal(res.fire_counts, (f > 0).sum(axis=(0, 1)))
    np.testing.assert_allclose(res.act_max, f.max(axis=(0, 1)), rtol=1e-4)
    assert res.fire_counts.sum() > 0 and res.n_dropped > 0


def test_dashboard_of_a_transcoder_reads_its_decoder_rows_through_the_unembedding(tmp_path):
    """build_dashboard on a transcoder file (tiny random LM with the embedded tokenizer's vocabulary):
    firing counts from the MLP input, and each latent's promoted tokens are those of ``W_dec[i] @
    W_U`` (its encoder direction reads to different tokens)."""
    from gemmascope.lm import loading

    tok = loading.load_tokenizer(loading.embedded_gguf_path())
    cfg = dataclasses.replace(CFG, vocab_size=len(tok), **loading.embedded_special_ids())
    params = model.init_params(jax.random.PRNGKey(1), cfg, std=0.4)
    tc = transcoder(5, True, d_sae=6)
    folder = str(tmp_path / "tc")
    sae_io.save_params(
        os.path.join(folder, "params.npz"),
        tc,
        {"architecture": "transcoder", "site": "transcoder_affine", "layer": LAYER, "d_sae": 6, "affine_skip": True},
    )
    summary = dash.build_dashboard(
        folder,
        str(tmp_path / "site"),
        n_tokens=200,
        lm=(cfg, params, tok),
        seq_len=32,
        batch_sequences=4,
        enrichment=False,
        log=None,
    )
    assert summary["site"] == "transcoder_affine" and summary["n_tokens"] >= 200
    assert "Transcoder tc" in open(tmp_path / "site" / "index.html", encoding="utf-8").read()
    toks = dash.token_strings(tok, cfg.vocab_size)
    W_U = np.asarray(params["embed"]).T
    for s in summary["latents"]:
        i = s["latent"]
        want = [toks[j] for j in np.argsort(-(tc["W_dec"][i] @ W_U), kind="stable")[: len(s["top_tokens"])]]
        assert s["top_tokens"] == want
    enc_top = [toks[j] for j in np.argsort(-(tc["W_enc"][:, 0] @ W_U))[:5]]
    assert summary["latents"][0]["top_tokens"][:5] != enc_top
    assert sum(s["fire_count"] for s in summary["latents"]) > 0


def test_steering_a_transcoder_latent_adds_its_decoder_row_to_the_mlp_output():
    """In a Llama block the MLP output is added straight to the residual stream, so adding a vector
    to the MLP output of layer 0 equals adding it to that layer's residual output."""
    params = model.init_params(jax.random.PRNGKey(0), CFG, std=0.5)
    tc = transcoder(4, False, d_sae=5)
    vec = steering.steering_vector(tc, 3, 2.5)
    np.testing.assert_array_equal(vec, 2.5 * tc["W_dec"][3])
    tokens = jnp.asarray([[1, 5, 6, 7, 8]], jnp.int32)
    got = steering.steered_logits(params, tokens, jnp.asarray(vec), CFG, layer=0, site="transcoder")
    want = steering.steered_logits(params, tokens, jnp.asarray(vec), CFG, layer=0, site="res")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    plain = model.forward(params, tokens, CFG).logits
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-2
    out = steering.generate(params, CFG, [1, 7, 9], vec, layer=0, site="transcoder", max_new_tokens=2)  # width of mlp
    assert len(out) == 2
