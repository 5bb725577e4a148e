"""Dead-latent remedies for JumpReLU: threshold revival (``sae.revive_dead_every``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.sae import jumprelu
from gemmascope.sae.common import SAEConfig

D_IN, D_SAE, ROWS = 8, 32, 512


def _params(seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, (D_IN, D_SAE)) / np.sqrt(D_IN)
    return {
        "W_enc": w,
        "W_dec": w.T,
        "b_enc": jnp.zeros(D_SAE),
        "b_dec": jnp.zeros(D_IN),
        "threshold": jnp.full((D_SAE,), 0.5),
    }


@pytest.mark.parametrize("param", ["direct", "log"])
def test_revive_lowers_only_dead_thresholds_to_the_target_quantile(param):
    """A dead latent's threshold moves to the (1 - T / d_sae) quantile of its pre-activations on
    the batch, so it fires on about T / d_sae of the rows; live latents and a dead latent whose
    threshold is already lower keep theirs."""
    cfg = SAEConfig.from_mapping({"threshold_param": param, "threshold_min": 1e-3})
    x = jax.random.normal(jax.random.PRNGKey(1), (ROWS, D_IN))
    p = _params()
    thr = np.full(D_SAE, 0.5, np.float32)
    thr[:6] = 100.0  # far above every pre-activation: dead
    thr[6] = 1e-3  # marked dead below, but already low: never raised
    p["threshold"] = jnp.asarray(thr)
    p = jumprelu.with_threshold(p, p["threshold"], cfg)
    dead = jnp.arange(D_SAE) < 7
    target = 4.0  # T / d_sae = 1/8 of the rows
    out = jumprelu.revive_thresholds(p, x, dead, target, cfg)
    new = np.asarray(jumprelu.layout_params(out)["threshold"])
    pre = np.asarray(x @ p["W_enc"])
    want = np.quantile(pre[:, :6], 1.0 - target / D_SAE, axis=0)
    np.testing.assert_allclose(new[:6], np.maximum(want, 1e-3), rtol=1e-4)
    fired = (pre[:, :6] > new[:6]).mean(axis=0)
    np.testing.assert_allclose(fired, target / D_SAE, atol=2.0 / ROWS)
    np.testing.assert_allclose(new[6:], thr[6:], rtol=1e-6)


def test_the_train_step_revives_a_dead_latent_every_n_steps():
    """Latents made dead (threshold 100) fire again right after the first step at which they have
    been silent for more than ``revive_dead_every`` steps, and not before; the variant and the
    metadata name the remedy; validation names the field."""
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.source, c.sites, c.layers = "toy", ("toy",), (0,)
    c.widths, c.batch_size, c.lr, c.lr_warmup_steps = (D_SAE,), 256, 1e-3, 0
    c.sae.sparsity_loss, c.target_l0s, c.sae.revive_dead_every = "quadratic", (4.0,), 2
    config_lib.validate(c)
    state = step_lib.init_state(jax.random.PRNGKey(0), c, D_IN, d_sae=D_SAE, n_saes=1, norm_scale=1.0)
    state["params"]["threshold"] = state["params"]["threshold"].at[0, :5].set(100.0)
    train_step = jax.jit(step_lib.make_train_step(c, dead_window_steps=100))
    lams = jnp.asarray(c.target_l0s)
    fired_at = []
    for s in range(6):
        x = jax.random.normal(jax.random.PRNGKey(10 + s), (c.batch_size, D_IN))
        state, _ = train_step(state, x, lams)
        fired_at.append(np.asarray(state["last_fired"][0, :5]))
        if s < 3:  # silent 1, 2, 3 steps: the check at step 2 (index 1) sees 2, not > 2
            assert np.all(fired_at[-1] == 0), (s, fired_at[-1])
            np.testing.assert_array_equal(state["params"]["threshold"][0, :5], 100.0)
    # Revived at the end of step 4 (index 3): below 100, and firing from step 5 on.
    assert np.all(np.asarray(state["params"]["threshold"][0, :5]) < 10.0)
    assert np.all(fired_at[4] == 5), fired_at
    assert config_lib.variant_name(c) == "jumprelu_quadratic_batch_revive"
    assert step_lib.sweep_metadata(c, 4.0)["revive_dead_every"] == 2
    c.sae.revive_dead_every = -1
    with pytest.raises(config_lib.ConfigError, match="config.sae.revive_dead_every: must be an integer >= 0"):
        config_lib.validate(c)
    c.sae.revive_dead_every, c.sae.sparsity_loss, c.sae.threshold_init_l0 = 5, "l0", 0.0
    with pytest.raises(config_lib.ConfigError, match="config.sae.threshold_init_l0: must be > 0"):
        config_lib.validate(c)  # the 'l0' loss: the revival aims at threshold_init_l0
    c.sae.threshold_init_l0 = 2.0 * D_SAE
    with pytest.raises(config_lib.ConfigError, match="config.sae.threshold_init_l0: L0 64.0 exceeds width 32"):
        config_lib.validate(c)
    c.sae.revive_dead_every, c.sae.arch, c.sae.threshold_init_l0 = 5, "topk", 0.0
    with pytest.raises(config_lib.ConfigError, match="config.sae.revive_dead_every: applies to arch 'jumprelu'"):
        config_lib.validate(c)
