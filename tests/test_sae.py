"""JumpReLU SAE: forward, straight-through gradients against hand-derived values, export folding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.sae import jumprelu
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model

EPS = 0.001
T = 0.1

# Pre-activations around the threshold t = 0.1 with bandwidth eps = 0.001 (window |z - t| < 0.0005):
#   0.5     far above: fires, outside the window
#   0.1003  just above: fires, inside the window
#   0.0998  just below: does not fire, inside the window
#   0.05    far below: does not fire, outside the window
Z = np.array([[0.5, 0.1003, 0.0998, 0.05]], np.float32)


def test_jumprelu_forward_and_step_forward():
    t = jnp.full((4,), T)
    np.testing.assert_array_equal(jumprelu.jumprelu(jnp.asarray(Z), t, EPS), [[0.5, np.float32(0.1003), 0.0, 0.0]])
    np.testing.assert_array_equal(jumprelu.step(jnp.asarray(Z), t, EPS), [[1.0, 1.0, 0.0, 0.0]])


def test_jumprelu_gradients_hand_derived():
    t = jnp.full((4,), T)
    g_up = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
    _, vjp = jax.vjp(lambda z, th: jumprelu.jumprelu(z, th, EPS), jnp.asarray(Z), t)
    dz, dt = vjp(g_up)
    # d f/dz = H(z - t): 1 where fired, 0 elsewhere (exact, no window).
    np.testing.assert_array_equal(dz, [[1.0, 2.0, 0.0, 0.0]])
    # d f/dt = -(t/eps) K((z-t)/eps) = -100 inside the window, 0 outside; times the upstream grad.
    np.testing.assert_allclose(dt, [0.0, -2.0 * 100.0, -3.0 * 100.0, 0.0], rtol=1e-5)


def test_step_gradients_hand_derived():
    t = jnp.full((4,), T)
    g_up = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
    _, vjp = jax.vjp(lambda z, th: jumprelu.step(z, th, EPS), jnp.asarray(Z), t)
    dz, dt = vjp(g_up)
    np.testing.assert_array_equal(dz, np.zeros_like(Z))  # no gradient to the encoder from L0
    # d H/dt = -(1/eps) K((z-t)/eps) = -1000 inside the window.
    np.testing.assert_allclose(dt, [0.0, -2.0 * 1000.0, -3.0 * 1000.0, 0.0], rtol=1e-5)


def test_threshold_gradient_sums_over_batch():
    # Three rows, one latent: rows 0 and 2 sit inside the window, row 1 outside.
    z = jnp.asarray([[0.1002], [0.3], [0.0999]], jnp.float32)
    t = jnp.asarray([T])
    dt_relu = jax.grad(lambda th: jumprelu.jumprelu(z, th, EPS).sum())(t)
    dt_step = jax.grad(lambda th: jumprelu.step(z, th, EPS).sum())(t)
    np.testing.assert_allclose(dt_relu, [2 * -(T / EPS)], rtol=1e-5)
    np.testing.assert_allclose(dt_step, [2 * -(1 / EPS)], rtol=1e-5)


@pytest.mark.parametrize("param", ["direct", "log"])
def test_loss_gradient_hand_derived(param):
    """1-D SAE (W_enc = W_dec = 1, biases 0): every term of dLoss/dt derived by hand.

    For an example with x just below t (not fired, inside the window): f = 0, x_hat = 0,
    d||x - x_hat||^2/df = -2 (x - x_hat) = -2x, df/dt = -(t/eps); L0 term: lambda * -(1/eps).
    For x far above t (fired, outside the window): no threshold gradient.
    The loss is a batch mean, so each contributes 1/B.
    """
    lam = 0.01
    x = jnp.asarray([[0.0998], [0.7]], jnp.float32)
    cfg = {"bandwidth": EPS, "pre_encoder_bias": True, "threshold_init": T, "threshold_param": param}
    params = {
        "W_enc": jnp.ones((1, 1)),
        "W_dec": jnp.ones((1, 1)),
        "b_enc": jnp.zeros((1,)),
        "b_dec": jnp.zeros((1,)),
    }
    if param == "log":
        params["log_threshold"] = jnp.log(jnp.asarray([T]))
    else:
        params["threshold"] = jnp.asarray([T])
    grads, aux = jax.grad(jumprelu.loss, has_aux=True)(params, x, cfg, lam)
    x0 = 0.0998
    d_recon = -2.0 * x0 * -(T / EPS)
    d_l0 = lam * -(1.0 / EPS)
    expected_dt = (d_recon + d_l0) / 2.0
    if param == "log":
        np.testing.assert_allclose(grads["log_threshold"], [T * expected_dt], rtol=1e-4)
    else:
        np.testing.assert_allclose(grads["threshold"], [expected_dt], rtol=1e-4)
    # The fired example reconstructs exactly; the other has error x0^2: mse = x0^2 / 2; L0 = 1/2.
    np.testing.assert_allclose(aux["mse"], x0**2 / 2, rtol=1e-5)
    np.testing.assert_allclose(aux["l0"], 0.5)
    # Encoder gradient only from reconstruction of the fired example (its error is 0) -> 0.
    np.testing.assert_allclose(grads["W_enc"], [[0.0]], atol=1e-7)


def test_init_recipe():
    cfg = {"threshold_init": 0.001, "threshold_param": "direct"}
    p = jumprelu.init(jax.random.PRNGKey(0), 16, 64, cfg)
    np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p["W_enc"], p["W_dec"].T)
    assert not np.any(p["b_enc"]) and not np.any(p["b_dec"])
    np.testing.assert_allclose(p["threshold"], 0.001)
    plog = jumprelu.init(jax.random.PRNGKey(0), 16, 64, {**cfg, "threshold_param": "log"})
    np.testing.assert_allclose(jumprelu.layout_params(plog)["threshold"], 0.001, rtol=1e-6)


def _random_trained(key, d_in=8, d_sae=32):
    k = jax.random.split(key, 5)
    return {
        "W_enc": jax.random.normal(k[0], (d_in, d_sae)) * 0.5,
        "W_dec": jax.random.normal(k[1], (d_sae, d_in)) * 0.5,
        "b_enc": jax.random.normal(k[2], (d_sae,)) * 0.1,
        "b_dec": jax.random.normal(k[3], (d_in,)) * 0.3,
        "threshold": jax.random.uniform(k[4], (d_sae,), minval=0.05, maxval=0.3),
    }


def test_export_folding_identity():
    """Exported SAE on raw x == C * (trained SAE on x / C), with identical codes."""
    key = jax.random.PRNGKey(1)
    trained = _random_trained(key)
    c = 37.5
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (256, 8)) * c, np.float32)
    cfg = {"pre_encoder_bias": True, "bandwidth": EPS}
    f_train = jumprelu.encode_train(trained, x / c, cfg)
    xhat_train = jumprelu.decode_train(trained, f_train)
    exported = sae_io.fold_normalisation(trained, c, pre_encoder_bias=True)
    f_exp = sae_model.encode(exported, x)  # raw units: plain forward, no pre-encoder bias
    xhat_exp = sae_model.decode(exported, f_exp)
    np.testing.assert_array_equal(np.asarray(f_exp) != 0, np.asarray(f_train) != 0)
    assert 0.05 < float(np.mean(np.asarray(f_exp) != 0)) < 0.95  # a mix of fired and not
    np.testing.assert_allclose(f_exp, c * np.asarray(f_train), rtol=1e-4, atol=1e-4 * c)
    np.testing.assert_allclose(xhat_exp, c * np.asarray(xhat_train), rtol=1e-4, atol=1e-4 * c)


def test_params_npz_round_trip_and_errors(tmp_path):
    p = sae_io.fold_normalisation(_random_trained(jax.random.PRNGKey(3)), 2.0)
    path = str(tmp_path / "a" / "params.npz")
    sae_io.save_params(path, p, {"site": "res", "layer": 3})
    back = sae_io.load_params(path)
    for k in jumprelu.LAYOUT_KEYS:
        np.testing.assert_array_equal(back[k], p[k])
        assert back[k].dtype == np.float32
    assert sae_io.load_metadata(path)["layer"] == 3
    assert sae_io.load_params(str(tmp_path / "a"))["W_enc"].shape == (8, 32)  # folder works too

    def write(name, arrays):
        f = str(tmp_path / f"{name}.npz")
        np.savez(f, **arrays)
        return f

    missing = {k: v for k, v in p.items() if k != "b_dec"}
    with pytest.raises(sae_io.SAEFileError, match="missing key 'b_dec'"):
        sae_io.load_params(write("missing", missing))
    bad_shape = dict(p, W_dec=p["W_dec"][:, :5])
    with pytest.raises(sae_io.SAEFileError, match=r"'W_dec' has shape \(32, 5\), expected \(32, 8\)"):
        sae_io.load_params(write("shape", bad_shape))
    neg = dict(p, threshold=p["threshold"].copy())
    neg["threshold"][7] = 0.0
    with pytest.raises(sae_io.SAEFileError, match="'threshold' must be > 0.*latent 7"):
        sae_io.load_params(write("neg", neg))
    with pytest.raises(sae_io.SAEFileError, match="no such SAE file"):
        sae_io.load_params(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(sae_io.SAEFileError, match="not a readable"):
        sae_io.load_params(str(tmp_path / "junk.npz"))


def test_width_names_match_gemma_scope():
    assert [sae_io.width_name(2**k) for k in range(14, 21)] == ["16k", "32k", "65k", "131k", "262k", "524k", "1m"]


def test_fused_jumprelu_and_l0_matches_separate_functions():
    """The fused op used by the loss has exactly the values and pseudo-gradients of the two parts."""
    z = jax.random.uniform(jax.random.PRNGKey(5), (64, 16), minval=0.098, maxval=0.102)
    t = jnp.full((16,), T)
    lam = 0.37

    def separate(z, t):
        return jnp.sum(jumprelu.jumprelu(z, t, EPS) ** 2) + lam * jnp.sum(jumprelu.step(z, t, EPS))

    def fused(z, t):
        f, l0 = jumprelu.jumprelu_and_l0(z, t, EPS)
        return jnp.sum(f**2) + lam * jnp.sum(l0)

    np.testing.assert_allclose(fused(z, t), separate(z, t), rtol=1e-6)
    gs = jax.grad(separate, argnums=(0, 1))(z, t)
    gf = jax.grad(fused, argnums=(0, 1))(z, t)
    assert np.any(np.asarray(gs[1]) != 0)  # the window is populated
    for a, b in zip(gf, gs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
