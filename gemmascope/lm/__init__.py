"""Decoder-only language models in JAX (Gemma 2, Llama): sites, splicing, weight loading.

- :mod:`gemmascope.lm.config`: :class:`LMConfig`, Gemma 2 presets, :func:`site_dim`.
- :mod:`gemmascope.lm.model`: :func:`forward` (capture / stop_after / splice), :func:`next_token_loss`.
- :mod:`gemmascope.lm.loading`: Hugging Face safetensors and GGUF loaders, the embedded SmolLM2.
"""
from gemmascope.lm.config import SITES, LMConfig, gemma2_2b, gemma2_9b, gemma2_27b, site_dim  # noqa: F401
