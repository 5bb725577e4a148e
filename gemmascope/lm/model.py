"""Decoder-only transformers (Gemma 2, Gemma 3, Llama) in JAX, with activation capture and splicing.

Parameters are a plain pytree (``x @ W`` convention), per-layer weights stacked on a leading
layer axis so the blocks between hook layers run under ``lax.scan`` (fast compile, one copy of
the weights). Shapes, with ``L`` layers, ``H`` query heads, ``K`` kv heads, ``D`` head_dim,
``F`` d_mlp, ``V`` vocab::

    {"embed": [V, d], "final_norm": [d], ("lm_head": [d, V] when not tied),
     "layers": {"attn_norm": [L, d], "q": [L, d, H*D], "k": [L, d, K*D], "v": [L, d, K*D],
                "o": [L, H*D, d], "mlp_norm": [L, d], "gate": [L, d, F], "up": [L, d, F],
                "down": [L, F, d],
                gemma2/3 only: "post_attn_norm": [L, d], "post_mlp_norm": [L, d],
                gemma3 only: "q_norm": [L, D], "k_norm": [L, D]}}

Norm weights are stored as in the Hugging Face checkpoints: Gemma scales by ``1 + w``, Llama
by ``w``. The pieces (RMSNorm, RoPE, attention) are in :mod:`gemmascope.lm.ops`.

Why plain functions rather than Flax modules: capture, splicing and stopping at an arbitrary
(layer, site) are ordinary Python control flow here, the loaders map checkpoint names straight
onto the pytree, and ``jax.eval_shape(init_params, ...)`` gives the shapes without allocating.

Sites (see :data:`gemmascope.lm.config.SITES`): ``res`` = block output, ``att`` = per-head
attention outputs concatenated before ``o`` ([B, T, H*D]), ``mlp`` = MLP output (Gemma:
after the post-feed-forward norm), ``mlp_in`` = MLP input (after the pre-MLP norm; splicing it
changes what the MLP reads, not the residual stream), ``res_mid`` = the residual mid-block,
after the attention add and before the pre-MLP norm (``hook_resid_mid``; splicing it changes the
residual that the MLP and all later layers see). A capture records the activation as
computed (before any splice at the same site).

Attention is causal over the whole packed sequence (documents joined with EOS see earlier
documents, as in packed pre-training), optionally with a key mask for padding; positions are
``0..T-1`` in every row (every packed row starts with BOS at position 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.lm.config import SITES, LMConfig, embed_scale_array
from gemmascope.lm.ops import (  # noqa: F401
    apply_rope,
    attention,
    attention_weights,
    layer_rope_tables,
    rms_norm,
    rope_tables,
)

Params = dict[str, Any]
Site = tuple[int, str]
SpliceFn = Callable[[jax.Array], jax.Array]

_BIG_WINDOW = 1 << 30


class LMOutput(NamedTuple):
    """logits: [B, T, V] or None when the forward stopped early; captures: {(layer, site): [B, T, d]}."""

    logits: jax.Array | None
    captures: dict[Site, jax.Array]


# ----------------------------------------------------------------------------- parameters


def init_params(key: jax.Array, cfg: LMConfig, std: float = 0.02) -> Params:
    """Random parameters (normal(0, std) matrices; norms at identity scale). Use with
    ``jax.eval_shape(functools.partial(init_params, cfg=cfg), key)`` for shapes only."""
    dt = jnp.dtype(cfg.dtype)
    d, L, H, K, D, F, V = (
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_mlp,
        cfg.vocab_size,
    )
    ks = jax.random.split(key, 9)

    def normal(k, shape):
        return (jax.random.normal(k, shape, jnp.float32) * std).astype(dt)

    # Gemma norms scale by (1 + w): identity at w = 0; Llama's scale by w: identity at 1.
    norm = (lambda shape: jnp.zeros(shape, dt)) if cfg.gemma else (lambda shape: jnp.ones(shape, dt))
    layers = {
        "attn_norm": norm((L, d)),
        "q": normal(ks[0], (L, d, H * D)),
        "k": normal(ks[1], (L, d, K * D)),
        "v": normal(ks[2], (L, d, K * D)),
        "o": normal(ks[3], (L, H * D, d)),
        "mlp_norm": norm((L, d)),
        "gate": normal(ks[4], (L, d, F)),
        "up": normal(ks[5], (L, d, F)),
        "down": normal(ks[6], (L, F, d)),
    }
    if cfg.gemma:
        layers["post_attn_norm"] = norm((L, d))
        layers["post_mlp_norm"] = norm((L, d))
    if cfg.qk_norm:
        layers["q_norm"] = norm((L, D))
        layers["k_norm"] = norm((L, D))
    params = {"embed": normal(ks[7], (V, d)), "final_norm": norm((d,)), "layers": layers}
    if not cfg.tie_embeddings:
        params["lm_head"] = normal(ks[8], (d, V))
    return params


def param_shapes(cfg: LMConfig) -> Params:
    """The parameter pytree as ``jax.ShapeDtypeStruct`` leaves, without allocating anything."""
    return jax.eval_shape(functools.partial(init_params, cfg=cfg), jax.random.key(0))


# ----------------------------------------------------------------------------- block


def _queries_keys(lp: Params, h: jax.Array, cfg: LMConfig, *, cos, sin, freeze: bool = False):
    """``(x, q, k)``: the pre-attention norm's output [B, T, d], and the queries [B, T, H, D] and
    keys [B, T, K, D] after Gemma 3's per-head norms and RoPE, of the residual ``h`` entering a block."""
    B, T, _ = h.shape
    x = rms_norm(h, lp["attn_norm"], cfg.norm_eps, cfg.gemma, freeze)
    q = (x @ lp["q"]).reshape(B, T, cfg.n_heads, cfg.head_dim)
    k = (x @ lp["k"]).reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
    if cfg.qk_norm:  # per head, before RoPE
        q = rms_norm(q, lp["q_norm"], cfg.norm_eps, True)
        k = rms_norm(k, lp["k_norm"], cfg.norm_eps, True)
    return x, apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def attention_patterns(params: Params, tokens: jax.Array, cfg: LMConfig) -> jax.Array:
    """``[L, B, H, T, T]`` float32: every layer's attention pattern on ``tokens [B, T]`` (what an
    attribution graph's local replacement model freezes; :func:`gemmascope.lm.ops.attention_weights`)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    L = cfg.n_layers
    caps = forward(params, tokens, cfg, capture=[(l, "res") for l in range(L - 1)], stop_after=max(L - 2, 0)).captures
    entering = [embed(params, tokens, cfg)] + [caps[(l, "res")] for l in range(L - 1)]
    return jnp.stack(layer_patterns(params, cfg, entering, range(L)))


def layer_patterns(params: Params, cfg: LMConfig, entering: Sequence[jax.Array], layers: Iterable[int]) -> list:
    """``[B, H, T, T]`` float32 attention patterns of ``layers``, each computed from the residual
    entering it (``entering[i] [B, T, d]`` for the i-th layer named), so a spliced residual stream
    gives the patterns the spliced run attends with."""
    T = int(entering[0].shape[1])
    cos, sin, rope_idx = layer_rope_tables(cfg, T)
    windows = _windows(cfg)
    out = []
    for h, l in zip(entering, layers):
        lp = jax.tree_util.tree_map(lambda x: x[l], params["layers"])
        r = int(rope_idx[l])
        _, q, k = _queries_keys(lp, h, cfg, cos=cos[r], sin=sin[r])
        out.append(attention_weights(q, k, cfg, window=int(windows[l])))
    return out


def _block(
    lp: Params,
    h: jax.Array,
    cfg: LMConfig,
    *,
    window: Any,
    cos: jax.Array,
    sin: jax.Array,
    key_mask: jax.Array | None,
    hooks: Mapping[str, SpliceFn | None] | None = None,
    caps: dict | None = None,
    layer: int | None = None,
    freeze: bool = False,
) -> jax.Array:
    """One decoder block: [B, T, d] -> [B, T, d]. ``cos``/``sin`` [T, D/2]: this layer's RoPE.
    ``hooks`` maps the sites of this layer to a splice function (or None to only capture);
    captured values go into ``caps``. ``freeze``: norms' denominators and attention weights are
    constants for differentiation (see :func:`forward`)."""
    gem = cfg.gemma
    eps = cfg.norm_eps
    B, T, _ = h.shape

    def hook(site, a):
        if hooks is None or site not in hooks:
            return a
        if caps is not None:
            caps[(layer, site)] = a
        fn = hooks[site]
        if fn is not None:
            a2 = fn(a)
            if a2.shape != a.shape:
                raise ValueError(f"splice at {(layer, site)} returned shape {a2.shape}, expected {a.shape}")
            a = a2.astype(a.dtype)
        return a

    x, q, k = _queries_keys(lp, h, cfg, cos=cos, sin=sin, freeze=freeze)
    v = (x @ lp["v"]).reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
    a = hook("att", attention(q, k, v, cfg, window=window, key_mask=key_mask, freeze=freeze))
    o = a @ lp["o"]
    if gem:
        o = rms_norm(o, lp["post_attn_norm"], eps, True, freeze)
    h = h + o
    h = hook("res_mid", h)
    x = hook("mlp_in", rms_norm(h, lp["mlp_norm"], eps, gem, freeze))
    act = functools.partial(jax.nn.gelu, approximate=True) if gem else jax.nn.silu
    m = (act(x @ lp["gate"]) * (x @ lp["up"])) @ lp["down"]
    if gem:
        m = rms_norm(m, lp["post_mlp_norm"], eps, True, freeze)
    m = hook("mlp", m)
    h = h + m
    return hook("res", h)


# ----------------------------------------------------------------------------- forward


def _canon_capture(capture: Iterable[Site]) -> tuple[Site, ...]:
    out = []
    for item in capture:
        layer, site = item
        out.append((int(layer), str(site)))
    return tuple(sorted(set(out)))


def _canon_splice(splice: Mapping[Site, SpliceFn] | Iterable[tuple[Site, SpliceFn]] | None) -> tuple:
    if not splice:
        return ()
    items = splice.items() if isinstance(splice, Mapping) else splice
    return tuple(sorted((((int(l), str(s)), fn) for (l, s), fn in items), key=lambda kv: kv[0]))


def _windows(cfg: LMConfig) -> np.ndarray:
    return np.array(
        [cfg.sliding_window if cfg.is_sliding(i) else _BIG_WINDOW for i in range(cfg.n_layers)], dtype=np.int32
    )


def forward(
    params: Params,
    tokens: jax.Array,
    cfg: LMConfig,
    *,
    capture: Iterable[Site] = (),
    stop_after: int | None = None,
    splice: Mapping[Site, SpliceFn] | Iterable[tuple[Site, SpliceFn]] | None = None,
    key_mask: jax.Array | None = None,
    scan_layers: bool = True,
    start_layer: int = 0,
    h_in: jax.Array | None = None,
    freeze: bool = False,
) -> LMOutput:
    """Run the model on ``tokens`` [B, T] int32.

    capture: (layer, site) pairs to record; returned as ``captures[(layer, site)]``: [B, T, d].
    stop_after: run layers ``0..stop_after`` only and return ``logits=None`` (the cheap way to
      read activations: nothing after the last needed layer is computed). None: the full model,
      logits [B, T, V] (final soft-cap applied).
    splice: {(layer, site): fn} with ``fn(act [B, T, d]) -> [B, T, d]`` replacing the activation
      (SAE reconstruction, ablation, steering). Under ``jax.jit`` write the closure inside the
      jitted function so SAE parameters are traced arguments, not baked-in constants.
    key_mask: [B, T] bool, False at keys no query may attend (e.g. padding). Packed rows need none.
    scan_layers: run runs of hook-free layers under ``lax.scan`` (default) or unrolled.
    start_layer, h_in: resume from the residual stream ``h_in [B, T, d]`` entering layer
      ``start_layer`` (the ``(start_layer - 1, "res")`` capture of an earlier call), skipping the
      embedding and the layers before: several splices at one site share the prefix this way.
      With ``start_layer=0``, ``h_in`` replaces the embedding (:func:`embed`).
    freeze: every RMSNorm's denominator and every attention pattern is a constant for
      differentiation (``stop_gradient``): the values are unchanged, and the gradients are those
      of the model with those pieces frozen at this input (circuit tracing's local replacement
      model, :mod:`gemmascope.circuits`). The final norm is not applied frozen: logits are not
      differentiated there (use :func:`final_norm` with ``freeze=True``).

    Pure and traceable: jit it with ``cfg``/``capture``/``stop_after``/``splice`` static (see
    :func:`jit_forward`).
    """
    capture = _canon_capture(capture)
    splice_t = _canon_splice(splice)
    for layer, site in list(capture) + [k for k, _ in splice_t]:
        if site not in SITES:
            raise ValueError(f"unknown site {site!r} (known: {list(SITES)})")
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"layer {layer} out of range for a {cfg.n_layers}-layer model")
    last = cfg.n_layers - 1 if stop_after is None else int(stop_after)
    if not 0 <= last < cfg.n_layers:
        raise ValueError(f"stop_after={stop_after} out of range for a {cfg.n_layers}-layer model")
    hooks: dict[int, dict[str, SpliceFn | None]] = {}
    for layer, site in capture:
        hooks.setdefault(layer, {})[site] = None
    for (layer, site), fn in splice_t:
        hooks.setdefault(layer, {})[site] = fn
    bad = [l for l in hooks if l > last]
    if bad:
        raise ValueError(f"capture/splice at layer(s) {sorted(bad)} but stop_after={stop_after}")
    start_layer = int(start_layer)
    if (h_in is None and start_layer != 0) or not 0 <= start_layer <= last:
        raise ValueError(
            f"start_layer={start_layer} needs h_in, within the {cfg.n_layers}-layer model and stop_after={stop_after}"
        )
    early = [l for l in hooks if l < start_layer]
    if early:
        raise ValueError(f"capture/splice at layer(s) {sorted(early)} before start_layer={start_layer}")

    dt = jnp.dtype(cfg.dtype)
    tokens = jnp.asarray(tokens, jnp.int32)
    B, T = tokens.shape
    emb = params["embed"]
    if h_in is None:
        h = embed(params, tokens, cfg)
    else:
        if tuple(h_in.shape) != (B, T, cfg.d_model):
            raise ValueError(f"h_in has shape {tuple(h_in.shape)}, expected {(B, T, cfg.d_model)}")
        h = h_in.astype(dt)
    cos, sin, rope_idx = layer_rope_tables(cfg, T)  # [R, T, D/2], layer i uses table rope_idx[i]
    windows = _windows(cfg)
    layers = params["layers"]
    caps: dict[Site, jax.Array] = {}

    def layer_params(i):
        return jax.tree_util.tree_map(lambda x: x[i], layers)

    def unrolled_block(i, h, **hook_args):  # layer i with static window and RoPE table
        r = int(rope_idx[i])
        return _block(
            layer_params(i), h, cfg, window=int(windows[i]), cos=cos[r], sin=sin[r], key_mask=key_mask,
            freeze=freeze, **hook_args,
        )  # fmt: skip

    def run_plain(h, start, stop):  # layers start..stop-1, no hooks
        if stop - start <= 0:
            return h
        if not scan_layers or stop - start == 1:
            for i in range(start, stop):
                h = unrolled_block(i, h)
            return h
        win = jnp.asarray(windows)
        ridx = jnp.asarray(rope_idx)

        def body(h, i):
            lp = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), layers)
            out = _block(
                lp, h, cfg, window=win[i], cos=cos[ridx[i]], sin=sin[ridx[i]], key_mask=key_mask, freeze=freeze
            )
            return out, None

        h, _ = jax.lax.scan(body, h, jnp.arange(start, stop, dtype=jnp.int32))
        return h

    i = start_layer
    for hl in sorted(hooks):
        h = run_plain(h, i, hl)
        h = unrolled_block(hl, h, hooks=hooks[hl], caps=caps, layer=hl)
        i = hl + 1
    h = run_plain(h, i, last + 1)
    if stop_after is not None:
        return LMOutput(None, caps)
    h = final_norm(params, h, cfg)
    if cfg.tie_embeddings:
        logits = jnp.einsum("btd,vd->btv", h, emb.astype(dt))
    else:
        logits = h @ params["lm_head"]
    return LMOutput(softcap_logits(logits, cfg), caps)


@functools.partial(jax.jit, static_argnames=("cfg", "capture", "stop_after", "splice", "scan_layers"))
def _forward_jit(params, tokens, key_mask, *, cfg, capture, stop_after, splice, scan_layers):
    return forward(
        params,
        tokens,
        cfg,
        capture=capture,
        stop_after=stop_after,
        splice=splice,
        key_mask=key_mask,
        scan_layers=scan_layers,
    )


def jit_forward(
    params: Params,
    tokens: jax.Array,
    cfg: LMConfig,
    *,
    capture: Iterable[Site] = (),
    stop_after: int | None = None,
    splice=None,
    key_mask: jax.Array | None = None,
    scan_layers: bool = True,
) -> LMOutput:
    """:func:`forward` compiled once per (cfg, capture, stop_after, splice functions, shapes).
    Splice functions are static: pass the same function objects to reuse the compilation."""
    return _forward_jit(
        params,
        tokens,
        key_mask,
        cfg=cfg,
        capture=_canon_capture(capture),
        stop_after=stop_after,
        splice=_canon_splice(splice),
        scan_layers=scan_layers,
    )


def capture_activations(
    params: Params,
    tokens: jax.Array,
    cfg: LMConfig,
    sites: Iterable[Site],
    *,
    key_mask: jax.Array | None = None,
    jit: bool = True,
) -> dict[Site, jax.Array]:
    """{(layer, site): [B, T, d]} for ``sites``, stopping after the deepest requested layer."""
    sites = _canon_capture(sites)
    if not sites:
        return {}
    last = max(l for l, _ in sites)
    f = jit_forward if jit else forward
    return f(params, tokens, cfg, capture=sites, stop_after=last, key_mask=key_mask).captures


# ----------------------------------------------------------------------------- embedding and output


def embed(params: Params, tokens: jax.Array, cfg: LMConfig) -> jax.Array:
    """The residual stream entering layer 0, ``[B, T] int -> [B, T, d]``: the token embeddings
    (times ``sqrt(d_model)``, rounded to the model's dtype, for Gemma)."""
    h = jnp.take(params["embed"], jnp.asarray(tokens, jnp.int32), axis=0).astype(jnp.dtype(cfg.dtype))
    return h * embed_scale_array(cfg) if cfg.gemma else h


def final_norm(params: Params, h: jax.Array, cfg: LMConfig, freeze: bool = False) -> jax.Array:
    """The norm after the last block, ``[..., d] -> [..., d]`` (Gemma's ``1 + w`` scale when Gemma;
    ``freeze``: its denominator a constant for differentiation, see :func:`forward`)."""
    return rms_norm(h, params["final_norm"], cfg.norm_eps, cfg.gemma, freeze)


def softcap_logits(logits: jax.Array, cfg: LMConfig) -> jax.Array:
    """``cap * tanh(logits / cap)`` when the config sets a final-logit soft-cap (Gemma 2), else as is."""
    if cfg.final_softcap is None:
        return logits
    return jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
