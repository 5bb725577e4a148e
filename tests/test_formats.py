"""SAE file layouts in and out: SAELens (parity with sae_lens 6.54.12 in both directions),
Gemma Scope 2 (params.safetensors), round trips through every layout, and bad input.

Parity tolerance: codes and reconstructions within 1e-5 (absolute and relative), fp32.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sae_lens import SAE
from sae_lens.saes import (
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput

from gemmascope.eval import metrics
from gemmascope.sae.files import export as sae_export
from gemmascope.sae.files import formats
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model

D, N = 8, 24
TOL = dict(rtol=1e-5, atol=1e-5)


def rand_params(arch: str, seed: int = 0, d: int = D, n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.standard_normal((d, n)).astype(np.float32) * 0.5,
        "W_dec": rng.standard_normal((n, d)).astype(np.float32) * 0.5,
        "b_enc": rng.standard_normal(n).astype(np.float32) * 0.2,
        "b_dec": rng.standard_normal(d).astype(np.float32) * 0.3,
    }
    if arch in ("jumprelu", "gated"):
        p["threshold"] = rng.uniform(0.05, 0.6, n).astype(np.float32)
    if arch == "topk":
        p["k"] = np.float32(5)
    return p


def ours(params, x):
    f = np.asarray(sae_model.encode(params, x))
    return f, np.asarray(sae_model.decode(params, f))


def theirs(sae, x):
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(x))
        return f.numpy(), sae.decode(f).numpy()


@pytest.fixture(scope="module")
def x():
    return (np.random.default_rng(9).standard_normal((64, D)) + 0.3).astype(np.float32)


@pytest.mark.parametrize(
    "arch,sae_lens_cls",
    [("jumprelu", "JumpReLUSAE"), ("gated", "JumpReLUSAE"), ("relu", "StandardSAE"), ("topk", "TopKSAE")],
)
def test_sae_lens_loads_our_export_to_the_same_codes(tmp_path, x, arch, sae_lens_cls):
    params = rand_params(arch)
    meta = {"architecture": arch, "site": "res", "layer": 3, "model": "toy"}
    lf = np.log10(np.random.default_rng(1).uniform(1e-4, 1, N)).astype(np.float32)
    out = formats.save_sae_lens(str(tmp_path / "sl"), params, meta, lf)
    sae = SAE.load_from_disk(out)
    assert type(sae).__name__ == sae_lens_cls
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    f, x_hat = ours(params, x)
    tf, tx_hat = theirs(sae, x)
    assert (f != 0).sum() > 0 and (f == 0).sum() > 0  # a test of the gate, not of an all-on/all-off code
    np.testing.assert_allclose(tf, f, **TOL)
    np.testing.assert_allclose(tx_hat, x_hat, **TOL)
    from safetensors.numpy import load_file

    np.testing.assert_array_equal(load_file(os.path.join(out, "sparsity.safetensors"))["sparsity"], lf)
    back = sae_io.load_params(out)  # and our loader reads it back
    for k, v in params.items():
        np.testing.assert_allclose(back[k], v, rtol=0, atol=0, err_msg=k)
    assert sae_io.load_metadata(out)["architecture"] == arch


def test_att_export_uses_hook_z_and_matches_on_per_head_input(tmp_path, x):
    params = rand_params("jumprelu")
    out = formats.save_sae_lens(str(tmp_path / "att"), params, {"architecture": "jumprelu", "site": "att", "layer": 1})
    sae = SAE.load_from_disk(out)
    assert sae.cfg.metadata.hook_name == "blocks.1.attn.hook_z" and sae.cfg.reshape_activations == "hook_z"
    tf, tx_hat = theirs(sae, x.reshape(64, 2, D // 2))  # [B, n_heads, d_head], as TransformerLens gives it
    f, x_hat = ours(params, x)
    np.testing.assert_allclose(tf, f, **TOL)
    np.testing.assert_allclose(tx_hat.reshape(64, D), x_hat, **TOL)
    assert sae_io.load_metadata(out) | {} == {
        "architecture": "jumprelu",
        "d_in": D,
        "d_sae": N,
        "layer": 1,
        "site": "att",
    }


def _train_a_few_steps(sae, steps=3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(64, D) + 0.5
    for step in range(steps):
        coef = {k: getattr(v, "value", v) for k, v in sae.get_coefficients().items()}
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=coef,
                dead_neuron_mask=None,
                n_training_steps=step,
                is_logging_step=False,
            )
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return sae


@pytest.mark.parametrize("kind", ["jumprelu", "topk_rescaled", "standard"])
def test_sae_trained_by_sae_lens_loads_into_our_loader_and_evaluator(tmp_path, x, kind):
    """SAELens trains a few steps (pre-encoder bias on: apply_b_dec_to_input; TopK with decoder-norm
    rescaling) and saves; our loader folds both; our forward and the evaluator's reconstruct give
    SAELens's codes and reconstruction."""
    torch.manual_seed(0)
    sae = {
        "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D, d_sae=N, l0_coefficient=1.0)),
        "topk_rescaled": lambda: TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=D, d_sae=N, k=5, rescale_acts_by_decoder_norm=True)
        ),
        "standard": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=N, l1_coefficient=1.0)),
    }[kind]()
    assert sae.cfg.apply_b_dec_to_input
    sae = _train_a_few_steps(sae)
    sae.cfg.metadata.hook_name = "blocks.4.hook_mlp_out"
    if kind == "jumprelu":  # SAELens clamps thresholds at 0 in training; 0 and below mean plain ReLU there
        with torch.no_grad():
            sae.threshold[:3] = torch.tensor([0.0, 0.0, -0.5])
    folder = str(tmp_path / kind)
    sae.save_inference_model(folder)
    ref = SAE.load_from_disk(folder)
    assert float(ref.b_dec.detach().abs().max()) > 1e-3  # training moved b_dec, so the fold is exercised
    params = sae_io.load_params(folder)
    tf, tx_hat = theirs(ref, x)
    f, x_hat = ours(params, x)
    assert (tf != 0).sum() > 0 and (tf == 0).sum() > 0
    np.testing.assert_allclose(f, tf, **TOL)
    np.testing.assert_allclose(x_hat, tx_hat, **TOL)
    e_hat, e_f = metrics.reconstruct({k: np.asarray(v) for k, v in params.items()}, x)
    np.testing.assert_allclose(np.asarray(e_f), tf, **TOL)
    np.testing.assert_allclose(np.asarray(e_hat), tx_hat, **TOL)
    meta = sae_io.load_metadata(folder)
    assert (meta["site"], meta["layer"], meta["d_sae"]) == ("mlp", 4, N)


def test_gemma_scope_2_round_trip_names_and_dispatch(tmp_path, x):
    params = rand_params("jumprelu")
    folder = formats.gs2_dir(str(tmp_path), "res", 12, width=16384, l0=11.6)
    assert folder.endswith(os.path.join("resid_post", "layer_12_width_16k_l0_12"))
    path = formats.save_gemma_scope_2(folder, params)
    from safetensors.numpy import load_file

    raw = load_file(path)
    assert sorted(raw) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]
    assert raw["w_enc"].shape == (D, N) and raw["w_dec"].shape == (N, D)
    back = sae_io.load_params(folder)  # the loader takes it as it takes params.npz
    assert sorted(back) == sorted(params)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    assert sae_io.load_metadata(folder) == {"site": "res", "layer": 12}
    assert formats.parse_gs2_dir(os.path.join("x", "transcoder_all", "layer_3_width_262k_l0_big_affine")) == {
        "site": "transcoder_affine",
        "layer": 3,
        "width": "262k",
        "l0": "big",
        "affine": True,
    }
    for site, name in (("mlp", "mlp_out"), ("att", "attn_out"), ("mlp_in", "transcoder_all")):
        assert formats.gs2_dir("r", site, 0, width=1 << 20, l0="small") == os.path.join(
            "r", name, "layer_0_width_1m_l0_small"
        )


def test_gemma_scope_2_affine_transcoder_keeps_its_skip_connection(tmp_path):
    params = dict(
        rand_params("jumprelu"),
        W_skip=np.random.default_rng(5).standard_normal((D, D)).astype(np.float32),
    )
    folder = formats.gs2_dir(str(tmp_path), "mlp_in", 2, width=16384, l0="small", affine=True)
    formats.save_gemma_scope_2(folder, params)
    back = sae_io.load_params(folder)
    np.testing.assert_array_equal(back["W_skip"], params["W_skip"])
    bad = dict(params, W_skip=params["W_skip"][:, :3])
    with pytest.raises(
        sae_io.SAEFileError, match=r"'affine_skip_connection' \(W_skip\) has shape \(8, 3\), expected \(8, 8\)"
    ):
        formats.save_gemma_scope_2(str(tmp_path / "bad"), bad)
    with pytest.raises(ValueError, match="transcoder .* has no SAELens export"):
        formats.save_sae_lens(str(tmp_path / "sl"), params, {"architecture": "jumprelu"})


def test_round_trip_through_every_layout(tmp_path, x):
    """params.npz -> Gemma Scope 2 -> SAELens -> params.npz: same params, same codes; and every
    layout from params.npz directly."""
    params = rand_params("jumprelu", seed=3)
    meta = {"architecture": "jumprelu", "site": "mlp", "layer": 2, "d_sae": N, "l0": 7.0}
    sae_io.save_params(str(tmp_path / "a" / "params.npz"), params, meta)
    chain = [str(tmp_path / "a")]
    for i, layout in enumerate(("gemma_scope_2", "sae_lens", "gemma_scope")):
        chain.append(sae_export.export(chain[-1], layout, str(tmp_path / f"step{i}_{layout}")))
        assert formats.layout_of(chain[-1]) == layout
        back = sae_io.load_params(chain[-1])
        for k in params:
            np.testing.assert_allclose(back[k], params[k], rtol=1e-6, atol=1e-7, err_msg=f"{layout} {k}")
        np.testing.assert_allclose(ours(back, x)[1], ours(params, x)[1], **TOL)
    assert sae_io.load_metadata(chain[-1])["site"] == "mlp"
    for arch in ("relu", "topk"):  # the other architectures through SAELens and back
        p = rand_params(arch, seed=4)
        sae_io.save_params(str(tmp_path / arch / "params.npz"), p, {"architecture": arch})
        back = sae_io.load_params(sae_export.export(str(tmp_path / arch), "sae_lens", str(tmp_path / f"{arch}_sl")))
        assert sorted(back) == sorted(p)
        np.testing.assert_allclose(ours(back, x)[1], ours(p, x)[1], **TOL)


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown SAE layout 'saelens'"):
        sae_export.export(str(tmp_path), "saelens", str(tmp_path / "o"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(sae_io.SAEFileError, match="empty: holds neither params.npz, params.safetensors nor cfg.json"):
        sae_io.load_params(str(tmp_path / "empty"))
    with pytest.raises(sae_io.SAEFileError, match="nowhere: no such folder"):
        sae_io.load_params(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "mp")
    (tmp_path / "mp" / "cfg.json").write_text(json.dumps({"architecture": "matching_pursuit", "d_in": 4, "d_sae": 8}))
    with pytest.raises(sae_io.SAEFileError, match="SAELens architecture 'matching_pursuit' is not one we have"):
        sae_io.load_params(str(tmp_path / "mp"))
    os.makedirs(tmp_path / "ln")
    (tmp_path / "ln" / "cfg.json").write_text(
        json.dumps({"architecture": "standard", "normalize_activations": "layer_norm"})
    )
    with pytest.raises(sae_io.SAEFileError, match="normalize_activations='layer_norm' is not supported"):
        sae_io.load_params(str(tmp_path / "ln"))
    with pytest.raises(ValueError, match="architecture 'topk' cannot be written"):
        formats.save_gemma_scope_2(str(tmp_path / "g"), rand_params("topk"), {"architecture": "topk"})
    with pytest.raises(ValueError, match="architecture 'resnet' has no SAELens class"):
        formats.save_sae_lens(str(tmp_path / "r"), rand_params("relu"), {"architecture": "resnet"})
    formats.save_gemma_scope_2(str(tmp_path / "g2"), rand_params("jumprelu"))
    from safetensors.numpy import load_file, save_file

    raw = load_file(str(tmp_path / "g2" / "params.safetensors"))
    save_file(dict(raw, w_gate=raw["w_enc"]), str(tmp_path / "g2" / "params.safetensors"))
    with pytest.raises(sae_io.SAEFileError, match=r"unexpected keys \['w_gate'\]"):
        sae_io.load_params(str(tmp_path / "g2"))


def test_export_cli_and_config_field(tmp_path):
    from gemmascope import config as config_lib

    params = rand_params("jumprelu")
    sae_io.save_params(
        str(tmp_path / "s" / "params.npz"), params, {"architecture": "jumprelu", "site": "res", "layer": 0}
    )
    np.save(tmp_path / "s" / "fire_counts.npy", np.arange(N))
    (tmp_path / "s" / "eval.json").write_text(json.dumps({"n_tokens": 100}))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cli = [sys.executable, "launch/export.py", f"--sae={tmp_path / 's'}", f"--out={tmp_path / 'o'}"]
    r = subprocess.run(cli + ["--layout=sae_lens"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    from safetensors.numpy import load_file

    np.testing.assert_allclose(
        load_file(str(tmp_path / "o" / "sparsity.safetensors"))["sparsity"],
        np.log10(np.arange(N) / 100 + 1e-10),
        rtol=1e-6,
    )
    r = subprocess.run(cli + ["--layout=onnx"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "unknown SAE layout 'onnx'" in r.stderr
    from tests.test_train import tiny_config

    c = tiny_config()
    c.export.layouts = ("gemma_scope", "pickle")
    with pytest.raises(config_lib.ConfigError, match="export.layouts.*unknown layout 'pickle'"):
        config_lib.validate(c)
    c.export.layouts = ("gemma_scope_2",)
    with pytest.raises(config_lib.ConfigError, match=r"export.layouts.*LM sites \(res, mlp, att\), not \('toy',\)"):
        config_lib.validate(c)
    c.sae.arch = "topk"
    with pytest.raises(config_lib.ConfigError, match="export.layouts.*not 'topk'"):
        config_lib.validate(c)


def test_end_of_training_hook_writes_the_configured_layouts(tmp_path, x):
    """export_layouts (called by train.loop.export_location after each params.npz): SAELens under
    saes_sae_lens/<same sub-folders> with the held-out firing frequencies, Gemma Scope 2 under
    saes_gemma_scope_2/<site>/layer_<L>_width_<W>_l0_<N>; and a real toy run with the config field."""
    from gemmascope.train import loop
    from tests.test_train import tiny_config

    work = str(tmp_path / "w")
    folder = sae_io.sae_dir(os.path.join(work, "saes"), "res", 5, width=N, l0=6.6)
    params = rand_params("jumprelu")
    sae_io.save_params(
        os.path.join(folder, "params.npz"),
        params,
        {"architecture": "jumprelu", "site": "res", "layer": 5, "d_sae": N, "l0": 6.6},
    )
    out = sae_export.export_layouts(("gemma_scope", "sae_lens", "gemma_scope_2"), work, folder, heldout=x, log=None)
    assert out == [
        os.path.join(work, "saes_sae_lens", "res", "layer_5", "width_24", "average_l0_7"),
        os.path.join(work, "saes_gemma_scope_2", "resid_post", "layer_5_width_24_l0_7"),
    ]
    from safetensors.numpy import load_file

    freq = (np.asarray(sae_model.encode(params, x)) != 0).mean(0)
    np.testing.assert_allclose(
        load_file(os.path.join(out[0], "sparsity.safetensors"))["sparsity"], np.log10(freq + 1e-10), rtol=1e-6
    )
    for o in out:
        np.testing.assert_allclose(ours(sae_io.load_params(o), x)[1], ours(params, x)[1], **TOL)

    c = tiny_config(num_tokens=64 * 20)
    c.export.layouts = ("gemma_scope", "sae_lens")
    records = loop.train_and_evaluate(c, str(tmp_path / "toy"), log=lambda *a: None)
    for rec in records:
        rel = os.path.relpath(os.path.dirname(rec["path"]), str(tmp_path / "toy" / "saes"))
        sl = SAE.load_from_disk(str(tmp_path / "toy" / "saes_sae_lens" / rel))
        p = sae_io.load_params(rec["path"])
        np.testing.assert_allclose(theirs(sl, x)[1], ours(p, x)[1], **TOL)
