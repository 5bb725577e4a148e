"""Crosscoders (gemmascope.sae.crosscoder): the weakly causal form (Gemma Scope 2's) and the
acausal form, each against a hand-written float64 NumPy reference of its loss and every gradient
(the JumpReLU straight-through rule) on rows whose target is their own input; weak causality
(a feature reads one layer, writes it and later ones); the exported raw-unit files equal the
trained models on raw rows; both train online on a tiny LM through the registry's sites, export,
load back and resume bitwise; bad configs fail naming the field before compute.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import sites
from gemmascope.data.sources import make_source
from gemmascope.sae import archs, jumprelu
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.crosscoder import AcausalCrosscoder, WeaklyCausalCrosscoder
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import multilayer, release
from gemmascope.train import step as step_lib
from gemmascope.train.export_clt import evaluate_clt
from gemmascope.train.loop import train_and_evaluate
from tests.test_clt_train import LAYERS, assert_refused, clt_cfg, tiny_lm, use_tiny_lm  # noqa: F401  (fixtures)

L, D, D_SAE, B = 3, 4, 6, 8
EPS = 0.5  # a wide kernel window, so the threshold pseudo-gradients are non-zero on a tiny batch
CFG = SAEConfig(sparsity_loss="quadratic", quadratic_form="batch", bandwidth=EPS)
TARGET, COEF = 2.0, 0.7


def _rows(seed=0):
    """``[B, L * D + L * D]``: every layer's input, then the same activations as the target."""
    x = np.random.default_rng(seed).standard_normal((B, L * D)).astype(np.float32)
    return np.concatenate([x, x], axis=1)


def _weak_params(seed=1):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.standard_normal((L, D, D_SAE)).astype(np.float32),
        "W_dec": rng.standard_normal((L, D_SAE, L, D)).astype(np.float32),
        "b_enc": rng.standard_normal((L, D_SAE)).astype(np.float32) * 0.3,
        "b_dec": rng.standard_normal((L, D)).astype(np.float32),
        "threshold": rng.uniform(0.2, 1.2, (L, D_SAE)).astype(np.float32),
    }


def _acausal_params(seed=2):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.standard_normal((L * D, D_SAE)).astype(np.float32) * 0.6,
        "W_dec": rng.standard_normal((D_SAE, L * D)).astype(np.float32),
        "b_enc": rng.standard_normal((D_SAE,)).astype(np.float32) * 0.3,
        "b_dec": rng.standard_normal((L * D,)).astype(np.float32),
        "threshold": rng.uniform(0.2, 1.2, (D_SAE,)).astype(np.float32),
    }


def _weak_reference(p, xy):
    """Loss and gradients by hand (float64): features of layer l read x_l alone and write layers
    m >= l; the penalty is on the per-layer L0 averaged over layers."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = xy[:, : L * D].reshape(B, L, D).astype(np.float64)
    mask = np.triu(np.ones((L, L)))[:, None, :, None]
    pre = np.einsum("bld,lds->bls", x, p["W_enc"]) + p["b_enc"]
    t = p["threshold"]
    on = (pre > t).astype(np.float64)
    f = pre * on
    wd = p["W_dec"] * mask
    r = np.einsum("bls,lsmo->bmo", f, wd) + p["b_dec"] - x
    l0 = on.sum(-1).mean(-1)
    miss = l0.mean() - TARGET
    loss = np.mean(np.sum(r**2, axis=(1, 2))) + COEF * miss**2 / TARGET
    g_r = 2.0 * r / B
    g_f = np.einsum("bmo,lsmo->bls", g_r, wd)
    g_pre = g_f * on
    kernel = (np.abs((pre - t) / EPS) < 0.5).astype(np.float64)
    g_l0 = COEF * 2.0 * miss / TARGET / B / L
    return loss, {
        "W_dec": np.einsum("bls,bmo->lsmo", f, g_r) * mask,
        "b_dec": g_r.sum(0),
        "W_enc": np.einsum("bld,bls->lds", x, g_pre),
        "b_enc": g_pre.sum(0),
        "threshold": np.sum(kernel * (g_f * (-t / EPS) + g_l0 * (-1.0 / EPS)), axis=0),
    }


def _acausal_reference(p, xy):
    """Loss and gradients by hand (float64): one dictionary reads the concatenated layers."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = xy[:, : L * D].astype(np.float64)
    pre = x @ p["W_enc"] + p["b_enc"]
    t = p["threshold"]
    on = (pre > t).astype(np.float64)
    f = pre * on
    r = f @ p["W_dec"] + p["b_dec"] - x
    miss = on.sum(-1).mean() - TARGET
    loss = np.mean(np.sum(r**2, axis=1)) + COEF * miss**2 / TARGET
    g_r = 2.0 * r / B
    g_f = g_r @ p["W_dec"].T
    g_pre = g_f * on
    kernel = (np.abs((pre - t) / EPS) < 0.5).astype(np.float64)
    g_l0 = COEF * 2.0 * miss / TARGET / B
    return loss, {
        "W_dec": f.T @ g_r,
        "b_dec": g_r.sum(0),
        "W_enc": x.T @ g_pre,
        "b_enc": g_pre.sum(0),
        "threshold": np.sum(kernel * (g_f * (-t / EPS) + g_l0 * (-1.0 / EPS)), axis=0),
    }


@pytest.mark.parametrize(
    "arch,params,reference",
    [
        (WeaklyCausalCrosscoder(L, D), _weak_params(), _weak_reference),
        (AcausalCrosscoder(L * D, False, L, D), _acausal_params(), _acausal_reference),
    ],
    ids=["weakly_causal", "acausal"],
)
def test_loss_and_every_gradient_match_the_hand_written_reference(arch, params, reference):
    xy = _rows()
    loss_ref, grads_ref = reference(params, xy)
    sparsity = (jnp.float32(TARGET), jnp.float32(COEF))
    loss, grads = jax.value_and_grad(lambda p: arch.loss(p, jnp.asarray(xy), CFG, sparsity)[0])(params)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert np.any(np.abs(grads_ref["threshold"]) > 0)  # the window reaches some latents
    for k, g in grads_ref.items():
        np.testing.assert_allclose(np.asarray(grads[k]), g, rtol=1e-4, atol=1e-4, err_msg=k)


def test_weak_causality_a_feature_reads_one_layer_and_writes_it_and_later_ones():
    """Codes of layer l depend on x_l alone (Jacobian zero elsewhere); decoder entries to earlier
    layers get zero gradient and are zero in the export; the acausal codes read every layer."""
    cc, p, xy = WeaklyCausalCrosscoder(L, D), _weak_params(), _rows()
    jac = jax.jacobian(lambda r: cc.encode_train(p, r, CFG))(jnp.asarray(xy))  # [B, L, S, B, 2LD]
    per_layer = np.abs(np.asarray(jac)).sum(axis=(0, 2, 3)).reshape(L, 2, L, D).sum(axis=(1, 3))  # [l, read]
    assert np.all(per_layer[np.eye(L, dtype=bool)] > 0) and np.all(per_layer[~np.eye(L, dtype=bool)] == 0)
    g = jax.grad(lambda w: cc.loss({**p, "W_dec": w}, jnp.asarray(xy), CFG, (TARGET, COEF))[0])(p["W_dec"])
    earlier = np.tril(np.ones((L, L)), -1).astype(bool)  # [l, m]: m < l
    assert np.all(np.asarray(g)[earlier[:, None, :, None].repeat(D_SAE, 1).repeat(D, 3)] == 0)
    assert np.all(np.asarray(cc.export_layout(p, CFG)["W_dec"])[np.where(earlier)[0], :, np.where(earlier)[1]] == 0)
    ac = AcausalCrosscoder(L * D, False, L, D)
    jac = jax.jacobian(lambda r: ac.encode_train(_acausal_params(), r, CFG))(jnp.asarray(xy))
    reads = np.abs(np.asarray(jac)).sum(axis=(0, 1, 2))[: L * D].reshape(L, D).sum(-1)
    assert np.all(reads > 0)


@pytest.mark.parametrize("form", ["weakly_causal", "acausal"])
def test_the_exported_raw_unit_model_is_the_trained_one_on_raw_rows(form):
    """fold_scales with six different per-layer constants (C_in, then C_out = C_in since input
    and target are the same activations), without and with per-dimension scales: the file's NumPy
    forward on raw rows gives the trained model's codes and reconstruction scaled back (1e-5
    relative, float32)."""
    scale = np.array([2.0, 5.0, 0.5, 2.0, 5.0, 0.5], np.float32)
    rng = np.random.default_rng(3)
    if form == "weakly_causal":
        arch, p = WeaklyCausalCrosscoder(L, D), _weak_params()
        forward = multilayer.clt_forward
    else:
        arch, p = AcausalCrosscoder(L * D, False, L, D), _acausal_params()
        forward = multilayer.concat_forward
    # and with per-dimension scales (config.dim_scale_power), the same for input and target
    dims = np.exp(rng.uniform(-2, 2, L * D)).astype(np.float32)
    for s in (None, np.concatenate([dims, dims])):
        raw_x = rng.standard_normal((40, L * D)).astype(np.float32) * np.repeat(scale[:L], D)
        raw_x = raw_x if s is None else raw_x * dims
        raw = np.concatenate([raw_x, raw_x], axis=1)
        xy = step_lib.normalise(raw, scale, D, s)
        f = np.asarray(arch.encode_train(p, jnp.asarray(xy), CFG))
        x_in = xy[:, : L * D] if form == "acausal" else xy[:, : L * D].reshape(-1, L, D)
        x_hat = np.asarray(arch.predict(p, jnp.asarray(f), jnp.asarray(x_in))).reshape(-1, L, D)
        folded = arch.fold_scales(jax.device_get(arch.export_layout(p, CFG)), scale, s)
        f_raw, x_raw = forward(folded, raw_x.reshape(-1, L, D))
        k_out = scale[L:][:, None] * (1.0 if s is None else dims.reshape(L, D))  # C_out[m] s_out[m]
        assert 0 < (f > 0).mean() < 1
        np.testing.assert_allclose(f_raw, f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x_raw, x_hat * k_out[None], rtol=1e-5, atol=1e-4 * np.abs(k_out).max())


def test_the_registry_declares_the_crosscoder_sites_and_builds_their_models():
    assert sites.span_of("crosscoder") == sites.LayerSpan("res", "res", "crosscoder")
    assert sites.span_of("crosscoder_acausal").causal is False
    c = clt_cfg(sites=("crosscoder",))
    assert archs.for_site(c, "crosscoder", 16, n_layers=3) == WeaklyCausalCrosscoder(3, 16)
    assert archs.for_site(c, "crosscoder_acausal", 16, n_layers=3) == AcausalCrosscoder(48, False, 3, 16)
    assert archs.file_layouts()["crosscoder_acausal"] == "jumprelu"  # read back as a plain SAE
    with pytest.raises(ValueError, match="already defined"):
        sites.register_span("res", sites.LayerSpan("res", "res", "crosscoder"))


def _cc_cfg(**over):
    return clt_cfg(**{"sites": ("crosscoder", "crosscoder_acausal"), "widths": (24,), **over})


def test_crosscoders_train_online_export_load_and_resume_bitwise(use_tiny_lm, tmp_path):  # noqa: F811
    wd = str(tmp_path)
    src = make_source(_cc_cfg(), wd, "crosscoder", layer=LAYERS)
    xy = next(src)
    assert (src.d_in, src.d_out, src.n_layers) == (16, 16, 3) and xy.shape == (64, 96)
    np.testing.assert_array_equal(xy[:, :48], xy[:, 48:])  # the target is the input
    held = src.heldout(256)
    recs = train_and_evaluate(_cc_cfg(), wd, log=lambda *a: None)
    assert sorted(r["architecture"] for r in recs) == ["crosscoder"] * 2 + ["crosscoder_acausal"] * 2
    before = {}
    for r in recs:
        assert (r["input_site"], r["output_site"], r["layers"]) == ("res", "res", [0, 1, 2])
        if r["architecture"] == "crosscoder":
            assert r["path"].startswith(os.path.join(wd, "saes", "crosscoder", "layers0-2", "width_24"))
            p = multilayer.load_gemma_scope_2_clt(r["path"])
            assert p["W_enc"].shape == (3, 16, 24) and p["W_dec"].shape == (3, 24, 3, 16)
            with open(os.path.join(r["path"], "config.json")) as fh:
                cfg = json.load(fh)
            assert (cfg["architecture"], cfg["hook_in"], cfg["hook_out"]) == ("crosscoder", "hook_resid_post") + (
                "hook_resid_post",
            )
            ev = evaluate_clt(p, held, 16)
            assert r["l0_total"] == pytest.approx(3 * r["l0"], rel=1e-6)
        else:  # one JumpReLU SAE on the concatenated layers, loaded by the plain loader
            p = sae_io.load_params(r["path"])
            assert p["W_enc"].shape == (48, 24) and p["W_dec"].shape == (24, 48)
            ev = evaluate_clt(p, held, 16, n_layers=3, forward=multilayer.concat_forward)
            f = jumprelu.jumprelu(held[:, :48] @ p["W_enc"] + p["b_enc"], p["threshold"], 1e-3)
            assert np.mean(np.sum(np.asarray(f) > 0, -1)) == pytest.approx(r["l0"], rel=1e-5)
        assert ev["fvu"] == pytest.approx(r["fvu"], rel=1e-5) and ev["l0"] == pytest.approx(r["l0"], rel=1e-6)
        assert 0 < r["l0"] < 24 and 0 < r["fvu"] < 1.5
        before[r["path"]] = p
    # Gemma Scope 2's release tree: the weakly causal ones in crosscoder/layer_0_1_2_width_<all
    # layers' latents>_l0_<bucket>, read back by name bit for bit; the acausal ones have no form there.
    root = os.path.join(wd, "mirror")
    out = release.write_release(wd, root, "my-release", log=None)
    with open(os.path.join(out, "index.json")) as fh:
        index = json.load(fh)
    ids = sorted(row["id"] for row in index["saes"])
    assert len(ids) == 2 and all(i.startswith("crosscoder/layer_0_1_2_width_72_l0_") for i in ids), ids
    assert len(index["skipped"]) == 2
    for row in index["saes"]:
        got = sae_io.load_params(f"my-release/{row['id']}", root=root)
        for k, v in before[os.path.join(wd, row["source"])].items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
    # Killed after the step-6 checkpoints: the rerun resumes both and exports the same files.
    for run in glob.glob(os.path.join(wd, "runs", "crosscoder*")):
        shutil.rmtree(os.path.join(run, "checkpoints", "12"))
        os.remove(os.path.join(run, "exported.json"))
    shutil.rmtree(os.path.join(wd, "saes"))
    logs = []
    resumed = train_and_evaluate(_cc_cfg(), wd, log=logs.append)
    assert sum("resumed from step 6" in line for line in logs) == 2, logs
    assert sorted(r["path"] for r in resumed) == sorted(before)
    for r in resumed:
        got = sae_io.load_params(r["path"])
        for k, v in before[r["path"]].items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize(
    "over,field",
    [
        ({"layers": (2, 0, 1)}, "layers"),
        ({"source": "store"}, "source"),
        ({"e2e": {"fraction": 0.1}}, "e2e.fraction"),
    ],
)
def test_bad_crosscoder_configs_fail_naming_the_field(over, field):
    assert_refused(_cc_cfg(), over, field)
