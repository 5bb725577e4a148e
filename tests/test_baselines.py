"""Baselines (ReLU + norm-weighted L1, TopK + AuxK, Gated): gradients against float64 NumPy
references by central differences (stop-gradient terms held as constants, as the papers define
them), export round trips through params.npz, malformed files, and short sweeps on the toy."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.sae import archs, gated, relu, topk
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from gemmascope.train import loop
from gemmascope.train import step as step_lib

D_IN, D_SAE, B = 5, 7, 6
CFG = {
    "pre_encoder_bias": True,
    "auxk_k": 3,
    "auxk_coefficient": 0.5,
    "threshold_init": 1e-3,
    "threshold_param": "direct",
    "bandwidth": 1e-3,
}


def _random_params(arch, seed=0):
    rng = np.random.default_rng(seed)
    p = arch.init(jax.random.PRNGKey(seed), D_IN, D_SAE, CFG)
    out = {}
    for k, v in p.items():
        scale = 0.3 if k.startswith("b") or k == "r_mag" else 1.0
        out[k] = np.asarray(v, np.float64) + scale * rng.normal(size=np.shape(v))
    return out


def _relu(a):
    return np.maximum(a, 0.0)


def _ref_relu(p, x, lam):
    f = _relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    return np.mean(np.sum((x - x_hat) ** 2, -1)) + lam * np.mean(f @ np.linalg.norm(p["W_dec"], axis=-1))


def _topk_codes(pre, k):
    kth = np.sort(pre, -1)[:, -k][:, None]
    return np.where(pre >= kth, _relu(pre), 0.0)


def _ref_topk(p, x, k, dead, frozen_residual):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    x_hat = _topk_codes(pre, k) @ p["W_dec"] + p["b_dec"]
    masked = np.where(dead, pre, -np.inf)
    kth = np.sort(masked, -1)[:, -CFG["auxk_k"]][:, None]
    f_aux = np.where((masked >= kth) & dead, _relu(pre), 0.0)
    aux = np.mean(np.sum((frozen_residual - f_aux @ p["W_dec"]) ** 2, -1)) if dead.any() else 0.0
    return np.mean(np.sum((x - x_hat) ** 2, -1)) + CFG["auxk_coefficient"] * aux


def _ref_gated(p, x, lam, frozen_w_dec, frozen_b_dec):
    g = (x - p["b_dec"]) @ p["W_enc"]
    pi_gate, pi_mag = g + p["b_gate"], np.exp(p["r_mag"]) * g + p["b_mag"]
    f = np.where(pi_gate > 0, _relu(pi_mag), 0.0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    gate = _relu(pi_gate)
    aux = np.mean(np.sum((x - (gate @ frozen_w_dec + frozen_b_dec)) ** 2, -1))
    return np.mean(np.sum((x - x_hat) ** 2, -1)) + lam * np.mean(np.sum(gate, -1)) + aux


def _central_diff(fn, p, h=1e-6):
    grads = {}
    for k, v in p.items():
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            hi = {**p, k: v.copy()}
            lo = {**p, k: v.copy()}
            hi[k][idx] += h
            lo[k][idx] -= h
            g[idx] = (fn(hi) - fn(lo)) / (2 * h)
        grads[k] = g
    return grads


def _check_grads(arch, p64, x64, sparsity, dead, ref_fn):
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in p64.items()}
    (loss, _), g = jax.value_and_grad(arch.loss, has_aux=True)(p32, jnp.asarray(x64, jnp.float32), CFG, sparsity, dead)
    assert float(loss) == pytest.approx(ref_fn(p64), rel=1e-4)
    ref = _central_diff(ref_fn, p64)
    for k in p64:
        scale = max(np.max(np.abs(ref[k])), 1e-3)
        err = np.max(np.abs(np.asarray(g[k]) - ref[k])) / scale
        assert err < 2e-3, f"{arch.NAME}: gradient of {k} off by {err:.2e} (relative to its max)"
    return g


def test_relu_gradients_include_the_decoder_norm_weighted_l1():
    p, x = _random_params(relu, 1), np.random.default_rng(2).normal(size=(B, D_IN))
    g = _check_grads(relu, p, x, 0.3, None, lambda q: _ref_relu(q, x, 0.3))
    # A latent that never fires gets no L1 gradient on its decoder row (f = 0 there).
    f = _relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    silent = np.where(f.sum(0) == 0)[0]
    for i in silent:
        assert np.allclose(np.asarray(g["W_dec"])[i], 0.0)


def test_topk_gradients_with_auxk_on_dead_latents():
    p, x = _random_params(topk, 3), np.random.default_rng(4).normal(size=(B, D_IN))
    dead = np.array([False, True, False, True, True, False, True])
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    residual = x - (_topk_codes(pre, 2) @ p["W_dec"] + p["b_dec"])
    g = _check_grads(topk, p, x, 2, jnp.asarray(dead), lambda q: _ref_topk(q, x, 2, dead, residual))
    # Without dead latents the AuxK term is off: the gradient is the plain TopK one.
    no_dead = np.zeros(D_SAE, bool)
    _check_grads(topk, p, x, 2, jnp.asarray(no_dead), lambda q: _ref_topk(q, x, 2, no_dead, residual))
    assert np.any(np.asarray(g["W_enc"])[:, dead] != 0)


def test_gated_gradients_with_frozen_decoder_in_the_auxiliary_term():
    p, x = _random_params(gated, 5), np.random.default_rng(6).normal(size=(B, D_IN))
    w_c, b_c = p["W_dec"].copy(), p["b_dec"].copy()
    _check_grads(gated, p, x, 0.2, None, lambda q: _ref_gated(q, x, 0.2, w_c, b_c))


@pytest.mark.parametrize("name", ["relu", "topk", "gated", "jumprelu"])
def test_export_round_trip_on_raw_activations(tmp_path, name):
    """Exported file on raw x == C * (trained SAE on x / C), codes and reconstruction, after a
    save/load through params.npz with its metadata."""
    arch = archs.get(name)
    c = 3.7
    params = {k: jnp.asarray(v, jnp.float32) for k, v in _random_params(arch, 7).items()}
    if name == "jumprelu":
        params["threshold"] = jnp.abs(params["threshold"]) + 0.05
    sparsity = 3 if name == "topk" else 0.1
    state = {"params": jax.tree.map(lambda a: a[None], params), "norm_scale": jnp.float32(c)}
    config = config_lib.base_config()
    config.sae.arch = name
    config.sae.topk_ks = (3,)
    config.lambdas = (0.1,)
    exported = step_lib.export_params(state, 0, config)
    path = str(tmp_path / "params.npz")
    sae_io.save_params(path, exported, {"architecture": name})
    back = sae_io.load_params(path)
    assert sorted(back) == sorted(exported)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(64, D_IN)) * c, jnp.float32)
    f_raw = sae_model.encode({k: jnp.asarray(v) for k, v in back.items()}, x)
    if name == "gated":
        f_train = gated.encode_train(params, x / c, CFG)
    elif name == "topk":
        f_train = topk.encode_train(params, x / c, CFG, sparsity)
    elif name == "relu":
        f_train = relu.encode_train(params, x / c, CFG)
    else:
        from gemmascope.sae import jumprelu

        f_train = jumprelu.encode_train(params, x / c, {"pre_encoder_bias": True, "bandwidth": 1e-3})
    np.testing.assert_allclose(np.asarray(f_raw), c * np.asarray(f_train), rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.asarray(f_raw) != 0, np.asarray(f_train) != 0)
    x_hat = sae_model.decode(back, f_raw)
    x_hat_train = f_train @ params["W_dec"] + params["b_dec"]
    np.testing.assert_allclose(np.asarray(x_hat), c * np.asarray(x_hat_train), rtol=1e-4, atol=1e-4)


def test_topk_and_relu_files_are_validated_by_their_metadata(tmp_path):
    p = {k: np.asarray(v) for k, v in relu.init(jax.random.PRNGKey(0), 4, 8, CFG).items()}
    sae_io.save_params(str(tmp_path / "r" / "params.npz"), p, {"architecture": "relu"})
    assert "threshold" not in sae_io.load_params(str(tmp_path / "r"))
    with pytest.raises(sae_io.SAEFileError, match="missing key 'k'"):
        sae_io.save_params(str(tmp_path / "t" / "params.npz"), p, {"architecture": "topk"})
    with pytest.raises(sae_io.SAEFileError, match="key 'k' must be an integer"):
        sae_io.save_params(str(tmp_path / "t" / "params.npz"), {**p, "k": np.float32(9)}, {"architecture": "topk"})
    # A file without metadata is a released Gemma Scope file: it must have a threshold.
    np.savez(tmp_path / "bare.npz", **p)
    with pytest.raises(sae_io.SAEFileError, match="missing key 'threshold'"):
        sae_io.load_params(str(tmp_path / "bare.npz"))
    os.makedirs(tmp_path / "u")
    np.savez(tmp_path / "u" / "params.npz", **p)
    with open(tmp_path / "u" / "metadata.json", "w") as fh:
        json.dump({"architecture": "resnet"}, fh)
    with pytest.raises(sae_io.SAEFileError, match="architecture 'resnet' unknown"):
        sae_io.load_params(str(tmp_path / "u"))


def test_topk_encode_with_a_traced_k_matches_the_static_one():
    pre = jnp.asarray(np.random.default_rng(0).normal(size=(5, 16)), jnp.float32)
    static = sae_model.topk_mask(pre, 4)
    traced = jax.jit(lambda p, k: sae_model.topk_mask(p, k))(pre, jnp.float32(4))
    assert np.array_equal(np.asarray(static), np.asarray(traced))
    assert np.all(np.asarray(static).sum(-1) == 4)


@pytest.mark.parametrize("name,values", [("relu", (3e-3, 3e-2)), ("topk", (2, 8)), ("gated", (3e-3, 3e-2))])
def test_baseline_sweeps_train_on_the_toy_and_export(tmp_path, name, values):
    """The sweep trainer with each baseline: exports load, L0 falls as the sparsity rises, and
    the reconstruction is useful (FVU well below 1)."""
    from gemmascope.config.experiments import toy

    c = toy.get_config()
    c.sae.arch = name
    if name == "topk":
        c.sae.topk_ks = values
        c.sae.auxk_dead_tokens = 50 * c.batch_size
    else:
        c.lambdas = values
    c.num_tokens = 300 * c.batch_size
    c.log_every = 100
    c.checkpoint_every = 1000
    records = loop.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
    assert len(records) == 2
    l0 = [r["l0"] for r in records]
    for r in records:
        assert r["architecture"] == name
        p = sae_io.load_params(r["path"])
        assert r["fvu"] < 0.5, r
        if name == "topk":
            assert r["k"] == int(p["k"]) and r["l0"] <= r["k"] + 1e-6
    if name == "topk":
        assert l0[0] < l0[1]
    else:
        assert l0[0] > l0[1]
