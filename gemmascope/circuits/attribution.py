"""Attribution graphs (Ameisen et al. 2025, "Circuit Tracing"): the direct effect of every active
transcoder feature, error node and input token on every active feature and on the top output
logits of one prompt, through the local replacement model.

**The local replacement model** of a prompt: the LM with every MLP replaced by what the
transcoders write (active features times their decoder rows, plus the decoder bias and, for
affine transcoders, the skip path) plus an *error node* per (layer, position) holding what they
miss (``MLP output - reconstruction``), so it reproduces the LM's logits on this prompt exactly;
and with every RMSNorm denominator and attention pattern frozen at their values on this prompt.
With the features' activations held fixed, what reaches any read (a feature's pre-activation
``read . W_enc[:, f]`` or a logit) is then *linear* in the sources' contributions: the edge from
a source to a target is the target's gradient with respect to the source's scale (1 at the
prompt), i.e. exactly the change in the target when the source is removed.

Implementation: one forward of our own LM (:func:`gemmascope.lm.model.forward` with
``freeze=True``: the same values, frozen pieces under ``stop_gradient``), in which the MLP output
of layer ``l`` is ``stop_gradient(m) + (w - stop_gradient(w))`` with ``w`` the sources' writes as a
function of their scales: the value stays the LM's own (so the model output is exact), the
gradient is the replacement model's. Rows of the adjacency matrix are vector-Jacobian products
of this function, batched over targets with ``vmap``; the function is cut into pieces of a few
layers (:func:`piece_outputs`), each compiled once, so a batch of targets is differentiated only
through the layers below its highest target.

Nodes, in the order circuit-tracer uses (so its pruning and files read the same matrix)::

    [active features (layer, position, feature), sorted] [errors: layer * T + position]
    [tokens: position] [logits: by probability]

``adjacency [n_nodes, n_nodes]``: ``[target, source]``; rows of errors and tokens are zero (they
are only sources), columns of logits are zero. The first ``zero_positions`` positions (BOS)
carry no feature and no error node: their MLP outputs are constants of the replacement model,
as in circuit-tracer. Logit targets are pre-soft-cap: the demeaned unembedding row of the token
against the frozen final norm of the last position.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.circuits.influence import influence, normalise
from gemmascope.circuits.transcoders import TranscoderStack, check_against
from gemmascope.lm.model import embed, final_norm, forward, jit_forward, softcap_logits


@dataclasses.dataclass
class Graph:
    """An unpruned attribution graph (module doc for the node order).

    tokens [T] int; active_features [n_feat, 3] int (layer, position, feature); activations
    [n_feat]; logit_tokens [k] int, logit_probabilities [k]; adjacency [n_nodes, n_nodes]
    float32 ([target, source]); n_layers; info: provenance (model, transcoders, settings).
    """

    tokens: np.ndarray
    active_features: np.ndarray
    activations: np.ndarray
    logit_tokens: np.ndarray
    logit_probabilities: np.ndarray
    adjacency: np.ndarray
    n_layers: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(len(self.tokens))

    @property
    def n_features(self) -> int:
        return int(len(self.active_features))

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + len(self.logit_tokens)

    def node_kind(self, i: int) -> str:
        """``"feature"``, ``"error"``, ``"token"`` or ``"logit"``."""
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        return "token" if i < self.logit_start else "logit"


def unembedding(lm_params, cfg) -> jax.Array:
    """``[V, d]``: the rows whose dot with the final-normed residual are the logits."""
    return lm_params["embed"] if cfg.tie_embeddings else lm_params["lm_head"].T


def select_logits(logits: np.ndarray, max_n_logits: int, desired_logit_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [k], probabilities [k])``: the most probable next tokens until their cumulative
    probability reaches ``desired_logit_prob``, at most ``max_n_logits`` of them."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[: int(max_n_logits)]
    k = int(np.searchsorted(np.cumsum(p[order]), desired_logit_prob)) + 1
    order = order[: min(k, len(order))]
    return order.astype(np.int64), p[order].astype(np.float32)


def clean_pass(lm_params, cfg, tokens: np.ndarray, stack: TranscoderStack, zero_positions: int) -> dict:
    """The prompt through the LM: ``reads``, ``mlp`` and ``res`` [L, T, d] (every layer's read, MLP
    output and the residual leaving it), ``codes`` [L, T, n] (zero at the first ``zero_positions``),
    ``recon`` [L, T, d] (what the transcoders write), ``replaced`` [T] bool and the last position's
    ``logits`` [V]."""
    L, T = cfg.n_layers, len(tokens)
    site = stack.read_site
    capture = [(l, s) for l in range(L) for s in (site, "mlp", "res")]
    out = jit_forward(lm_params, jnp.asarray(tokens[None], jnp.int32), cfg, capture=capture)
    reads = np.stack([np.asarray(out.captures[(l, site)][0], np.float32) for l in range(L)])
    mlp = np.stack([np.asarray(out.captures[(l, "mlp")][0], np.float32) for l in range(L)])
    res = np.stack([np.asarray(out.captures[(l, "res")][0], np.float32) for l in range(L)])
    replaced = np.arange(T) >= zero_positions
    codes = np.stack([np.asarray(stack.encode(l, reads[l])) for l in range(L)]) * replaced[None, :, None]
    recon = np.stack([np.asarray(stack.write(l, codes, reads[l]), np.float32) for l in range(L)])
    logits = np.asarray(out.logits[0, -1], np.float32)
    return {
        "reads": reads,
        "mlp": mlp,
        "res": res,
        "codes": codes,
        "recon": recon,
        "replaced": replaced,
        "logits": logits,
    }


def _prepare(lm_params, cfg, tokens: np.ndarray, stack: TranscoderStack, zero_positions: int, layers_per_piece: int):
    """Phase 0: the clean pass (:func:`clean_pass`), the error nodes, the padded per-(layer,
    position) source layout the replacement function takes, and the residual entering each piece
    of the backward pass (:func:`pieces`; the first piece's is the embedding)."""
    L, T = cfg.n_layers, len(tokens)
    c = clean_pass(lm_params, cfg, tokens, stack, zero_positions)
    codes, replaced = c["codes"], c["replaced"]
    p = {k: np.asarray(v, np.float32) for k, v in stack.params.items()}
    err = np.where(replaced[None, :, None], c["mlp"] - c["recon"], 0.0).astype(np.float32)

    layer, pos, feat = np.nonzero(codes)  # sorted by (layer, position, feature)
    acts = codes[layer, pos, feat].astype(np.float32)
    counts = np.zeros((L, T), np.int64)
    np.add.at(counts, (layer, pos), 1)
    M = max(int(counts.max()), 1)
    first = np.concatenate([[0], np.cumsum(counts.reshape(-1))[:-1]]).reshape(L, T)
    slot_in_group = np.arange(len(layer)) - first[layer, pos]
    slot = (layer * T + pos) * M + slot_in_group  # flat index into [L, T, M]
    dec_shape = (L, T, M, L, cfg.d_model) if stack.cross_layer else (L, T, M, cfg.d_model)
    dec = np.zeros(dec_shape, np.float32)
    for l in range(L):
        sel = layer == l
        if sel.any():
            rows = stack.decoder_rows(l, feat[sel])  # [k, d] or [k, L, d]
            dec[l, pos[sel], slot_in_group[sel]] = acts[sel].reshape((-1,) + (1,) * (rows.ndim - 1)) * rows
    d = cfg.d_model
    if stack.cross_layer:  # [S, T, M, W, d] -> [T, W*d, S*M] (see _feature_edges)
        dec = dec.transpose(1, 3, 4, 0, 2).reshape(T, L * d, L * M)
    else:  # [L, T, M, d] -> [L*T, d, M]
        dec = dec.reshape(L * T, M, d).transpose(0, 2, 1)
    enc_cols = p["W_enc"][layer, :, feat]  # [n_feat, d]: each feature's encoder column
    emb = np.asarray(embed(lm_params, jnp.asarray(tokens[None], jnp.int32), cfg)[0], np.float32)
    consts = {
        "tokens": np.asarray(tokens, np.int32),
        "emb": emb,
        "h_in": np.stack([emb if a == 0 else c["res"][a - 1] for a, _ in pieces(L, layers_per_piece)]),
        "dec": np.ascontiguousarray(dec),
        "err": err,
        "replaced": replaced.astype(np.float32),
        "slot": slot.astype(np.int32),
    }
    if stack.has_skip:
        consts["W_skip"] = p["W_skip"]
    features = np.stack([layer, pos, feat], axis=1).astype(np.int64)
    return consts, features, acts, enc_cols.astype(np.float32), c["logits"], M


#: Layers per compiled piece of the batched backward pass (:func:`_target_rows`).
LAYERS_PER_PIECE = 3


def pieces(n_layers: int, size: int) -> tuple[tuple[int, int], ...]:
    """``((first, last), ...)``: layers ``0..n_layers-1`` in consecutive pieces of ``size``."""
    size = max(1, int(size))
    return tuple((a, min(a + size, n_layers) - 1) for a in range(0, n_layers, size))


def piece_outputs(lm_params, consts, h_in, d_mlp, *, cfg, read_site: str, first: int, last: int):
    """Layers ``first..last`` of the local replacement model, from the residual ``h_in [T, d]``
    entering layer ``first``, with additive inputs ``d_mlp [last - first + 1, T, d]`` at their MLP
    outputs -> ``(reads, h_out)``: ``reads [n, T, d]``, each layer's read (``read_site``), plus the
    frozen final norm's output when ``last`` is the LM's last layer; ``h_out [T, d]`` the residual
    leaving layer ``last``. Values are the LM's own; gradients are those of the frozen replacement
    model (module doc): the gradient at a write point, dotted with what a source writes there, is
    the source's edge. Chained from ``h_in`` = the embedding (plus ``d_emb``) at layer 0, the
    pieces are the whole replacement model."""
    reads: dict[int, jax.Array] = {}

    def read_fn(l):
        def fn(a):
            reads[l] = a
            return a

        return fn

    def mlp_fn(l):
        def fn(m):
            w = d_mlp[l - first]
            if "W_skip" in consts:  # the affine skip is part of the linear replacement model
                w = w + consts["replaced"][:, None] * (reads[l][0].astype(jnp.float32) @ consts["W_skip"][l])
            w = w[None].astype(m.dtype)
            return jax.lax.stop_gradient(m) + (w - jax.lax.stop_gradient(w))

        return fn

    layers = range(first, last + 1)
    splice = {(l, read_site): read_fn(l) for l in layers}
    splice.update({(l, "mlp"): mlp_fn(l) for l in layers})
    end = (last, "res")
    out = forward(
        lm_params,
        consts["tokens"][None],
        cfg,
        capture=[end],
        splice=splice,
        h_in=h_in[None].astype(jnp.dtype(cfg.dtype)),
        start_layer=first,
        stop_after=last,
        freeze=True,
    )
    h_out = out.captures[end][0]
    rs = [reads[l][0] for l in layers]
    if last == cfg.n_layers - 1:
        rs.append(final_norm(lm_params, h_out, cfg, freeze=True))
    return jnp.stack(rs).astype(jnp.float32), h_out.astype(jnp.float32)


def _feature_edges(g_mlp: jax.Array, dec: jax.Array, cross_layer: bool) -> jax.Array:
    """``[nb, L, T, M]``: each padded source's edge, the gradient at the MLP outputs ``g_mlp [nb, L,
    T, d]`` dotted with what the source writes. Per-layer ``dec [L*T, d, M]``: a batched matmul over
    (layer, position); cross-layer ``dec [T, L*d, L*M]`` (write layer and width flattened against
    source layer and slot): a batched matmul over positions."""
    nb, L, T, d = g_mlp.shape
    if cross_layer:
        g = g_mlp.transpose(2, 0, 1, 3).reshape(T, nb, L * d)
        e = jnp.matmul(g, dec)  # [T, nb, L*M]
        return e.reshape(T, nb, L, -1).transpose(1, 2, 0, 3)
    g = g_mlp.reshape(nb, L * T, d).transpose(1, 0, 2)
    e = jnp.matmul(g, dec)  # [L*T, nb, M]
    return e.transpose(1, 0, 2).reshape(nb, L, T, -1)


@functools.partial(jax.jit, static_argnames=("cfg", "read_site", "first", "last"))
def _piece_vjp(lm_params, consts, h_in, g_out, t_layer, t_pos, t_vec, *, cfg, read_site, first, last):
    """One piece of the batched backward pass (:func:`piece_outputs`): ``g_out [nb, T, d]``, the
    cotangent at the residual leaving the piece, plus each target's own (``t_vec [nb, d]`` at read
    ``(t_layer, t_pos)`` when that read is in the piece; layer ``L``: the final norm's output) ->
    ``(g_in [nb, T, d], g_mlp [nb, n, T, d])``, the cotangents at the residual entering the piece and
    at its MLP outputs."""
    T, d = consts["emb"].shape
    fn = functools.partial(piece_outputs, lm_params, consts, cfg=cfg, read_site=read_site, first=first, last=last)
    (reads, _), vjp = jax.vjp(fn, h_in, jnp.zeros((last - first + 1, T, d), jnp.float32))
    n_reads = reads.shape[0]

    def one(g, l, p, v):
        r = l - first
        inside = (r >= 0) & (r < n_reads)
        cot = jnp.zeros_like(reads).at[jnp.clip(r, 0, n_reads - 1), p].set(jnp.where(inside, v, 0.0))
        return vjp((cot, g))

    return jax.vmap(one)(g_out, t_layer, t_pos, t_vec)


@functools.partial(jax.jit, static_argnames=("cross_layer",))
def _edges(consts, g_mlp, g_emb, *, cross_layer):
    """Adjacency rows ``[nb, n_feat + L*T + T]`` from the cotangents at every MLP output ``g_mlp
    [nb, L, T, d]`` and at the embedding ``g_emb [nb, T, d]``."""
    nb = g_mlp.shape[0]
    feat_cols = _feature_edges(g_mlp, consts["dec"], cross_layer).reshape(nb, -1)[:, consts["slot"]]
    err_cols = jnp.einsum("bltd,ltd->blt", g_mlp, consts["err"]).reshape(nb, -1)
    tok_cols = jnp.einsum("btd,td->bt", g_emb, consts["emb"])
    return jnp.concatenate([feat_cols, err_cols, tok_cols], axis=1)


def _rows(lm_params, consts, t_layer, t_pos, t_vec, *, cfg, cross_layer, read_site, layers_per_piece):
    """Adjacency rows ``[nb, n_feat + L*T + T]`` of targets read at ``(t_layer [nb], t_pos [nb])``
    with vector ``t_vec [nb, d]`` (a feature's encoder column, or a demeaned unembedding row at
    layer index ``L``, the final norm's output): vector-Jacobian products of the replacement model,
    run piece by piece from the piece of the batch's highest target down to layer 0. A target
    reads nothing written above it, so the layers above the batch's highest target are never
    differentiated: with the targets sorted by layer (:func:`_target_rows`), a feature's row costs
    the backward pass of the layers below it, not of the whole model, and the compiled programs
    are the pieces (each compiled once), not one per depth."""
    L, (T, d) = cfg.n_layers, consts["emb"].shape
    nb = t_layer.shape[0]
    parts = pieces(L, layers_per_piece)
    top_layer = min(int(np.max(np.asarray(t_layer))), L - 1)
    top = next(k for k, (a, b) in enumerate(parts) if a <= top_layer <= b)
    # the pieces above the batch's highest target are never differentiated: their cotangents are 0
    g_mlp = [jnp.zeros((nb, b - a + 1, T, d), jnp.float32) for a, b in parts[top + 1 :]]
    g = jnp.zeros((nb, T, d), jnp.float32)
    targets = (t_layer, t_pos, t_vec)
    for k in range(top, -1, -1):
        a, b = parts[k]
        g, g_k = _piece_vjp(
            lm_params, consts, consts["h_in"][k], g, *targets, cfg=cfg, read_site=read_site, first=a, last=b
        )
        g_mlp.insert(0, g_k)
    return _edges(consts, jnp.concatenate(g_mlp, axis=1), g, cross_layer=cross_layer)


def _target_rows(
    lm_params, jconsts, t_layer, t_pos, t_vec, *, cfg, stack, batch_size, layers_per_piece, log=None
) -> np.ndarray:
    """``[n_targets, n_sources]``: the edges into each target (:func:`_rows`), ``batch_size``
    targets per compiled batch (the last one padded, so every batch has one shape), taken in
    order of their layer so that each batch's backward pass stops as low as it can."""
    n_t = len(t_layer)
    nb = max(1, int(batch_size))
    order = np.argsort(t_layer, kind="stable")
    t_layer, t_pos, t_vec = t_layer[order], t_pos[order], t_vec[order]
    out = []
    for i in range(0, n_t, nb):
        j = min(i + nb, n_t)
        pad = nb - (j - i)
        sl = slice(i, j)
        r = _rows(
            lm_params,
            jconsts,
            jnp.asarray(np.pad(t_layer[sl], (0, pad))),
            jnp.asarray(np.pad(t_pos[sl], (0, pad))),
            jnp.asarray(np.pad(t_vec[sl], ((0, pad), (0, 0)))),
            cfg=cfg,
            cross_layer=stack.cross_layer,
            read_site=stack.read_site,
            layers_per_piece=layers_per_piece,
        )
        out.append(np.asarray(r)[: j - i])
        if log is not None:
            log(f"[attribute] {j}/{n_t} targets")
    if not out:
        return np.zeros((0, 0), np.float32)
    rows = np.concatenate(out)
    back = np.empty_like(rows)
    back[order] = rows
    return back


def feature_influence(logit_rows: np.ndarray, feature_rows: dict[int, np.ndarray], n_feat: int, weights) -> np.ndarray:
    """``[n_feat]``: each feature's influence on the logits (:mod:`gemmascope.circuits.influence`)
    through the edges known so far: the logits' rows and the rows of the features already
    attributed (the others' inputs unknown yet, so counted as none). Rows are normalised over all
    their sources (errors and tokens too), as the pruning does on the whole graph."""
    n_l = len(logit_rows)
    a = np.zeros((n_feat + n_l, n_feat + n_l))
    a[n_feat:, :n_feat] = normalise(logit_rows)[:, :n_feat]
    if feature_rows:
        idx = np.fromiter(feature_rows, int)
        a[idx, :n_feat] = normalise(np.stack([feature_rows[i] for i in idx]))[:, :n_feat]
    w = np.concatenate([np.zeros(n_feat), np.asarray(weights, np.float64)])
    return influence(a, w)[:n_feat]


def attribute(
    lm_params,
    cfg,
    tokens,
    stack: TranscoderStack,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 256,
    zero_positions: int = 1,
    max_context: int | None = None,
    max_feature_nodes: int | None = None,
    layers_per_piece: int = LAYERS_PER_PIECE,
    log=None,
) -> Graph:
    """The unpruned attribution graph of ``tokens [T]`` (BOS first) through ``stack`` (module doc).

    batch_size: targets per vector-Jacobian batch (one compile per prompt shape). max_context:
    the model's context length, when known; a longer prompt is an error naming both.
    max_feature_nodes: at most this many feature nodes (long prompts activate more features than
    one wants rows for), chosen as circuit-tracer does: the logits' rows first, then, a batch at a
    time, the not yet attributed features of largest influence on the logits through the edges
    known so far (:func:`feature_influence`), until the cap. The graph then holds those features
    only; the others' direct effects are dropped from every row (``info["active_features_total"]``
    says how many there were).
    layers_per_piece: layers per compiled piece of the backward pass (:func:`_rows`; the graph
    does not depend on it): smaller pieces stop each batch's backward pass closer to its highest
    target, at the cost of more, smaller compiled programs.
    """
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    if tokens.size < 2:
        raise ValueError(f"prompt has {tokens.size} token(s): attribution needs BOS and at least one more")
    if max_context is not None and tokens.size > max_context:
        raise ValueError(f"prompt has {tokens.size} tokens, longer than the model's context of {max_context}")
    if not 0 <= zero_positions < tokens.size:
        raise ValueError(f"zero_positions={zero_positions} must be in [0, {tokens.size})")
    if max_feature_nodes is not None and int(max_feature_nodes) < 1:
        raise ValueError(f"max_feature_nodes must be a positive number of features, got {max_feature_nodes!r}")
    check_against(stack, cfg)
    if int(layers_per_piece) < 1:
        raise ValueError(f"layers_per_piece must be a positive number of layers, got {layers_per_piece!r}")
    consts, features, acts, enc_cols, logits, M = _prepare(
        lm_params, cfg, tokens, stack, zero_positions, int(layers_per_piece)
    )
    logit_tokens, logit_probs = select_logits(
        np.asarray(softcap_logits(jnp.asarray(logits), cfg)), max_n_logits, desired_logit_prob
    )
    u = np.asarray(unembedding(lm_params, cfg), np.float32)
    # The mean over the vocabulary accumulated in float64: in float32 it is off by ~2e-4 relative
    # over 262,144 rows, which moves every logit row by that much (bench/bench_attribution.py).
    logit_vecs = (u[logit_tokens] - np.mean(u, axis=0, keepdims=True, dtype=np.float64)).astype(np.float32)

    L, T = cfg.n_layers, tokens.size
    n_feat = len(features)
    f_layer, f_pos = features[:, 0].astype(np.int32), features[:, 1].astype(np.int32)
    f_vec = enc_cols.reshape(n_feat, cfg.d_model).astype(np.float32)
    n_l = len(logit_tokens)
    jconsts = jax.tree.map(jnp.asarray, consts)
    n_src = n_feat + L * T + T
    nb = max(1, min(int(batch_size), n_feat + n_l))
    rows_of = functools.partial(
        _target_rows,
        lm_params,
        jconsts,
        cfg=cfg,
        stack=stack,
        batch_size=nb,
        layers_per_piece=int(layers_per_piece),
        log=log,
    )
    l_layer, l_pos = np.full(n_l, L, np.int32), np.full(n_l, T - 1, np.int32)
    if max_feature_nodes is None or int(max_feature_nodes) >= n_feat:
        keep = np.arange(n_feat)
        rows = rows_of(
            np.concatenate([f_layer, l_layer]), np.concatenate([f_pos, l_pos]), np.concatenate([f_vec, logit_vecs])
        )
        feature_rows, logit_rows = rows[:n_feat], rows[n_feat:]
    else:
        logit_rows = rows_of(l_layer, l_pos, logit_vecs)
        done: dict[int, np.ndarray] = {}
        while len(done) < int(max_feature_nodes):
            score = feature_influence(logit_rows, done, n_feat, logit_probs)
            score[list(done)] = -np.inf
            take = np.argsort(-score, kind="stable")[: min(nb, int(max_feature_nodes) - len(done))]
            for i, r in zip(take, rows_of(f_layer[take], f_pos[take], f_vec[take]), strict=True):
                done[int(i)] = r
        keep = np.array(sorted(done))
        feature_rows = np.stack([done[i] for i in keep]) if len(keep) else np.zeros((0, n_src), np.float32)
    cols = np.concatenate([keep, np.arange(n_feat, n_src)])  # the kept features' columns, errors, tokens
    n_keep = len(keep)
    n_src_kept = n_keep + L * T + T
    adjacency = np.zeros((n_src_kept + n_l, n_src_kept + n_l), np.float32)
    adjacency[:n_keep, :n_src_kept] = feature_rows[:, cols]
    adjacency[n_src_kept:, :n_src_kept] = logit_rows[:, cols]
    return Graph(
        tokens=tokens,
        active_features=features[keep],
        activations=acts[keep],
        logit_tokens=logit_tokens,
        logit_probabilities=logit_probs,
        adjacency=adjacency,
        n_layers=L,
        info={
            "transcoders": list(stack.names),
            "cross_layer": stack.cross_layer,
            "read_site": stack.read_site,
            "zero_positions": int(zero_positions),
            "max_features_per_token_layer": int(M),
            "active_features_total": int(n_feat),
            "max_feature_nodes": None if max_feature_nodes is None else int(max_feature_nodes),
        },
    )
