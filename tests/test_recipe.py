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
    return {
        "W_enc": jnp.eye(2),
        "W_dec": jnp.eye(2),
        "b_enc": jnp.zeros(2),
        "b_dec": jnp.zeros(2),
        "threshold": jnp.full((2,), T0),
    }


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
    g = {
        f: jax.grad(jumprelu.loss, has_aux=True)(
            _params(), jnp.asarray(X), _cfg(sparsity_loss="quadratic", quadratic_form=f), (1.0, 0.02)
        )[0]
        for f in ("per_example", "batch")
    }
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
    g_low, _ = jax.grad(jumprelu.loss, has_aux=True)(
        _params(), jnp.asarray(X), _cfg(frequency_penalty=coef, frequency_max=0.6), lam
    )
    np.testing.assert_allclose(g_low["threshold"], [D_RECON, 0.0], rtol=1e-5)


def test_quantile_threshold_init_starts_at_each_target_l0():
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.sae.sparsity_loss, c.sae.threshold_init_mode = "quadratic", "quantile"
    c.target_l0s, c.widths = (4.0, 16.0), (64,)
    x = jax.random.normal(jax.random.PRNGKey(0), (2048, 16)) * 3.0
    sample = step_lib.init_sample(c, np.asarray(x), 3.0)
    state = step_lib.init_state(jax.random.PRNGKey(1), c, 16, d_sae=64, n_saes=2, norm_scale=3.0, init_sample=sample)
    for i, target in enumerate(c.target_l0s):
        p = jax.tree.map(lambda a: a[i], state["params"])
        f = jumprelu.encode_train(p, sample, SAEConfig.from_config(c))
        l0 = float(jnp.mean(jnp.sum(f != 0, axis=-1)))
        assert abs(l0 - target) / target < 0.02, (target, l0)  # quantiles of these very rows
    # The constant init is untouched by a sample.
    c.sae.threshold_init_mode = "constant"
    st = step_lib.init_state(
        jax.random.PRNGKey(1),
        c,
        16,
        d_sae=64,
        n_saes=2,
        norm_scale=3.0,
        init_sample=step_lib.init_sample(c, np.asarray(x), 3.0),
    )
    np.testing.assert_array_equal(st["params"]["threshold"], np.float32(0.001))


def test_b_dec_mean_init_centres_the_encoder_input():
    """sae.b_dec_init = "mean": b_dec starts at the mean of the normalised sample, and the quantile
    thresholds (computed after it) are those of the centred pre-activations, so the first step's
    L0 is still the target on rows whose mean dominates their norm (Gemma's residual stream)."""
    from gemmascope.train import step as step_lib

    c = config_lib.base_config()
    c.sae.sparsity_loss, c.sae.threshold_init_mode, c.sae.b_dec_init = "quadratic", "quantile", "mean"
    c.target_l0s, c.widths = (4.0,), (64,)
    offset = 5.0 * jax.random.normal(jax.random.PRNGKey(2), (16,))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2048, 16)) + offset)
    sample = step_lib.init_sample(c, x, 3.0)
    p = jax.tree.map(
        lambda a: a[0],
        step_lib.init_state(jax.random.PRNGKey(1), c, 16, d_sae=64, n_saes=1, norm_scale=3.0, init_sample=sample)[
            "params"
        ],
    )
    np.testing.assert_allclose(p["b_dec"], x.mean(0) / 3.0, rtol=1e-5, atol=1e-6)
    pre = (x / 3.0 - x.mean(0) / 3.0) @ np.asarray(p["W_enc"]) + np.asarray(p["b_enc"])
    np.testing.assert_allclose(p["threshold"], np.maximum(np.quantile(pre, 1 - 4 / 64, axis=0), 1e-6), rtol=1e-4)
    l0 = float(jnp.mean(jnp.sum(jumprelu.encode_train(p, sample, SAEConfig.from_config(c)) != 0, axis=-1)))
    assert abs(l0 - 4.0) / 4.0 < 0.02, l0
    # "zero" (Gemma Scope) and no other data-dependent start: no sample is even drawn.
    c.sae.b_dec_init, c.sae.threshold_init_mode = "zero", "constant"
    assert step_lib.init_sample(c, x, 3.0) is None


@pytest.mark.parametrize(
    "over,message",
    [
        (
            dict(target_l0s=(40.0, -1.0)),
            "config.target_l0s: every target L0 must be a finite number > 0, got -1.0",
        ),
        (dict(target_l0s=(40.0, 5000.0)), "config.target_l0s: target L0 5000.0 exceeds width 4096"),
        (dict(sae_b_dec_init="median"), "config.sae.b_dec_init: must be one of ('zero', 'mean'), got 'median'"),
        (
            dict(sae_transcoder_init="lstsq"),
            "config.sae.transcoder_init: must be one of ('random', 'regression'), got 'lstsq'",
        ),
        (dict(target_l0s=()), "config.target_l0s: must be a non-empty list"),
        (dict(sae_quadratic_form="mean"), "config.sae.quadratic_form: must be 'per_example' or 'batch'"),
        (dict(sae_arch="topk"), "config.sae.sparsity_loss: applies to arch 'jumprelu' only, not 'topk'"),
        (dict(sae_frequency_max=0.0), "config.sae.frequency_max: must be a fraction of tokens in (0, 1]"),
        (
            dict(sae_threshold_init_mode="quantile", sae_sparsity_loss="l0"),
            "config.sae.threshold_init_l0: must be > 0 (the L0 the quantile init and the revival aim at)",
        ),
    ],
)
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
    # Every architecture names its variant, so a centred Gated SAE is not the plain one's series
    for arch in ("gated", "relu", "topk", "batchtopk"):
        c.sae.arch, c.sae.b_dec_init = arch, "mean"
        assert step_lib.sweep_metadata(c, 0.1 if arch in ("gated", "relu") else 8)["variant"] == f"{arch}_centred"
        c.sae.b_dec_init = "zero"
        assert "variant" not in step_lib.sweep_metadata(c, 8)


def test_every_architecture_satisfies_the_contract():
    for name, m in archs.ARCHS.items():
        assert isinstance(m, Architecture) and m.NAME == name
    with pytest.raises(ValueError, match="config.sae.bogus: not a field of SAEConfig"):
        SAEConfig.from_mapping({"bogus": 1})
    assert SAEConfig.from_config(config_lib.base_config()) == SAEConfig.from_mapping({})


# ----------------------------------------------------------------------------------------------
# BatchTopK, Matryoshka, exact top-k selection


def test_exact_topk_selection_by_bisection_matches_lax_top_k():
    from gemmascope.sae import select
    from gemmascope.sae.files import model as sae_model

    x = jax.random.normal(jax.random.PRNGKey(0), (64, 300)) * 5.0
    x = x.at[3].set(-jnp.abs(x[3]))  # an all-negative row
    for k in (1, 7, 64, 300):
        np.testing.assert_array_equal(select.topk_mask(x, k), sae_model.topk_mask(x, k))
    srt = np.sort(np.asarray(x), axis=-1)
    t = np.asarray(select.topk_threshold(x, 7))[:, 0]
    assert np.all((srt[:, -8] < t) & (t <= srt[:, -7]))  # exactly 7 entries at or above: exact
    # BatchTopK's form: one long non-negative row, bracket from every 16th entry (held or not).
    flat = jax.nn.relu(x).reshape(1, -1)
    for k in (5, 100, 1000, 5000):
        t16 = select.topk_threshold(flat, k, sample_stride=16, margin=0.01 if k == 5000 else 0.1)
        assert int(jnp.sum(flat >= t16)) == k
    keys = select.sortable_keys(jnp.asarray([-3.0, -0.0, 0.0, 1e-30, 2.5]))
    assert np.all(np.diff(np.asarray(keys).astype(np.int64)) > 0)


def _small_params(arch_name, d_in=6, d_sae=16, seed=0):
    arch = archs.get(arch_name)
    p = arch.init(jax.random.PRNGKey(seed), d_in, d_sae, SAEConfig.from_mapping({}))
    rng = np.random.default_rng(seed)
    p["b_enc"] = jnp.asarray(rng.normal(size=d_sae) * 0.1, jnp.float32)
    p["b_dec"] = jnp.asarray(rng.normal(size=d_in) * 0.2, jnp.float32)
    return p


def test_batchtopk_exported_jumprelu_gives_the_training_codes(tmp_path):
    """Training-time batch top-k keeps B k activations; with the running threshold between the
    (B k)-th and (B k + 1)-th activation of this batch, the exported JumpReLU file (raw units,
    through params.npz) gives the same codes, times C."""
    from gemmascope.sae import batchtopk
    from gemmascope.sae.files import io as sae_io
    from gemmascope.sae.files import model as sae_model
    from gemmascope.train import step as step_lib

    c, k, bsz = 2.5, 3, 32
    p = _small_params("batchtopk")
    x = jax.random.normal(jax.random.PRNGKey(1), (bsz, 6)) * c
    cfg = SAEConfig.from_mapping({"arch": "batchtopk"})
    f_train = batchtopk.encode_train(p, x / c, cfg, k)
    assert int(jnp.sum(f_train > 0)) == bsz * k
    acts = np.sort(np.asarray(jax.nn.relu(jumprelu.pre_activations(p, x / c))).ravel())[::-1]
    p["batch_threshold"] = jnp.float32((acts[bsz * k - 1] + acts[bsz * k]) / 2)
    config = config_lib.base_config()
    config.sae.arch, config.sae.topk_ks = "batchtopk", (k,)
    state = {"params": jax.tree.map(lambda a: a[None], p), "norm_scale": jnp.float32(c)}
    exported = step_lib.export_params(state, 0, config)
    path = str(tmp_path / "params.npz")
    sae_io.save_params(path, exported, {"architecture": "batchtopk"})
    back = {kk: jnp.asarray(v) for kk, v in sae_io.load_params(path).items()}
    assert sae_model.arch_of(back) == "jumprelu"
    f_raw = sae_model.encode(back, x)
    np.testing.assert_array_equal(np.asarray(f_raw) != 0, np.asarray(f_train) != 0)
    np.testing.assert_allclose(f_raw, c * np.asarray(f_train), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        sae_model.decode(back, f_raw),
        c * np.asarray(batchtopk.decode_train(p, f_train)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_batchtopk_threshold_is_the_running_mean_of_the_smallest_kept_activation():
    from gemmascope.sae import batchtopk

    cfg = SAEConfig.from_mapping({"arch": "batchtopk", "batchtopk_threshold_lr": 0.25})
    p = {"batch_threshold": jnp.float32(0.0)}
    p = batchtopk.after_update(p, {"batch_tau": jnp.float32(2.0)}, jnp.int32(0), cfg)  # first step: set
    assert float(p["batch_threshold"]) == 2.0
    p = batchtopk.after_update(p, {"batch_tau": jnp.float32(1.0)}, jnp.int32(1), cfg)
    assert float(p["batch_threshold"]) == pytest.approx(2.0 + 0.25 * (1.0 - 2.0))
    # In the loss, tau is the smallest kept activation.
    q = _small_params("batchtopk")
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 6))
    f, _, tau = batchtopk.codes_and_pre(q, x, cfg, 2)
    assert float(tau) == float(jnp.min(jnp.where(f > 0, f, jnp.inf)))


@pytest.mark.parametrize("arch_name", ["jumprelu", "batchtopk"])
def test_matryoshka_loss_is_the_sum_of_prefix_reconstructions(arch_name):
    """Prefixes (4, 10, 16): loss = sum_p mean_b ||x - (f[:, :m_p] @ W_dec[:m_p] + b_dec)||^2 (+ the
    sparsity term, 0 here), computed here from the codes in float64."""
    arch = archs.get(arch_name)
    p = _small_params(arch_name)
    if arch_name == "jumprelu":
        p["threshold"] = jnp.full((16,), 0.05)
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 6))
    prefixes = (4, 10, 16)
    cfg = SAEConfig.from_mapping({"arch": arch_name, "matryoshka_prefixes": prefixes})
    sparsity = 3 if arch_name == "batchtopk" else 0.0
    loss, aux = arch.loss(p, x, cfg, sparsity)
    f = np.asarray(arch.encode_train(p, x, cfg, sparsity), np.float64)
    assert 0 < np.count_nonzero(f[:, :4]) and 0 < np.count_nonzero(f[:, 10:])
    w, b, xs = (
        np.asarray(p["W_dec"], np.float64),
        np.asarray(p["b_dec"], np.float64),
        np.asarray(x, np.float64),
    )
    terms = [np.mean(np.sum((xs - (f[:, :m] @ w[:m] + b)) ** 2, -1)) for m in prefixes]
    np.testing.assert_allclose(float(loss), sum(terms), rtol=1e-5)
    np.testing.assert_allclose(float(aux["mse"]), terms[-1], rtol=1e-5)  # the logged mse is the full one
    plain, _ = arch.loss(p, x, SAEConfig.from_mapping({"arch": arch_name}), sparsity)
    np.testing.assert_allclose(float(plain), terms[-1], rtol=1e-5)


@pytest.mark.parametrize(
    "over,message",
    [
        (
            dict(matryoshka_prefixes=(8, 4, 64)),
            "config.sae.matryoshka_prefixes: prefix sizes must be strictly increasing",
        ),
        (
            dict(matryoshka_prefixes=(8, 32)),
            "config.sae.matryoshka_prefixes: the last prefix must be the width 64",
        ),
        (
            dict(matryoshka_prefixes=(0, 64)),
            "config.sae.matryoshka_prefixes: every prefix size must be a positive integer",
        ),
        (
            dict(matryoshka_prefixes=(8, 64), arch="topk"),
            "config.sae.matryoshka_prefixes: Matryoshka training applies",
        ),
        (dict(arch="batchtopk", topk_ks=(65,)), "config.sae.topk_ks: k=65 exceeds width 64"),
    ],
)
def test_matryoshka_and_batchtopk_config_errors_name_the_field(over, message):
    c = config_lib.base_config()
    c.widths = (64,)
    for k, v in over.items():
        c.sae[k] = v
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "arch_name,prefixes,values",
    [("batchtopk", (), (2, 8)), ("batchtopk", (8, 32), (4,)), ("jumprelu", (8, 32), (4.0, 12.0))],
)
def test_new_variants_train_on_the_toy_and_export(tmp_path, arch_name, prefixes, values):
    """Sweep trainer, checkpoint and export for BatchTopK, Matryoshka BatchTopK and Matryoshka
    JumpReLU with the quadratic loss and quantile init: files load as JumpReLU; BatchTopK's
    held-out L0 follows k; quadratic targets are approached; metadata names the variant."""
    from gemmascope.config.experiments import toy
    from gemmascope.sae.files import io as sae_io

    c = toy.get_config()
    c.sae.arch, c.sae.matryoshka_prefixes, c.widths = arch_name, prefixes, (32,)
    if arch_name == "batchtopk":
        c.sae.topk_ks = values
    else:
        c.sae.sparsity_loss, c.target_l0s, c.sae.threshold_init_mode = "quadratic", values, "quantile"
        c.sae.quadratic_coefficient, c.lambda_warmup_steps = 0.1, 20
    c.num_tokens = 150 * c.batch_size
    c.log_every, c.checkpoint_every = 50, 100
    records = loop_train(c, tmp_path)
    assert len(records) == len(values)
    for r, v in zip(records, values):
        assert sae_io.file_layout(r) == "jumprelu" and r["architecture"] == arch_name
        p = sae_io.load_params(r["path"])
        assert p["threshold"].shape == (32,) and r["fvu"] < 0.6, r
        if arch_name == "batchtopk":
            assert r["k"] == v and 0.5 * v < r["l0"] < 1.5 * v, r
        else:
            assert r["target_l0"] == v and r["sparsity_loss"] == "quadratic" and abs(r["l0"] - v) / v < 0.3, r
        if prefixes:
            assert r["matryoshka_prefixes"] == list(prefixes) and r["variant"].startswith("matryoshka_")
            assert "/matryoshka_" in r["path"]


def loop_train(c, tmp_path):
    from gemmascope.train import loop

    return loop.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)


def test_jumprelu_auxk_gives_a_dead_latent_the_hand_derived_encoder_gradient():
    """Latent 1 (threshold 5, pre-activations 0.05 / 0.7: outside the kernel window) never fires,
    so without AuxK no term reaches its encoder column. With it marked dead, AuxK adds
    ``alpha * mean_i ||e_i - relu(pre_i1) d_1||^2`` (e = x - x_hat held constant, d_1 its decoder
    row), whose gradient on ``W_enc[:, 1]`` is ``alpha / B * sum_i -2 ((e_i - relu(pre_i1) d_1) . d_1) x_i``
    where ``pre_i1 > 0``."""
    params = _params()
    d1 = np.array([0.6, 0.8], np.float32)
    params["W_dec"] = jnp.asarray(np.stack([np.array([1.0, 0.0], np.float32), d1]))
    params["threshold"] = jnp.array([T0, 5.0])
    cfg = _cfg()
    dead = jnp.array([False, True])
    x = jnp.asarray(X)
    (l_base, _), g_base = jax.value_and_grad(jumprelu.loss, has_aux=True)(params, x, cfg, 0.0)
    (l_aux, aux), g_aux = jax.value_and_grad(jumprelu.loss, has_aux=True)(params, x, cfg, 0.0, dead)
    assert float(g_base["W_enc"][0, 1]) == 0.0 and float(g_base["W_enc"][1, 1]) == 0.0
    # by hand: latent 0 fires on row 1 only (0.7 > 0.1; 0.0998 is below), so x_hat = [[0, 0], [0.7, 0]]
    e = X - np.array([[0.0, 0.0], [0.7, 0.0]], np.float32)
    f_aux = np.maximum(X[:, 1], 0.0)  # pre of latent 1 = x_i1 (W_enc = I)
    r = e - f_aux[:, None] * d1[None, :]
    alpha = cfg.auxk_coefficient
    want_loss = alpha * np.mean(np.sum(r**2, axis=-1))
    want_grad = alpha / B * np.sum(-2.0 * (r @ d1)[:, None] * X * (f_aux > 0)[:, None], axis=0)
    np.testing.assert_allclose(float(l_aux - l_base), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_aux["W_enc"][:, 1]), want_grad, rtol=1e-5, atol=1e-8)
    assert np.all(np.abs(want_grad) > 1e-3)  # a real signal, not a rounding residue
    np.testing.assert_allclose(float(aux["sparsity_loss"]), want_loss, rtol=1e-5)  # lambda 0: only AuxK logged


def test_jumprelu_auxk_trains_on_the_toy_under_its_own_variant(tmp_path):
    from gemmascope.config.experiments import toy

    c = toy.get_config()
    c.widths, c.sae.jumprelu_auxk, c.sae.auxk_dead_tokens, c.sae.auxk_k = (32,), True, 20 * c.batch_size, 8
    c.sae.sparsity_loss, c.target_l0s, c.sae.threshold_init_mode = "quadratic", (4.0,), "quantile"
    c.num_tokens, c.log_every, c.checkpoint_every = 100 * c.batch_size, 50, 100
    (r,) = loop_train(c, tmp_path)
    assert r["variant"] == "jumprelu_quadratic_batch_auxk" and "/jumprelu_quadratic_batch_auxk/" in r["path"]
    assert r["fvu"] < 0.6 and np.isfinite(r["l0"]), r
    bad = toy.get_config()
    bad.sae.arch, bad.sae.jumprelu_auxk = "gated", True
    with pytest.raises(config_lib.ConfigError, match="config.sae.jumprelu_auxk: applies to arch 'jumprelu' only"):
        config_lib.validate(bad)
    bad = toy.get_config()
    bad.sae.jumprelu_auxk, bad.sae.auxk_k = True, 0
    with pytest.raises(config_lib.ConfigError, match="config.sae.auxk_k"):
        config_lib.validate(bad)


def test_frontier_config_batch_form_variant_and_budget():
    from gemmascope.config.experiments import frontier

    per, batch = frontier.get_config("arch=jumprelu_quadratic"), frontier.get_config("arch=jumprelu_quadratic_batch")
    assert (per.sae.quadratic_form, batch.sae.quadratic_form) == ("per_example", "batch")
    # The two forms must train into different run and export folders of one workdir.
    assert config_lib.variant_name(per) == "jumprelu_quadratic"
    assert config_lib.variant_name(batch) == "jumprelu_quadratic_batch"
    centred = frontier.get_config("arch=jumprelu_quadratic_batch_centred")
    assert (centred.sae.b_dec_init, batch.sae.b_dec_init) == ("mean", "zero")
    assert config_lib.variant_name(centred) == "jumprelu_quadratic_batch_centred"
    topk_c = frontier.get_config("arch=topk_centred")  # every baseline takes the same centring
    assert (topk_c.sae.b_dec_init, topk_c.sae.topk_ks, config_lib.variant_name(topk_c)) == (
        "mean",
        (16, 32, 64, 128),
        "topk_centred",
    )
    assert batch.target_l0s == per.target_l0s and batch.sae.sparsity_loss == "quadratic"
    one, four = frontier.get_config("arch=topk"), frontier.get_config("arch=topk,budget=4")
    assert four.num_tokens == 4 * one.num_tokens
    assert config_lib.total_steps(four) == 4 * config_lib.total_steps(one)
    assert (four.lr_warmup_steps, four.lambda_warmup_steps) == (one.lr_warmup_steps, one.lambda_warmup_steps)
    with pytest.raises(config_lib.ConfigError, match="budget=0 must be an integer >= 1"):
        frontier.get_config("arch=topk,budget=0")


def test_demo_defaults_to_the_target_l0_recipe_with_gemma_scope_one_arg_away():
    from gemmascope.config.experiments import demo, frontier, gemma_demo, transcoder

    d = config_lib.prepare(demo.get_config())
    assert (d.sae.sparsity_loss, d.sae.quadratic_form, d.sae.threshold_init_mode, d.sae.b_dec_init) == (
        "quadratic",
        "batch",
        "quantile",
        "mean",
    )
    assert (d.sae.quadratic_coefficient, d.adam_b1, config_lib.sweep_field(d)) == (1e-2, 0.9, "target_l0s")
    assert d.sae.l0_controller_rate == 1e-3  # held-out L0 on the target (docs/gemma3.md, "L0 targets")
    assert config_lib.sweep_values(d) == [20.0, 40.0, 80.0, 160.0]
    assert config_lib.variant_name(d) == "jumprelu_quadratic_batch_centred"
    g = config_lib.prepare(demo.get_config("recipe=gemma_scope"))
    assert (g.sae.sparsity_loss, g.sae.threshold_init_mode, g.sae.b_dec_init, g.adam_b1) == (
        "l0",
        "constant",
        "zero",
        0.0,
    )
    assert config_lib.sweep_field(g) == "lambdas" and config_lib.sweep_values(g) == [3e-4, 1e-3, 3e-3, 1e-2]
    # Only the sparsity recipe differs: data, batches, schedule and sizes are the same run.
    for f in ("batch_size", "num_tokens", "lr", "lr_warmup_steps", "lambda_warmup_steps", "widths", "layers"):
        assert d[f] == g[f], f
    # The configs built on the demo keep the recipe they were measured with (Gemma Scope's base).
    assert frontier.get_config("arch=jumprelu").adam_b1 == 0.0 and frontier.get_config("arch=jumprelu").lambdas
    assert frontier.get_config("arch=topk").sae.b_dec_init == "zero"
    assert transcoder.get_config().adam_b1 == 0.0
    # The Gemma demo: the demo's recipe (its L0 controller included) plus per-dimension scaling (docs/gemma3.md).
    gd = config_lib.prepare(gemma_demo.get_config())
    for f in ("adam_b1", "lr", "batch_size"):
        assert gd[f] == d[f], f
    assert (gd.sae.quadratic_form, gd.sae.quadratic_coefficient, gd.dim_scale_power, gd.sae.l0_controller_rate) == (
        "batch",
        1e-2,
        1.0,
        1e-3,
    )
    assert config_lib.variant_name(gd) == "jumprelu_quadratic_batch_centred_dimscale1"
    with pytest.raises(
        config_lib.ConfigError, match=r"recipe='gemmascope' unknown \(known: \['target_l0', 'gemma_scope'\]"
    ):
        demo.get_config("recipe=gemmascope")


def test_eval_rows_name_the_variant_so_the_frontier_keeps_its_series_apart():
    from gemmascope.eval import evaluate

    r = {k: 0.5 for k in ("l0", "fvu", "delta_loss", "ce_clean", "ce_sae", "ce_zero", "dead_fraction")}
    r.update({k: 0.5 for k in evaluate.SAEBENCH_CORE}, n_tokens=4, n_outliers_kept_clean=0, tokens_per_second=1.0)
    r.update(fire_counts=np.array([0, 2]), err_by_position=np.array([1.0]))
    meta = {"architecture": "jumprelu", "site": "res", "layer": 1, "variant": "jumprelu_quadratic_batch"}
    assert evaluate._row("a/params.npz", meta, r, "toy")["architecture"] == "jumprelu_quadratic_batch"
    del meta["variant"]
    assert evaluate._row("b/params.npz", meta, r, "toy")["architecture"] == "jumprelu"
