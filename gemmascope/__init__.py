"""gemmascope: JumpReLU sparse autoencoders (and baselines) on every site of a language model, in JAX.

The public API, in the order a researcher meets it::

    import gemmascope as gs

    lm = gs.load_lm("embedded")                        # LM(cfg, params, tokenizer, name)
    acts = gs.capture(lm, tokens, mask, [(15, "res")], outlier_norm_factor=10.0)
    sae = gs.load_sae("workdirs/demo/saes/res/layer_15/width_4k/jumprelu_quadratic_batch_centred/average_l0_42")
    sae = gs.load_sae("gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium", root="/data/mirror")
    f = gs.encode(sae, x)                              # [..., d_in] -> [..., d_sae], raw units
    x_hat = gs.decode(sae, f)
    gs.train_and_evaluate(gs.get_config("configs/demo.py"), "workdirs/demo")
    gs.evaluate_workdir(config, "workdirs/demo", max_tokens=100_000)

Names resolve lazily (importing ``gemmascope.config`` does not load JAX models). Imports sit at
the top of every module except the optional or heavy third-party ones a function alone needs
(matplotlib, transformers, datasets, pyarrow, safetensors, gguf, huggingface_hub, scipy,
tensorboardX, wandb, tqdm): they are imported where used, so a run that never plots or reads a
Hugging Face checkpoint never pays their start-up. Layout of the
package: ``lm/`` models, sites and loading, ``sae/`` training architectures and ``sae/files/``
exported files, ``data/`` text, sites, sources and the activation store, ``train/`` the sweep
trainer, ``eval/`` metrics and frontier, ``analysis/`` logit lens, enrichment, dashboards and
steering.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute)
_API = {
    "load_lm": ("gemmascope.lm.loading", "load_lm"),
    "LM": ("gemmascope.lm.loading", "LM"),
    "capture": ("gemmascope.data.sites", "capture"),
    "site_rows": ("gemmascope.data.sites", "site_rows"),
    "packed_batches": ("gemmascope.data.sites", "packed_batches"),
    # a folder of any layout, or with root=MIRROR a Gemma Scope 2 release name (sae/files/mirror.py)
    "load_sae": ("gemmascope.sae.files.io", "load_params"),
    "save_sae": ("gemmascope.sae.files.io", "save_params"),
    "load_sae_metadata": ("gemmascope.sae.files.io", "load_metadata"),
    "encode": ("gemmascope.sae.files.model", "encode"),
    "decode": ("gemmascope.sae.files.model", "decode"),
    "reconstruct": ("gemmascope.sae.files.model", "reconstruct"),
    "base_config": ("gemmascope.config", "base_config"),
    "get_config": ("gemmascope.config.files", "load_config_file"),
    # (not "train"/"evaluate": gemmascope.train is a subpackage and would shadow the function)
    "train_and_evaluate": ("gemmascope.train.loop", "train_and_evaluate"),
    "evaluate_workdir": ("gemmascope.eval.evaluate", "evaluate_workdir"),
    "evaluate_saes": ("gemmascope.eval.metrics", "evaluate_saes"),
    "build_dashboard": ("gemmascope.analysis.dashboard", "build_dashboard"),
    "logit_lens": ("gemmascope.analysis.logit_lens", "logit_lens"),
    "steer_text": ("gemmascope.analysis.steering", "steer_text"),
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'gemmascope' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
