"""Loading a checkpoint by Hugging Face hub id through the hub cache (no network here)."""

import huggingface_hub.constants as hub_constants
import numpy as np
import pytest
import torch
import transformers

from gemmascope.lm import loading


def test_hub_id_loads_from_the_hub_cache_and_unknown_ids_explain(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-llama" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (cache / "models--acme--tiny-llama" / "refs").mkdir()
    (cache / "models--acme--tiny-llama" / "refs" / "main").write_text("a" * 40)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(snap, safe_serialization=True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    assert loading.resolve_hub_id("acme/tiny-llama") == str(snap)
    c_hub, p_hub = loading.load_checkpoint("acme/tiny-llama")
    c_dir, p_dir = loading.load_hf_checkpoint(str(snap))
    assert c_hub == c_dir and c_hub.n_layers == 2
    np.testing.assert_array_equal(np.asarray(p_hub["layers"]["q"]), np.asarray(p_dir["layers"]["q"]))

    with pytest.raises(loading.CheckpointError, match="acme/missing.*not in the Hugging Face cache"):
        loading.load_checkpoint("acme/missing")
    assert loading.resolve_hub_id(str(tmp_path)) is None  # an existing local path is not a hub id
    assert loading.resolve_hub_id("not a hub id") is None
