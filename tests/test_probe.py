"""The diagnosis probe (gemmascope/eval/probe.py): its ``sae`` variant is the evaluator's splice,
and the variants move the SAE's error where they say."""

from __future__ import annotations

import jax
import numpy as np

from gemmascope.eval import metrics
from gemmascope.eval import probe as probe_lib
from gemmascope.lm import model
from gemmascope.lm.model import init_params
from tests.tiny import tiny_batches, tiny_llama

CFG = tiny_llama(n_layers=3)
D = CFG.d_model


def _sae(n=24, seed=3):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.standard_normal((D, n)).astype(np.float32) * 0.3,
        "W_dec": rng.standard_normal((n, D)).astype(np.float32) * 0.3,
        "b_enc": rng.standard_normal(n).astype(np.float32) * 0.1,
        "b_dec": rng.standard_normal(D).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.05, 0.5, n).astype(np.float32),
    }


def test_the_sae_variant_is_the_evaluators_splice_and_the_variants_split_the_error():
    params = init_params(jax.random.PRNGKey(0), CFG, std=0.3)
    batches = tiny_batches(CFG, n=2)
    sae = _sae()
    dims = [0, 5]
    variants = probe_lib.variant_library(dims, D)
    got = probe_lib.probe(
        params,
        CFG,
        batches,
        sae=sae,
        layer=1,
        variants=variants,
        dims=dims,
        outlier_norm_factor=0.0,
        max_tokens=10_000,
        log=lambda s: None,
    )
    want = metrics.evaluate_sae(params, CFG, batches, sae=sae, layer=1, site="res", outlier_norm_factor=0)
    v = got["variants"]
    np.testing.assert_allclose(got["clean_loss"], want["ce_clean"], rtol=1e-5)
    np.testing.assert_allclose(v["sae"]["delta_loss"], want["delta_loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(v["sae"]["kl"], want["kl_div_with_sae"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(v["sae"]["fvu"], want["fvu"], rtol=1e-4)
    # The two halves of the error add up to the whole, and each sits where it says.
    np.testing.assert_allclose(v["error_massive_only"]["fvu"] + v["error_rest_only"]["fvu"], v["sae"]["fvu"], rtol=1e-4)
    np.testing.assert_allclose(v["error_massive_only"]["err_share_massive_dims"], 1.0, atol=1e-6)
    assert v["error_rest_only"]["err_share_massive_dims"] == 0.0
    # Same per-token error norm outside the massive dimensions: same FVU, different placement.
    np.testing.assert_allclose(v["random_rest_same_norm"]["fvu"], v["error_rest_only"]["fvu"], rtol=1e-4)
    # The later-layer report covers every site of the one later layer, and the splice changes it.
    assert set(v["sae"]["later"]) == {f"2_{s}" for s in probe_lib.LATER_SITES}
    assert v["sae"]["later"]["2_res"] > 0 and v["sae"]["scale"][2] > 0
    # Attention of the later layer, per head: the clean sink mass is the model's own pattern's
    # (attention_patterns on the same tokens) over the probed query rows, and the splice moves it.
    att = v["sae"]["attention"][2]
    assert len(att["tv"]) == CFG.n_heads and all(0 < x <= 1 for x in att["tv"])
    want_sink = np.zeros(CFG.n_heads)
    n_rows = 0
    for tokens, mask in batches:
        pat = np.asarray(model.attention_patterns(params, tokens, CFG))[2]  # [B, H, T, T]
        want_sink += np.einsum("bht,bt->h", pat[..., 0], mask.astype(np.float64))
        n_rows += int(mask.sum())
    np.testing.assert_allclose(att["sink_clean"], want_sink / n_rows, rtol=1e-4)
    assert att["sink_spliced"] != att["sink_clean"]


def test_an_exact_reconstruction_costs_nothing_and_massive_dims_are_found():
    params = init_params(jax.random.PRNGKey(0), CFG, std=0.3)
    eye = np.eye(D, dtype=np.float32)
    exact = {  # x = relu(x) - relu(-x): W_enc = [I, -I], W_dec = [I; -I], threshold ~0
        "W_enc": np.concatenate([eye, -eye], axis=1),
        "W_dec": np.concatenate([eye, -eye], axis=0),
        "b_enc": np.zeros(2 * D, np.float32),
        "b_dec": np.zeros(D, np.float32),
        "threshold": np.full(2 * D, 1e-9, np.float32),
    }
    variants = probe_lib.variant_library([1], D)
    got = probe_lib.probe(
        params,
        CFG,
        tiny_batches(CFG, n=1),
        sae=exact,
        layer=1,
        variants={"sae": variants["sae"]},
        dims=[1],
        outlier_norm_factor=0.0,
        max_tokens=100,
    )
    assert abs(got["variants"]["sae"]["delta_loss"]) < 1e-5 and got["variants"]["sae"]["kl"] < 1e-6
    att = got["variants"]["sae"]["attention"][2]  # the same residual stream: the same patterns
    np.testing.assert_allclose(att["tv"], 0.0, atol=1e-5)
    np.testing.assert_allclose(att["sink_spliced"], att["sink_clean"], atol=1e-5)
    rows = np.random.default_rng(0).standard_normal((500, 8))
    rows[:, 3] += 100.0
    rows[:, 6] *= 30.0
    assert probe_lib.massive_dims(rows).tolist() == [3, 6]
