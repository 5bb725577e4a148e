"""Language-model configuration: one frozen dataclass for Gemma 2 and Llama, and the sites.

:class:`LMConfig` is frozen (hashable), so it can be a static argument of ``jax.jit``. The
presets :func:`gemma2_2b`, :func:`gemma2_9b`, :func:`gemma2_27b` hold the published shapes and
every detail of docs/SPEC.md section 3; the embedded default (SmolLM2-135M, a Llama) gets its config
from its GGUF metadata (see :mod:`gemmascope.lm.loading`).
"""
from __future__ import annotations

import dataclasses
import math

ARCHS = ("gemma2", "llama")
#: The sites an activation can be read at (or spliced), per layer. docs/SPEC.md section 2.
#:  ``res``: residual stream after the block (the block output), width ``d_model``.
#:  ``att``: concatenated per-head attention outputs before the output projection,
#:           width ``n_heads * head_dim``.
#:  ``mlp``: the MLP output (Gemma 2: after the post-feed-forward RMSNorm; Llama: the
#:           down-projection output), width ``d_model``.
SITES = ("res", "att", "mlp")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A decoder-only transformer. Fields a given ``arch`` does not use are ignored by it.

    arch: "gemma2" (RMSNorm scale ``1 + w``, four norms per block, gelu_tanh MLP, embedding
      times ``sqrt(d_model)``, soft-capping) or "llama" (RMSNorm scale ``w``, two norms per block,
      SiLU MLP).
    query_pre_attn_scalar: queries are scaled by ``query_pre_attn_scalar ** -0.5``; None means
      ``head_dim ** -0.5`` (Llama).
    attn_softcap / final_softcap: ``cap * tanh(s / cap)`` on attention logits / final logits;
      None disables.
    sliding_window: window of the local-attention layers (a key is visible when
      ``q - window < k <= q``); None means every layer is global.
    layer_types: per layer "sliding" or "full"; None means Gemma 2's pattern (even layers,
      0, 2, ..., slide; odd layers are global) when ``sliding_window`` is set.
    dtype: parameter and activation dtype ("float32" or "bfloat16"); norms, softmax, RoPE angles
      and the loss are always computed in float32.
    """

    arch: str = "gemma2"
    vocab_size: int = 256_000
    d_model: int = 2304
    n_layers: int = 26
    n_heads: int = 8
    n_kv_heads: int = 4
    head_dim: int = 256
    d_mlp: int = 9216
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    attn_softcap: float | None = 50.0
    final_softcap: float | None = 30.0
    query_pre_attn_scalar: float | None = 256.0
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None
    tie_embeddings: bool = True
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0
    dtype: str = "float32"
    name: str = ""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"LMConfig.arch: unknown architecture {self.arch!r} (known: {list(ARCHS)})")
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_mlp"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"LMConfig.{f}: must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LMConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LMConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers or any(t not in ("sliding", "full") for t in self.layer_types):
                raise ValueError(f"LMConfig.layer_types: need {self.n_layers} entries of 'sliding'/'full', got {self.layer_types!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"LMConfig.dtype: must be float32, bfloat16 or float16, got {self.dtype!r}")

    def replace(self, **kw) -> "LMConfig":
        return dataclasses.replace(self, **kw)

    @property
    def query_scale(self) -> float:
        s = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
        return float(s) ** -0.5

    def is_sliding(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        if self.layer_types is not None:
            return self.layer_types[layer] == "sliding"
        return layer % 2 == 0


def site_dim(cfg: LMConfig, site: str) -> int:
    """Width of a site's activation: ``d_model`` for res/mlp, ``n_heads * head_dim`` for att."""
    if site in ("res", "mlp"):
        return cfg.d_model
    if site == "att":
        return cfg.n_heads * cfg.head_dim
    raise ValueError(f"unknown site {site!r} (known: {list(SITES)})")


def gemma2_2b(**kw) -> LMConfig:
    """Gemma 2 2B: 26 layers, d 2304, 8 q heads x 256, 4 kv heads, d_mlp 9216."""
    return LMConfig(arch="gemma2", d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256,
                    d_mlp=9216, query_pre_attn_scalar=256.0, name="gemma-2-2b").replace(**kw)


def gemma2_9b(**kw) -> LMConfig:
    """Gemma 2 9B: 42 layers, d 3584, 16 q heads x 256, 8 kv heads, d_mlp 14336."""
    return LMConfig(arch="gemma2", d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256,
                    d_mlp=14336, query_pre_attn_scalar=256.0, name="gemma-2-9b").replace(**kw)


def gemma2_27b(**kw) -> LMConfig:
    """Gemma 2 27B: 46 layers, d 4608, 32 q heads x 128, 16 kv heads, d_mlp 36864, query scale 1/sqrt(144)."""
    return LMConfig(arch="gemma2", d_model=4608, n_layers=46, n_heads=32, n_kv_heads=16, head_dim=128,
                    d_mlp=36864, query_pre_attn_scalar=144.0, name="gemma-2-27b").replace(**kw)


PRESETS = {"gemma2_2b": gemma2_2b, "gemma2_9b": gemma2_9b, "gemma2_27b": gemma2_27b}


def num_params(cfg: LMConfig) -> int:
    """Number of parameters (tied embedding counted once)."""
    d, L = cfg.d_model, cfg.n_layers
    q = d * cfg.n_heads * cfg.head_dim
    kv = 2 * d * cfg.n_kv_heads * cfg.head_dim
    o = cfg.n_heads * cfg.head_dim * d
    mlp = 3 * d * cfg.d_mlp
    norms = (4 if cfg.arch == "gemma2" else 2) * d
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return L * (q + kv + o + mlp + norms) + emb + d


def embed_scale(cfg: LMConfig) -> float:
    return math.sqrt(cfg.d_model) if cfg.arch == "gemma2" else 1.0
