"""The cross-layer transcoder's math (gemmascope.sae.clt): its loss and every gradient against a
hand-written NumPy reference on a tiny case, and a one-layer CLT equal to the JumpReLU
transcoder on the same weights (loss, codes, prediction and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae import transcoder
from gemmascope.sae.clt import CrossLayerTranscoder, causal_mask
from gemmascope.sae.common import Architecture, SAEConfig

L, D_IN, D_OUT, D_SAE, B = 3, 4, 5, 6, 8
EPS = 0.5  # a wide kernel window, so the threshold pseudo-gradients are non-zero on a tiny batch
CFG = SAEConfig(sparsity_loss="quadratic", quadratic_form="batch", bandwidth=EPS)


def _case(seed=0, n_layers=L, affine=True):
    rng = np.random.default_rng(seed)
    clt = CrossLayerTranscoder(n_layers, D_OUT, affine)
    p = {
        "W_enc": rng.standard_normal((n_layers, D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.standard_normal((n_layers, D_SAE, n_layers, D_OUT)).astype(np.float32),
        "b_enc": rng.standard_normal((n_layers, D_SAE)).astype(np.float32) * 0.3,
        "b_dec": rng.standard_normal((n_layers, D_OUT)).astype(np.float32),
        "threshold": rng.uniform(0.2, 1.2, (n_layers, D_SAE)).astype(np.float32),
    }
    if affine:
        p["W_skip"] = rng.standard_normal((n_layers, D_IN, D_OUT)).astype(np.float32) * 0.2
    xy = rng.standard_normal((B, n_layers * (D_IN + D_OUT))).astype(np.float32)
    return clt, p, xy


def _reference(p, xy, target, coef, n_layers=L):
    """Loss and gradients written out by hand (float64): the JumpReLU straight-through rule."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = xy[:, : n_layers * D_IN].reshape(B, n_layers, D_IN).astype(np.float64)
    y = xy[:, n_layers * D_IN :].reshape(B, n_layers, D_OUT).astype(np.float64)
    mask = np.triu(np.ones((n_layers, n_layers)))  # [l, m]: l writes to m >= l
    pre = np.einsum("bld,lds->bls", x, p["W_enc"]) + p["b_enc"]
    t = p["threshold"]
    on = (pre > t).astype(np.float64)
    f = pre * on
    wd = p["W_dec"] * mask[:, None, :, None]
    y_hat = np.einsum("bls,lsmo->bmo", f, wd) + p["b_dec"] + np.einsum("bld,ldo->blo", x, p["W_skip"])
    r = y_hat - y
    mse = np.mean(np.sum(r**2, axis=(1, 2)))
    l0 = on.sum(-1).mean(-1)  # [B] per-layer L0 averaged over layers
    miss = l0.mean() - target
    loss = mse + coef * miss**2 / target
    g_yhat = 2.0 * r / B  # d loss / d y_hat
    grads = {
        "W_dec": np.einsum("bls,bmo->lsmo", f, g_yhat) * mask[:, None, :, None],
        "b_dec": g_yhat.sum(0),
        "W_skip": np.einsum("bld,blo->ldo", x, g_yhat),
    }
    g_f = np.einsum("bmo,lsmo->bls", g_yhat, wd)
    g_pre = g_f * on
    grads["W_enc"] = np.einsum("bld,bls->lds", x, g_pre)
    grads["b_enc"] = g_pre.sum(0)
    kernel = (np.abs((pre - t) / EPS) < 0.5).astype(np.float64)
    g_l0 = coef * 2.0 * miss / target / B / n_layers  # d penalty / d (a latent's firing indicator)
    grads["threshold"] = np.sum(kernel * (g_f * (-t / EPS) + g_l0 * (-1.0 / EPS)), axis=0)
    return loss, grads, f, y_hat


def test_clt_loss_and_every_gradient_match_the_hand_written_reference():
    clt, p, xy = _case()
    target, coef = 2.0, 0.7
    loss_fn = lambda q: clt.loss(q, jnp.asarray(xy), CFG, (jnp.float32(target), jnp.float32(coef)))[0]  # noqa: E731
    loss, grads = jax.value_and_grad(loss_fn)({k: jnp.asarray(v) for k, v in p.items()})
    want_loss, want_grads, f, y_hat = _reference(p, xy, target, coef)
    assert 0 < (f > 0).mean() < 1  # some features fire, some do not
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    for k, g in want_grads.items():
        np.testing.assert_allclose(np.asarray(grads[k]), g, rtol=1e-4, atol=1e-4 * np.abs(g).max(), err_msg=k)
    assert np.abs(want_grads["threshold"]).max() > 0  # the kernel window caught pre-activations
    # the decoder's non-causal entries (source after target) get no gradient and stay out of y^
    assert np.all(np.asarray(grads["W_dec"]) * (1 - np.asarray(causal_mask(L))) == 0)
    codes = np.asarray(clt.encode_train(p, jnp.asarray(xy), CFG))
    np.testing.assert_allclose(codes, f, rtol=1e-5, atol=1e-5)
    pred = np.asarray(clt.predict(p, jnp.asarray(codes), jnp.asarray(xy[:, : L * D_IN].reshape(B, L, D_IN))))
    np.testing.assert_allclose(pred, y_hat, rtol=1e-4, atol=1e-4)


def test_a_one_layer_clt_is_the_transcoder_on_the_same_weights():
    clt, p, xy = _case(seed=1, n_layers=1)
    tc = transcoder.Transcoder(D_OUT, affine=True)
    q = {
        "W_enc": p["W_enc"][0],
        "W_dec": p["W_dec"][0, :, 0, :],
        "b_enc": p["b_enc"][0],
        "b_dec": p["b_dec"][0],
        "threshold": p["threshold"][0],
        "W_skip": p["W_skip"][0],
    }
    sparsity = (jnp.float32(3.0), jnp.float32(0.5))
    (l_clt, a_clt), g_clt = jax.value_and_grad(lambda w: clt.loss(w, jnp.asarray(xy), CFG, sparsity), has_aux=True)(p)
    (l_tc, a_tc), g_tc = jax.value_and_grad(lambda w: tc.loss(w, jnp.asarray(xy), CFG, sparsity), has_aux=True)(q)
    np.testing.assert_allclose(float(l_clt), float(l_tc), rtol=1e-6)
    for k in ("mse", "l0", "sq_err_sum"):
        np.testing.assert_allclose(float(a_clt[k]), float(a_tc[k]), rtol=1e-6, err_msg=k)
    for k in q:
        np.testing.assert_allclose(
            np.asarray(g_clt[k]).reshape(np.shape(g_tc[k])), np.asarray(g_tc[k]), rtol=1e-5, atol=1e-6, err_msg=k
        )
    np.testing.assert_allclose(
        np.asarray(clt.encode_train(p, jnp.asarray(xy), CFG))[:, 0],
        np.asarray(tc.encode_train(q, jnp.asarray(xy), CFG)),
    )


def test_the_clt_satisfies_the_architecture_contract_and_starts_causal():
    clt = CrossLayerTranscoder(L, D_OUT, affine=True)
    assert isinstance(clt, Architecture)
    p = clt.init(jax.random.PRNGKey(0), D_IN, D_SAE, CFG)
    assert p["W_enc"].shape == (L, D_IN, D_SAE) and p["W_dec"].shape == (L, D_SAE, L, D_OUT)
    assert np.all(np.asarray(p["W_dec"]) * (1 - np.asarray(causal_mask(L))) == 0)
    # each feature's total write starts at unit norm, spread over the layers it writes to
    norms = np.sqrt(np.sum(np.asarray(p["W_dec"]) ** 2, axis=(2, 3)))
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert np.all(np.asarray(p["W_skip"]) == 0) and clt.sweep_axis(CFG).kind == "target_l0"
