"""Influence, pruning and the graph scores of Ameisen et al. (2025), on a :class:`Graph`'s matrix.

*Influence*: with ``A`` the adjacency matrix with absolute values, each row normalised to sum 1
(how a target's input divides among its sources), a node's influence on the output is
``w^T (A + A^2 + ...)``: every path from the logits (weighted by their probabilities ``w``) back
to the node, summed. The graph is a DAG (a source always sits before its target), so ``A`` is
nilpotent and the series ends after at most ``n_nodes`` terms.

*Pruning* keeps the most influential nodes holding ``node_threshold`` of the total influence
(tokens and logits always), then, on the graph of those nodes, the edges holding
``edge_threshold`` of the edge influence (an edge's influence: its normalised weight times its
target's influence, the target's own logit weight included), then drops, until nothing changes,
feature and error nodes left with no outgoing edge and features left with no incoming one.

*Scores*: the replacement score is the share of the tokens' and errors' influence that is the
tokens' (1 = every path from the input to the output goes through features); the completeness
score is the influence-weighted share of each node's input that does not come from error nodes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gemmascope.circuits.attribution import Graph
from gemmascope.circuits.influence import influence, normalise


def logit_weights(graph: Graph) -> np.ndarray:
    """[n_nodes]: the logit nodes' probabilities, 0 elsewhere."""
    w = np.zeros(graph.n_nodes)
    w[graph.logit_start :] = graph.logit_probabilities
    return w


def node_influence(graph: Graph) -> np.ndarray:
    """[n_nodes]: every node's influence on the logits (module doc)."""
    return influence(normalise(graph.adjacency), logit_weights(graph))


def threshold_for(scores: np.ndarray, fraction: float) -> float:
    """The smallest score among the largest scores that together hold ``fraction`` of the total."""
    s = np.sort(np.asarray(scores, np.float64).reshape(-1))[::-1]
    total = s.sum()
    if total <= 0:
        return 0.0
    idx = int(np.searchsorted(np.cumsum(s) / total, fraction))
    return float(s[min(idx, len(s) - 1)])


class Pruned(NamedTuple):
    """node_mask [n_nodes] bool; edge_mask [n_nodes, n_nodes] bool ([target, source]);
    cumulative [n_nodes]: each node's cumulative share of influence in descending order (the
    value circuit-tracer's files carry as ``influence``)."""

    node_mask: np.ndarray
    edge_mask: np.ndarray
    cumulative: np.ndarray


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Pruned node and edge masks (module doc)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    w = logit_weights(graph)
    infl = node_influence(graph)
    keep = infl >= threshold_for(infl, node_threshold)
    keep[graph.token_start :] = True  # tokens and logits
    a = np.where(keep[:, None] & keep[None, :], graph.adjacency, 0.0)
    na = normalise(a)
    edge_scores = na * (influence(na, w) + w)[:, None]
    edges = edge_scores >= threshold_for(edge_scores, edge_threshold)
    edges &= edge_scores > 0
    inner = slice(0, graph.token_start)  # features and errors
    while True:
        before = keep.copy()
        edges &= keep[:, None] & keep[None, :]
        keep[inner] &= edges[:, inner].any(axis=0)  # an outgoing edge
        keep[: graph.n_features] &= edges[: graph.n_features].any(axis=1)  # an incoming edge
        if np.array_equal(keep, before):
            break
    order = np.argsort(-infl, kind="stable")
    cumulative = np.zeros_like(infl)
    total = infl.sum()
    cumulative[order] = np.cumsum(infl[order]) / (total if total > 0 else 1.0)
    return Pruned(keep, edges, cumulative)


def scores(graph: Graph) -> dict[str, float]:
    """``{"replacement_score", "completeness_score"}`` of the unpruned graph (module doc)."""
    w = logit_weights(graph)
    na = normalise(graph.adjacency)
    infl = influence(na, w)
    errors = slice(graph.error_start, graph.token_start)
    tokens = slice(graph.token_start, graph.logit_start)
    tok, err = infl[tokens].sum(), infl[errors].sum()
    non_error = 1.0 - na[:, errors].sum(axis=1)
    out_infl = infl + w
    return {
        "replacement_score": float(tok / (tok + err)) if tok + err > 0 else float("nan"),
        "completeness_score": float((non_error * out_infl).sum() / out_infl.sum()),
    }
