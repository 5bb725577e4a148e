"""The sites an SAE can read, named in ``config.sites`` and in exported metadata: the LM's own
(:data:`LM_SITES`, one activation each), the paired sites of transcoders (:data:`PAIR_SITES`,
an input site and the output site it predicts) and the cross-layer sites of multi-layer models
(:data:`SPAN_SITES`, registered by their architectures).

A module of its own, below every other: the config, the trainer, the evaluator and the dashboard
all ask it what a site is, so none of them imports another to learn it.
"""

from __future__ import annotations

import dataclasses

# gemmascope.lm.config.SITES (mlp_in: MLP input, for transcoders; res_mid: residual before the
# pre-MLP norm, hook_resid_mid, for cross-layer transcoders)
LM_SITES = ("res", "att", "mlp", "mlp_in", "res_mid")


@dataclasses.dataclass(frozen=True)
class SitePair:
    """A transcoder's location: it reads ``input_site`` and predicts ``output_site`` of the same
    layer; ``affine`` adds the trained skip ``x_in @ W_skip`` (Gemma Scope 2's affine transcoders)."""

    input_site: str
    output_site: str
    affine: bool = False


#: Paired sites (transcoders), named in ``config.sites`` like the LM sites: the MLP's input after
#: its pre-norm -> the MLP's output, plain or with the affine skip connection.
PAIR_SITES = {
    "transcoder": SitePair("mlp_in", "mlp", False),
    "transcoder_affine": SitePair("mlp_in", "mlp", True),
}


@dataclasses.dataclass(frozen=True)
class LayerSpan:
    """A cross-layer model's location: it reads ``input_site`` at every layer of ``config.layers``
    and writes ``output_site`` at each, trained as one model from one LM pass per batch, by the
    architecture registered as ``arch`` (:func:`gemmascope.sae.archs.for_site`); ``affine`` adds
    a per-layer skip, ``causal`` says whether a feature reads one layer and writes that layer and
    the later ones (a CLT, a weakly causal crosscoder) or reads and writes them all (an acausal
    crosscoder)."""

    input_site: str
    output_site: str
    arch: str
    affine: bool = False
    causal: bool = True


#: Cross-layer sites, declared by the architectures that train them (their ``SPANS``: the CLT's
#: ``clt``/``clt_affine``, the crosscoders' ``crosscoder``/``crosscoder_acausal``, the per-layer
#: SAEs' ``res_all``/``mlp_all``/``att_all``) and added here
#: by the registry (:func:`gemmascope.sae.archs.register_multilayer`; every run's config
#: validation imports it), so that a multi-layer architecture is its module and one registry line.
SPAN_SITES: dict[str, LayerSpan] = {}


def register_span(name: str, span: LayerSpan) -> None:
    """Adds the cross-layer site ``name``; a name already taken by another site raises ValueError."""
    taken = name in LM_SITES or name in PAIR_SITES or name == "toy"
    if taken or (name in SPAN_SITES and SPAN_SITES[name] != span):
        raise ValueError(f"site {name!r} is already defined")
    SPAN_SITES[name] = span


def known_sites() -> tuple[str, ...]:
    """Every site a config may name: the LM's, the transcoders' pairs, the registered cross-layer
    sites and ``toy``."""
    return LM_SITES + tuple(PAIR_SITES) + tuple(SPAN_SITES) + ("toy",)


def pair_of(site: str) -> SitePair | None:
    """The :class:`SitePair` a transcoder site names (``None`` for a single site)."""
    return PAIR_SITES.get(site)


def span_of(site: str) -> LayerSpan | None:
    """The :class:`LayerSpan` a cross-layer site names (``None`` for any other site)."""
    return SPAN_SITES.get(site)


def layers_name(layer) -> str:
    """A location's layers in names: ``15 -> "layer15"``; a cross-layer site's tuple
    ``(0, 1, ..., 17) -> "layers0-17"`` (a consecutive run), ``(2, 5, 9) -> "layers2_5_9"``."""
    if isinstance(layer, (int,)) or not hasattr(layer, "__len__"):
        return f"layer{int(layer)}"
    ls = [int(l) for l in layer]
    if len(ls) > 2 and ls == list(range(ls[0], ls[-1] + 1)):
        return f"layers{ls[0]}-{ls[-1]}"
    return "layers" + "_".join(str(l) for l in ls)


def component_sites(sites) -> tuple[str, ...]:
    """The LM sites behind ``sites`` (pair and cross-layer sites expanded into their input and
    output sites), each once, in order: ``("res", "transcoder") -> ("res", "mlp_in", "mlp")``."""
    out: list[str] = []
    for s in sites:
        pair = pair_of(s) or span_of(s)
        for c in (pair.input_site, pair.output_site) if pair else (s,):
            if c not in out:
                out.append(c)
    return tuple(out)


def site_pairs(sites) -> tuple[tuple[str, str], ...]:
    """The distinct ``(input_site, output_site)`` pairs named in ``sites`` (a plain and an affine
    transcoder of the same sites share one pair of stored arrays)."""
    out: list[tuple[str, str]] = []
    for s in sites:
        pair = pair_of(s)
        if pair and (pair.input_site, pair.output_site) not in out:
            out.append((pair.input_site, pair.output_site))
    return tuple(out)
