"""Attribution graphs on tiny random LMs: every edge against a finite difference in an independent
frozen replacement model (float64 NumPy, built from the recorded norm denominators and attention
patterns), for per-layer transcoders on a Llama and on a Gemma 2 with both soft-caps, and an
affine CLT on a Gemma 3 with a window."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmascope.circuits import attribution, graph_file, intervene, prune
from gemmascope.circuits.transcoders import TranscoderStack, load_stack, model_mismatch
from gemmascope.lm import model
from gemmascope.lm.config import LMConfig
from gemmascope.sae.files import io as sae_io
from tests.tiny import tiny_llama

#: Edges are float32 gradients; the reference is float64: each edge within this fraction of the
#: largest |edge| into its target (the issue's 1e-4 relative).
REL = 1e-4


def _tiny_gemma3() -> LMConfig:
    return tiny_llama(n_layers=3).replace(
        arch="gemma3", sliding_window=3, query_pre_attn_scalar=8.0, rope_theta_sliding=10_000.0, rope_theta=1e6
    )


def _lm(cfg, seed):
    params = model.init_params(jax.random.key(seed), cfg, std=0.3)
    if cfg.gemma:  # non-trivial norm weights
        k = jax.random.split(jax.random.key(seed + 1), 6)
        lay = dict(params["layers"])
        for i, name in enumerate(("attn_norm", "post_attn_norm", "mlp_norm", "post_mlp_norm", "q_norm", "k_norm")):
            if name in lay:  # q/k norms: Gemma 3 only
                lay[name] = 0.3 * jax.random.normal(k[i], lay[name].shape)
        params = {**params, "layers": lay}
    return params


def _stack(cfg, *, cross_layer, skip, width=12, seed=3):
    """Random raw-unit transcoders whose thresholds let a few features fire per token."""
    rng = np.random.default_rng(seed)
    L, d = cfg.n_layers, cfg.d_model
    p = {
        "W_enc": rng.normal(0, 1.0, (L, d, width)).astype(np.float32),
        "b_enc": rng.normal(0, 0.1, (L, width)).astype(np.float32),
        "threshold": np.full((L, width), 1.0, np.float32),
        "b_dec": rng.normal(0, 0.1, (L, d)).astype(np.float32),
    }
    if cross_layer:
        p["W_dec"] = rng.normal(0, 0.2, (L, width, L, d)).astype(np.float32)
    else:
        p["W_dec"] = rng.normal(0, 0.2, (L, width, d)).astype(np.float32)
    if skip:
        p["W_skip"] = rng.normal(0, 0.1, (L, d, d)).astype(np.float32)
    return TranscoderStack(p, cross_layer=cross_layer, read_site="res_mid" if cross_layer else "mlp_in")


def _frozen_reference(params, cfg, tokens, stack, graph, zero_positions=1):
    """``F(s_feat [n_feat], s_err [L, T], s_emb [T]) -> targets [n_targets]``: the frozen local
    replacement model in float64, from the recorded denominators and patterns (not from jax
    gradients), linear in the scales by construction."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    L, T, d = cfg.n_layers, len(tokens), cfg.d_model
    toks = jnp.asarray(tokens[None], jnp.int32)
    sites = [(l, s) for l in range(L) for s in ("res", "res_mid", "att", "mlp", stack.read_site)]
    caps = {k: f64(v[0]) for k, v in model.forward(params, toks, cfg, capture=sites).captures.items()}
    pats = f64(model.attention_patterns(params, toks, cfg)[:, 0])  # [L, H, T, T]
    lay = {k: f64(v) for k, v in params["layers"].items()}
    eps = cfg.norm_eps

    def inv(x):  # frozen denominators, recorded on the clean run
        return 1.0 / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)

    def scale(w):
        return (1.0 + w) if cfg.gemma else w

    emb = f64(model.embed(params, toks, cfg)[0])
    entering = [emb] + [caps[(l, "res")] for l in range(L - 1)]
    inv_attn = [inv(h) for h in entering]
    inv_post = [inv(caps[(l, "att")] @ lay["o"][l]) for l in range(L)]
    inv_mlp = [inv(caps[(l, "res_mid")]) for l in range(L)]
    inv_final = inv(caps[(L - 1, "res")])
    p = {k: f64(v) for k, v in stack.params.items()}
    replaced = (np.arange(T) >= zero_positions)[:, None]
    feats, acts = graph.active_features, f64(graph.activations)
    G = cfg.n_heads // cfg.n_kv_heads
    err = np.zeros((L, T, d))  # the error nodes, recomputed here from the clean run
    codes = np.zeros((L, T, stack.width))
    codes[feats[:, 0], feats[:, 1], feats[:, 2]] = acts
    for l in range(L):
        if stack.cross_layer:
            rec = sum(codes[s] @ p["W_dec"][s, :, l] for s in range(l + 1))
        else:
            rec = codes[l] @ p["W_dec"][l]
        rec = rec + p["b_dec"][l] + (caps[(l, stack.read_site)] @ p["W_skip"][l] if "W_skip" in p else 0.0)
        err[l] = np.where(replaced, caps[(l, "mlp")] - rec, 0.0)

    def F(s_feat, s_err, s_emb):
        h = s_emb[:, None] * emb
        reads = []
        for l in range(L):
            x = (
                h * inv_attn[l] * scale(lay["attn_norm"][l])
                if cfg.gemma
                else scale(lay["attn_norm"][l]) * h * inv_attn[l]
            )
            v = (x @ lay["v"][l]).reshape(T, cfg.n_kv_heads, cfg.head_dim)
            att = np.stack([pats[l, hh] @ v[:, hh // G] for hh in range(cfg.n_heads)], 1).reshape(T, -1)
            o = att @ lay["o"][l]
            if cfg.gemma:
                o = o * inv_post[l] * scale(lay["post_attn_norm"][l])
            h = h + o
            read = (
                h
                if stack.read_site == "res_mid"
                else (
                    h * inv_mlp[l] * scale(lay["mlp_norm"][l])
                    if cfg.gemma
                    else scale(lay["mlp_norm"][l]) * h * inv_mlp[l]
                )
            )
            reads.append(read)
            w = np.zeros((T, d))
            for i, (fl, fp, ff) in enumerate(feats):
                if stack.cross_layer and fl <= l:
                    w[fp] += s_feat[i] * acts[i] * p["W_dec"][fl, ff, l]
                elif not stack.cross_layer and fl == l:
                    w[fp] += s_feat[i] * acts[i] * p["W_dec"][fl, ff]
            w += s_err[l][:, None] * err[l] + p["b_dec"][l]
            if "W_skip" in p:
                w = w + read @ p["W_skip"][l]
            h = h + np.where(replaced, w, caps[(l, "mlp")])
        final = (
            h * inv_final * scale(f64(params["final_norm"]))
            if cfg.gemma
            else scale(f64(params["final_norm"])) * h * inv_final
        )
        u = f64(attribution.unembedding(params, cfg))
        out = [reads[l][pp] @ p["W_enc"][l][:, ff] for l, pp, ff in feats]
        out += [final[-1] @ (u[t] - u.mean(0)) for t in graph.logit_tokens]
        return np.array(out)

    return F


CASES = {
    "llama_transcoders": (tiny_llama(n_layers=3), False, False),
    "gemma2_softcaps_transcoders": (
        tiny_llama(n_layers=3).replace(
            arch="gemma2", attn_softcap=5.0, final_softcap=3.0, sliding_window=3, query_pre_attn_scalar=8.0
        ),
        False,
        False,
    ),
    "gemma3_affine_clt": (_tiny_gemma3(), True, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_edges_equal_finite_differences_in_frozen_model(case):
    cfg, cross, skip = CASES[case]
    params = _lm(cfg, seed=1)
    stack = _stack(cfg, cross_layer=cross, skip=skip)
    tokens = np.array([cfg.bos_id, 5, 9, 17, 5, 30, 11], np.int64)
    # The backward pass in pieces of 2 layers (layers 0-1, then 2 and the final norm), batches
    # of 16 targets sorted by layer: most batches stop below the top piece.
    kw = dict(max_n_logits=3, desired_logit_prob=0.99, batch_size=16)
    g = attribution.attribute(params, cfg, tokens, stack, layers_per_piece=2, **kw)
    n_feat, L, T = g.n_features, cfg.n_layers, len(tokens)
    assert 10 <= n_feat <= 200, n_feat  # the random stack fires a few features per token
    # The graph does not depend on the pieces: one layer each, or the whole model in one piece
    # (float32 rounding of the same sums, 1e-5 of each row's largest edge)
    for size in (1, L):
        other = attribution.attribute(params, cfg, tokens, stack, layers_per_piece=size, **kw)
        row_max = np.abs(g.adjacency).max(axis=1, keepdims=True) + 1e-30
        np.testing.assert_array_less(np.abs(other.adjacency - g.adjacency) / row_max, 1e-5)
    F = _frozen_reference(params, cfg, tokens, stack, g)
    ones = (np.ones(n_feat), np.ones((L, T)), np.ones(T))
    base = F(*ones)
    # The frozen model at the prompt is the LM: the graph's features are above threshold there.
    b_enc = stack.params["b_enc"][g.active_features[:, 0], g.active_features[:, 2]]
    np.testing.assert_allclose(base[:n_feat] + b_enc, g.activations, rtol=1e-5, atol=1e-5)
    rows = np.concatenate([np.arange(n_feat), np.arange(g.logit_start, g.n_nodes)])
    expected = np.zeros((len(rows), g.logit_start))
    for j in range(g.logit_start):  # remove one source: the change is its edge (the model is linear)
        s = [a.copy() for a in ones]
        if j < n_feat:
            s[0][j] = 0
        elif j < g.token_start:
            s[1].reshape(-1)[j - n_feat] = 0
        else:
            s[2][j - g.token_start] = 0
        expected[:, j] = base - F(*s)
    got = g.adjacency[rows][:, : g.logit_start].astype(np.float64)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    worst = (np.abs(got - expected) / (scale + 1e-30)).max()
    assert worst < REL, f"edge off by {worst:.2e} of its row's largest"
    # Sources that cannot reach a target carry exactly nothing: later-layer features, BOS errors.
    feat_layer = g.active_features[:, 0]
    later = feat_layer[None, :] >= feat_layer[:, None]  # [target, source]
    assert np.all(g.adjacency[:n_feat, :n_feat][later] == 0)
    assert np.all(g.adjacency[:, g.error_start : g.token_start].reshape(-1, L, T)[:, :, 0] == 0)
    assert np.all(g.adjacency[:, g.logit_start :] == 0) and np.all(g.adjacency[n_feat : g.logit_start] == 0)


def test_prune_keeps_influence_and_scores():
    cfg = tiny_llama(n_layers=3)
    params = _lm(cfg, seed=1)
    stack = _stack(cfg, cross_layer=False, skip=False)
    g = attribution.attribute(params, cfg, np.array([cfg.bos_id, 5, 9, 17, 5, 30, 11]), stack, batch_size=64)
    na = prune.normalise(g.adjacency)
    w = prune.logit_weights(g)
    infl = prune.node_influence(g)
    # The series equals the closed form w^T ((I - A)^-1 - I).
    closed = w @ (np.linalg.inv(np.eye(g.n_nodes) - na) - np.eye(g.n_nodes))
    np.testing.assert_allclose(infl, closed, rtol=1e-9, atol=1e-12)
    for thr in (0.5, 0.8):
        kept = infl >= prune.threshold_for(infl, thr)
        assert infl[kept].sum() >= thr * infl.sum()  # the stated fraction of influence kept
        smaller = kept.copy()
        smaller[np.flatnonzero(kept)[np.argmin(infl[kept])]] = False
        assert infl[smaller].sum() < thr * infl.sum()  # and no node more than needed
    pr = prune.prune(g, 0.8, 0.98)
    assert pr.node_mask[g.token_start :].all()
    assert not (pr.edge_mask & ~(pr.node_mask[:, None] & pr.node_mask[None, :])).any()
    feats = np.flatnonzero(pr.node_mask[: g.n_features])
    assert pr.edge_mask[feats].any(axis=1).all() and pr.edge_mask[:, feats].any(axis=0).all()
    sc = prune.scores(g)
    assert 0 < sc["replacement_score"] < 1 and 0 < sc["completeness_score"] < 1
    # Without errors every path goes through features and tokens: both scores are 1.
    g0 = dataclasses.replace(g, adjacency=g.adjacency.copy())
    g0.adjacency[:, g.error_start : g.token_start] = 0
    assert prune.scores(g0) == {"replacement_score": 1.0, "completeness_score": 1.0}


def test_graph_file_follows_circuit_tracer_schema(tmp_path):
    cfg = tiny_llama(n_layers=3)
    params = _lm(cfg, seed=1)
    g = attribution.attribute(params, cfg, np.array([cfg.bos_id, 5, 9, 17]), _stack(cfg, cross_layer=False, skip=False))
    rec = graph_file.graph_record(g, slug="t", scan="tiny", prompt_tokens=["<s>", "a", "\n", "c"])
    path = graph_file.write_graph(str(tmp_path), rec)
    data = json.loads(open(path).read())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["prompt_tokens"][2] == "⏎" and data["metadata"]["schema_version"] == 1
    node_fields = {
        "node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "token_prob": float,
        "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int, "jsNodeId": str, "clerp": str,
    }  # fmt: skip
    ids = set()
    for n in data["nodes"]:
        for k, t in node_fields.items():
            assert isinstance(n[k], t), (k, n)
        assert n["feature_type"] in graph_file.FEATURE_TYPES
        ids.add(n["node_id"])
    # circuit-tracer 0.5.0's ids are unique except error "0_{l}_{p}" against layer-0 feature l at p:
    # the same scheme here (module doc of graph_file), so only that pair may collide.
    clash = len(data["nodes"]) - len(ids)
    errs = {n["node_id"] for n in data["nodes"] if n["feature_type"] == "mlp reconstruction error"}
    l0 = {n["node_id"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder" and n["layer"] == "0"}
    assert clash == len(errs & l0)
    assert all(lk["source"] in ids and lk["target"] in ids and isinstance(lk["weight"], float) for lk in data["links"])
    kinds = [n["feature_type"] for n in data["nodes"]]
    assert kinds.count("embedding") == 4 and kinds.count("logit") == len(g.logit_tokens)
    assert json.loads(open(tmp_path / "graph-metadata.json").read())["graphs"][0]["slug"] == "t"
    # The unpruned graph round-trips through its .npz; a file of something else is named.
    back = graph_file.load_npz(graph_file.save_npz(str(tmp_path / "g.npz"), g))
    for k in graph_file.NPZ_FIELDS:
        np.testing.assert_array_equal(getattr(back, k), getattr(g, k))
    assert back.n_layers == g.n_layers and back.info == g.info
    np.savez(tmp_path / "other.npz", tokens=g.tokens)
    with pytest.raises(ValueError, match=r"other.npz: not an attribution graph file \(missing \['active_features'"):
        graph_file.load_npz(str(tmp_path / "other.npz"))


def test_interventions_agree_where_nothing_is_downstream():
    cfg = tiny_llama(n_layers=3)
    params = _lm(cfg, seed=1)
    stack = _stack(cfg, cross_layer=False, skip=True)
    tokens = np.array([cfg.bos_id, 5, 9, 17, 5])
    codes = np.asarray(
        stack.encode(
            2, model.forward(params, jnp.asarray(tokens[None]), cfg, capture=[(2, "mlp_in")]).captures[(2, "mlp_in")][0]
        )
    )
    f = int(np.argmax(codes[-1]))
    same = intervene.intervene(params, cfg, tokens, stack, [(2, 4, f, float(codes[-1, f]))])
    np.testing.assert_allclose(same["replacement_clean"]["logits"], same["clean"]["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(same["lm"]["logits"], same["clean"]["logits"], rtol=1e-5, atol=1e-5)
    # Off at the last layer and position: nothing downstream, so the LM and the replacement agree,
    # and the logits move by the removed decoder row through the final norm.
    off = intervene.intervene(params, cfg, tokens, stack, [(2, 4, f, 0.0)])
    np.testing.assert_allclose(off["replacement"]["logits"], off["lm"]["logits"], rtol=1e-4, atol=1e-4)
    assert np.abs(off["lm"]["logits"] - off["clean"]["logits"]).max() > 1e-3


def test_bad_inputs_name_the_problem(tmp_path):
    cfg = tiny_llama(n_layers=3)
    params = _lm(cfg, seed=1)
    stack = _stack(cfg, cross_layer=False, skip=False)
    with pytest.raises(ValueError, match="8 tokens, longer than the model's context of 6"):
        attribution.attribute(params, cfg, np.arange(8) + 3, stack, max_context=6)
    short = TranscoderStack({k: v[:2] for k, v in stack.params.items()}, cross_layer=False, read_site="mlp_in")
    with pytest.raises(ValueError, match="cover 2 layer.*LM has 3"):
        attribution.attribute(params, cfg, np.arange(4) + 3, short)
    other = _stack(cfg.replace(d_model=24, head_dim=12), cross_layer=False, skip=False)
    with pytest.raises(ValueError, match="read width 24 .* d_model is 16: transcoders from another model"):
        attribution.attribute(params, cfg, np.arange(4) + 3, other)
    with pytest.raises(ValueError, match="layers_per_piece must be a positive number of layers, got 0"):
        attribution.attribute(params, cfg, np.arange(4) + 3, stack, layers_per_piece=0)
    named = dataclasses.replace(stack, model="SmolLM2-135M")
    assert "trained on 'SmolLM2-135M', the LM loaded is 'Gemma 3 270M'" in model_mismatch(named, "Gemma 3 270M")
    assert model_mismatch(named, "SmolLM2-135M") is None and model_mismatch(stack, "Gemma 3 270M") is None
    # A folder of per-layer transcoder files with a layer missing.
    for layer in (0, 2):
        d = tmp_path / f"layer_{layer}"
        sae_io.save_params(
            str(d / "params.npz"),
            {k: v[layer] for k, v in stack.params.items()},
            {"architecture": "transcoder", "layer": layer, "model": "tiny"},
        )
    with pytest.raises(ValueError, match=r"no transcoder for layer\(s\) \[1\]"):
        load_stack(str(tmp_path))
    sae_io.save_params(
        str(tmp_path / "layer_1" / "params.npz"),
        {k: v[1] for k, v in stack.params.items()},
        {"architecture": "transcoder", "layer": 1, "model": "tiny"},
    )
    loaded = load_stack(str(tmp_path))
    assert not loaded.cross_layer and loaded.read_site == "mlp_in" and loaded.model == "tiny"
    for k, v in stack.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)
