"""The recipe beyond Gemma Scope 1: the quadratic target-L0 loss (both forms) and the frequency
penalty against hand-derived threshold gradients, the quantile threshold init, the config checks
of the new fields, and the architecture contract."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.sae import archs, jumprelu
from gemmascope.sae.common import Architecture, SAEConfig

EPS, T0 = 1e-3, 0.1
# Two latents, W_enc = W_dec = I, biases 0, both thresholds 0.1 (window |z - 0.1| < 0.0005):
#   row 0: latent 0 at 0.0998 (below, inside the window), latent 1 at 0.05 (below, outside)
#   row 1: both at 0.7 (fired, outside)
# so L0 = [0, 2], and only latent 0 of row 0 carries a threshold pseudo-gradient.
X = np.array([[0.0998, 0.05], [0.7, 0.7]], np.float32)
B = 2


def _params():
    return {"W_enc": jnp.eye(2), "W_dec": jnp.eye(2), "b_enc": jnp.zeros(2), "b_dec": jnp.zeros(2),
            "threshold": jnp.full((2,), T0)}


def _cfg(**over):
    return SAEConfig.from_mapping({"bandwidth": EPS, "threshold_param": "direct", **over})


# Reconstruction part of dLoss/dt_0: d(mean_i ||x - x_hat||^2)/df_00 = -2 x_00 / B, times
# df/dt = -(t / eps) inside the window.
D_RECON = (-2.0 * 0.0998 / B) * -(T0 / EPS)


@pytest.mark.parametrize("form", ["per_example", "batch"])
def test_quadratic_loss_threshold_gradient_hand_derived(form):
    target, coef = 3.0, 0.02
    cfg = _cfg(sparsity_loss="quadratic", quadratic_form=form)
    grads, aux = jax.grad(jumprelu.loss, has_aux=True)(_params(), jnp.asarray(X), cfg, (target, coef))
    l0 = np.array([0.0, 2.0])
    if form == "per_example":  # coef * mean_i (2/T)(L0_i - T)^2  ->  d/dL0_i = coef (4/T)(L0_i - T) / B
        d_l0 = coef * (4.0 / target) * (l0 - target) / B
        value = coef * np.mean((2.0 / target) * (l0 - target) ** 2)
    else:  # coef * (mean L0 - T)^2 / T  ->  d/dL0_i = coef * 2 (mean L0 - T) / (T B)
        d_l0 = coef * 2.0 * (l0.mean() - target) / (target * B) * np.ones(2)
        value = coef * (l0.mean() - target) ** 2 / target
    # dL0_0/dt_0 = -(1/eps) (row 0, inside the window); nothing else is inside a window.
    expected = [D_RECON + d_l0[0] * -(1.0 / EPS), 0.0]
    np.testing.assert_allclose(grads["threshold"], expected, rtol=1e-4)
    assert float(grads["threshold"][1]) == 0.0  # outside the window: exactly no gradient
    np.testing.assert_allclose(aux["sparsity_loss"], value, rtol=1e-6)
    np.testing.assert_allclose(aux["l0"], 1.0)


def test_the_two_quadratic_forms_differ_and_l0_loss_is_unchanged():
    """Same batch, the forms give different gradients (L0 spread matters to per_example only);
    the default "l0" loss is lambda * mean L0 with d/dt_0 = lambda * -(1/eps) / B."""
    g = {f: jax.grad(jumprelu.loss, has_aux=True)(_params(), jnp.asarray(X), _cfg(sparsity_loss="quadratic",
                                                                                  quadratic_form=f), (1.0, 0.02))[0]
         for f in ("per_example", "batch")}
    # mean L0 = T = 1: the batch form's penalty has zero gradient, the per-example one does not.
    np.testing.assert_allclose(g["batch"]["threshold"][0], D_RECON, rtol=1e-5)
    assert abs(float(g["per_example"]["threshold"][0]) - D_RECON) > 1.0
    lam = 0.01
    gl, _ = jax.grad(jumprelu.loss, has_aux=True)(_params(), jnp.asarray(X), _cfg(), lam)
    np.testing.assert_allclose(gl["threshold"], [D_RECON + lam * -(1.0 / EPS) / B, 0.0], rtol=1e-4)


def test_frequency_penalty_threshold_gradient_hand_derived():
    """Both latents fire on p = 1/2 of the batch; with p_max = 1/4 the penalty is
    coef * 2 * (1/4)^2 / (1/4), and d/dt_j = coef * 2 (p_j - p_max) / p_max * (1/B) * -(1/eps) K
    (inside the window only: latent 0 of row 0)."""
    coef, pmax, lam = 0.003, 0.25, 0.0
    cfg = _cfg(frequency_penalty=coef, frequency_max=pmax)
    grads, aux = jax.grad(jumprelu.loss, has_aux=True)(_params(), jnp.asarray(X), cfg, lam)
    d_p = coef * 2.0 * (0.5 - pmax) / pmax
    np.testing.assert_allclose(grads["threshold"], [D_RECON + d_p * (1.0 / B) * -(1.0 / EPS), 0.0], rtol=1e-4)
    np.testing.assert_allclose(aux["sparsity_loss"], coef * 2 * (0.5 - pmax) ** 2 / pmax, rtol=1e-6)
    # Below p_max nothing changes: the same gradient as without the penalty.
    g_low, _ = jax.grad(jumprelu.loss, has_aux=True)(_params(), jnp.asarray(X), _cfg(frequency_penalty=coef,
                                                                                     frequency_max=0.6), lam)
    np.testing.assert_allclose(g_low["threshold"], [D_RECON, 0.0], rtol=1e-5)


def test_quantile_threshold_init_starts_at_each_target_l0():
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.sae.sparsity_loss, c.sae.threshold_init_mode = "quadratic", "quantile"
    c.target_l0s, c.widths = (4.0, 16.0), (64,)
    x = jax.random.normal(jax.random.PRNGKey(0), (2048, 16)) * 3.0
    sample = step_lib.init_sample(c, np.asarray(x), 3.0)
    state = step_lib.init_state(jax.random.PRNGKey(1), c, 16, 64, 2, 3.0, sample)
    for i, target in enumerate(c.target_l0s):
        p = jax.tree.map(lambda a: a[i], state["params"])
        f = jumprelu.encode_train(p, sample, SAEConfig.from_config(c))
        l0 = float(jnp.mean(jnp.sum(f != 0, axis=-1)))
        assert abs(l0 - target) / target < 0.02, (target, l0)  # quantiles of these very rows
    # The constant init is untouched by a sample.
    c.sae.threshold_init_mode = "constant"
    st = step_lib.init_state(jax.random.PRNGKey(1), c, 16, 64, 2, 3.0, step_lib.init_sample(c, np.asarray(x), 3.0))
    np.testing.assert_array_equal(st["params"]["threshold"], np.float32(0.001))


@pytest.mark.parametrize("over,message", [
    (dict(target_l0s=(40.0, -1.0)), "config.target_l0s: every target L0 must be a finite number > 0, got -1.0"),
    (dict(target_l0s=(40.0, 5000.0)), "config.target_l0s: target L0 5000.0 exceeds width 4096"),
    (dict(target_l0s=()), "config.target_l0s: must be a non-empty list"),
    (dict(sae_quadratic_form="mean"), "config.sae.quadratic_form: must be 'per_example' or 'batch'"),
    (dict(sae_arch="topk"), "config.sae.sparsity_loss: applies to arch 'jumprelu' only, not 'topk'"),
    (dict(sae_frequency_max=0.0), "config.sae.frequency_max: must be a fraction of tokens in (0, 1]"),
    (dict(sae_threshold_init_mode="quantile", sae_sparsity_loss="l0"),
     "config.sae.threshold_init_l0: must be > 0 (the L0 the quantile init aims at)"),
])
def test_recipe_config_errors_name_the_field_before_compute(over, message):
    c = config_lib.base_config()
    c.widths, c.sae.sparsity_loss = (4096,), "quadratic"
    for k, v in over.items():
        if k.startswith("sae_"):
            c.sae[k[4:]] = v
        else:
            c[k] = v
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    assert message in str(e.value)


def test_quadratic_sweep_axis_and_metadata():
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.sae.sparsity_loss, c.target_l0s = "quadratic", (20.0, 80.0)
    assert config_lib.sweep_field(c) == "target_l0s" and config_lib.sweep_values(c) == [20.0, 80.0]
    meta = step_lib.sweep_metadata(c, 80.0)
    assert meta["sparsity_loss"] == "quadratic" and meta["target_l0"] == 80.0
    c.sae.sparsity_loss = "l0"
    assert step_lib.sweep_metadata(c, 1e-3)["sparsity_loss"] == "l0"


def test_every_architecture_satisfies_the_contract():
    for name, m in archs.ARCHS.items():
        assert isinstance(m, Architecture) and m.NAME == name
    with pytest.raises(ValueError, match="config.sae.bogus: not a field of SAEConfig"):
        SAEConfig.from_mapping({"bogus": 1})
    assert SAEConfig.from_config(config_lib.base_config()) == SAEConfig.from_mapping({})
