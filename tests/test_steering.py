"""Steering: the splice adds alpha * W_dec[i] exactly, alpha = 0 is plain generation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.analysis import steering
from gemmascope.lm import model
from tests.tiny import tiny_llama

CFG = tiny_llama(n_layers=2)


@pytest.fixture(scope="module")
def params():
    p = model.init_params(jax.random.PRNGKey(0), CFG, std=0.5)
    # Norm weights away from 1 so the final norm matters in the oracle below.
    p["final_norm"] = jnp.linspace(0.5, 1.5, CFG.d_model)
    return p


def _sae(d_sae=5, seed=0):
    w = np.random.default_rng(seed).standard_normal((d_sae, CFG.d_model)).astype(np.float32)
    return {"W_dec": w / np.linalg.norm(w, axis=1, keepdims=True)}


def test_alpha_zero_is_plain_greedy_generation(params):
    prompt = [1, 7, 9, 11]
    got = steering.generate(params, CFG, prompt, None, layer=0, site="res", max_new_tokens=6)
    toks = list(prompt)
    for _ in range(6):  # oracle: the unspliced model, argmax at the last position, no padding
        logits = model.forward(params, jnp.asarray([toks], jnp.int32), CFG).logits
        toks.append(int(jnp.argmax(logits[0, -1])))
    assert got == toks[len(prompt) :]


def test_splice_adds_the_decoder_row_exactly(params):
    """At the last layer's residual stream, steered logits = unembed(final_norm(res + alpha d))."""
    sae = _sae()
    vec = steering.steering_vector(sae, 3, 2.5)
    np.testing.assert_allclose(vec, 2.5 * sae["W_dec"][3])
    tokens = jnp.asarray([[1, 5, 6, 7, 8]], jnp.int32)
    last = CFG.n_layers - 1
    got = steering.steered_logits(params, tokens, jnp.asarray(vec), CFG, layer=last, site="res")
    res = model.forward(params, tokens, CFG, capture=[(last, "res")]).captures[(last, "res")]
    h = model.rms_norm(res + vec, params["final_norm"], CFG.norm_eps, plus_one=False)
    want = h @ params["embed"].T
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    plain = model.forward(params, tokens, CFG).logits
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-2  # it really changed something


def test_strong_steering_dominates_the_prediction(params):
    """With a huge alpha at the last layer, every generated token is the top token of the
    decoder direction itself (the residual is swamped by alpha * d)."""
    sae = _sae(seed=3)
    d = sae["W_dec"][1]
    top = int(
        np.argmax(
            np.asarray(model.rms_norm(jnp.asarray(d), params["final_norm"], CFG.norm_eps, False))
            @ np.asarray(params["embed"]).T
        )
    )
    vec = steering.steering_vector(sae, 1, 1e4)
    out = steering.generate(params, CFG, [1, 7, 9], vec, layer=CFG.n_layers - 1, site="res", max_new_tokens=4)
    assert out == [top] * 4


def test_errors_name_the_problem(params):
    with pytest.raises(ValueError, match="latent 9 out of range: the SAE has 5 latents"):
        steering.steering_vector(_sae(), 9, 1.0)
    with pytest.raises(ValueError, match="site 'att' of this model has width 16"):
        steering.generate(params, CFG, [1, 2], np.zeros(7, np.float32), layer=0, site="att", max_new_tokens=1)
    with pytest.raises(ValueError, match="exceeds max_len"):
        steering.generate(params, CFG, [1, 2], None, layer=0, site="res", max_new_tokens=5, max_len=4)
