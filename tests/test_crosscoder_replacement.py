"""A weakly causal crosscoder spliced into the LM (gemmascope.eval.replacement.CrosscoderReplacement):
the residual at each of its layers replaced by its reconstruction, each layer's codes read in the
replaced forward; equal to a hand-run layer-by-layer reference (1e-5 relative) on a tiny random
Llama, and a crosscoder writing zeros scores exactly the residuals' zero ablation."""

import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.data.sites import keep_mask
from gemmascope.eval.replacement import CrosscoderReplacement, replacement_scores
from gemmascope.lm import loss as lm_loss
from gemmascope.lm import model as lm_model
from tests.test_replacement import lm, random_clt  # noqa: F401  (fixture)
from tests.tiny import tiny_batches


def reference(lm, p, layers, tokens, mask, factor):  # noqa: F811
    """Mean CE of the replaced model, one layer at a time: at a crosscoder layer the block output
    is read, encoded, and replaced by the sum of the writes of the layers up to it."""
    cfg = lm.cfg
    t, m = jnp.asarray(tokens), jnp.asarray(mask)
    clean = lm_model.forward(lm.params, t, cfg, capture=[(l, "res") for l in layers]).captures
    sel = m
    for l in layers:
        sel = sel & keep_mask(clean[(l, "res")], m, factor)
    h, codes = None, []
    for layer in range(cfg.n_layers):
        start = {} if layer == 0 else {"start_layer": layer, "h_in": h}
        h = lm_model.forward(lm.params, t, cfg, capture=[(layer, "res")], stop_after=layer, **start).captures[
            (layer, "res")
        ]
        if layer in layers:
            i = layers.index(layer)
            pre = np.asarray(h) @ p["W_enc"][i] + p["b_enc"][i]
            codes.append(np.where(pre > p["threshold"][i], pre, 0.0))
            x_hat = p["b_dec"][i] + sum(codes[j] @ p["W_dec"][j, :, i] for j in range(i + 1))
            h = jnp.where(sel[..., None], jnp.asarray(x_hat, h.dtype), h)
    ce = lm_loss.next_token_ce_from_residual(lm.params, h, t, cfg)
    w = np.asarray(mask[:, 1:], np.float32)
    return float(np.sum(np.asarray(ce) * w) / w.sum())


def test_crosscoder_splice_equals_the_layer_by_layer_reference(lm):  # noqa: F811
    layers = (0, 2)
    p = random_clt(2, lm.cfg.d_model, seed=7, affine=False)
    p["W_enc"] *= 4.0  # the residual's scale, so some codes fire
    batches = tiny_batches(lm.cfg, n=2, seed=3)
    got = replacement_scores(lm, CrosscoderReplacement(p, layers), batches, outlier_norm_factor=1.3)
    want = [reference(lm, p, list(layers), t, m, 1.3) for t, m in batches]
    n = [float(np.sum(m[:, 1:])) for _, m in batches]
    np.testing.assert_allclose(got["ce_replaced"], sum(c * k for c, k in zip(want, n)) / sum(n), rtol=1e-5)
    assert got["kl"] > 0 and got["l0_total"] > 0


def test_a_crosscoder_writing_zeros_scores_the_zero_ablation(lm):  # noqa: F811
    p = random_clt(2, lm.cfg.d_model, affine=False)
    p["W_dec"][:] = 0.0
    p["b_dec"][:] = 0.0
    got = replacement_scores(
        lm, CrosscoderReplacement(p, (1, 2)), tiny_batches(lm.cfg, n=1, seed=4), outlier_norm_factor=0.0
    )
    np.testing.assert_allclose(got["ce_replaced"], got["ce_zero"], rtol=1e-6)
    assert got["ce_loss_score"] == pytest.approx(0.0, abs=1e-5)
