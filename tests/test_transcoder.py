"""JumpReLU transcoder: gradients against hand-derived values (threshold, encoder, the
affine skip, both sparsity losses), the folding identity with two normalisation constants, file
layouts (ours and Gemma Scope 2) in and out with bad input, config validation, the partition
rule, and the sharded step (a 2 x 2 mesh of fake CPU devices, sweep and latents split) against
the single-device one.

Tolerances: gradients rtol 1e-4 (fp32, values of order 1-100); folded codes and outputs within
1e-4 relative to the scale C_out (the SAE folding test's); the sharded step within 1e-5 like
tests/test_sharding.py (``|a - b| / max(1, |b|)``).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gemmascope import config as config_lib
from gemmascope.config.files import config_file_path
from gemmascope.sae import archs, transcoder
from gemmascope.sae.files import export as sae_export
from gemmascope.sae.files import formats
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from gemmascope.sites import component_sites
from gemmascope.train import sharding
from gemmascope.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS, T, LAM = 0.001, 0.1, 0.01

# One latent, d_in = 1, d_out = 2. Row 0: x_in just below the threshold (not fired, inside the
# STE window |pre - t| < eps/2); row 1: far above (fired, outside the window).
X_IN = np.array([[0.0998], [0.7]], np.float32)
Y = np.array([[0.5, -0.3], [0.2, 1.0]], np.float32)
W_DEC = np.array([[1.0, 2.0]], np.float32)


def one_latent(skip=None):
    p = {
        "W_enc": jnp.ones((1, 1)),
        "W_dec": jnp.asarray(W_DEC),
        "b_enc": jnp.zeros((1,)),
        "b_dec": jnp.zeros((2,)),
        "threshold": jnp.asarray([T]),
    }
    if skip is not None:
        p["W_skip"] = jnp.asarray(skip)
    return p


CFG = {"bandwidth": EPS, "threshold_param": "direct"}


@pytest.mark.parametrize("affine", [False, True])
def test_gradients_hand_derived(affine):
    """y_hat = f W_dec (+ x W_skip); d/df ||y - y_hat||^2 = -2 (y - y_hat) . W_dec.

    Row 1 (fired, outside the window): encoder gradient dL/df * x_in; no threshold gradient.
    Row 0 (not fired, inside): f = 0, threshold gradient dL/df * -(t/eps) + lambda * -(1/eps).
    The skip's gradient is -2 (y - y_hat)^T x_in. Every term is a batch mean (1/2).
    """
    skip = np.array([[0.5, -1.0]], np.float32) if affine else np.zeros((1, 2), np.float32)
    tc = transcoder.Transcoder(2, affine)
    xy = jnp.asarray(np.concatenate([X_IN, Y], 1))
    grads, aux = jax.grad(tc.loss, has_aux=True)(one_latent(skip if affine else None), xy, CFG, LAM)
    f = np.array([[0.0], [0.7]])
    y_hat = f @ W_DEC + X_IN @ skip
    g_f = (-2 * (Y - y_hat) @ W_DEC.T)[:, 0]  # dL/df per row (before the 1/B)
    np.testing.assert_allclose(grads["W_enc"], [[g_f[1] * 0.7 / 2]], rtol=1e-4)
    np.testing.assert_allclose(grads["b_enc"], [g_f[1] / 2], rtol=1e-4)
    np.testing.assert_allclose(grads["threshold"], [(g_f[0] * -(T / EPS) + LAM * -(1 / EPS)) / 2], rtol=1e-4)
    if affine:
        np.testing.assert_allclose(grads["W_skip"], X_IN.T @ (-2 * (Y - y_hat)) / 2, rtol=1e-4)
    else:
        assert "W_skip" not in grads
    # Worked numbers (no skip): g_f = (0.2, 2.6) -> dW_enc 0.91, dthreshold (0.2*-100 - 10)/2 = -15.
    if not affine:
        np.testing.assert_allclose([grads["W_enc"][0, 0], grads["threshold"][0]], [0.91, -15.0], rtol=1e-4)
    np.testing.assert_allclose(aux["mse"], np.mean(np.sum((Y - y_hat) ** 2, 1)), rtol=1e-5)
    np.testing.assert_allclose(aux["l0"], 0.5)


def test_quadratic_target_l0_gradient():
    """The Gemma Scope 2 form coef * mean_i (2/T*) (L0_i - T*)^2: row 0 (L0 = 0, inside the
    window) adds coef/B * (4/T*) (0 - T*) * -(1/eps) = 4000 coef / B = 20 (B = 2, coef = 0.01) to
    the threshold gradient, beside the reconstruction term of the plain case."""
    tc = transcoder.Transcoder(2)
    xy = jnp.asarray(np.concatenate([X_IN, Y], 1))
    cfg = {**CFG, "sparsity_loss": "quadratic", "quadratic_form": "per_example"}
    target, coef = 3.0, 0.01
    grads, _ = jax.grad(tc.loss, has_aux=True)(one_latent(), xy, cfg, (target, coef))
    recon = 0.2 * -(T / EPS) / 2
    quad = coef / 2 * (4 / target) * (0 - target) * -(1 / EPS)
    np.testing.assert_allclose(grads["threshold"], [recon + quad], rtol=1e-4)
    np.testing.assert_allclose(quad, 20.0)


def test_init_and_unit_norm_recipe():
    cfg = config_lib.base_config()
    tc = transcoder.Transcoder(12, True)
    p = tc.init(jax.random.PRNGKey(0), 8, 32, cfg.sae)
    assert p["W_enc"].shape == (8, 32) and p["W_dec"].shape == (32, 12) and p["b_dec"].shape == (12,)
    np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-6)
    assert not np.any(p["W_skip"]) and p["W_skip"].shape == (8, 12)
    sq = transcoder.Transcoder(8).init(jax.random.PRNGKey(0), 8, 32, cfg.sae)
    np.testing.assert_array_equal(sq["W_enc"], sq["W_dec"].T)  # d_in == d_out: tied at init, like the SAE


def _trained(key, d_in=8, d_out=6, d_sae=32):
    k = jax.random.split(key, 6)
    return {
        "W_enc": jax.random.normal(k[0], (d_in, d_sae)) * 0.5,
        "W_dec": jax.random.normal(k[1], (d_sae, d_out)) * 0.5,
        "b_enc": jax.random.normal(k[2], (d_sae,)) * 0.1,
        "b_dec": jax.random.normal(k[3], (d_out,)) * 0.3,
        "threshold": jax.random.uniform(k[4], (d_sae,), minval=0.05, maxval=0.3),
        "W_skip": jax.random.normal(k[5], (d_in, d_out)) * 0.2,
    }


def test_folding_identity_with_two_constants():
    """Exported on raw x_in == C_out * (trained on x_in / C_in): identical active latents, codes
    and outputs scaled by C_out; W_dec rows untouched."""
    trained, c_in, c_out = _trained(jax.random.PRNGKey(1)), 37.5, 4.25
    tc = transcoder.Transcoder(6, True)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (256, 8)) * c_in, np.float32)
    f_train = np.asarray(tc.encode_train(trained, x / c_in, CFG))
    y_train = np.asarray(tc.predict(trained, f_train, x / c_in))
    exported = sae_io.fold_transcoder(trained, c_in, c_out)
    f_exp = np.asarray(sae_model.encode(exported, x))
    y_exp = np.asarray(sae_model.transcode(exported, x))
    np.testing.assert_array_equal(f_exp != 0, f_train != 0)
    assert 0.05 < float(np.mean(f_exp != 0)) < 0.95  # a mix of fired and not
    np.testing.assert_allclose(f_exp, c_out * f_train, rtol=1e-4, atol=1e-4 * c_out)
    np.testing.assert_allclose(y_exp, c_out * y_train, rtol=1e-4, atol=1e-4 * c_out)
    np.testing.assert_array_equal(exported["W_dec"], np.asarray(trained["W_dec"]))


def test_step_normalises_each_part_and_exports_in_raw_units():
    """The step divides x_in by C_in and y by C_out (its loss equals the arch's loss on the
    hand-normalised rows; its FVU is of y only) and export_params folds both constants."""
    c = config_lib.base_config()
    c.batch_size, c.lambdas = 64, (1e-3,)
    tc = archs.for_site(c, "transcoder_affine", 6)
    state = step_lib.init_state(jax.random.PRNGKey(0), c, 8, d_sae=32, n_saes=1, norm_scale=(3.0, 0.5), arch=tc)
    xy = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (64, 14)), np.float32) * np.r_[[3.0] * 8, [0.5] * 6]
    p0 = jax.tree.map(lambda a: a[0], state["params"])
    want, aux = tc.loss(p0, jnp.asarray(xy / np.r_[[3.0] * 8, [0.5] * 6]), c.sae, 0.0)
    _, m = jax.jit(step_lib.make_train_step(c, 10, arch=tc))(state, jnp.asarray(xy), jnp.asarray([1e-3]))
    np.testing.assert_allclose(m["mse"][0], aux["mse"], rtol=1e-5)
    yn = xy[:, 8:] / 0.5
    np.testing.assert_allclose(m["fvu"][0], aux["sq_err_sum"] / np.sum((yn - yn.mean(0)) ** 2), rtol=1e-4)
    ex = step_lib.export_params(state, 0, c, tc)
    np.testing.assert_allclose(ex["W_enc"], np.asarray(p0["W_enc"]) * 0.5 / 3.0, rtol=1e-6)
    assert sorted(ex) == sorted(["W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip"])


def _meta(affine, d_in=8, d_out=6):
    return {
        "architecture": "transcoder",
        "encoder": "jumprelu",
        "site": "transcoder_affine" if affine else "transcoder",
        "input_site": "mlp_in",
        "output_site": "mlp",
        "affine_skip": affine,
        "layer": 3,
        "d_in": d_in,
        "d_out": d_out,
        "d_sae": 32,
        "l0": 11.6,
    }


def _raw(affine, seed=4):
    p = {k: np.asarray(v) for k, v in _trained(jax.random.PRNGKey(seed)).items()}
    return p if affine else {k: v for k, v in p.items() if k != "W_skip"}


@pytest.mark.parametrize("affine", [False, True])
def test_export_round_trips_ours_and_gemma_scope_2(tmp_path, affine):
    params, meta = _raw(affine), _meta(affine)
    src = str(tmp_path / "ours")
    sae_io.save_params(os.path.join(src, "params.npz"), params, meta)
    back = sae_io.load_params(src)
    assert sorted(back) == sorted(params)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    folder = formats.gs2_dir(str(tmp_path / "gs2"), meta["site"], 3, width=32, l0=meta["l0"])
    assert folder.endswith(os.path.join("transcoder_all", "layer_3_width_32_l0_12" + ("_affine" if affine else "")))
    sae_export.export(src, "gemma_scope_2", folder)
    from safetensors.numpy import load_file

    raw = load_file(os.path.join(folder, "params.safetensors"))
    want = ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"] + (["affine_skip_connection"] if affine else [])
    assert sorted(raw) == sorted(want) and raw["w_dec"].shape == (32, 6)
    again = sae_io.load_params(folder)
    for k in params:
        np.testing.assert_array_equal(again[k], params[k])
    assert sae_io.load_metadata(folder)["input_site"] == "mlp_in"
    # A released Gemma Scope 2 transcoder (no metadata.json): the folder name says what it is.
    os.remove(os.path.join(folder, "metadata.json"))
    released = sae_io.load_metadata(folder)
    assert released["architecture"] == "transcoder" and released["site"] == meta["site"]
    assert released["affine_skip"] is affine and released["layer"] == 3
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    np.testing.assert_array_equal(sae_model.transcode(sae_io.load_params(folder), x), sae_model.transcode(params, x))
    # and back to our layout from the released folder
    out = sae_export.export(folder, "gemma_scope", str(tmp_path / "back"))
    assert json.load(open(os.path.join(out, "metadata.json")))["architecture"] == "transcoder"
    with pytest.raises(ValueError, match="transcoder .* has no SAELens export"):
        sae_export.export(src, "sae_lens", str(tmp_path / "sl"))


def test_bad_transcoder_files_name_the_key(tmp_path):
    params, meta = _raw(True), _meta(True)
    for key, bad in (
        ("W_skip", params["W_skip"][:, :3]),
        ("b_dec", params["b_dec"][:4]),
        ("W_dec", params["W_dec"][:5]),
    ):
        with pytest.raises(sae_io.SAEFileError, match=f"key '{key}' has shape"):
            sae_io.save_params(str(tmp_path / "a" / "params.npz"), dict(params, **{key: bad}), meta)
    folder = formats.gs2_dir(str(tmp_path), "transcoder_affine", 3, width=32, l0="small")
    with pytest.raises(sae_io.SAEFileError, match=r"key 'affine_skip_connection' \(W_skip\) has shape \(8, 3\)"):
        formats.save_gemma_scope_2(folder, dict(params, W_skip=params["W_skip"][:, :3]), meta)
    # a released file whose skip disagrees with w_dec: loading names the file's key
    formats._write_safetensors(
        os.path.join(folder, "params.safetensors"),
        {formats.GS2_KEYS[k]: (v[:, :3] if k == "W_skip" else v) for k, v in params.items()},
    )
    with pytest.raises(sae_io.SAEFileError, match=r"params.safetensors: key 'affine_skip_connection' \(W_skip\)"):
        sae_io.load_params(folder)


def _lm_cfg(**over):
    c = config_lib.base_config()
    c.source, c.sites, c.store.sites, c.layers, c.widths = (
        "store",
        ("transcoder", "transcoder_affine"),
        ("transcoder",),
        (3,),
        (64,),
    )
    for k, v in over.items():
        obj = c
        *path, last = k.split(".")
        for p in path:
            obj = obj[p]
        obj[last] = v
    return c


def test_config_accepts_transcoders_and_names_bad_fields():
    config_lib.validate(_lm_cfg())
    config_lib.validate(_lm_cfg(**{"export.layouts": ("gemma_scope", "gemma_scope_2"), "sites": ("mlp", "transcoder")}))
    config_lib.validate(_lm_cfg(source="online", **{"store.sites": ("res",)}))
    config_lib.validate(_lm_cfg(**{"sae.sparsity_loss": "quadratic"}))
    bad = [
        ({"store.sites": ("mlp_in", "mlp")}, "config.store.sites: must include every trained site .* missing"),
        ({"sae.arch": "topk"}, "config.sae.arch: transcoder sites .* set 'jumprelu', not 'topk'"),
        (
            {"export.layouts": ("sae_lens",)},
            "config.export.layouts: transcoder sites .*the sae_lens layout has no transcoder export",
        ),
        (
            {"sae.matryoshka_prefixes": (16, 64)},
            "config.sae.matryoshka_prefixes: transcoder sites .*Matryoshka training is not implemented",
        ),
        ({"sites": ("transcoder_bias",)}, "config.sites: unknown site 'transcoder_bias' .*'transcoder_affine'"),
        ({"source": "toy", "sites": ("transcoder",)}, "config.sites"),
    ]
    for over, msg in bad:
        with pytest.raises(config_lib.ConfigError, match=msg):
            config_lib.validate(_lm_cfg(**over))
    with pytest.raises(ValueError, match="config.sae.arch"):
        archs.for_site(_lm_cfg(**{"sae.arch": "relu"}), "transcoder", 6)


def test_partition_rule_for_transcoder_leaves():
    """W_skip replicated but for K (even when d_out == d_sae); norm_scale [2] replicated."""
    k, d_in, d_sae = 2, 8, 16
    s = jax.ShapeDtypeStruct
    state = {
        "params": {"W_dec": s((k, d_sae, d_sae), np.float32), "W_skip": s((k, d_in, d_sae), np.float32)},
        "norm_scale": s((2,), np.float32),
    }
    specs = sharding.state_specs(state, d_sae, "sharded")
    assert specs["params"]["W_skip"] == P("data", None, None) and specs["params"]["W_dec"] == P("data", "model", None)
    assert specs["norm_scale"] == P(None)


SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, %(repo)r)
import numpy as np, jax, jax.numpy as jnp
from gemmascope import config as config_lib
from gemmascope.sae import archs
from gemmascope.train import sharding, step as step_lib
D_IN, D_OUT, D_SAE, B = 8, 6, 16, 16
def cfg(data, model, sweep):
    c = config_lib.base_config()
    c.sites, c.widths, c.lambdas, c.batch_size = ("toy",), (D_SAE,), (1e-3, 3e-2), B
    c.lr, c.lr_warmup_steps, c.lambda_warmup_steps = 2e-2, 1, 1
    c.mesh.data, c.mesh.model, c.mesh.sweep = data, model, sweep
    return config_lib.validate(c)
rng = np.random.default_rng(0)
xs = [(rng.standard_normal((B, D_IN + D_OUT)) * 3.0).astype(np.float32) for _ in range(2)]
lams = [1e-3, 3e-2]
def init(c):
    return step_lib.init_state(jax.random.PRNGKey(0), c, D_IN, d_sae=D_SAE, n_saes=2, norm_scale=(2.5, 0.5), arch=archs.for_site(c, "transcoder_affine", D_OUT))
def run(data, model, sweep):
    c = cfg(data, model, sweep)
    arch = archs.for_site(c, "transcoder_affine", D_OUT)
    sw = sharding.ShardedSweep(c, sharding.make_mesh(c), jax.eval_shape(lambda: init(c)), D_IN + D_OUT, D_SAE)
    st, fn = sw.init(lambda: init(c)), sw.jit_step(step_lib.make_train_step(c, 5, arch=arch))
    for x in xs:
        st, m = fn(st, sw.put_batch(x), sw.put_values(lams))
    return jax.device_get((st, m))
def maxdiff(a, b):
    d = lambda u, v: float(np.max(np.abs(np.asarray(u, np.float64) - v) / np.maximum(1.0, np.abs(np.asarray(v, np.float64)))))
    return max(jax.tree.leaves(jax.tree.map(d, a, b)))
c1 = cfg(1, 1, "replicated")
st, fn = init(c1), jax.jit(step_lib.make_train_step(c1, 5, arch=archs.for_site(c1, "transcoder_affine", D_OUT)))
for x in xs:
    st, m = fn(st, jnp.asarray(x), jnp.asarray(lams))
ref = jax.device_get((st, m))
out = {f"{d}x{m}/{s}": maxdiff(run(d, m, s), ref) for d, m, s in [(2, 2, "sharded")]}
out["moved"] = maxdiff(ref[0]["params"]["W_skip"], np.zeros((2, D_IN, D_OUT)))
print("RESULT " + json.dumps(out))
"""


def test_sharded_transcoder_step_equals_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT % {"repo": REPO}], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT ") :])
    assert out.pop("moved") > 1e-3  # the skip trained: the comparison is not of untouched zeros
    for mesh, diff in out.items():
        assert diff < 1e-5, (mesh, diff)


def test_demo_config_validates_and_the_repo_file_matches():
    import importlib.util

    from gemmascope.config.experiments import transcoder as tc_config

    spec = importlib.util.spec_from_file_location(
        "cfgfile_transcoder", config_file_path(os.path.join(REPO, "configs", "transcoder.py"))
    )
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    for arg in (None, "runlocal=True"):
        assert m.get_config(arg).to_dict() == tc_config.get_config(arg).to_dict()
        c = config_lib.prepare(tc_config.get_config(arg))
        # the SAEs on the MLP's output train beside the transcoders, for the comparison at matched L0
        assert tuple(c.sites) == ("mlp", "transcoder", "transcoder_affine") and tuple(c.layers) == (15,)
        assert component_sites(c.store.sites) == ("mlp_in", "mlp")
    assert config_lib.prepare(tc_config.get_config("runlocal=True")).widths == (1024,)


def test_quantile_threshold_init_reads_the_input_part():
    """With the quantile init each threshold sits at the (1 - T/d_sae) quantile of its
    pre-activations on the normalised x_in part of the sample (no pre-encoder bias)."""
    c = config_lib.base_config()
    c.sae.threshold_init_mode, c.sae.sparsity_loss, c.target_l0s = "quantile", "quadratic", (4.0,)
    tc = archs.for_site(c, "transcoder", 6)
    xy = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (512, 14)), np.float32)
    sample = step_lib.init_sample(c, xy * 2.0, (2.0, 1.0), 8)  # normalised: x_in / 2, y / 1
    np.testing.assert_allclose(sample, np.concatenate([xy[:, :8], 2 * xy[:, 8:]], 1), rtol=1e-6)
    state = step_lib.init_state(
        jax.random.PRNGKey(0), c, 8, d_sae=32, n_saes=1, norm_scale=(2.0, 1.0), init_sample=sample, arch=tc
    )
    p = jax.tree.map(lambda a: a[0], state["params"])
    pre = xy[:, :8] @ np.asarray(p["W_enc"]) + np.asarray(p["b_enc"])
    np.testing.assert_allclose(p["threshold"], np.maximum(np.quantile(pre, 1 - 4 / 32, axis=0), 1e-6), rtol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_regression_init_starts_from_the_least_squares_map(affine):
    """sae.transcoder_init = "regression" on y = x_in A + c: with (W, b) the ridge least-squares
    map of the normalised sample (NumPy, float64, the same ridge), a plain transcoder starts with
    W_enc = W @ W_dec.T and b_dec = mean(y); an affine one with W_skip = W, b_dec = b and its
    random encoder scaled by 0.1, so that its first prediction is the linear fit (FVU ~ 0)."""
    c = config_lib.base_config()
    assert c.sae.transcoder_init == "regression"  # the default
    tc = archs.for_site(c, "transcoder_affine" if affine else "transcoder", 6)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 8)) + rng.standard_normal(8)
    y = x @ rng.standard_normal((8, 6)) + rng.standard_normal(6)
    xy = np.concatenate([x, y], 1).astype(np.float32)
    sample = step_lib.init_sample(c, xy, (2.0, 1.0), 8)  # normalised: x_in / 2, y / 1
    assert sample is not None  # drawn for the regression init alone (constant thresholds)
    p = jax.tree.map(
        lambda a: np.asarray(a[0], np.float64),
        step_lib.init_state(
            jax.random.PRNGKey(0), c, 8, d_sae=32, n_saes=1, norm_scale=(2.0, 1.0), init_sample=sample, arch=tc
        )["params"],
    )
    xs = x / 2.0
    xc, yc = xs - xs.mean(0), y - y.mean(0)
    gram = xc.T @ xc
    w = np.linalg.solve(gram + transcoder.RIDGE * np.trace(gram) / 8 * np.eye(8), xc.T @ yc)
    c.sae.transcoder_init = "random"
    p0 = jax.tree.map(
        lambda a: np.asarray(a[0]),
        step_lib.init_state(
            jax.random.PRNGKey(0), c, 8, d_sae=32, n_saes=1, norm_scale=(2.0, 1.0), init_sample=sample, arch=tc
        )["params"],
    )
    np.testing.assert_allclose(p["W_dec"], p0["W_dec"], rtol=1e-6)  # the decoder is the random one
    if affine:
        np.testing.assert_allclose(p["W_skip"], w, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(p["b_dec"], y.mean(0) - xs.mean(0) @ w, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(p["W_enc"], 0.1 * p0["W_enc"], rtol=1e-6)
        assert not p0["W_skip"].any()
        fvu = np.sum((y - xs @ p["W_skip"] - p["b_dec"]) ** 2) / np.sum(yc**2)
        assert fvu < 1e-4, fvu  # only the ridge's shrinkage is left
    else:
        np.testing.assert_allclose(p["W_enc"], w @ p["W_dec"].T, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(p["b_dec"], y.mean(0), rtol=1e-5, atol=1e-5)
