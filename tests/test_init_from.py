"""Fine-tuning from an exported SAE (``config.init_from``, gemmascope/train/init_from.py): the step-0
model on normalised rows equals the file's forward on raw rows (every layout we read, JumpReLU
and TopK, with and without per-dimension scales); bad files fail before compute, naming the field,
the folder and both shapes; a killed fine-tune resumes bitwise from its checkpoint.

Tolerances: step 0 equals the file within float32 rounding of the fold and its inverse, ``1e-5``
of the largest value (codes and reconstructions; matmuls over d_in = 16 in float32), the same
latents firing; the resumed run equals the uninterrupted one bit for bit.
"""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.config.experiments import toy
from gemmascope.data.toy import ToySource
from gemmascope.sae import archs
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.files import export as sae_export
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from gemmascope.train import loop
from gemmascope.train import step as step_lib
from gemmascope.train.checkpoint import Checkpoints

QUIET = dict(log=lambda *a, **k: None)


def toy_config(**over):
    """configs/toy.py shrunk: d_in 16, width 64, two lambdas, 60 steps of 256 rows."""
    c = toy.get_config()
    c.widths, c.lambdas = (64,), (0.01, 0.03)
    c.toy.d_in, c.toy.n_features, c.toy.mean_active = 16, 48, 3.0
    c.batch_size, c.num_tokens = 256, 256 * 60
    c.lr_warmup_steps, c.lambda_warmup_steps = 10, 20
    c.norm_sample_rows = c.eval_rows = 2048
    c.log_every, c.checkpoint_every, c.tensorboard = 20, 20, False
    for key, v in over.items():  # sae__arch=... sets c.sae.arch
        *path, last = key.split("__")
        target = c
        for p in path:
            target = target[p]
        target[last] = v
    return c


def other_source(**over):
    """Fine-tuning data: the same toy features, denser and noisier (another normalisation C)."""
    return toy_config(toy__mean_active=6.0, toy__noise_std=0.05, **over)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A JumpReLU toy SAE trained from scratch (the "released" SAE), in our layout, Gemma Scope 2's
    and SAELens's; and a TopK file (random, unit-norm decoder rows) in ours and SAELens's."""
    root = tmp_path_factory.mktemp("released")
    loop.train_and_evaluate(toy_config(), str(root / "base"), **QUIET)
    ours = sorted(glob.glob(str(root / "base" / "saes" / "**" / "params.npz"), recursive=True))
    assert len(ours) == 2
    folders = {"gemma_scope": os.path.dirname(ours[0]), "other": os.path.dirname(ours[1])}
    folders["gemma_scope_2"] = sae_export.export(folders["gemma_scope"], "gemma_scope_2", str(root / "gs2"))
    folders["sae_lens"] = sae_export.export(folders["gemma_scope"], "sae_lens", str(root / "sl"))
    rng = np.random.default_rng(0)
    w_dec = rng.standard_normal((64, 16)).astype(np.float32)
    topk = {
        "W_enc": rng.standard_normal((16, 64)).astype(np.float32),
        "W_dec": w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True),
        "b_enc": 0.1 * rng.standard_normal(64).astype(np.float32),
        "b_dec": rng.standard_normal(16).astype(np.float32),
        "k": np.asarray(8, np.float32),
    }
    meta = {"architecture": "topk", "site": "toy", "layer": 0, "d_in": 16, "d_sae": 64}
    sae_io.save_params(str(root / "topk" / "params.npz"), topk, meta)
    folders["topk"] = str(root / "topk")
    folders["topk_sae_lens"] = sae_export.export(folders["topk"], "sae_lens", str(root / "topk_sl"))
    return folders


def _step0(config, workdir, monkeypatch):
    """Runs train_and_evaluate with no steps (``_run`` returns the state it gets): the step-0
    state, and the records of exporting it."""
    got = {}

    def no_steps(loc, start, state):
        got["state"] = jax.device_get(state)
        return state

    monkeypatch.setattr(loop, "_run", no_steps)
    records = loop.train_and_evaluate(config, workdir, **QUIET)
    return got["state"], records


@pytest.mark.parametrize(
    "layout,arch,dim_scale,sae",
    [
        ("gemma_scope", "jumprelu", 0.0, {}),
        ("gemma_scope_2", "jumprelu", 0.5, {}),
        ("sae_lens", "jumprelu", 0.0, dict(sae__threshold_param="log", sae__pre_encoder_bias=False)),
        ("topk", "topk", 0.0, {}),
        ("topk_sae_lens", "topk", 0.0, {}),
    ],
)
def test_step0_model_on_normalised_rows_is_the_file_on_raw_rows(
    released, layout, arch, dim_scale, sae, tmp_path, monkeypatch
):
    """``sae``: the log threshold parametrisation and no pre-encoder bias change the un-fold too."""
    folder = released[layout]
    over = dict(init_from=(folder,), dim_scale_power=dim_scale, sae__arch=arch, **sae)
    if arch == "topk":
        over.update(sae__topk_ks=(8, 16))
    config = config_lib.prepare(other_source(**over))
    state, records = _step0(config, str(tmp_path / "ft"), monkeypatch)
    file = sae_io.load_params(folder)
    c = float(state["norm_scale"])
    s = np.asarray(state["dim_scale"]) if dim_scale else np.ones(16, np.float32)
    assert (state.get("dim_scale") is not None) == bool(dim_scale)
    train_c = float(np.asarray(sae_io.load_metadata(released["gemma_scope"])["normalisation_constant"]))
    assert abs(c / train_c - 1) > 0.1  # recomputed on the new rows, not the file's
    x = ToySource(16, 48, 6.0, 256, seed=0, noise_std=0.05).heldout(1024)
    xn = np.asarray(step_lib.normalise(x, state["norm_scale"], 16, state.get("dim_scale")))
    cfg = SAEConfig.from_config(config)
    f_file = np.asarray(sae_model.encode(file, x))
    xhat_file = np.asarray(sae_model.decode(file, f_file))
    n = np.linalg.norm(file["W_dec"] / s[None, :], axis=1)  # the decoder-row norms moved into the encoder
    assert int(state["step"]) == 0 and all(np.all(a == 0) for a in jax.tree.leaves(state["opt"]))  # fresh Adam
    for i, k in enumerate(config_lib.sweep_values(config)):
        p = jax.tree.map(lambda a: a[i], state["params"])
        a = archs.get(arch)
        f = np.asarray(a.encode_train(p, xn, cfg, k))
        xhat = np.asarray(a.decode_train(p, f)) * c * s
        if arch == "topk" and k != int(file["k"]):
            assert np.all((f != 0).sum(-1) <= k)  # the same weights, another k
            continue
        np.testing.assert_array_equal(f != 0, f_file != 0)
        np.testing.assert_allclose(
            f * c / (n if arch == "jumprelu" else 1.0), f_file, rtol=0, atol=1e-5 * np.abs(f_file).max()
        )
        np.testing.assert_allclose(xhat, xhat_file, rtol=0, atol=1e-5 * np.abs(xhat_file).max())
    # Exporting the step-0 state folds it back: the same SAE as the file (rescaled per latent where
    # the decoder-row norms moved), on raw rows.
    for r in records:
        got = sae_io.load_params(r["path"])
        assert r["init_from"] == folder and r["tokens_trained"] == config.num_tokens
        if arch == "topk" and r["k"] != int(file["k"]):
            continue
        f_got = np.asarray(sae_model.encode(got, x))
        np.testing.assert_array_equal(f_got != 0, f_file != 0)
        np.testing.assert_allclose(
            np.asarray(sae_model.decode(got, f_got)), xhat_file, rtol=0, atol=1e-5 * np.abs(xhat_file).max()
        )


def _no_compute(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("compute started")

    monkeypatch.setattr(loop, "make_source", fail)
    monkeypatch.setattr(loop.sharding, "make_mesh", fail)


@pytest.mark.parametrize(
    "over,message",
    [
        (dict(widths=(128,)), r"is \[d_in=16, d_sae=64\], but config.widths=\(128,\) .*\[d_in=16, d_sae=128\]"),
        (dict(toy__d_in=24), r"is \[d_in=16, d_sae=64\], but site 'toy' layer 0: SAEs \[d_in=24, d_sae=64\]"),
        (dict(widths=(64, 128)), r"width 128 of config.widths \(SAEs \[d_in, d_sae=128\]\) has no folder"),
        (dict(sae__arch="topk"), r"is a jumprelu SAE \[d_in=16, d_sae=64\]; config.sae.arch='topk'"),
    ],
)
def test_mismatched_file_fails_before_compute_naming_both_shapes(released, over, message, tmp_path, monkeypatch):
    folder = released["gemma_scope"]
    _no_compute(monkeypatch)
    with pytest.raises(config_lib.ConfigError, match=r"config.init_from: .*" + message) as e:
        loop.train_and_evaluate(other_source(init_from=(folder,), **over), str(tmp_path / "w"), **QUIET)
    assert folder in str(e.value) or "width 128" in str(e.value)
    assert not os.path.exists(tmp_path / "w" / "runs")


def test_mismatched_site_and_refused_setups_fail_before_compute(released, tmp_path, monkeypatch):
    _no_compute(monkeypatch)
    wd = str(tmp_path / "w")
    res = str(tmp_path / "res")  # the same SAE, labelled as a residual-stream SAE
    shutil.copytree(released["gemma_scope"], res)
    meta = json.load(open(os.path.join(res, "metadata.json")))
    json.dump({**meta, "site": "res", "layer": 15}, open(os.path.join(res, "metadata.json"), "w"))
    with pytest.raises(
        config_lib.ConfigError, match=r"init_from: .*res is an SAE of site 'res' \[d_in=16, d_sae=64\]; "
    ):
        loop.train_and_evaluate(other_source(init_from=(res,)), wd, **QUIET)
    two = (released["gemma_scope"], released["other"])
    with pytest.raises(config_lib.ConfigError, match="width 64 of config.widths .* has 2 folders"):
        loop.train_and_evaluate(other_source(init_from=two), wd, **QUIET)
    with pytest.raises(
        config_lib.ConfigError, match="config.init_from: fine-tuning starts jumprelu and topk SAEs, not"
    ):
        loop.train_and_evaluate(other_source(init_from=two[:1], sae__arch="gated"), wd, **QUIET)
    with pytest.raises(config_lib.ConfigError, match="config.init_from: .*nowhere: cannot load an SAE"):
        loop.train_and_evaluate(other_source(init_from=(str(tmp_path / "nowhere"),)), wd, **QUIET)
    bent = str(tmp_path / "bent")  # a TopK file whose decoder rows are not unit norm
    p = sae_io.load_params(released["topk"])
    sae_io.save_params(os.path.join(bent, "params.npz"), {**p, "W_dec": 2 * p["W_dec"]}, {"architecture": "topk"})
    with pytest.raises(config_lib.ConfigError, match=r"bent is a TopK SAE .* not unit norm \(norms 2 .. 2\)"):
        loop.train_and_evaluate(other_source(init_from=(bent,), sae__arch="topk"), wd, **QUIET)
    with pytest.raises(config_lib.ConfigError, match="config.init_from: a TopK SAE with per-dimension scales"):
        loop.train_and_evaluate(other_source(init_from=(bent,), sae__arch="topk", dim_std_cap=4.0), wd, **QUIET)
    assert not os.path.exists(os.path.join(wd, "runs"))


def _exports(workdir):
    out = {}
    for r in glob.glob(os.path.join(workdir, "saes", "**", "params.npz"), recursive=True):
        lam = json.load(open(os.path.join(os.path.dirname(r), "metadata.json")))["sparsity_coefficient"]
        out[lam] = dict(np.load(r))
    return out


def test_killed_fine_tune_resumes_bitwise_from_its_checkpoint(released, tmp_path, monkeypatch):
    """The run dies after its step-10 checkpoint; the init folder is then overwritten by another SAE
    of the same shape; the rerun resumes from step 20 (the checkpoint wins over init_from) and
    exports exactly what an uninterrupted fine-tune exports."""
    init = str(tmp_path / "init")
    shutil.copytree(released["gemma_scope"], init)
    config = other_source(init_from=(init,), num_tokens=256 * 24, checkpoint_every=10, log_every=12)
    ref = str(tmp_path / "ref")
    loop.train_and_evaluate(config, ref, **QUIET)
    want = _exports(ref)

    real = ToySource.batch

    def dying(self, index):
        if index == 15:
            raise KeyboardInterrupt("killed")
        return real(self, index)

    wd = str(tmp_path / "ft")
    monkeypatch.setattr(ToySource, "batch", dying)
    save = Checkpoints.save  # saves finish before the kill (a real kill: test_train.py), as a real run's would

    def save_and_wait(self, *a, **k):
        save(self, *a, **k)
        self.wait()

    monkeypatch.setattr(Checkpoints, "save", save_and_wait)
    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(config, wd, **QUIET)
    monkeypatch.setattr(ToySource, "batch", real)
    assert not glob.glob(os.path.join(wd, "saes", "**", "params.npz"), recursive=True)
    shutil.rmtree(init)
    shutil.copytree(released["other"], init)
    logs = []
    loop.train_and_evaluate(config, wd, log=logs.append)
    assert any("resumed from step 10" in line for line in logs), logs
    got = _exports(wd)
    assert sorted(got) == sorted(want)
    for lam in want:
        for k in want[lam]:
            np.testing.assert_array_equal(got[lam][k], want[lam][k], err_msg=f"lambda={lam} {k}")
