"""A pruned attribution graph as the JSON file circuit-tracer's frontend and Neuronpedia read.

Layout (circuit-tracer 0.5.0's ``frontend/graph_models.py``, schema version 1)::

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
                  "schema_version", + ours: "info"},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
                "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp",
                "influence", "activation"}],
     "links": [{"source": node_id, "target": node_id, "weight"}]}

Node ids: a feature ``"{layer}_{feature}_{pos}"`` (``feature`` field: the Cantor pairing of layer
and feature index, as circuit-tracer), an error ``"0_{layer}_{pos}"``, a token
``"E_{token_id}_{pos}"``, a logit ``"{L+1}_{token_id}_{T-1}"``. (Kept as circuit-tracer writes
them, for its frontend: so an error node's id equals that of the layer-0 feature whose index is
the error's layer, at the same position, when both are kept.) Next to it,
``graph-metadata.json`` lists the graphs of the folder (``{"graphs": [metadata, ...]}``), what the
frontend's index reads. Only kept nodes that still have an edge are written (tokens and logits
always).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from gemmascope.circuits.attribution import Graph
from gemmascope.circuits.prune import Pruned, prune

SCHEMA_VERSION = 1
FEATURE_TYPES = ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")


def cantor(x: int, y: int) -> int:
    """The Cantor pairing of two non-negative integers (a unique id per (layer, feature))."""
    return (x + y) * (x + y + 1) // 2 + y


def display_token(text: str) -> str:
    """A token's text with newlines and tabs made visible (as the frontend shows them)."""
    return text.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def node_record(graph: Graph, i: int, influence: float, token_texts: Sequence[str]) -> dict[str, Any]:
    """Node ``i`` of ``graph`` as a file record (module doc)."""
    kind = graph.node_kind(i)
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": ""}
    if kind == "feature":
        layer, pos, feat = (int(v) for v in graph.active_features[i])
        return {
            **base,
            "node_id": f"{layer}_{feat}_{pos}",
            "feature": cantor(layer, feat),
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": FEATURE_TYPES[0],
            "jsNodeId": f"{layer}_{feat}-0",
            "influence": influence,
            "activation": float(graph.activations[i]),
        }
    if kind == "error":
        layer, pos = divmod(i - graph.error_start, graph.n_pos)
        return {
            **base,
            "node_id": f"0_{layer}_{pos}",
            "feature": -1,
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": FEATURE_TYPES[1],
            "jsNodeId": f"{layer}_{pos}-0",
            "influence": influence,
            "activation": None,
        }
    if kind == "token":
        pos = i - graph.token_start
        tok = int(graph.tokens[pos])
        return {
            **base,
            "node_id": f"E_{tok}_{pos}",
            "feature": pos,
            "layer": "E",
            "ctx_idx": pos,
            "feature_type": FEATURE_TYPES[2],
            "jsNodeId": f"E_{tok}-{pos}",
            "influence": influence,
            "activation": None,
        }
    j = i - graph.logit_start
    tok, prob, pos = int(graph.logit_tokens[j]), float(graph.logit_probabilities[j]), graph.n_pos - 1
    layer = str(graph.n_layers + 1)
    text = token_texts[j] if j < len(token_texts) else str(tok)
    return {
        **base,
        "node_id": f"{layer}_{tok}_{pos}",
        "feature": tok,
        "layer": layer,
        "ctx_idx": pos,
        "feature_type": FEATURE_TYPES[3],
        "token_prob": prob,
        "is_target_logit": j == 0,
        "jsNodeId": f"L_{tok}-{pos}",
        "clerp": f'Output "{display_token(text)}" (p={prob:.3f})',
        "influence": None,
        "activation": None,
    }


def graph_record(
    graph: Graph,
    *,
    slug: str,
    scan: str,
    prompt_tokens: Sequence[str],
    logit_texts: Sequence[str] = (),
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    pruned: Pruned | None = None,
) -> dict[str, Any]:
    """The file's dict (module doc): ``graph`` pruned at the thresholds (or by ``pruned``)."""
    if len(prompt_tokens) != graph.n_pos:
        raise ValueError(f"prompt_tokens has {len(prompt_tokens)} entries, the graph {graph.n_pos} positions")
    pr = pruned if pruned is not None else prune(graph, node_threshold, edge_threshold)
    kept = np.flatnonzero(pr.node_mask)
    nodes = {int(i): node_record(graph, int(i), float(pr.cumulative[i]), logit_texts) for i in kept}
    dst, src = np.nonzero(pr.edge_mask)
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[d]["node_id"], "weight": float(graph.adjacency[d, s])}
        for d, s in zip(dst.tolist(), src.tolist())
        if s in nodes and d in nodes
    ]
    linked = {lk["source"] for lk in links} | {lk["target"] for lk in links}
    used = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [str(n) for n in graph.info.get("transcoders", [])],
        "prompt_tokens": [display_token(t) for t in prompt_tokens],
        "prompt": "".join(prompt_tokens),
        "node_threshold": float(node_threshold),
        "schema_version": SCHEMA_VERSION,
        "info": {k: v for k, v in graph.info.items() if k != "transcoders"},
    }
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q, "nodes": used, "links": links}


NPZ_FIELDS = ("tokens", "active_features", "activations", "logit_tokens", "logit_probabilities", "adjacency")


def save_npz(path: str, graph: Graph) -> str:
    """The unpruned graph's arrays (:data:`NPZ_FIELDS`), ``n_layers`` and ``info`` (as JSON) in one
    ``.npz``; :func:`load_npz` reads it back. Returns ``path``."""
    arrays = {k: getattr(graph, k) for k in NPZ_FIELDS}
    np.savez_compressed(path, n_layers=graph.n_layers, info=json.dumps(graph.info), **arrays)
    return path


def load_npz(path: str) -> Graph:
    """A :class:`Graph` from :func:`save_npz`'s file; ValueError naming the file and the missing
    or inconsistent field otherwise."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in (*NPZ_FIELDS, "n_layers", "info") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: not an attribution graph file (missing {missing})")
        g = Graph(**{k: z[k] for k in NPZ_FIELDS}, n_layers=int(z["n_layers"]), info=json.loads(str(z["info"])))
    if g.adjacency.shape != (g.n_nodes, g.n_nodes):
        raise ValueError(f"{path}: adjacency has shape {g.adjacency.shape}, the node lists make {g.n_nodes} nodes")
    return g


def write_graph(folder: str, record: dict[str, Any]) -> str:
    """Writes ``folder/<slug>.json`` and adds its metadata to ``folder/graph-metadata.json``
    (replacing an entry of the same slug); returns the graph file's path."""
    os.makedirs(folder, exist_ok=True)
    slug = record["metadata"]["slug"]
    path = os.path.join(folder, f"{slug}.json")
    with open(path, "w") as fh:
        json.dump(record, fh)
    index_path = os.path.join(folder, "graph-metadata.json")
    index = {"graphs": []}
    if os.path.exists(index_path):
        with open(index_path) as fh:
            index = json.load(fh)
        if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
            raise ValueError(f"{index_path}: not a graph index (expected {{'graphs': [...]}})")
    index["graphs"] = [g for g in index["graphs"] if g.get("slug") != slug] + [record["metadata"]]
    with open(index_path, "w") as fh:
        json.dump(index, fh, indent=2)
    return path
