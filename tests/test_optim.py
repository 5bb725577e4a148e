"""The training recipe's transforms and schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gemmascope.train import optim


def test_decoder_projection_removes_parallel_component():
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (16, 8))
    w = w / jnp.linalg.norm(w, axis=1, keepdims=True) * 1.7  # not unit norm: projection must still be exact
    g = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
    tx = optim.project_out_decoder_parallel()
    (out, _) = tx.update({"W_dec": g, "b": jnp.ones(3)}, tx.init(None), {"W_dec": w, "b": jnp.ones(3)})
    np.testing.assert_allclose(jnp.sum(out["W_dec"] * w, axis=1), 0.0, atol=1e-5)
    # Perpendicular part is untouched: g - out is parallel to w.
    diff = g - out["W_dec"]
    cos = jnp.sum(diff * w, axis=1) / (jnp.linalg.norm(diff, axis=1) * jnp.linalg.norm(w, axis=1))
    np.testing.assert_allclose(jnp.abs(cos), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["b"], 1.0)


def test_renormalise_decoder_rows():
    w = jax.random.normal(jax.random.PRNGKey(2), (10, 4)) * 3.0
    out = optim.renormalise_decoder({"W_dec": w})
    np.testing.assert_allclose(jnp.linalg.norm(out["W_dec"], axis=1), 1.0, rtol=1e-6)


def test_adam_without_momentum_stores_no_first_moment_and_matches_adam_b1_0():
    params = {"a": jnp.ones((5, 3)), "b": jnp.zeros(7)}
    ours = optim.scale_by_adam_no_momentum(b2=0.999, eps=1e-8)
    ref = optax.scale_by_adam(b1=0.0, b2=0.999, eps=1e-8)
    s_ours, s_ref = ours.init(params), ref.init(params)
    n_param = sum(x.size for x in jax.tree.leaves(params))
    n_ours = sum(x.size for x in jax.tree.leaves(s_ours))
    n_ref = sum(x.size for x in jax.tree.leaves(s_ref))
    assert n_ours == n_param + 1  # nu and a step count: no first-moment buffer
    assert n_ref == 2 * n_param + 1
    for i in range(5):
        g = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(i), p.shape), params)
        u_ours, s_ours = ours.update(g, s_ours)
        u_ref, s_ref = ref.update(g, s_ref)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_make_optimizer_state_has_no_first_moment():
    cfg = dict(adam_b1=0.0, adam_b2=0.999, adam_eps=1e-8, lr=7e-5, lr_warmup_steps=1000)
    params = {"W_dec": jnp.ones((4, 3)), "b_dec": jnp.ones(3)}
    state = optim.make_optimizer(cfg).init(params)
    n_param = sum(x.size for x in jax.tree.leaves(params))
    # nu (one buffer the size of the params) + Adam count + schedule count.
    assert sum(x.size for x in jax.tree.leaves(state)) == n_param + 2


def test_lr_schedule_cosine_warmup_then_constant():
    s = optim.lr_schedule(dict(lr=7e-5, lr_warmup_steps=1000))
    np.testing.assert_allclose(s(0), 7e-6, rtol=1e-6)  # 0.1 * lr
    np.testing.assert_allclose(s(500), 7e-5 * (0.1 + 0.9 * 0.5), rtol=1e-5)  # half-way on the cosine
    np.testing.assert_allclose(s(250), 7e-5 * (0.1 + 0.9 * 0.5 * (1 - np.cos(np.pi / 4))), rtol=1e-5)
    np.testing.assert_allclose(s(1000), 7e-5, rtol=1e-6)
    np.testing.assert_allclose(s(10**6), 7e-5, rtol=1e-6)
    d = optim.lr_schedule(dict(lr=1.0, lr_warmup_steps=10, lr_decay="cosine", total_steps=110, lr_final_fraction=0.1))
    np.testing.assert_allclose(d(60), 0.1 + 0.9 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(d(110), 0.1, rtol=1e-6)


def test_sparsity_schedule_linear_warmup():
    s = optim.sparsity_schedule(10_000)
    np.testing.assert_allclose([s(0), s(2500), s(10_000), s(50_000)], [0.0, 0.25, 1.0, 1.0])
    np.testing.assert_allclose(optim.sparsity_schedule(0)(0), 1.0)


def test_clamp_threshold_only_direct():
    p = optim.clamp_threshold({"threshold": jnp.asarray([-1.0, 0.5])}, 1e-6)
    np.testing.assert_allclose(p["threshold"], [1e-6, 0.5])
    q = {"log_threshold": jnp.asarray([-20.0])}
    assert optim.clamp_threshold(q, 1e-6) is q


def test_free_decoder_rows_leave_the_unit_sphere():
    """config.unit_norm_decoder = False (SAELens's JumpReLU, for the ablation): no renormalising and
    no projection, so a step moves the rows' norms off 1 by about the learning rate."""
    from gemmascope import config as config_lib
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.batch_size, c.unit_norm_decoder, c.lr_warmup_steps = 64, False, 0
    state = step_lib.init_state(jax.random.PRNGKey(0), c, 8, d_sae=32, n_saes=1, norm_scale=2.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8)) * 2.0
    new, _ = step_lib.make_train_step(c, dead_window_steps=10)(state, x, jnp.asarray([1e-3]))
    norms = np.asarray(jnp.linalg.norm(new["params"]["W_dec"], axis=-1))
    assert np.max(np.abs(norms - 1.0)) > 10 * 1e-5, norms  # the unit-norm test's tolerance, 10x over
    assert step_lib.unit_norm_decoder(c, step_lib.archs.get("jumprelu")) is False


@pytest.mark.parametrize("param", ["direct", "log"])
def test_one_recipe_update_keeps_decoder_unit_norm(param):
    from gemmascope import config as config_lib
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.sae.threshold_param = param
    c.batch_size = 64
    state = step_lib.init_state(jax.random.PRNGKey(0), c, 8, d_sae=32, n_saes=2, norm_scale=2.0)
    train_step = step_lib.make_train_step(c, dead_window_steps=10)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8)) * 2.0
    new, metrics = train_step(state, x, jnp.asarray([1e-3, 1e-2]))
    np.testing.assert_allclose(jnp.linalg.norm(new["params"]["W_dec"], axis=-1), 1.0, rtol=1e-5)
    assert int(new["step"]) == 1 and metrics["l0"].shape == (2,)
    # lr at step 0 is 0.1 * lr; the first Adam step moves each changed weight by about that much.
    delta = jnp.abs(new["params"]["b_dec"] - state["params"]["b_dec"])
    np.testing.assert_allclose(jnp.max(delta), 0.1 * c.lr, rtol=1e-2)


def test_the_train_step_optimiser_follows_the_cosine_decay_to_the_end():
    """The step's optimiser knows total_steps: with lr_decay=cosine the update shrinks to
    lr * lr_final_fraction by the last step (Adam-normalised updates have size ~ lr)."""
    from gemmascope import config as config_lib
    from gemmascope.sae import archs
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.lr, c.lr_warmup_steps, c.lr_decay, c.lr_final_fraction = 1e-2, 2, "cosine", 0.1
    c.batch_size, c.num_tokens = 10, 10 * 20  # 20 steps
    tx = step_lib.optimizer(c, archs.get("relu"))  # relu: no decoder projection in the chain
    params = {"w": jnp.ones((3,))}
    state = tx.init(params)
    sizes = []
    for _ in range(20):
        upd, state = tx.update({"w": jnp.ones((3,))}, state, params)
        sizes.append(float(jnp.abs(upd["w"]).max()))
    assert sizes[3] > 0.9e-2  # after warm-up, near lr
    assert abs(sizes[-1] - 1e-3 * (1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 17 / 18)))) < 2e-4  # step 19 of 2..20
    assert sizes[-1] < 0.15 * sizes[3]


def test_grad_clip_norm_scales_the_whole_tree_before_adam():
    """Hand-derived: step 1's gradient (global norm 50) is scaled to norm 1 before Adam, step 2's
    (norm 0.5) passes unchanged; Adam's second moment then holds the clipped square, so the second
    update is ``g2 / sqrt(nu2 / (1 - b2^2))`` with ``nu2 = b2 (1 - b2) g1c^2 + (1 - b2) g2^2``.
    Without clipping nu2 holds the raw g1^2 and the update is ~40x smaller (checked to differ)."""
    b2, lr = 0.9, 0.5
    cfg = dict(adam_b1=0.0, adam_b2=b2, adam_eps=1e-12, lr=lr, lr_warmup_steps=0, project_decoder_grads=False)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    g1 = {"a": jnp.asarray([30.0, 0.0]), "b": jnp.asarray([40.0])}  # ||g1|| = 50
    g2 = {"a": jnp.asarray([0.3, 0.0]), "b": jnp.asarray([0.4])}  # ||g2|| = 0.5 < 1
    out = {}
    for clip in (1.0, 0.0):
        tx = optim.make_optimizer({**cfg, "grad_clip_norm": clip})
        state = tx.init(params)
        _, state = tx.update(g1, state, params)
        out[clip], _ = tx.update(g2, state, params)
    scale = 1.0 / 50.0
    for k in ("a", "b"):
        g1c, g2k = np.asarray(g1[k]) * scale, np.asarray(g2[k])
        nu2 = b2 * (1 - b2) * g1c**2 + (1 - b2) * g2k**2
        want = np.where(nu2 > 0, -lr * g2k / (np.sqrt(nu2 / (1 - b2**2)) + 1e-12), 0.0)
        np.testing.assert_allclose(out[1.0][k], want, rtol=1e-5, atol=1e-12)
    # Unclipped: nu2 dominated by the raw g1^2, so the update on "b" is much smaller.
    assert float(jnp.abs(out[0.0]["b"][0])) < 0.2 * float(jnp.abs(out[1.0]["b"][0]))


def test_grad_clip_norm_reaches_the_train_step_optimiser_and_is_validated():
    from gemmascope import config as config_lib
    from gemmascope.sae import archs
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    assert c.grad_clip_norm == 0.0  # off by default (Gemma Scope clips nothing)
    c.grad_clip_norm = 1.0
    tx = step_lib.optimizer(c, archs.get("relu"))
    params = {"w": jnp.zeros(4)}
    state = tx.init(params)
    # Clipping runs first: the Adam second moment sees the clipped gradient (norm 1, not 200).
    _, state = tx.update({"w": jnp.full((4,), 100.0)}, state, params)
    nu = [x for x in jax.tree.leaves(state) if x.shape == (4,)][0]
    np.testing.assert_allclose(nu, (1 - c.adam_b2) * 0.5**2, rtol=1e-5)
    c.grad_clip_norm = -1.0
    with pytest.raises(config_lib.ConfigError, match="grad_clip_norm: must be a finite number >= 0"):
        config_lib.validate(c)


def test_threshold_adam_b1_gives_thresholds_their_own_momentum():
    """With adam_b1 0.9 and threshold_adam_b1 0, a threshold whose gradient stops stops moving at
    once (the dead-latent mechanism, train/optim.py); every other parameter keeps its momentum,
    and each part's update equals plain Adam with its own b1, step for step."""
    from gemmascope import config as config_lib
    from gemmascope.sae import archs
    from gemmascope.train import step as step_lib

    lr, b2, eps = 1e-3, 0.999, 1e-8
    cfg = dict(adam_b1=0.9, adam_b2=b2, adam_eps=eps, lr=lr, lr_warmup_steps=0, project_decoder_grads=False)
    params = {"W_enc": jnp.zeros((2, 3)), "threshold": jnp.zeros(3)}
    grads = [
        {"W_enc": jnp.full((2, 3), 0.5), "threshold": jnp.array([1.0, -2.0, 0.25])},
        {"W_enc": jnp.zeros((2, 3)), "threshold": jnp.zeros(3)},  # the threshold leaves the window
    ]

    def run(tx):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u)
        return out

    split = run(optim.make_optimizer({**cfg, "threshold_adam_b1": 0.0}))
    same = run(optim.make_optimizer({**cfg, "threshold_adam_b1": -1.0}))
    ref = {b1: run(optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.scale(-lr))) for b1 in (0.9, 0.0)}
    for s in range(2):
        np.testing.assert_allclose(split[s]["W_enc"], ref[0.9][s]["W_enc"], rtol=1e-6)
        np.testing.assert_allclose(split[s]["threshold"], ref[0.0][s]["threshold"], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(same[s]["threshold"], ref[0.9][s]["threshold"], rtol=1e-6)
    np.testing.assert_array_equal(split[1]["threshold"], 0.0)  # no gradient, no move
    assert float(jnp.min(jnp.abs(same[1]["threshold"]))) > 0.5 * lr  # momentum carries it on
    # The trainer's optimiser takes the field; validation names it.
    c = config_lib.base_config()
    assert c.threshold_adam_b1 == -1.0
    c.adam_b1, c.threshold_adam_b1 = 0.9, 0.0
    c.lr_warmup_steps, c.project_decoder_grads = 0, False
    tx = step_lib.optimizer(c, archs.get("jumprelu"))
    p = {"threshold": jnp.zeros(3), "b_enc": jnp.zeros(3)}
    state = tx.init(p)
    _, state = tx.update({"threshold": jnp.ones(3), "b_enc": jnp.ones(3)}, state, p)
    u, _ = tx.update({"threshold": jnp.zeros(3), "b_enc": jnp.zeros(3)}, state, p)
    assert float(jnp.max(jnp.abs(u["threshold"]))) == 0.0 and float(jnp.min(jnp.abs(u["b_enc"]))) > 0.0
    c.threshold_adam_b1 = 1.0
    with pytest.raises(config_lib.ConfigError, match="threshold_adam_b1: must be -1"):
        config_lib.validate(c)


def test_threshold_lr_scale_scales_only_the_thresholds_steps():
    """threshold_lr_scale s: each threshold update is s times Adam's (same b1), step for step;
    every other parameter's update is unchanged. Validation names the field."""
    from gemmascope import config as config_lib

    cfg = dict(adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, lr=1e-3, lr_warmup_steps=0, project_decoder_grads=False)
    params = {"W_enc": jnp.zeros((2, 3)), "threshold": jnp.zeros(3)}
    grads = [
        {"W_enc": jnp.full((2, 3), 0.5), "threshold": jnp.array([1.0, -2.0, 0.25])},
        {"W_enc": jnp.full((2, 3), -0.1), "threshold": jnp.array([-1.0, 0.5, 0.0])},
    ]

    def run(scale):
        tx = optim.make_optimizer({**cfg, "threshold_lr_scale": scale})
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u)
        return out

    base, scaled = run(1.0), run(0.25)
    for s in range(2):
        np.testing.assert_allclose(scaled[s]["threshold"], 0.25 * base[s]["threshold"], rtol=1e-6)
        np.testing.assert_array_equal(scaled[s]["W_enc"], base[s]["W_enc"])
    assert float(jnp.min(jnp.abs(base[0]["threshold"]))) > 0.5 * cfg["lr"]  # Adam's step: about lr
    c = config_lib.base_config()
    assert c.threshold_lr_scale == 1.0
    c.threshold_lr_scale = 0.0
    with pytest.raises(config_lib.ConfigError, match="threshold_lr_scale: must be > 0"):
        config_lib.validate(c)
