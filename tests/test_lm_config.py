"""Gemma 2 presets build with the published shapes, without allocating (jax.eval_shape)."""

import jax
import numpy as np
import pytest

from gemmascope.lm import config as lmc
from gemmascope.lm import model

# Parameter counts of the released checkpoints (tied embedding counted once).
PUBLISHED = {"gemma2_2b": 2_614_341_888, "gemma2_9b": 9_241_705_984, "gemma2_27b": 27_227_128_320}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_have_published_shapes(preset):
    cfg = lmc.PRESETS[preset]()
    shapes = model.param_shapes(cfg)  # ShapeDtypeStructs only
    leaves = jax.tree_util.tree_leaves(shapes)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert sum(int(np.prod(x.shape)) for x in leaves) == PUBLISHED[preset] == lmc.num_params(cfg)
    assert cfg.vocab_size == 256_000 and cfg.rope_theta == 10_000 and cfg.norm_eps == 1e-6
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (50.0, 30.0, 4096)
    assert (cfg.bos_id, cfg.eos_id, cfg.pad_id) == (2, 1, 0) and cfg.tie_embeddings
    assert [cfg.is_sliding(i) for i in range(4)] == [True, False, True, False]


def test_gemma2_2b_table():
    cfg = lmc.gemma2_2b()
    s = model.param_shapes(cfg)
    L = s["layers"]
    assert s["embed"].shape == (256_000, 2304) and "lm_head" not in s
    assert L["q"].shape == (26, 2304, 8 * 256) and L["k"].shape == (26, 2304, 4 * 256)
    assert L["o"].shape == (26, 2048, 2304) and L["gate"].shape == (26, 2304, 9216)
    assert L["down"].shape == (26, 9216, 2304) and L["post_mlp_norm"].shape == (26, 2304)
    assert cfg.query_scale == 256**-0.5
    assert lmc.site_dim(cfg, "att") == 2048 and lmc.site_dim(cfg, "res") == lmc.site_dim(cfg, "mlp") == 2304
    assert lmc.site_dim(lmc.gemma2_9b(), "att") == 4096
    c27 = lmc.gemma2_27b()
    assert (c27.n_heads, c27.head_dim, c27.query_scale) == (32, 128, 144**-0.5)


def test_gemma2_2b_forward_shapes_without_allocation():
    """eval_shape of a 2 x 1024 forward with captures at three sites of the 2B model."""
    cfg = lmc.gemma2_2b()
    tokens = jax.ShapeDtypeStruct((2, 1024), np.int32)
    sites = [(5, "res"), (12, "att"), (25, "mlp")]
    out = jax.eval_shape(lambda p, t: model.forward(p, t, cfg, capture=sites), model.param_shapes(cfg), tokens)
    assert out.logits.shape == (2, 1024, 256_000)
    assert {k: v.shape for k, v in out.captures.items()} == {
        (5, "res"): (2, 1024, 2304),
        (12, "att"): (2, 1024, 2048),
        (25, "mlp"): (2, 1024, 2304),
    }
    part = jax.eval_shape(
        lambda p, t: model.forward(p, t, cfg, capture=[(12, "res")], stop_after=12), model.param_shapes(cfg), tokens
    )
    assert part.logits is None


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="arch"):
        lmc.LMConfig(arch="gpt2")
    with pytest.raises(ValueError, match="n_kv_heads"):
        lmc.gemma2_2b(n_kv_heads=3)
    with pytest.raises(ValueError, match="site"):
        lmc.site_dim(lmc.gemma2_2b(), "resid")
    hash(lmc.gemma2_2b())  # static jit argument
