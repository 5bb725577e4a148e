"""Decoder-only language models in JAX (Gemma 2, Gemma 3 text, Llama): sites, splicing, weight loading.

- :mod:`gemmascope.lm.config`: :class:`LMConfig`, Gemma 2 and Gemma 3 presets, :func:`site_dim`.
- :mod:`gemmascope.lm.ops`: RMSNorm, RoPE (one table per layer type), grouped-query attention.
- :mod:`gemmascope.lm.model`: :func:`forward` (capture / stop_after / splice; frozen norms and
  attention for circuit tracing), :func:`attention_patterns`.
- :mod:`gemmascope.lm.loss`: :func:`next_token_loss`, the chunked loss from the last residual, ``lm_loss``.
- :mod:`gemmascope.lm.loading`: Hugging Face safetensors and GGUF loaders, ``load_checkpoint``, and
  ``load_lm``: the :class:`~gemmascope.lm.loading.LM` (config, params, tokenizer, name) in one call.
- :mod:`gemmascope.lm.embedded`: the embedded models (``"embedded"`` = SmolLM2-135M,
  ``"embedded:gemma3-270m"``), found through their pip packages.
- :mod:`gemmascope.lm.tokenizer`: tokenizers, a GGUF's built once and cached.
"""

from gemmascope.lm.config import (  # noqa: F401
    SITES,
    LMConfig,
    gemma2_2b,
    gemma2_9b,
    gemma2_27b,
    gemma3_1b,
    gemma3_4b,
    gemma3_12b,
    gemma3_27b,
    gemma3_270m,
    site_dim,
)
