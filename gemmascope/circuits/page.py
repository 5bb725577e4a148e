"""An offline HTML view of a pruned attribution graph: one self-contained page (inline script and
style, no network request), read in any browser.

Layout: one column per prompt position, one row per layer (token embeddings at the bottom, the
logits at the top); within a (layer, position) cell the nodes sit side by side. Links are drawn
as lines, width by ``|weight|`` (relative to the largest), blue when positive and red when
negative; hovering a node shows what it is. Feature nodes link to their dashboard page when
``feature_url`` is given (a format string with ``{layer}`` and ``{feature}``, e.g.
``"dash_layer{layer}/latents/{feature}.html"``).

*Top path* to a logit (the page highlights it for the logit chosen in its menu): among the paths
of kept links from a node with no kept input (a token, an error, or a feature whose inputs were
pruned) to the logit, the one with the largest product of normalised link weights (``|w|``
divided by the sum of ``|w|`` into the link's target), found by dynamic programming over the DAG
(:func:`top_path`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


def top_path(record: Mapping[str, Any], target: str) -> list[str]:
    """Node ids of the top path (module doc) ending at node ``target``, from its source to it."""
    incoming: dict[str, list[tuple[str, float]]] = {}
    for lk in record["links"]:
        incoming.setdefault(lk["target"], []).append((lk["source"], abs(float(lk["weight"]))))
    ids = {n["node_id"] for n in record["nodes"]}
    if target not in ids:
        raise ValueError(f"node {target!r} is not in the graph")
    best: dict[str, tuple[float, str | None]] = {}

    def value(n: str) -> float:  # log of the best product; iterative to avoid deep recursion
        stack = [n]
        while stack:
            cur = stack[-1]
            if cur in best:
                stack.pop()
                continue
            ins = incoming.get(cur, [])
            todo = [s for s, _ in ins if s not in best]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            total = sum(w for _, w in ins)
            if not ins or total <= 0:
                best[cur] = (0.0, None)
                continue
            cands = [(best[s][0] + math.log(w / total), s) for s, w in ins if w > 0]
            best[cur] = max(cands) if cands else (0.0, None)
        return best[n][0]

    value(target)
    path, cur = [target], best[target][1]
    while cur is not None:
        path.append(cur)
        cur = best[cur][1]
    return path[::-1]


def page_data(record: Mapping[str, Any], feature_url: str | None = None) -> dict[str, Any]:
    """What the page's script reads: nodes with positions, links, the logits' top paths."""
    n_layers = max(int(n["layer"]) for n in record["nodes"] if n["layer"] != "E")
    nodes = []
    cells: dict[tuple[int, int], int] = {}
    for n in record["nodes"]:
        row = 0 if n["layer"] == "E" else int(n["layer"]) + 1  # embeddings 0, layer l -> l + 1, logits top
        key = (row, int(n["ctx_idx"]))
        slot = cells.get(key, 0)
        cells[key] = slot + 1
        url = None
        if feature_url and n["feature_type"] == "cross layer transcoder":
            layer, feat = n["node_id"].split("_")[:2]
            url = feature_url.format(layer=layer, feature=feat)
        nodes.append(
            {
                "id": n["node_id"],
                "type": n["feature_type"],
                "row": row,
                "col": int(n["ctx_idx"]),
                "slot": slot,
                "label": n["clerp"] or n["node_id"],
                "activation": n.get("activation"),
                "influence": n.get("influence"),
                "url": url,
            }
        )
    for nd in nodes:
        nd["cell"] = cells[(nd["row"], nd["col"])]
    logits = [n["node_id"] for n in record["nodes"] if n["feature_type"] == "logit"]
    return {
        "prompt_tokens": record["metadata"]["prompt_tokens"],
        "n_rows": n_layers + 1,
        "nodes": nodes,
        "links": [[lk["source"], lk["target"], float(lk["weight"])] for lk in record["links"]],
        "logits": [{"id": i, "path": top_path(record, i)} for i in logits],
    }


_STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:8px 16px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:16px;margin:4px 0} #info{color:#555;min-height:1.2em}
svg{display:block;margin:8px 16px;background:#fff;border:1px solid #eee}
line.link{stroke-opacity:.35} line.link.pos{stroke:#2c6fbb} line.link.neg{stroke:#c0392b}
circle{stroke:#333;stroke-width:.5} circle.feature{fill:#f5b041} circle.error{fill:#bbb}
circle.token{fill:#58d68d} circle.logit{fill:#af7ac5}
.dim{opacity:.12} .onpath{stroke:#000;stroke-width:2.5;stroke-opacity:1;opacity:1}
text.tok{font-size:11px;fill:#333}
"""

_SCRIPT = """
const D = JSON.parse(document.getElementById('graph-data').textContent);
const NS = 'http://www.w3.org/2000/svg', H = 34, PAD = 40;
const svg = document.getElementById('graph');
const nCols = D.prompt_tokens.length, nRows = D.n_rows + 1;
// Each position's column is as wide as its most crowded cell needs (12 px a node, 80 at least).
const colW = Array(nCols).fill(80);
for (const n of D.nodes) colW[n.col] = Math.max(colW[n.col], 12 * (n.cell + 1));
const colX = colW.map((_, i) => PAD + colW.slice(0, i).reduce((a, b) => a + b, 0));
svg.setAttribute('width', PAD * 2 + colW.reduce((a, b) => a + b, 0));
svg.setAttribute('height', PAD * 2 + nRows * H + 20);
const pos = {};
for (const n of D.nodes) {
  const x = colX[n.col] + (n.slot + 1) * colW[n.col] / (n.cell + 1);
  const y = PAD + (nRows - 1 - n.row) * H;
  pos[n.id] = [x, y];
}
const maxW = Math.max(1e-30, ...D.links.map(l => Math.abs(l[2])));
const lines = [];
for (const [s, t, w] of D.links) {
  const e = document.createElementNS(NS, 'line');
  const [x1, y1] = pos[s], [x2, y2] = pos[t];
  e.setAttribute('x1', x1); e.setAttribute('y1', y1); e.setAttribute('x2', x2); e.setAttribute('y2', y2);
  e.setAttribute('class', 'link ' + (w >= 0 ? 'pos' : 'neg'));
  e.setAttribute('stroke-width', 0.3 + 3 * Math.abs(w) / maxW);
  e.dataset.source = s; e.dataset.target = t;
  svg.appendChild(e); lines.push(e);
}
const kinds = {'cross layer transcoder': 'feature', 'mlp reconstruction error': 'error',
               'embedding': 'token', 'logit': 'logit'};
const circles = {};
for (const n of D.nodes) {
  let parent = svg;
  if (n.url) {
    parent = document.createElementNS(NS, 'a'); parent.setAttribute('href', n.url); svg.appendChild(parent);
  }
  const c = document.createElementNS(NS, 'circle');
  c.setAttribute('cx', pos[n.id][0]); c.setAttribute('cy', pos[n.id][1]); c.setAttribute('r', 5);
  c.setAttribute('class', kinds[n.type]); c.dataset.id = n.id;
  const title = document.createElementNS(NS, 'title');
  let text = n.type + ' ' + n.id + (n.label !== n.id ? ': ' + n.label : '');
  if (n.activation !== null) text += ', activation ' + n.activation.toPrecision(3);
  if (n.influence !== null) text += ', cumulative influence ' + n.influence.toPrecision(3);
  title.textContent = text; c.appendChild(title);
  c.addEventListener('mouseenter', () => { document.getElementById('info').textContent = text; });
  parent.appendChild(c); circles[n.id] = c;
}
D.prompt_tokens.forEach((t, i) => {
  const e = document.createElementNS(NS, 'text');
  e.setAttribute('x', colX[i] + 4); e.setAttribute('y', PAD + nRows * H + 4);
  e.setAttribute('class', 'tok'); e.textContent = t; svg.appendChild(e);
});
const menu = document.getElementById('logit');
for (const l of D.logits) {
  const o = document.createElement('option'); o.value = l.id;
  o.textContent = D.nodes.find(n => n.id === l.id).label; menu.appendChild(o);
}
function highlight(id) {
  const path = (D.logits.find(l => l.id === id) || {path: []}).path;
  const on = new Set(path), pairs = new Set(path.slice(1).map((t, i) => path[i] + '>' + t));
  for (const [nid, c] of Object.entries(circles)) c.classList.toggle('onpath', on.has(nid));
  for (const e of lines) e.classList.toggle('onpath', pairs.has(e.dataset.source + '>' + e.dataset.target));
  for (const e of lines) e.classList.toggle('dim', path.length > 0 && !e.classList.contains('onpath'));
}
menu.addEventListener('change', () => highlight(menu.value));
if (D.logits.length) highlight(D.logits[0].id);
"""


def render(record: Mapping[str, Any], feature_url: str | None = None) -> str:
    """The page's HTML (module doc)."""
    data = json.dumps(page_data(record, feature_url)).replace("</", "<\\/")
    meta = record["metadata"]
    title = f"attribution graph: {meta['slug']}"
    esc = lambda s: str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><div>prompt: <span id="prompt">{esc(meta["prompt"])}</span></div>'
        '<label>top path to <select id="logit"></select></label> <span id="info"></span></header>'
        '<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>'
        f'<script type="application/json" id="graph-data">{data}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_page(folder: str, record: Mapping[str, Any], feature_url: str | None = None) -> str:
    """Writes ``folder/<slug>.html``; returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{record['metadata']['slug']}.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render(record, feature_url))
    return path
