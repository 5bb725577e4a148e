"""Circuit tracing on transcoders and cross-layer transcoders (Ameisen et al. 2025).

- :mod:`gemmascope.circuits.transcoders`: the per-layer transcoders or the CLT of a graph, as one
  :class:`~gemmascope.circuits.transcoders.TranscoderStack`, loaded from our exported files.
- :mod:`gemmascope.circuits.attribution`: the local replacement model of a prompt and the
  adjacency matrix of direct effects (:func:`~gemmascope.circuits.attribution.attribute`).
- :mod:`gemmascope.circuits.prune`: influence, pruning, replacement and completeness scores.
- :mod:`gemmascope.circuits.graph_file`: the pruned graph as circuit-tracer's JSON file.
- :mod:`gemmascope.circuits.page`: an offline HTML view of it, with the top path to each logit.
- :mod:`gemmascope.circuits.intervene`: set features in the LM and in the replacement model.
"""
