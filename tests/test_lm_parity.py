"""Parity of gemmascope.lm (JAX) with transformers (PyTorch, CPU, eager attention) on tiny random
Gemma 2, Gemma 3 and Llama models saved as safetensors and read back by our loader.

Tolerance: 1e-4 absolute, fp32, on logits and on every site (res, att, mlp, mlp_in, res_mid) at every
layer.
The Gemma 3 models have T = 12 > sliding window 5, both layer types (distinct RoPE bases, linear
RoPE scaling on the full layers), random q/k norms; one without soft-caps (as released), one with.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # noqa: E402  (test-only dependency: parity with transformers)
import transformers  # noqa: E402

from gemmascope.lm import config as lmc
from gemmascope.lm import loading, model
from gemmascope.lm import loss as lm_loss

ATOL = 1e-4
B, T = 2, 12


def _randomize(m, seed):
    """transformers initialises norms to 0 / 1: randomise every parameter so a wrong norm
    convention (w vs 1 + w), a transposed or permuted matrix cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            std = 0.3 if "norm" in name else 0.15
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _gemma2_hf():
    c = transformers.Gemma2Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=5,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=4.0,
        rope_theta=10000.0,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        attn_implementation="eager",
    )
    # Small caps and window so soft-capping and the sliding-window mask change the result at T=12.
    return c


def _gemma3_hf(softcap: bool):
    return transformers.Gemma3TextConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 3000.0, "factor": 4.0},
        },
        attn_logit_softcapping=3.0 if softcap else None,
        final_logit_softcapping=4.0 if softcap else None,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        attn_implementation="eager",
    )


def _llama_hf():
    return transformers.LlamaConfig(
        vocab_size=89,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=500.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )


KINDS = {  # kind -> (config, model class, seed)
    "gemma2": (_gemma2_hf, transformers.Gemma2ForCausalLM, 1),
    "llama": (_llama_hf, transformers.LlamaForCausalLM, 2),
    "gemma3": (lambda: _gemma3_hf(False), transformers.Gemma3ForCausalLM, 4),
    "gemma3_softcap": (lambda: _gemma3_hf(True), transformers.Gemma3ForCausalLM, 5),
}


def _build(kind, tmp_path_factory):
    torch.manual_seed(0)
    make_cfg, cls, seed = KINDS[kind]
    hf_cfg = make_cfg()
    m = cls(hf_cfg).eval()
    _randomize(m, seed)
    d = tmp_path_factory.mktemp(kind)
    m.save_pretrained(d, safe_serialization=True)
    cfg, params = loading.load_hf_checkpoint(str(d))
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, hf_cfg.vocab_size, size=(B, T)).astype(np.int32)
    return m, cfg, params, tokens


def _reference(m, tokens, arch, zero_mlp_layer=None, scale_mlp_in_layer=None, shift_res_mid=None):
    """(logits, {(layer, site): array}) from transformers with forward hooks; optionally the MLP
    output of one layer zeroed, the MLP input of one layer halved, or ``shift_res_mid = (layer,
    delta [d])`` added to that layer's mid-block residual (through the attention branch's last
    output, which the residual adds: the same as splicing ``res_mid + delta``)."""
    caps, handles = {}, []
    gemma = arch.startswith("gemma")
    for i, layer in enumerate(m.model.layers):
        handles.append(
            layer.self_attn.o_proj.register_forward_pre_hook(
                lambda mod, args, i=i: caps.__setitem__((i, "att"), args[0].detach().numpy().copy())
            )
        )
        if shift_res_mid is not None and shift_res_mid[0] == i:
            # Gemma: residual + post_attention_layernorm(o); Llama: residual + o_proj(a).
            attn_out = layer.post_attention_layernorm if gemma else layer.self_attn.o_proj
            delta = torch.tensor(np.asarray(shift_res_mid[1]), dtype=torch.float32)
            handles.append(attn_out.register_forward_hook(lambda mod, args, out, d=delta: out + d))
        # mlp_in: the pre-MLP norm's output (Gemma: pre_feedforward_layernorm; Llama: its
        # post_attention_layernorm)
        in_mod = layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm
        # res_mid: that norm's input (the residual after the attention add, TL's hook_resid_mid)
        handles.append(
            in_mod.register_forward_pre_hook(
                lambda mod, args, i=i: caps.__setitem__((i, "res_mid"), args[0].detach().numpy().copy())
            )
        )

        def mlp_in_hook(mod, args, out, i=i):
            caps[(i, "mlp_in")] = out.detach().numpy().copy()
            return out * 0.5 if i == scale_mlp_in_layer else None

        handles.append(in_mod.register_forward_hook(mlp_in_hook))
        mlp_mod = layer.post_feedforward_layernorm if gemma else layer.mlp

        def mlp_hook(mod, args, out, i=i):
            caps[(i, "mlp")] = out.detach().numpy().copy()
            if i == zero_mlp_layer:
                return torch.zeros_like(out)
            return None

        handles.append(mlp_mod.register_forward_hook(mlp_hook))
        handles.append(
            layer.register_forward_hook(
                lambda mod, args, out, i=i: caps.__setitem__(
                    (i, "res"), (out[0] if isinstance(out, tuple) else out).detach().numpy().copy()
                )
            )
        )
    try:
        with torch.no_grad():
            logits = m(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    finally:
        for h in handles:
            h.remove()
    return logits, caps


@pytest.fixture(scope="module", params=["gemma2", "llama", "gemma3"])
def setup(request, tmp_path_factory):
    m, cfg, params, tokens = _build(request.param, tmp_path_factory)
    ref_logits, ref_caps = _reference(m, tokens, request.param)
    return request.param, m, cfg, params, tokens, ref_logits, ref_caps


def test_config_read_from_checkpoint(setup):
    arch, m, cfg, *_ = setup
    assert cfg.arch == arch
    if arch == "gemma2":
        assert cfg.query_scale == pytest.approx(24**-0.5)
        assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (3.0, 4.0, 5)
        assert cfg.tie_embeddings and cfg.is_sliding(0) and not cfg.is_sliding(1)
    elif arch == "gemma3":
        assert cfg.query_scale == pytest.approx(24**-0.5) and cfg.qk_norm and cfg.tie_embeddings
        assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (None, None, 5)
        assert [cfg.is_sliding(i) for i in range(4)] == [True, False, True, False]
        assert (cfg.rope(0), cfg.rope(1)) == ((50.0, 1.0), (3000.0, 4.0))
    else:
        assert not cfg.tie_embeddings and cfg.rope_theta == 500.0 and cfg.n_kv_heads == 2


def _check_logits_and_sites(arch, cfg, params, tokens, ref_logits, ref_caps):
    sites = [(l, s) for l in range(cfg.n_layers) for s in lmc.SITES]
    out = model.jit_forward(params, tokens, cfg, capture=sites)
    assert out.logits.shape == (B, T, cfg.vocab_size)
    err = float(np.abs(np.asarray(out.logits) - ref_logits).max())
    assert err < ATOL, f"logits max abs err {err}"
    print(f"\n[{arch}] logits max abs err {err:.2e} (|logits| max {np.abs(ref_logits).max():.2f})")
    worst = 0.0
    for key in sites:
        got = np.asarray(out.captures[key])
        assert got.shape == (B, T, lmc.site_dim(cfg, key[1])), key
        e = float(np.abs(got - ref_caps[key]).max())
        worst = max(worst, e)
        assert e < ATOL, f"{key}: max abs err {e}"
    print(f"[{arch}] sites max abs err {worst:.2e} over {len(sites)} (layer, site) pairs")


def test_logits_and_every_site_match_transformers(setup):
    """Logits and res/att/mlp/mlp_in/res_mid at every layer within 1e-4 (fp32), captured in ONE
    forward pass."""
    arch, m, cfg, params, tokens, ref_logits, ref_caps = setup
    _check_logits_and_sites(arch, cfg, params, tokens, ref_logits, ref_caps)


def test_gemma3_with_soft_caps_matches_transformers(tmp_path_factory, monkeypatch):
    """Gemma 3 with attention and final soft-caps set (the released models set neither).

    transformers 5.x's Gemma 3 stores ``attn_logit_softcapping`` but never passes it to its
    attention function (Gemma 2 does): the reference here passes it the way Gemma 2 does, so the
    cap we apply when a config sets it is checked against transformers' own soft-capped attention.
    """
    import functools

    from transformers.models.gemma3 import modeling_gemma3

    m, cfg, params, tokens = _build("gemma3_softcap", tmp_path_factory)
    assert (cfg.attn_softcap, cfg.final_softcap) == (3.0, 4.0)
    monkeypatch.setattr(
        modeling_gemma3,
        "eager_attention_forward",
        functools.partial(modeling_gemma3.eager_attention_forward, softcap=cfg.attn_softcap),
    )
    ref_logits, ref_caps = _reference(m, tokens, "gemma3")
    _check_logits_and_sites("gemma3_softcap", cfg, params, tokens, ref_logits, ref_caps)
    lg = np.asarray(model.jit_forward(params, tokens, cfg.replace(attn_softcap=None)).logits)
    assert np.abs(lg - ref_logits).max() > 1e-3  # the attention cap is exercised


def test_unrolled_equals_scan_and_stop_after(setup):
    arch, m, cfg, params, tokens, ref_logits, ref_caps = setup
    full = model.forward(params, tokens, cfg, scan_layers=False)
    np.testing.assert_allclose(np.asarray(full.logits), ref_logits, atol=ATOL, rtol=0)
    # Stop after layer 1: no logits, captures as in the full model.
    part = model.jit_forward(params, tokens, cfg, capture=[(1, "res"), (0, "att")], stop_after=1)
    assert part.logits is None and set(part.captures) == {(1, "res"), (0, "att")}
    np.testing.assert_allclose(np.asarray(part.captures[(1, "res")]), ref_caps[(1, "res")], atol=ATOL, rtol=0)
    caps = model.capture_activations(params, tokens, cfg, [(cfg.n_layers - 1, "mlp")])
    np.testing.assert_allclose(
        np.asarray(caps[(cfg.n_layers - 1, "mlp")]), ref_caps[(cfg.n_layers - 1, "mlp")], atol=ATOL, rtol=0
    )
    with pytest.raises(ValueError, match="stop_after"):
        model.forward(params, tokens, cfg, capture=[(2, "res")], stop_after=1)


def test_splice_identity_keeps_loss_and_zero_ablation_matches_hooked_reference(setup):
    arch, m, cfg, params, tokens, ref_logits, ref_caps = setup
    mask = np.ones((B, T), bool)
    mask[:, 0] = False
    clean, ce, _ = lm_loss.lm_loss(params, tokens, mask, cfg)
    ref_loss, _ = lm_loss.next_token_loss(ref_logits, tokens, mask)
    assert abs(float(clean) - float(ref_loss)) < ATOL
    ident = {(l, s): (lambda a: a) for l in range(cfg.n_layers) for s in lmc.SITES}
    spliced, _, _ = lm_loss.lm_loss(params, tokens, mask, cfg, splice=ident)
    assert abs(float(spliced) - float(clean)) < 1e-6, (float(spliced), float(clean))
    # Zero-ablate the MLP output of layer 1 here and in transformers (forward hook): same logits.
    z_logits, _ = _reference(m, tokens, arch, zero_mlp_layer=1)
    out = model.jit_forward(params, tokens, cfg, splice={(1, "mlp"): jnp.zeros_like})
    e = float(np.abs(np.asarray(out.logits) - z_logits).max())
    assert e < ATOL, e
    assert float(np.abs(z_logits - ref_logits).max()) > 1e-2  # the ablation did change something
    # Halve the MLP input of layer 1 (the mlp_in splice): only the MLP reads it, the residual does not.
    h_logits, h_caps = _reference(m, tokens, arch, scale_mlp_in_layer=1)
    out = model.jit_forward(
        params, tokens, cfg, splice={(1, "mlp_in"): lambda a: a * 0.5}, capture=[(1, "mlp_in"), (1, "mlp")]
    )
    np.testing.assert_allclose(np.asarray(out.logits), h_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.captures[(1, "mlp")]), h_caps[(1, "mlp")], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.captures[(1, "mlp_in")]), ref_caps[(1, "mlp_in")], atol=ATOL, rtol=0)
    assert float(np.abs(h_logits - ref_logits).max()) > 1e-3
    # Shift the mid-block residual of layer 1 (the res_mid splice): unlike mlp_in, the residual
    # itself changes, so the MLP reads it and it carries on past the MLP into the later layers.
    delta = np.random.default_rng(5).normal(0.0, 0.5, cfg.d_model).astype(np.float32)
    s_logits, s_caps = _reference(m, tokens, arch, shift_res_mid=(1, delta))
    out = model.jit_forward(
        params, tokens, cfg, splice={(1, "res_mid"): lambda a: a + delta}, capture=[(1, "res_mid"), (1, "res")]
    )
    np.testing.assert_allclose(np.asarray(out.logits), s_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.captures[(1, "res")]), s_caps[(1, "res")], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out.captures[(1, "res_mid")]), ref_caps[(1, "res_mid")], atol=ATOL, rtol=0)
    assert float(np.abs(s_logits - ref_logits).max()) > 1e-3
    # Splicing under jit with traced arguments (how an SAE reconstruction is spliced).
    f = jax.jit(lambda p, s, tok: model.forward(p, tok, cfg, splice={(0, "res"): lambda a: a * s}).logits)
    np.testing.assert_allclose(np.asarray(f(params, jnp.float32(1.0), tokens)), ref_logits, atol=ATOL, rtol=0)


def test_next_token_loss_masks_targets():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 5)), jnp.float32)
    tokens = jnp.array([[0, 1, 2, 3]])
    mask = jnp.array([[False, True, False, True]])
    mean, ce = lm_loss.next_token_loss(logits, tokens, mask)
    lp = jax.nn.log_softmax(logits[0], -1)
    want = -(lp[0, 1] + lp[2, 3]) / 2  # targets at positions 1 and 3 only
    assert ce.shape == (1, 3)
    assert abs(float(mean) - float(want)) < 1e-6


def test_tiny_configs_exercise_each_feature(setup):
    """Guards the parity test itself: turning off a feature the reference uses must break parity,
    so the 1e-4 agreement above really covers it."""
    arch, m, cfg, params, tokens, ref_logits, ref_caps = setup
    variants = {"rope_theta": cfg.replace(rope_theta=cfg.rope_theta * 3)}
    if arch == "gemma3":
        variants.update(
            sliding_window=cfg.replace(sliding_window=None),
            rope_theta_sliding=cfg.replace(rope_theta_sliding=None),
            rope_scale=cfg.replace(rope_scale=1.0),
            qk_norm=cfg.replace(arch="gemma2"),  # Gemma 2 = Gemma 3 without q/k norms
            layer_types=cfg.replace(layer_types=None),  # default pattern: all 4 sliding
            query_scale=cfg.replace(query_pre_attn_scalar=None),
        )
    if arch == "gemma2":
        variants.update(
            sliding_window=cfg.replace(sliding_window=None),
            attn_softcap=cfg.replace(attn_softcap=None),
            final_softcap=cfg.replace(final_softcap=None),
            query_scale=cfg.replace(query_pre_attn_scalar=None),
        )
    for what, c in variants.items():
        lg = np.asarray(model.jit_forward(params, tokens, c).logits)
        assert np.abs(lg - ref_logits).max() > 1e-3, f"{what} does not change the logits"


def test_key_mask_and_no_retrace(setup):
    arch, m, cfg, params, tokens, ref_logits, ref_caps = setup
    # Runs for both architectures: the key mask must not change logits at positions that cannot
    # see the masked keys anyway.
    km = np.ones((B, T), bool)
    km[:, -3:] = False  # right padding: real positions cannot see it anyway (causal)
    out = model.jit_forward(params, tokens, cfg, key_mask=km)
    np.testing.assert_allclose(np.asarray(out.logits)[:, :-3], ref_logits[:, :-3], atol=ATOL, rtol=0)
    km2 = np.ones((B, T), bool)
    km2[:, 2] = False  # hiding a key in the middle changes every later position
    lg2 = np.asarray(model.jit_forward(params, tokens, cfg, key_mask=km2).logits)
    np.testing.assert_allclose(lg2[:, :2], ref_logits[:, :2], atol=ATOL, rtol=0)
    assert (np.abs(lg2[:, 2:] - ref_logits[:, 2:]).max(axis=-1) > 1e-4).all()
    n = model._forward_jit._cache_size()
    model.jit_forward(params, tokens + 1, cfg, key_mask=km2)
    assert model._forward_jit._cache_size() == n  # same shapes and statics: no recompilation
