"""The replacement model (gemmascope.eval.replacement) on a tiny random Llama: its loss equals a
hand-run layer-by-layer reference (each layer's read taken in the replaced forward, its MLP
output overwritten by the CLT's write; 1e-5 relative), a CLT that writes zeros scores exactly the
all-MLPs-zeroed loss, and the codes it counts are the reference's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.data.sites import keep_mask
from gemmascope.eval.replacement import CLTReplacement, TranscoderSet, replacement_scores
from gemmascope.lm import loss as lm_loss
from gemmascope.lm import model as lm_model
from gemmascope.lm.loading import LM
from tests.tiny import tiny_batches, tiny_llama

D_SAE = 24


@pytest.fixture(scope="module")
def lm():
    cfg = tiny_llama(40, 3)
    return LM(cfg, lm_model.init_params(jax.random.PRNGKey(2), cfg, std=0.5), None, "tiny", "none")


def random_clt(n, d, seed=0, affine=True):
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.standard_normal((n, d, D_SAE)).astype(np.float32) * 0.5,
        "b_enc": rng.standard_normal((n, D_SAE)).astype(np.float32) * 0.1,
        "threshold": rng.uniform(0.5, 1.5, (n, D_SAE)).astype(np.float32),
        "W_dec": rng.standard_normal((n, D_SAE, n, d)).astype(np.float32) * 0.1,
        "b_dec": rng.standard_normal((n, d)).astype(np.float32) * 0.1,
    }
    p["W_dec"] *= np.triu(np.ones((n, n), np.float32))[:, None, :, None]
    if affine:
        p["W_skip"] = rng.standard_normal((n, d, d)).astype(np.float32) * 0.1
    return p


def reference(lm, p, layers, tokens, mask, factor):
    """Mean CE and codes per token of the replaced model, one layer at a time."""
    cfg = lm.cfg
    t = jnp.asarray(tokens)
    m = jnp.asarray(mask)
    locs = [(l, s) for l in layers for s in ("res_mid", "mlp")]
    clean = lm_model.forward(lm.params, t, cfg, capture=locs, stop_after=cfg.n_layers - 1).captures
    sel = m
    for loc in locs:
        sel = sel & keep_mask(clean[loc], m, factor)
    h, codes, n_codes = None, [], 0.0
    for layer in range(cfg.n_layers):
        start = {} if layer == 0 else {"start_layer": layer, "h_in": h}
        splice = None
        if layer in layers:
            i = layers.index(layer)
            x = lm_model.forward(lm.params, t, cfg, capture=[(layer, "res_mid")], stop_after=layer, **start).captures[
                (layer, "res_mid")
            ]
            pre = np.asarray(x) @ p["W_enc"][i] + p["b_enc"][i]
            codes.append(np.where(pre > p["threshold"][i], pre, 0.0))
            n_codes += float(np.sum((codes[-1] != 0) & np.asarray(sel)[..., None]))
            y = (
                p["b_dec"][i]
                + sum(codes[j] @ p["W_dec"][j, :, i] for j in range(i + 1))
                + np.asarray(x) @ p["W_skip"][i]
            )
            splice = {(layer, "mlp"): lambda a, y=y: jnp.where(sel[..., None], jnp.asarray(y, a.dtype), a)}
        h = lm_model.forward(
            lm.params, t, cfg, capture=[(layer, "res")], splice=splice, stop_after=layer, **start
        ).captures[(layer, "res")]
    ce = lm_loss.next_token_ce_from_residual(lm.params, h, t, cfg)
    w = np.asarray(mask[:, 1:], np.float32)
    return float(np.sum(np.asarray(ce) * w) / w.sum()), n_codes, float(np.sum(np.asarray(sel)))


def test_replacement_loss_equals_the_layer_by_layer_reference(lm):
    layers = (0, 1, 2)
    p = random_clt(3, lm.cfg.d_model)
    batches = tiny_batches(lm.cfg, n=2, seed=3)
    got = replacement_scores(lm, CLTReplacement(p, layers), batches, outlier_norm_factor=1.3)
    want = [reference(lm, p, list(layers), t, m, 1.3) for t, m in batches]
    n = [float(np.sum(m[:, 1:])) for _, m in batches]
    want_ce = sum(c * k for (c, _, _), k in zip(want, n)) / sum(n)
    np.testing.assert_allclose(got["ce_replaced"], want_ce, rtol=1e-5)
    np.testing.assert_allclose(got["l0_total"], sum(w[1] for w in want) / sum(w[2] for w in want), rtol=1e-6)
    # (on a random LM over random ids the replaced loss may be below the clean one: only KL has a sign)
    assert got["delta_loss"] != 0 and got["kl"] > 0 and 0 < got["l0_total"] < 3 * D_SAE
    assert got["n_tokens"] < sum(float(m.sum()) for _, m in batches)  # the outlier rule kept some out


def test_a_clt_writing_zeros_scores_the_zero_ablation(lm):
    layers = (1, 2)
    p = random_clt(2, lm.cfg.d_model, affine=False)
    p["W_dec"][:] = 0.0
    p["b_dec"][:] = 0.0
    batches = tiny_batches(lm.cfg, n=1, seed=4)
    got = replacement_scores(lm, CLTReplacement(p, layers), batches, outlier_norm_factor=0.0)
    np.testing.assert_allclose(got["ce_replaced"], got["ce_zero"], rtol=1e-6)
    assert got["ce_loss_score"] == pytest.approx(0.0, abs=1e-5)


def test_transcoder_set_reads_mlp_in_layer_by_layer(lm):
    """Per-layer transcoders whose decoder writes exactly zero (b_dec too) also score the zero
    ablation, and their codes are those of mlp_in in the replaced forward."""
    d = lm.cfg.d_model
    rng = np.random.default_rng(5)
    ps = [
        {
            "W_enc": rng.standard_normal((d, D_SAE)).astype(np.float32),
            "b_enc": np.zeros(D_SAE, np.float32),
            "threshold": np.full(D_SAE, 0.5, np.float32),
            "W_dec": np.zeros((D_SAE, d), np.float32),
            "b_dec": np.zeros(d, np.float32),
        }
        for _ in range(2)
    ]
    got = replacement_scores(lm, TranscoderSet(ps, (0, 2)), tiny_batches(lm.cfg, n=1), outlier_norm_factor=0.0)
    np.testing.assert_allclose(got["ce_replaced"], got["ce_zero"], rtol=1e-6)
    assert got["l0_total"] > 0
