"""Language-model configuration: one frozen dataclass for Gemma 2, Gemma 3 (text) and Llama, and
the sites.

:class:`LMConfig` is frozen (hashable), so it can be a static argument of ``jax.jit``. The
presets :func:`gemma2_2b`, :func:`gemma2_9b`, :func:`gemma2_27b` hold the published shapes and
every detail of docs/SPEC.md section 3; :func:`gemma3_270m` .. :func:`gemma3_27b` those of section 8
(the text towers, as transformers' ``Gemma3TextConfig`` of each released checkpoint). The
embedded models (SmolLM2-135M, a Llama; Gemma 3 270M) get their config from their GGUF metadata
(see :mod:`gemmascope.lm.loading`).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

ARCHS = ("gemma2", "gemma3", "llama")
#: Architectures with Gemma's RMSNorm (scale ``1 + w``), four norms per block, gelu_tanh MLP and
#: embedding times ``sqrt(d_model)``.
GEMMA_ARCHS = ("gemma2", "gemma3")
#: The sites an activation can be read at (or spliced), per layer. docs/SPEC.md section 2.
#:  ``res``: residual stream after the block (the block output), width ``d_model``.
#:  ``att``: concatenated per-head attention outputs before the output projection,
#:           width ``n_heads * head_dim``.
#:  ``mlp``: the MLP output (Gemma 2/3: after the post-feed-forward RMSNorm; Llama: the
#:           down-projection output), width ``d_model``.
#:  ``mlp_in``: the MLP input (Gemma 2/3: after the pre-feed-forward RMSNorm; Llama: after the
#:           post-attention RMSNorm, its pre-MLP norm), width ``d_model``: what a transcoder reads.
#:  ``res_mid``: the residual stream mid-block, after the attention output is added and before
#:           the pre-MLP RMSNorm (TransformerLens ``hook_resid_mid``; the input of HF Gemma's
#:           ``pre_feedforward_layernorm`` / Llama's ``post_attention_layernorm``), width
#:           ``d_model``: what a cross-layer transcoder reads. Splicing it changes the residual
#:           the MLP and every later layer see.
SITES = ("res", "att", "mlp", "mlp_in", "res_mid")


@dataclasses.dataclass(kw_only=True, frozen=True)
class LMConfig:
    """A decoder-only transformer. Fields a given ``arch`` does not use are ignored by it.

    arch: "gemma2" (RMSNorm scale ``1 + w``, four norms per block, gelu_tanh MLP, embedding
      times ``sqrt(d_model)``), "gemma3" (the same plus RMSNorm ``(1 + w)`` on every query and key
      head before RoPE, ``q_norm``/``k_norm`` [head_dim]) or "llama" (RMSNorm scale ``w``, two norms
      per block, SiLU MLP).
    query_pre_attn_scalar: queries are scaled by ``query_pre_attn_scalar ** -0.5``; None means
      ``head_dim ** -0.5`` (Llama).
    attn_softcap / final_softcap: ``cap * tanh(s / cap)`` on attention logits / final logits;
      None disables.
    sliding_window: window of the local-attention layers (a key is visible when
      ``q - window < k <= q``); None means every layer is global.
    layer_types: per layer "sliding" or "full"; None means the architecture's pattern when
      ``sliding_window`` is set: Gemma 2 even layers slide (0, 2, ...), odd ones are global;
      Gemma 3 five sliding to one full (layer i slides unless ``(i + 1) % 6 == 0``), as
      transformers' default ``sliding_window_pattern = 6``.
    rope_theta: RoPE base of the full-attention layers (every layer without sliding window).
    rope_theta_sliding: RoPE base of the sliding layers; None means ``rope_theta`` (Gemma 3 uses
      10,000 there and 1,000,000 on full layers).
    rope_scale / rope_scale_sliding: linear RoPE scaling factor (positions divided by it,
      transformers' ``rope_type: "linear"``) of the full / sliding layers; Gemma 3 4B and up
      use 8 on the full layers.
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
    rope_theta_sliding: float | None = None
    rope_scale: float = 1.0
    rope_scale_sliding: float = 1.0
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
                raise ValueError(
                    f"LMConfig.layer_types: need {self.n_layers} entries of 'sliding'/'full', got {self.layer_types!r}"
                )
        for f in ("rope_theta", "rope_scale", "rope_scale_sliding"):
            if not getattr(self, f) > 0:
                raise ValueError(f"LMConfig.{f}: must be > 0, got {getattr(self, f)!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"LMConfig.dtype: must be float32, bfloat16 or float16, got {self.dtype!r}")

    def replace(self, **kw) -> LMConfig:
        return dataclasses.replace(self, **kw)

    @property
    def query_scale(self) -> float:
        s = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
        return float(s) ** -0.5

    @property
    def gemma(self) -> bool:
        """Gemma norms (``1 + w``, pre and post), gelu_tanh MLP, embedding scale ``sqrt(d_model)``."""
        return self.arch in GEMMA_ARCHS

    @property
    def qk_norm(self) -> bool:
        """RMSNorm on each query and key head before RoPE (Gemma 3)."""
        return self.arch == "gemma3"

    def is_sliding(self, layer: int) -> bool:
        if self.sliding_window is None:
            return False
        if self.layer_types is not None:
            return self.layer_types[layer] == "sliding"
        if self.arch == "gemma3":
            return (layer + 1) % 6 != 0
        return layer % 2 == 0

    def rope(self, layer: int) -> tuple[float, float]:
        """(base, linear scaling factor) of the RoPE of ``layer``: one RoPE per layer type."""
        if self.is_sliding(layer):
            theta = self.rope_theta if self.rope_theta_sliding is None else self.rope_theta_sliding
            return float(theta), float(self.rope_scale_sliding)
        return float(self.rope_theta), float(self.rope_scale)


def site_dim(cfg: LMConfig, site: str) -> int:
    """Width of a site's activation: ``d_model`` for res/mlp/mlp_in/res_mid, ``n_heads * head_dim``
    for att."""
    if site in ("res", "mlp", "mlp_in", "res_mid"):
        return cfg.d_model
    if site == "att":
        return cfg.n_heads * cfg.head_dim
    raise ValueError(f"unknown site {site!r} (known: {list(SITES)})")


def gemma2_2b(**kw) -> LMConfig:
    """Gemma 2 2B: 26 layers, d 2304, 8 q heads x 256, 4 kv heads, d_mlp 9216."""
    return LMConfig(
        arch="gemma2",
        d_model=2304,
        n_layers=26,
        n_heads=8,
        n_kv_heads=4,
        head_dim=256,
        d_mlp=9216,
        query_pre_attn_scalar=256.0,
        name="gemma-2-2b",
    ).replace(**kw)


def gemma2_9b(**kw) -> LMConfig:
    """Gemma 2 9B: 42 layers, d 3584, 16 q heads x 256, 8 kv heads, d_mlp 14336."""
    return LMConfig(
        arch="gemma2",
        d_model=3584,
        n_layers=42,
        n_heads=16,
        n_kv_heads=8,
        head_dim=256,
        d_mlp=14336,
        query_pre_attn_scalar=256.0,
        name="gemma-2-9b",
    ).replace(**kw)


def gemma2_27b(**kw) -> LMConfig:
    """Gemma 2 27B: 46 layers, d 4608, 32 q heads x 128, 16 kv heads, d_mlp 36864, query scale 1/sqrt(144)."""
    return LMConfig(
        arch="gemma2",
        d_model=4608,
        n_layers=46,
        n_heads=32,
        n_kv_heads=16,
        head_dim=128,
        d_mlp=36864,
        query_pre_attn_scalar=144.0,
        name="gemma-2-27b",
    ).replace(**kw)


def gemma3_layer_types(n_layers: int) -> tuple[str, ...]:
    """Gemma 3's ``layer_types``: five sliding layers to one full (layers 5, 11, 17, ... are full)."""
    return tuple("full" if (i + 1) % 6 == 0 else "sliding" for i in range(n_layers))


def _gemma3(
    name: str,
    *,
    d: int,
    L: int,
    H: int,
    K: int,
    D: int,
    F: int,
    window: int,
    vocab: int,
    qpas: float,
    full_rope_scale: float,
    kw: dict,
) -> LMConfig:
    return LMConfig(
        arch="gemma3",
        vocab_size=vocab,
        d_model=d,
        n_layers=L,
        n_heads=H,
        n_kv_heads=K,
        head_dim=D,
        d_mlp=F,
        rope_theta=1_000_000.0,
        rope_theta_sliding=10_000.0,
        rope_scale=full_rope_scale,
        attn_softcap=None,
        final_softcap=None,
        query_pre_attn_scalar=qpas,
        sliding_window=window,
        layer_types=gemma3_layer_types(L),
        name=name,
    ).replace(**kw)


# Gemma 3 text towers (docs/SPEC.md section 8), as the transformers configs of the released checkpoints
# (google/gemma-3-<size>-pt): 270M and 1B are text-only (vocabulary 262,144, window 512, no RoPE
# scaling); 4B, 12B, 27B are the language models of the multimodal checkpoints (vocabulary 262,208,
# window 1024, linear RoPE scaling 8 on the full layers). Query scale 256 ** -0.5, except 27B:
# query_pre_attn_scalar = d_model / n_heads = 168.
def gemma3_270m(**kw) -> LMConfig:
    """Gemma 3 270M: 18 layers, d 640, 4 q heads x 256, 1 kv head, d_mlp 2048, window 512."""
    return _gemma3(
        "gemma-3-270m",
        d=640,
        L=18,
        H=4,
        K=1,
        D=256,
        F=2048,
        window=512,
        vocab=262_144,
        qpas=256.0,
        full_rope_scale=1.0,
        kw=kw,
    )


def gemma3_1b(**kw) -> LMConfig:
    """Gemma 3 1B: 26 layers, d 1152, 4 q heads x 256, 1 kv head, d_mlp 6912, window 512."""
    return _gemma3(
        "gemma-3-1b",
        d=1152,
        L=26,
        H=4,
        K=1,
        D=256,
        F=6912,
        window=512,
        vocab=262_144,
        qpas=256.0,
        full_rope_scale=1.0,
        kw=kw,
    )


def gemma3_4b(**kw) -> LMConfig:
    """Gemma 3 4B (text): 34 layers, d 2560, 8 q heads x 256, 4 kv heads, d_mlp 10240, window 1024."""
    return _gemma3(
        "gemma-3-4b",
        d=2560,
        L=34,
        H=8,
        K=4,
        D=256,
        F=10240,
        window=1024,
        vocab=262_208,
        qpas=256.0,
        full_rope_scale=8.0,
        kw=kw,
    )


def gemma3_12b(**kw) -> LMConfig:
    """Gemma 3 12B (text): 48 layers, d 3840, 16 q heads x 256, 8 kv heads, d_mlp 15360, window 1024."""
    return _gemma3(
        "gemma-3-12b",
        d=3840,
        L=48,
        H=16,
        K=8,
        D=256,
        F=15360,
        window=1024,
        vocab=262_208,
        qpas=256.0,
        full_rope_scale=8.0,
        kw=kw,
    )


def gemma3_27b(**kw) -> LMConfig:
    """Gemma 3 27B (text): 62 layers, d 5376, 32 q heads x 128, 16 kv heads, d_mlp 21504, window 1024,
    query scale 1/sqrt(168)."""
    return _gemma3(
        "gemma-3-27b",
        d=5376,
        L=62,
        H=32,
        K=16,
        D=128,
        F=21504,
        window=1024,
        vocab=262_208,
        qpas=168.0,
        full_rope_scale=8.0,
        kw=kw,
    )


PRESETS = {
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma2_27b": gemma2_27b,
    "gemma3_270m": gemma3_270m,
    "gemma3_1b": gemma3_1b,
    "gemma3_4b": gemma3_4b,
    "gemma3_12b": gemma3_12b,
    "gemma3_27b": gemma3_27b,
}


def num_params(cfg: LMConfig) -> int:
    """Number of parameters (tied embedding counted once)."""
    d, L = cfg.d_model, cfg.n_layers
    q = d * cfg.n_heads * cfg.head_dim
    kv = 2 * d * cfg.n_kv_heads * cfg.head_dim
    o = cfg.n_heads * cfg.head_dim * d
    mlp = 3 * d * cfg.d_mlp
    norms = (4 if cfg.gemma else 2) * d + (2 * cfg.head_dim if cfg.qk_norm else 0)
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return L * (q + kv + o + mlp + norms) + emb + d


def embed_scale(cfg: LMConfig) -> float:
    """``sqrt(d_model)`` for Gemma (1 for Llama). transformers rounds it to the activation dtype
    before multiplying (Gemma 3 through float32 first: a float32 buffer cast to the weights'
    dtype); :func:`embed_scale_array` gives that rounded value."""
    return math.sqrt(cfg.d_model) if cfg.gemma else 1.0


def embed_scale_array(cfg: LMConfig):
    """The embedding scale as a 0-d array of ``cfg.dtype``, rounded as transformers rounds it:
    Gemma 3 ``float64 -> float32 -> dtype`` (``torch.tensor(scale).to(dtype)``), Gemma 2 directly
    ``float64 -> dtype`` (``torch.tensor(scale, dtype=dtype)``). Both agree for every preset
    (tested); bfloat16 turns sqrt(640) = 25.298 into 25.25."""
    s = embed_scale(cfg)
    if cfg.arch == "gemma3":
        return jnp.asarray(np.float32(s)).astype(cfg.dtype)
    return jnp.asarray(s, cfg.dtype)
