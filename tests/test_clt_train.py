"""Cross-layer transcoders through the trainer: the all-layer online source gives, per layer,
exactly the rows of the single-location sources (one LM pass for all of them); a CLT trains
online on a tiny random Llama (3 layers), exports Gemma Scope 2's CLT files whose recorded FVU
and L0 are the files' own on the held-out rows, and a run killed after its middle checkpoint
resumes to the same files bit for bit; the exported raw-unit CLT predicts what the trained one
predicts in training units; bad configs fail naming the field before any compute.
"""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.config import ConfigError
from gemmascope.data import activations
from gemmascope.data.sources import make_source
from gemmascope.lm import loading as lm_loading
from gemmascope.lm import model as lm_model
from gemmascope.sae.clt import CrossLayerTranscoder
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.files import multilayer
from gemmascope.train import step as step_lib
from gemmascope.train.export_clt import evaluate_clt
from gemmascope.train.loop import train_and_evaluate
from tests.tiny import tiny_llama

LAYERS = (0, 1, 2)


@pytest.fixture(scope="module")
def tiny_lm():
    tok = lm_loading.load_tokenizer("embedded")
    cfg = tiny_llama(len(tok), 3, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    params = lm_model.init_params(jax.random.PRNGKey(1), cfg, std=0.5)
    return lm_loading.LM(cfg, params, tok, "tiny-random-llama", "embedded")


@pytest.fixture
def use_tiny_lm(tiny_lm, monkeypatch):
    monkeypatch.setattr(lm_loading, "load_lm", lambda *a, **k: tiny_lm)
    return tiny_lm


def clt_cfg(**over):
    c = config_lib.base_config()
    c.source, c.sites, c.layers, c.widths = "online", ("clt_affine",), LAYERS, (32,)
    c.lm.context_length, c.lm.batch_sequences, c.lm.outlier_norm_factor = 32, 8, 0.0
    c.sae.sparsity_loss, c.sae.threshold_init_mode, c.target_l0s = "quadratic", "quantile", (3.0, 6.0)
    c.batch_size, c.num_tokens, c.norm_sample_rows, c.eval_rows = 64, 64 * 12, 512, 256
    c.lr, c.lr_warmup_steps, c.lambda_warmup_steps = 1e-2, 2, 4
    c.log_every, c.checkpoint_every = 6, 6
    for k, v in over.items():
        c[k] = v
    return c


def test_all_layer_source_yields_the_single_location_rows_from_one_pass(use_tiny_lm, monkeypatch):
    calls = {"n": 0}
    real = activations.LMActivations.activations

    def counted(self, tokens, mask, stats=None):
        calls["n"] += 1
        return real(self, tokens, mask, stats)

    monkeypatch.setattr(activations.LMActivations, "activations", counted)
    c = clt_cfg()
    src = make_source(c, "", "clt", layer=LAYERS)
    assert (src.d_in, src.d_out, src.n_layers) == (16, 16, 3)
    batches = [next(src) for _ in range(3)]
    assert calls["n"] == 1  # three batches of 64 rows from one LM batch: the LM ran once for all six locations
    for xy in batches:
        assert xy.shape == (64, 3 * 16 + 3 * 16)
    for i, layer in enumerate(LAYERS):
        for site, offset in (("res_mid", 0), ("mlp", 3 * 16)):
            single = make_source(clt_cfg(sites=(site,)), "", site, layer=layer)
            for xy in batches:
                np.testing.assert_array_equal(xy[:, offset + 16 * i : offset + 16 * (i + 1)], next(single))


def test_clt_trains_exports_and_resumes_bitwise(use_tiny_lm, tmp_path):
    wd = str(tmp_path)
    recs = train_and_evaluate(clt_cfg(), wd, log=lambda *a: None)
    assert len(recs) == 2
    src = make_source(clt_cfg(), wd, "clt_affine", layer=LAYERS)
    held = src.heldout(256)
    before = {}
    for r in recs:
        assert (r["architecture"], r["input_site"], r["output_site"], r["layers"]) == (
            "clt",
            "res_mid",
            "mlp",
            [0, 1, 2],
        )
        assert r["path"].startswith(os.path.join(wd, "saes", "clt_affine", "layers0-2", "width_32", "average_l0_"))
        p = multilayer.load_gemma_scope_2_clt(r["path"])
        assert p["W_enc"].shape == (3, 16, 32) and p["W_dec"].shape == (3, 32, 3, 16) and "W_skip" in p
        ev = evaluate_clt(p, held, 16)
        assert ev["fvu"] == pytest.approx(r["fvu"], rel=1e-5) and ev["l0"] == pytest.approx(r["l0"], rel=1e-6)
        assert 0 < r["l0"] < 32 and np.isfinite(r["fvu"])
        assert r["l0_total"] == pytest.approx(3 * r["l0"], rel=1e-6)
        before[r["path"]] = p
    # Killed after its step-6 checkpoint (the later one and the export removed): the rerun resumes
    # the state (six normalisation constants) and the all-layer stream, and exports the same files.
    (run,) = glob.glob(os.path.join(wd, "runs", "clt_affine_layers0-2_width32*"))
    shutil.rmtree(os.path.join(run, "checkpoints", "12"))
    os.remove(os.path.join(run, "exported.json"))
    shutil.rmtree(os.path.join(wd, "saes"))
    logs = []
    resumed = train_and_evaluate(clt_cfg(), wd, log=logs.append)
    assert any("resumed from step 6" in line for line in logs), logs
    assert [r["path"] for r in resumed] == [r["path"] for r in recs]
    for r in resumed:
        got = multilayer.load_gemma_scope_2_clt(r["path"])
        for k, v in before[r["path"]].items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
    with open(os.path.join(recs[0]["path"], "config.json")) as fh:
        assert json.load(fh)["n_layers"] == 3


def test_exported_clt_predicts_what_the_trained_one_predicts():
    """fold_scales: the raw-unit file on raw rows = C_out[m] times the trained CLT on rows
    divided by the per-layer constants (tolerance 1e-5 relative, float32)."""
    n, d, d_sae = 3, 8, 16
    clt = CrossLayerTranscoder(n, d, affine=True)
    cfg = SAEConfig(threshold_init=0.05)
    p = clt.init(jax.random.PRNGKey(0), d, d_sae, cfg)
    rng = np.random.default_rng(0)
    p = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}
    p["W_dec"] = p["W_dec"] * np.asarray(jnp.triu(jnp.ones((n, n))))[:, None, :, None]
    scale = np.array([2.0, 5.0, 0.5, 3.0, 0.25, 7.0], np.float32)  # C_in per layer, C_out per layer
    # per-dimension scales too (config.dim_scale_power): one per column of the paired rows
    dims = np.exp(rng.uniform(-2, 2, 2 * n * d)).astype(np.float32)
    for s in (None, dims):
        raw = rng.standard_normal((50, 2 * n * d)).astype(np.float32) * np.repeat(scale, d)
        raw = raw if s is None else raw * s
        xy = step_lib.normalise(raw, scale, d, s)
        xs, _ = clt.split(xy, d)
        f = clt.encode_train(p, xy, cfg)
        y_train = np.asarray(clt.predict(p, f, xs))  # [50, L, d] in training units
        folded = clt.fold_scales(jax.device_get(clt.export_layout(p, cfg)), scale, s)
        f_raw, y_raw = multilayer.clt_forward(folded, raw[:, : n * d].reshape(50, n, d))
        k_out = scale[n:][:, None] * (1.0 if s is None else s[n * d :].reshape(n, d))  # C_out[m] s_out[m]
        assert 0 < (np.asarray(f) > 0).mean() < 1
        np.testing.assert_allclose(f_raw, np.asarray(f), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y_raw, y_train * k_out[None], rtol=1e-5, atol=1e-5 * np.abs(k_out).max())
    with pytest.raises(ValueError, match=r"a 3-layer CLT needs 3 \* \(8 \+ 8\) per-dimension scales, got shape \(8,\)"):
        clt.fold_scales(jax.device_get(clt.export_layout(p, cfg)), scale, dims[:d])


def test_export_params_folds_a_clts_per_dimension_scales():
    """A CLT trained with ``dim_scale_power=1`` (one ``s`` per column of its paired rows, then the
    per-layer constants): ``export_params`` hands the scales to the CLT's own fold, and the file's
    NumPy forward on raw rows gives the trained model's codes and MLP-output predictions in raw
    units (1e-4 relative, float32)."""
    n, d, d_sae = len(LAYERS), 8, 32
    c = config_lib.prepare(clt_cfg(dim_scale_power=1.0, widths=(d_sae,)))
    clt = CrossLayerTranscoder(n, d, affine=True)
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((256, 2 * n * d)) * np.exp(rng.uniform(-3, 3, 2 * n * d))
    raw = raw.astype(np.float32)
    s = step_lib.dim_scales(raw, 1.0)
    u = raw / s
    norm = tuple(float(np.sqrt(np.mean(np.sum(u[:, i * d : (i + 1) * d] ** 2, -1)))) for i in range(2 * n))
    state = step_lib.init_state(
        jax.random.PRNGKey(0),
        c,
        d,
        d_sae=d_sae,
        n_saes=1,
        norm_scale=norm,
        init_sample=step_lib.init_sample(c, raw, norm, d, s),
        arch=clt,
        dim_scale=s,
    )
    folded = step_lib.export_params(state, 0, c, arch=clt)
    p = jax.tree.map(lambda a: a[0], state["params"])
    xy = step_lib.normalise(raw, state["norm_scale"], d, state["dim_scale"])
    f = np.asarray(clt.encode_train(p, xy, SAEConfig.from_config(c)))
    y_train = np.asarray(clt.predict(p, jnp.asarray(f), clt.split(xy, d)[0]))
    f_raw, y_raw = multilayer.clt_forward(folded, raw[:, : n * d].reshape(-1, n, d))
    k_out = np.asarray(norm[n:])[:, None] * s[n * d :].reshape(n, d)
    assert 0 < (f > 0).mean() < 1
    np.testing.assert_allclose(f_raw, f, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y_raw, y_train * k_out[None], rtol=1e-4, atol=1e-4 * np.abs(k_out).max())


@pytest.mark.parametrize(
    "over,field",
    [
        ({"source": "store"}, "source"),
        ({"layers": (2, 0, 1)}, "layers"),
        ({"sae": {"frequency_penalty": 0.1}}, "sae.frequency_penalty"),
        ({"export": {"layouts": ("sae_lens",)}}, "export.layouts"),
    ],
)
def test_bad_clt_configs_fail_naming_the_field(over, field):
    assert_refused(clt_cfg(), over, field)


def assert_refused(c, over, field):
    """``c`` with ``over`` (a dict value sets fields of that section) fails validation naming ``field``."""
    for k, v in over.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                c[k][kk] = vv
        else:
            c[k] = v
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_lib.prepare(c)


def test_dry_run_of_gemma_scope_2s_1b_clt_fits_eight_devices():
    """Gemma 3 1B's CLT at Gemma Scope 2's 262k (10,080 latents on each of 26 layers), two sweep
    values, latents split over 8 fake devices: compiled, nothing allocated. The state per device
    is the shapes' (params, Adam's two moments; latent-sized leaves split 8 ways) within 1%."""
    from tests.test_sharding import _dry_run

    rc, out = _dry_run("clt.py:model=1b,width=10080,tp=8")
    assert rc == 0, out[-3000:]
    assert "mesh data=1 x model=8 (8 fake cpu devices)" in out and "26 layers" in out, out[-2000:]
    import re

    m = re.search(r"per device state ([\d.]+) GB.*= peak ([\d.]+) GB -> fits 95 GB", out)
    assert m, out[-2000:]
    layers, d, n, k = 26, 1152, 10080, 2
    latent_weights = layers * d * n + layers * n * layers * d + 2 * layers * n  # W_enc, W_dec, b_enc, threshold
    per_sae = 3 * 4 * (latent_weights / 8 + layers * d)  # params + 2 moments, float32; b_dec whole
    assert float(m.group(1)) == pytest.approx(k * per_sae / 1e9, rel=0.01)
    assert float(m.group(1)) < float(m.group(2)) < 95
