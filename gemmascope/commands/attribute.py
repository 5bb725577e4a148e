r"""Build the attribution graph of one prompt through per-layer transcoders or a CLT.

    python launch/attribute.py --model=embedded:gemma3-270m \
        --transcoders=workdirs/clt/saes/clt/layers0-17/width_1k/average_l0_16 \
        --prompt="The capital of France is" --out=workdirs/graphs

``--transcoders``: a CLT folder (``config.json`` + ``params_layer_<i>.safetensors``) or a folder
holding one exported transcoder per layer (``layer_<i>/.../params.npz``). Writes
``<out>/<slug>.json`` (circuit-tracer's graph format, pruned at ``--node_threshold`` /
``--edge_threshold``), ``<out>/<slug>.html`` (an offline view, :mod:`gemmascope.circuits.page`),
``<out>/graph-metadata.json`` and ``<out>/<slug>.npz`` (the unpruned
adjacency matrix and node lists), and prints the top logits and the graph's replacement and
completeness scores. ``--intervene=layer:position:feature:value`` (repeatable) also sets those
features in the LM and in the replacement model and prints the top logits before and after.
"""

import functools

from absl import flags

from gemmascope.commands import run_module


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`)."""
    global \
        _MODEL, \
        _TRANSCODERS, \
        _PROMPT, \
        _OUT, \
        _SLUG, \
        _NODE, \
        _EDGE, \
        _MAX_LOGITS, \
        _LOGIT_P, \
        _BATCH, \
        _MAX_FEATURES, \
        _INTERVENE, \
        _FEATURE_URL
    _MODEL = flags.DEFINE_string("model", "embedded:gemma3-270m", "LM: 'embedded[:name]', a .gguf, a HF dir or hub id.")
    _TRANSCODERS = flags.DEFINE_string("transcoders", None, "CLT folder, or a folder of per-layer transcoders.")
    _PROMPT = flags.DEFINE_string("prompt", None, "Prompt text (BOS is prepended).")
    _OUT = flags.DEFINE_string("out", None, "Folder for the graph files.")
    _SLUG = flags.DEFINE_string("slug", None, "Graph name (default: from the prompt).")
    _NODE = flags.DEFINE_float("node_threshold", 0.8, "Keep the nodes holding this share of influence.")
    _EDGE = flags.DEFINE_float("edge_threshold", 0.98, "Keep the edges holding this share of influence.")
    _MAX_LOGITS = flags.DEFINE_integer("max_n_logits", 10, "At most this many logit targets.")
    _LOGIT_P = flags.DEFINE_float("desired_logit_prob", 0.95, "Logit targets until their probability reaches this.")
    _BATCH = flags.DEFINE_integer("batch_size", 256, "Targets per vector-Jacobian batch.")
    _MAX_FEATURES = flags.DEFINE_integer(
        "max_feature_nodes", None, "At most this many features, the most influential on the logits first."
    )
    _INTERVENE = flags.DEFINE_multi_string("intervene", [], "layer:position:feature:value (repeatable).")
    _FEATURE_URL = flags.DEFINE_string(
        "feature_url", None, "Link feature nodes to dashboards: a format string with {layer} and {feature}."
    )
    flags.mark_flags_as_required(["transcoders", "prompt", "out"])


def _slug(prompt: str) -> str:
    s = "".join(c if c.isalnum() else "-" for c in prompt.lower()).strip("-")
    return "-".join(p for p in s.split("-") if p)[:48] or "graph"


def parse_intervention(text: str) -> tuple[int, int, int, float]:
    """``"layer:position:feature:value"`` -> tuple; ValueError naming the flag value."""
    parts = text.split(":")
    try:
        if len(parts) != 4:
            raise ValueError
        return int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])
    except ValueError:
        raise ValueError(f"--intervene={text!r}: expected layer:position:feature:value, e.g. 3:5:120:0") from None


def main(argv):
    del argv
    import time

    import numpy as np

    from gemmascope.circuits import attribution, graph_file, intervene, page, prune
    from gemmascope.circuits.transcoders import check_against, load_stack, model_mismatch
    from gemmascope.lm.loading import context_length, load_lm

    interventions = [parse_intervention(t) for t in _INTERVENE.value]
    stack = load_stack(_TRANSCODERS.value)
    lm = load_lm(_MODEL.value, log=print)
    check_against(stack, lm.cfg)
    warning = model_mismatch(stack, lm.name)
    if warning:
        print(f"[attribute] warning: {warning}")
    cfg, tok = lm.cfg, lm.tokenizer
    ids = [cfg.bos_id] + list(tok(_PROMPT.value, add_special_tokens=False)["input_ids"])
    t0 = time.time()
    graph = attribution.attribute(
        lm.params,
        cfg,
        np.array(ids),
        stack,
        max_n_logits=_MAX_LOGITS.value,
        desired_logit_prob=_LOGIT_P.value,
        batch_size=_BATCH.value,
        max_context=context_length(_MODEL.value),
        max_feature_nodes=_MAX_FEATURES.value,
        log=print,
    )
    seconds = time.time() - t0
    texts = [tok.decode([i]) for i in ids]
    logit_texts = [tok.decode([int(t)]) for t in graph.logit_tokens]
    sc = prune.scores(graph)
    graph.info.update(model=lm.name, seconds=round(seconds, 2), **sc)
    slug = _SLUG.value or _slug(_PROMPT.value)
    rec = graph_file.graph_record(
        graph,
        slug=slug,
        scan=lm.name,
        prompt_tokens=texts,
        logit_texts=logit_texts,
        node_threshold=_NODE.value,
        edge_threshold=_EDGE.value,
    )
    path = graph_file.write_graph(_OUT.value, rec)
    html = page.write_page(_OUT.value, rec, feature_url=_FEATURE_URL.value)
    graph_file.save_npz(f"{_OUT.value}/{slug}.npz", graph)
    print(f"[attribute] {graph.n_features} active features, {graph.n_nodes} nodes, {seconds:.1f}s")
    print(
        "[attribute] top logits: " + ", ".join(f"{t!r} {p:.3f}" for t, p in zip(logit_texts, graph.logit_probabilities))
    )
    print(f"[attribute] replacement score {sc['replacement_score']:.3f}, completeness {sc['completeness_score']:.3f}")
    print(f"[attribute] pruned graph: {len(rec['nodes'])} nodes, {len(rec['links'])} links -> {path}, {html}")
    if interventions:
        res = intervene.intervene(lm.params, cfg, np.array(ids), stack, interventions)
        for name in ("clean", "lm", "replacement_clean", "replacement"):
            top = ", ".join(f"{tok.decode([t])!r} {p:.3f}" for t, p in res[name]["top"])
            print(f"[intervene] {name:>17}: {top}")


def run(argv: list[str] | None = None) -> None:
    """``gemmascope attribute ...`` and ``python launch/attribute.py ...``."""
    define_flags()
    run_module(__name__, main, argv)
