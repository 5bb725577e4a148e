"""Paired (transcoder) data: the store writes mlp_in and mlp of a layer with one joint outlier
mask, rows aligned, and keeps them aligned through a writer killed mid-run and rerun; the paired
store source shuffles both alike and resumes exactly; bad pairs fail naming both locations; the
online source pairs the same way; and one end-to-end run trains a plain and an affine
transcoder from the store and exports both layouts.

The LM is a tiny random Llama (d_model 16, 2 layers) behind the embedded tokenizer and corpus,
so the alignment check can recompute the MLP: a stored y row must equal
``(silu(x_in W_gate) * (x_in W_up)) W_down`` of the x_in row at the same index, within 1e-5
absolute (fp32; the same function, evaluated in a different fusion). The outlier factor is set
low (1.5) so that the two sites' own masks differ (checked), which only the joint mask survives.
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope import config as config_lib
from gemmascope.data import sites as sites_lib
from gemmascope.data import store as store_lib
from gemmascope.data.sources import make_source
from gemmascope.data.store_source import PairedStoreSource
from gemmascope.lm import loading as lm_loading
from gemmascope.lm import model as lm_model
from tests.tiny import tiny_llama

LAYER = 1


# ----------------------------------------------------------------------------- a hand-made store


def write_store(root, sites, rows_of, metadata, chunk_rows=64, n_batches=6):
    """``sites {name: d}``; ``rows_of(name, batch) -> [n, d]``."""
    for part in ("train", "heldout"):
        w = store_lib.ActivationWriter(os.path.join(root, part), sites, metadata, chunk_rows=chunk_rows)
        for b in range(n_batches):
            w.write_batch(b, {s: rows_of(s, b) for s in sites})
        w.finalize()


def pair_rows(name, b, n=100):
    x = np.random.default_rng(b).standard_normal((n, 4)).astype(np.float32)
    return x if name.startswith("mlp_in") else 2 * x[:, :3] + 1  # y = 2 x[:3] + 1, d_out 3


def store_cfg(root, **over):
    c = config_lib.base_config()
    c.source, c.sites, c.store.sites, c.layers = "store", ("transcoder",), ("transcoder",), (LAYER,)
    c.store.path, c.batch_size, c.store.shuffle_buffer_rows = root, 32, 128
    for k, v in over.items():
        c[k] = v
    return c


PAIRED = {"paired_arrays": [["mlp_in_L1", "mlp_L1"]]}
SITES = {"mlp_in_L1": 4, "mlp_L1": 3}


def test_paired_store_source_aligns_shuffles_and_resumes(tmp_path):
    root = str(tmp_path / "s")
    write_store(root, SITES, pair_rows, PAIRED)
    src = make_source(store_cfg(root), "", "transcoder", layer=LAYER)
    assert isinstance(src, PairedStoreSource) and (src.d_in, src.d_out) == (4, 3)
    batches = [next(src) for _ in range(5)]
    for xy in batches + [src.sample(200), src.heldout(150)]:
        assert xy.shape[1] == 7
        np.testing.assert_array_equal(xy[:, 4:], 2 * xy[:, :3] + 1)
    first = np.concatenate([pair_rows("mlp_in", 0), pair_rows("mlp_in", 1)])[:32]
    assert not np.array_equal(batches[0][:, :4], first)  # shuffled, not in store order
    src2 = make_source(store_cfg(root), "", "transcoder", layer=LAYER)
    for _ in range(3):
        next(src2)
    state = json.loads(json.dumps(src2.get_state()))
    src3 = make_source(store_cfg(root), "", "transcoder_affine", layer=LAYER)
    src3.set_state(state)
    np.testing.assert_array_equal(next(src3), batches[3])
    np.testing.assert_array_equal(next(src3), batches[4])


@pytest.mark.parametrize(
    "sites,rows,meta,message",
    [
        (
            {"mlp_in_L1": 4, "mlp_L2": 3},
            pair_rows,
            {"paired_arrays": [["mlp_in_L1", "mlp_L2"]]},
            r"pair mlp_in_L1 -> mlp_L2 joins layer 1 \(mlp_in_L1\) and layer 2 \(mlp_L2\)",
        ),
        (
            SITES,
            lambda s, b: pair_rows(s, b, 100 if s.startswith("mlp_in") else 90),
            PAIRED,
            "mlp_in_L1 has 600 rows but mlp_L1 has 540",
        ),
        (SITES, pair_rows, {}, "mlp_in_L1 and mlp_L1 were not written as a pair .*regenerate"),
        ({"mlp_in_L1": 4}, pair_rows, {}, r"lacks \['mlp_L1'\] of the transcoder pair mlp_in_L1 -> mlp_L1"),
    ],
)
def test_bad_pairs_fail_naming_both(tmp_path, sites, rows, meta, message):
    root = str(tmp_path / "s")
    write_store(root, sites, rows, meta, n_batches=6)
    out = "mlp_L2" if "mlp_L2" in sites else "mlp_L1"
    with pytest.raises(store_lib.StoreError, match=message):
        PairedStoreSource(store_cfg(root), "", "mlp_in_L1", out_key=out)


# ----------------------------------------------------------------------------- a tiny LM


@pytest.fixture(scope="module")
def tiny_lm():
    tok = lm_loading.load_tokenizer("embedded")
    cfg = tiny_llama(len(tok), 2, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    params = lm_model.init_params(jax.random.PRNGKey(0), cfg, std=0.5)
    return lm_loading.LM(cfg, params, tok, "tiny-random-llama", "embedded")


@pytest.fixture
def use_tiny_lm(tiny_lm, monkeypatch):
    monkeypatch.setattr(lm_loading, "load_lm", lambda *a, **k: tiny_lm)
    return tiny_lm


def mlp(lm, x):
    lp = jax.tree.map(lambda a: a[LAYER], lm.params["layers"])
    x = jnp.asarray(x)
    return np.asarray((jax.nn.silu(x @ lp["gate"]) * (x @ lp["up"])) @ lp["down"])


def lm_cfg(**over):
    c = config_lib.base_config()
    c.source, c.layers, c.widths, c.lambdas = "store", (LAYER,), (32,), (1e-3, 3e-2)
    c.sites, c.store.sites = ("transcoder", "transcoder_affine"), ("transcoder", "res")
    c.lm.context_length, c.lm.batch_sequences, c.lm.outlier_norm_factor = 32, 8, 1.5
    c.store.max_tokens, c.store.heldout_rows, c.store.rows_per_flush = 2400, 300, 256
    c.batch_size, c.num_tokens, c.norm_sample_rows, c.eval_rows = 64, 64 * 12, 512, 256
    c.lr, c.lr_warmup_steps, c.lambda_warmup_steps = 1e-2, 2, 4
    c.log_every, c.checkpoint_every = 6, 6
    c.export.layouts = ("gemma_scope", "gemma_scope_2")
    for k, v in over.items():
        c[k] = v
    return c


def stored(root, key):
    info = store_lib.open_store(root)
    return store_lib.ActivationReader(root, key, 1, 0)._array[: info.sites[key]["n_rows"]].read().result()


@pytest.fixture(scope="module")
def generated(tiny_lm, tmp_path_factory):
    """A store written by a run killed at its 4th train batch and rerun, and a reference run."""
    from gemmascope.data import activations, generate

    mp = pytest.MonkeyPatch()
    mp.setattr(lm_loading, "load_lm", lambda *a, **k: tiny_lm)
    ref = str(tmp_path_factory.mktemp("ref"))
    generate.generate(lm_cfg(), ref, log=lambda *a: None)
    real, calls = activations.LMActivations.activations, {"n": 0}

    def crashing(self, tokens, mask, stats=None):  # unit-test mock: the run dies mid-way
        calls["n"] += 1
        if calls["n"] == 6:  # held-out batch(es) first, then train batches
            raise KeyboardInterrupt("simulated kill")
        return real(self, tokens, mask, stats)

    wd = str(tmp_path_factory.mktemp("crash"))
    mp.setattr(activations.LMActivations, "activations", crashing)
    with pytest.raises(KeyboardInterrupt):
        generate.generate(lm_cfg(), wd, log=lambda *a: None)
    mp.setattr(activations.LMActivations, "activations", real)
    logs = []
    generate.generate(lm_cfg(), wd, log=logs.append)
    yield ref, wd, logs
    mp.undo()


def test_killed_writer_rerun_keeps_pairs_aligned(generated, tiny_lm):
    ref, wd, logs = generated
    assert any("resuming" in line for line in logs), logs
    for part in ("train", "heldout"):
        root = os.path.join(wd, "activations", part)
        info = store_lib.open_store(root)
        meta_in, meta_out = info.sites["mlp_in_L1"], info.sites["mlp_L1"]
        assert meta_in["paired_arrays"] == [["mlp_in_L1", "mlp_L1"]] and meta_in["chunk_rows"] == meta_out["chunk_rows"]
        x, y = stored(root, "mlp_in_L1"), stored(root, "mlp_L1")
        assert len(x) == len(y) > 200
        np.testing.assert_allclose(mlp(tiny_lm, x), y, atol=1e-5, rtol=0)
        # bitwise the rows of an uninterrupted run
        np.testing.assert_array_equal(x, stored(os.path.join(ref, "activations", part), "mlp_in_L1"))
        np.testing.assert_array_equal(y, stored(os.path.join(ref, "activations", part), "mlp_L1"))
    # the joint mask mattered: each site's own mask would have kept a different number of rows
    c = lm_cfg()
    from gemmascope.data.activations import LMActivations

    toks, mask = next(LMActivations(c, [(LAYER, "mlp_in")], log=lambda *a: None).packed_batches("train"))
    own = sites_lib.site_rows(tiny_lm, toks, mask, [(LAYER, "mlp_in"), (LAYER, "mlp")], factor=1.5)
    joint = sites_lib.site_rows(
        tiny_lm,
        toks,
        mask,
        [(LAYER, "mlp_in"), (LAYER, "mlp")],
        factor=1.5,
        groups=[[(LAYER, "mlp_in"), (LAYER, "mlp")]],
    )
    assert len(own["mlp_in_L1"]) != len(own["mlp_L1"])
    n_own = sorted((len(own["mlp_in_L1"]), len(own["mlp_L1"])))
    assert len(joint["mlp_in_L1"]) == len(joint["mlp_L1"]) <= n_own[0] < n_own[1]
    # sites in no pair keep their own mask (a store without pairs is unchanged)
    solo = sites_lib.site_rows(tiny_lm, toks, mask, [(LAYER, "res")], factor=1.5)
    res = sites_lib.site_rows(
        tiny_lm,
        toks,
        mask,
        [(LAYER, "res"), (LAYER, "mlp_in"), (LAYER, "mlp")],
        factor=1.5,
        groups=[[(LAYER, "mlp_in"), (LAYER, "mlp")]],
    )
    np.testing.assert_array_equal(solo["res_L1"], res["res_L1"])


def test_online_source_pairs_the_same_rows(use_tiny_lm):
    c = lm_cfg(source="online")
    src = make_source(c, "", "transcoder", layer=LAYER)
    assert (src.d_in, src.d_out) == (16, 16)
    for xy in (next(src), next(src), src.heldout(100)):
        np.testing.assert_allclose(mlp(use_tiny_lm, xy[:, :16]), xy[:, 16:], atol=1e-5, rtol=0)


def test_trains_and_exports_plain_and_affine_transcoders(generated, use_tiny_lm):
    from gemmascope.sae.files import io as sae_io
    from gemmascope.sae.files import model as sae_model
    from gemmascope.train.loop import train_and_evaluate

    _, wd, _ = generated
    recs = train_and_evaluate(lm_cfg(), wd, log=lambda *a: None)
    assert len(recs) == 4
    for r in recs:
        assert r["architecture"] == "transcoder" and r["encoder"] == "jumprelu"
        assert (r["input_site"], r["output_site"], r["layer"], r["d_in"], r["d_out"], r["d_sae"]) == (
            "mlp_in",
            "mlp",
            1,
            16,
            16,
            32,
        )
        assert r["affine_skip"] is (r["site"] == "transcoder_affine")
        assert r["normalisation_constant_in"] > 0 and r["normalisation_constant_out"] > 0
        assert np.isfinite(r["fvu"]) and r["l0"] > 0 and r["model"] == "tiny-random-llama"
        folder = os.path.dirname(r["path"])
        assert folder.startswith(os.path.join(wd, "saes", r["site"], "layer_1", "width_32", "average_l0_"))
        p = sae_io.load_params(folder)
        assert ("W_skip" in p) is r["affine_skip"]
        # the recorded FVU is the exported file's on the held-out pairs
        src = make_source(lm_cfg(), wd, r["site"], layer=LAYER)
        xy = src.heldout(256)
        y_hat = np.asarray(sae_model.transcode(p, xy[:, :16]))
        y = xy[:, 16:]
        np.testing.assert_allclose(np.sum((y - y_hat) ** 2) / np.sum((y - y.mean(0)) ** 2), r["fvu"], rtol=1e-4)
    gs2 = sorted(os.path.relpath(p, wd) for p in glob.glob(os.path.join(wd, "saes_gemma_scope_2", "*", "*")))
    assert len(gs2) == 4 and all(
        p.startswith(os.path.join("saes_gemma_scope_2", "transcoder_all", "layer_1_width_32_l0_")) for p in gs2
    )
    assert sum("_affine" in p for p in gs2) == 2  # (a second SAE on the same rounded L0: "_sae1")
    again = train_and_evaluate(lm_cfg(), wd, log=lambda *a: None)  # finished locations are skipped
    assert [r["path"] for r in again] == [r["path"] for r in recs]
    # Killed after its step-6 checkpoint (the later one and the export removed): the rerun resumes
    # the state (C_in, C_out) and the paired stream, and exports the same parameters bit for bit.
    import shutil

    run = os.path.join(wd, "runs", "transcoder_affine_layer1_width32")
    before = {r["path"]: sae_io.load_params(os.path.dirname(r["path"])) for r in recs if r["affine_skip"]}
    shutil.rmtree(os.path.join(run, "checkpoints", "12"))
    os.remove(os.path.join(run, "exported.json"))
    shutil.rmtree(os.path.join(wd, "saes", "transcoder_affine"))
    logs = []
    resumed = train_and_evaluate(lm_cfg(), wd, log=logs.append)
    assert any("resumed from step 6" in line for line in logs), logs
    for r in resumed:
        if r["affine_skip"]:
            got = sae_io.load_params(os.path.dirname(r["path"]))
            for k, v in before[r["path"]].items():
                np.testing.assert_array_equal(got[k], v, err_msg=k)
