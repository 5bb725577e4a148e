"""Cross-layer transcoder files (gemmascope.sae.files.multilayer): Gemma Scope 2's per-layer
layout round trips bit for bit, the NumPy forward matches a loop written from the definition,
and every malformed folder fails naming its file and key. Tiny shapes; NumPy only.
"""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gemmascope.sae.files import multilayer as ml
from gemmascope.sae.files.layouts import SAEFileError

L, D_IN, D_SAE, D_OUT = 3, 5, 7, 4


def rand_clt(seed: int = 0, affine: bool = False, d_out: int = D_OUT) -> dict[str, np.ndarray]:
    """A random CLT whose decoder is causal and whose thresholds let about half the features fire."""
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((L, D_SAE, L, d_out)).astype(np.float32)
    p = {
        "W_enc": rng.standard_normal((L, D_IN, D_SAE)).astype(np.float32),
        "b_enc": rng.standard_normal((L, D_SAE)).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.1, 1.0, (L, D_SAE)).astype(np.float32),
        "W_dec": w_dec * ml.causal_mask(L),
        "b_dec": rng.standard_normal((L, d_out)).astype(np.float32),
    }
    if affine:
        p["W_skip"] = rng.standard_normal((L, D_IN, d_out)).astype(np.float32) * 0.3
    return p


def loop_forward(p, x):
    """The CLT's definition, one token, layer and feature at a time (no einsum, no mask array)."""
    n = x.shape[0]
    f = np.zeros((n, L, D_SAE), np.float64)
    y = np.zeros((n, L, p["b_dec"].shape[-1]), np.float64)
    for t in range(n):
        for l in range(L):
            for s in range(D_SAE):
                pre = sum(float(x[t, l, i]) * float(p["W_enc"][l, i, s]) for i in range(D_IN)) + p["b_enc"][l, s]
                f[t, l, s] = pre if pre > p["threshold"][l, s] else 0.0
        for m in range(L):
            y[t, m] = p["b_dec"][m]
            for l in range(m + 1):
                y[t, m] += f[t, l] @ p["W_dec"][l, :, m].astype(np.float64)
            if "W_skip" in p:
                y[t, m] += x[t, m].astype(np.float64) @ p["W_skip"][m]
    return f, y


@pytest.mark.parametrize("affine", [False, True])
def test_round_trip_bit_exact(tmp_path, affine):
    p = rand_clt(affine=affine, d_out=D_OUT + 2)
    folder = ml.save_gemma_scope_2_clt(str(tmp_path / "clt"), p, metadata={"model": "tiny", "layers": [0, 1, 2]})
    names = sorted(os.listdir(folder))
    assert names == ["config.json"] + [f"params_layer_{i}.safetensors" for i in range(L)]
    raw = load_file(os.path.join(folder, "params_layer_1.safetensors"))
    want = {"w_enc", "b_enc", "threshold", "w_dec", "b_dec"} | ({"affine_skip_connection"} if affine else set())
    assert set(raw) == want and raw["w_dec"].shape == (D_SAE, L, D_OUT + 2)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    assert cfg["n_layers"] == L and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE and cfg["d_out"] == D_OUT + 2
    assert cfg["affine"] is affine and cfg["hook_in"] == "hook_resid_mid" and cfg["hook_out"] == "hook_mlp_out"
    assert cfg["model"] == "tiny" and cfg["layers"] == [0, 1, 2]
    back = ml.load_gemma_scope_2_clt(folder)
    assert sorted(back) == sorted(p)
    for k in p:
        assert back[k].dtype == np.float32 and back[k].tobytes() == p[k].tobytes(), k


def test_load_without_config_infers_layers(tmp_path):
    folder = ml.save_gemma_scope_2_clt(str(tmp_path / "clt"), rand_clt())
    os.remove(os.path.join(folder, "config.json"))
    assert ml.load_gemma_scope_2_clt(folder)["W_enc"].shape == (L, D_IN, D_SAE)


@pytest.mark.parametrize("affine", [False, True])
def test_forward_matches_loop(affine):
    p = rand_clt(seed=1, affine=affine)
    x = np.random.default_rng(2).standard_normal((4, L, D_IN)).astype(np.float32)
    f, y = ml.clt_forward(p, x)
    f_ref, y_ref = loop_forward(p, x)
    assert f.shape == (4, L, D_SAE) and y.shape == (4, L, D_OUT)
    assert 0.1 < np.mean(f > 0) < 0.9  # the thresholds gate: some fire, some do not
    np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_causal_mask():
    """A source layer writes only to itself and later layers: entries before it change nothing in
    the forward, are zeroed on saving, and layer m's output moves only with features of layers <= m."""
    p = rand_clt(seed=3)
    x = np.random.default_rng(4).standard_normal((6, L, D_IN)).astype(np.float32)
    _, y = ml.clt_forward(p, x)
    noisy = dict(p, W_dec=p["W_dec"] + 5.0 * (1 - ml.causal_mask(L)))
    np.testing.assert_array_equal(ml.clt_forward(noisy, x)[1], y)
    assert np.all(ml.causal_mask(L)[:, 0, :, 0] == np.triu(np.ones((L, L))))
    # perturbing layer 2's input moves no earlier layer's output
    x2 = x.copy()
    x2[:, 2] += 3.0
    _, y2 = ml.clt_forward(p, x2)
    np.testing.assert_array_equal(y2[:, :2], y[:, :2])
    assert not np.allclose(y2[:, 2], y[:, 2])


def test_save_zeroes_early_decoder(tmp_path):
    p = rand_clt(seed=5)
    noisy = dict(p, W_dec=p["W_dec"] + 1.0)
    back = ml.load_gemma_scope_2_clt(ml.save_gemma_scope_2_clt(str(tmp_path / "c"), noisy))
    np.testing.assert_array_equal(back["W_dec"], (p["W_dec"] + 1.0) * ml.causal_mask(L))


@pytest.mark.parametrize(
    "key,shape,match",
    [
        ("b_enc", (L, D_SAE + 1), r"key 'b_enc' has shape \(3, 8\), expected \(3, 7\)"),
        ("W_dec", (L, D_SAE, L + 1, D_OUT), r"key 'W_dec' has shape \(3, 7, 4, 4\), expected \(3, 7, 3, 4\)"),
        ("W_skip", (L, D_IN, D_OUT + 1), r"key 'W_skip' has shape \(3, 5, 5\), expected \(3, 5, 4\)"),
        ("W_enc", (D_IN, D_SAE), r"key 'W_enc' must be 3-D"),
    ],
)
def test_save_rejects_bad_shapes_before_writing(tmp_path, key, shape, match):
    p = dict(rand_clt(affine=True), **{key: np.zeros(shape, np.float32)})
    folder = str(tmp_path / "bad")
    with pytest.raises(ValueError, match=match):
        ml.save_gemma_scope_2_clt(folder, p)
    assert not os.path.exists(folder)


def test_save_rejects_missing_key(tmp_path):
    p = rand_clt()
    del p["threshold"]
    with pytest.raises(SAEFileError, match="missing key 'threshold'"):
        ml.save_gemma_scope_2_clt(str(tmp_path / "c"), p)


@pytest.fixture
def saved(tmp_path):
    return ml.save_gemma_scope_2_clt(str(tmp_path / "clt"), rand_clt(affine=True))


def _edit(folder, layer, fn):
    path = ml.layer_file(folder, layer)
    raw = load_file(path)
    fn(raw)
    save_file(raw, path)
    return path


def test_missing_folder(tmp_path):
    with pytest.raises(SAEFileError, match=r"nope: no such folder"):
        ml.load_gemma_scope_2_clt(str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
    with pytest.raises(SAEFileError, match="holds no params_layer_"):
        ml.load_gemma_scope_2_clt(str(tmp_path))


def test_gap_in_layers(saved):
    os.remove(ml.layer_file(saved, 1))
    with pytest.raises(SAEFileError, match=r"missing \['params_layer_1.safetensors'\]"):
        ml.load_gemma_scope_2_clt(saved)
    os.remove(os.path.join(saved, "config.json"))  # inferred from the files: still a gap
    with pytest.raises(SAEFileError, match=r"missing \['params_layer_1.safetensors'\] \(files up to layer 2"):
        ml.load_gemma_scope_2_clt(saved)


def test_layer_count_disagrees_with_config(saved):
    cfg_path = os.path.join(saved, "config.json")
    cfg = json.load(open(cfg_path))
    json.dump(dict(cfg, n_layers=L + 1), open(cfg_path, "w"))
    with pytest.raises(SAEFileError, match=r"missing \['params_layer_3.safetensors'\] \(config.json says n_layers=4"):
        ml.load_gemma_scope_2_clt(saved)
    json.dump(dict(cfg, n_layers=L - 1), open(cfg_path, "w"))
    with pytest.raises(SAEFileError, match=r"n_layers=2 but the folder also holds \['params_layer_2.safetensors'\]"):
        ml.load_gemma_scope_2_clt(saved)


def test_missing_key(saved):
    _edit(saved, 2, lambda raw: raw.pop("b_dec"))
    with pytest.raises(SAEFileError, match=r"params_layer_2.safetensors: missing key 'b_dec'"):
        ml.load_gemma_scope_2_clt(saved)


def test_skip_in_some_layers_only(saved):
    _edit(saved, 1, lambda raw: raw.pop("affine_skip_connection"))
    with pytest.raises(SAEFileError, match=r"params_layer_1.safetensors: lacks key 'affine_skip_connection'"):
        ml.load_gemma_scope_2_clt(saved)


def test_mismatched_shape_across_layers(saved):
    _edit(saved, 2, lambda raw: raw.update(threshold=np.ones(D_SAE + 3, np.float32)))
    with pytest.raises(
        SAEFileError, match=r"params_layer_2.safetensors: key 'threshold' has shape \(10,\), expected \(7,\)"
    ):
        ml.load_gemma_scope_2_clt(saved)


def test_nonzero_decoder_before_layer(saved):
    def poke(raw):
        raw["w_dec"][3, 0, 1] = 0.5

    _edit(saved, 2, poke)
    with pytest.raises(
        SAEFileError, match=r"params_layer_2.safetensors: key 'w_dec' writes to layer 0, before its own layer 2"
    ):
        ml.load_gemma_scope_2_clt(saved)


def test_unreadable_file(saved):
    with open(ml.layer_file(saved, 0), "wb") as fh:
        fh.write(b"not safetensors")
    with pytest.raises(SAEFileError, match=r"params_layer_0.safetensors: not a readable .safetensors file"):
        ml.load_gemma_scope_2_clt(saved)


def test_decoder_of_wrong_rank(saved):
    _edit(saved, 0, lambda raw: raw.update(w_dec=raw["w_dec"][:, 0]))
    with pytest.raises(
        SAEFileError, match=r"params_layer_0.safetensors: key 'w_dec' must be 3-D \[d_sae, L=3, d_out\]"
    ):
        ml.load_gemma_scope_2_clt(saved)
