"""Interventions that test what a graph claims: set a feature's activation (at one position) and
read the change in the next-token distribution of the prompt's last position, two ways.

* **In the LM**, through the transcoder's decoder: the MLP outputs of the layers the feature
  writes get ``(new - old) * W_dec`` added at its position; everything downstream (attention,
  norms, MLPs) runs live. What a researcher would do to the real model.
* **In the replacement model**: every MLP replaced by its transcoders' output plus the prompt's
  error node (held fixed), every feature recomputed from its read in this forward except the
  clamped ones (attention and norms live). Downstream features respond, as in circuit-tracer's
  ``feature_intervention``.

``interventions``: ``[(layer, position, feature, value)]``; a feature that was not active may be
set too (value 0 switches an active one off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from gemmascope.circuits.attribution import clean_pass
from gemmascope.circuits.transcoders import TranscoderStack, check_against
from gemmascope.lm.model import forward, softcap_logits

Intervention = tuple[int, int, int, float]


def _check(interventions: Sequence[Intervention], stack: TranscoderStack, T: int) -> list[Intervention]:
    out = []
    for iv in interventions:
        layer, pos, feat, value = iv
        if not 0 <= int(layer) < stack.n_layers or not 0 <= int(pos) < T or not 0 <= int(feat) < stack.width:
            raise ValueError(
                f"intervention {iv}: (layer, position, feature) must be within ({stack.n_layers}, {T}, {stack.width})"
            )
        out.append((int(layer), int(pos), int(feat), float(value)))
    return out


def _last_logits(lm_params, cfg, tokens, splice) -> np.ndarray:
    out = forward(lm_params, jnp.asarray(tokens[None], jnp.int32), cfg, splice=splice)
    return np.asarray(out.logits[0, -1], np.float64)


def intervene(
    lm_params,
    cfg,
    tokens,
    stack: TranscoderStack,
    interventions: Sequence[Intervention],
    *,
    top_k: int = 5,
    zero_positions: int = 1,
) -> dict[str, Any]:
    """``{"clean", "lm", "replacement"}``, each ``{"top": [(token, prob)], "logits" [V]}`` of the
    last position, plus ``"replacement_clean"`` (the replacement model without intervention; it
    equals the LM's up to float rounding because the error nodes are kept)."""
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    check_against(stack, cfg)
    ivs = _check(interventions, stack, len(tokens))
    L, T = cfg.n_layers, len(tokens)
    c = clean_pass(lm_params, cfg, tokens, stack, zero_positions)
    codes, replaced = c["codes"], c["replaced"]
    # The error nodes; before zero_positions (BOS) the whole MLP output, a constant as in the graph.
    errs = np.where(replaced[None, :, None], c["mlp"] - c["recon"], c["mlp"])

    # In the LM: add (new - old) times the decoder rows to the MLP outputs the feature writes.
    delta = np.zeros((L, T, cfg.d_model), np.float32)
    for layer, pos, feat, value in ivs:
        old = float(codes[layer][pos, feat])
        rows = stack.decoder_rows(layer, np.array([feat]))[0]  # [d] or [L, d]
        if stack.cross_layer:
            delta[:, pos] += (value - old) * rows
        else:
            delta[layer, pos] += (value - old) * rows
    lm_splice = {(l, "mlp"): (lambda a, l=l: a + jnp.asarray(delta[l])[None]) for l in range(L) if delta[l].any()}

    def replacement_splice(clamp: Sequence[Intervention]):
        live: list = [None] * L
        reads: list = [None] * L
        fixed = {}
        for layer, pos, feat, value in clamp:
            fixed.setdefault(layer, []).append((pos, feat, value))

        def read_fn(l):
            def fn(a):
                c = stack.encode(l, a[0]) * jnp.asarray(replaced, jnp.float32)[:, None]
                for pos, feat, value in fixed.get(l, []):
                    c = c.at[pos, feat].set(value)
                live[l], reads[l] = c, a[0]
                return a

            return fn

        def mlp_fn(l):
            def fn(a):
                y = jnp.where(jnp.asarray(replaced)[:, None], stack.write(l, live, reads[l]), 0.0)
                return (y + jnp.asarray(errs[l]))[None].astype(a.dtype)

            return fn

        sp = {(l, stack.read_site): read_fn(l) for l in range(L)}
        sp.update({(l, "mlp"): mlp_fn(l) for l in range(L)})
        return sp

    def summary(logits):
        z = np.asarray(softcap_logits(jnp.asarray(logits), cfg), np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        top = np.argsort(-p)[:top_k]
        return {"top": [(int(t), float(p[t])) for t in top], "logits": z}

    return {
        "clean": summary(_last_logits(lm_params, cfg, tokens, None)),
        "lm": summary(_last_logits(lm_params, cfg, tokens, lm_splice)),
        "replacement_clean": summary(_last_logits(lm_params, cfg, tokens, replacement_splice([]))),
        "replacement": summary(_last_logits(lm_params, cfg, tokens, replacement_splice(ivs))),
    }


def predicted_logit_change(graph, feature_node: int, scale: float) -> np.ndarray:
    """What the graph predicts for the logit targets ``[k]`` when feature node ``feature_node``'s
    activation is multiplied by ``scale``: its direct effects times ``scale - 1`` (first order:
    paths through other features are what the intervention in the models adds)."""
    return (scale - 1.0) * graph.adjacency[graph.logit_start :, feature_node].astype(np.float64)
