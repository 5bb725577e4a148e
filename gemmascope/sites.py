"""The sites an SAE can read, named in ``config.sites`` and in exported metadata: the LM's own
(:data:`LM_SITES`, one activation each) and the paired sites of transcoders (:data:`PAIR_SITES`,
an input site and the output site it predicts).

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
SITES = LM_SITES + tuple(PAIR_SITES) + ("toy",)


def pair_of(site: str) -> SitePair | None:
    """The :class:`SitePair` a transcoder site names (``None`` for a single site)."""
    return PAIR_SITES.get(site)


def component_sites(sites) -> tuple[str, ...]:
    """The LM sites behind ``sites`` (pair sites expanded into their input and output sites),
    each once, in order: ``("res", "transcoder") -> ("res", "mlp_in", "mlp")``."""
    out: list[str] = []
    for s in sites:
        pair = pair_of(s)
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
