"""configs/gemma_demo.py: the embedded demo on Gemma 3 270M validates as written,
before any compute: four target-L0 JumpReLU SAEs at Gemma Scope 2's 270M targets, four sites stored in
one pass, and the runlocal and late-layer variants. No LM is loaded and nothing trains here."""

import importlib.util
import os

import pytest

from gemmascope import config as config_lib
from gemmascope.config.experiments import demo, gemma_demo
from gemmascope.config.files import config_file_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shim(arg=None):
    spec = importlib.util.spec_from_file_location(
        "gemma_demo_shim", config_file_path(os.path.join(REPO, "configs", "gemma_demo.py"))
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return config_lib.prepare(mod.get_config(arg))


def test_gemma_demo_is_the_demo_on_gemma_with_the_target_l0_recipe():
    c = _shim()
    assert c.lm.checkpoint == "embedded:gemma3-270m" and c.layers == (9,) and c.sites == ("res",)
    assert c.store.sites == ("res", "att", "mlp_in", "mlp") and c.widths[0] >= 4096
    assert (c.sae.arch, c.sae.sparsity_loss, c.sae.threshold_init_mode) == ("jumprelu", "quadratic", "quantile")
    targets = config_lib.sweep_values(c)
    assert config_lib.sweep_field(c) == "target_l0s" and len(targets) == 4
    assert targets == sorted(targets) and targets[0] == 10 and targets[-1] == 60  # Gemma Scope 2's 270M small/big
    d = config_lib.prepare(demo.get_config())
    for field in ("batch_size", "lr", "lr_warmup_steps", "lambda_warmup_steps", "eval_rows", "norm_sample_rows"):
        assert c[field] == d[field], field
    assert (c.lm.context_length, c.lm.batch_sequences, c.text.kind) == (
        d.lm.context_length,
        d.lm.batch_sequences,
        "embedded",
    )


def test_gemma_demo_variants_and_errors():
    small = _shim("runlocal")
    assert small.widths == (1024,) and small.store.max_tokens == 40_000 and small.num_tokens == 120 * small.batch_size
    late = config_lib.prepare(gemma_demo.get_config("layer=13"))
    assert late.layers == (13,) and late.target_l0s == _shim().target_l0s
    assert late.e2e.fraction == 0  # the stage is off unless asked for
    e2e = config_lib.prepare(gemma_demo.get_config("e2e=True"))  # the setting of docs/gemma3.md
    assert (e2e.e2e.fraction, e2e.e2e.kl_coefficient, e2e.e2e.lr_scale, e2e.e2e.kl_reaches) == (0.1, 0.3, 0.3, "all")
    with pytest.raises(config_lib.ConfigError, match="target_l0s"):  # a target above the width fails before compute
        config_lib.prepare(gemma_demo.get_config("width=32"))
    with pytest.raises(config_lib.ConfigError, match="'site'"):
        gemma_demo.get_config("site=att")
