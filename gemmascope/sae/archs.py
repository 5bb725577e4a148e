"""The SAE architectures the sweep trainer knows, each a module satisfying
:class:`gemmascope.sae.common.Architecture` (checked at import).

The modules import :mod:`gemmascope.sae.common` for what they share, never this registry.
"""

from __future__ import annotations

from gemmascope.sae import batchtopk, gated, jumprelu, relu, topk
from gemmascope.sae.common import Architecture
from gemmascope.sae.transcoder import Transcoder
from gemmascope.sites import pair_of

ARCHS: dict[str, Architecture] = {m.NAME: m for m in (jumprelu, relu, topk, gated, batchtopk)}

for _m in ARCHS.values():
    if not isinstance(_m, Architecture):
        names = (
            "NAME",
            "UNIT_NORM_DECODER",
            "FILE_LAYOUT",
            "init",
            "encode_train",
            "decode_train",
            "loss",
            "export_layout",
            "thresholds",
            "after_update",
        )
        missing = [n for n in names if not hasattr(_m, n)]
        raise TypeError(f"{_m.__name__} does not satisfy sae.common.Architecture (missing {missing})")


def get(name: str) -> Architecture:
    if name not in ARCHS:
        raise ValueError(f"unknown SAE architecture {name!r} (known: {sorted(ARCHS)})")
    return ARCHS[name]


def for_site(config, site: str, d_out: int | None = None) -> Architecture:
    """The architecture training at ``site``: ``config.sae.arch`` for a single site; for a paired
    site (``config.sites`` entry of :data:`gemmascope.sites.PAIR_SITES`) a JumpReLU
    :class:`~gemmascope.sae.transcoder.Transcoder` writing ``d_out`` features (the paired
    source's ``d_out``), affine as the pair says. ``config.sae.arch`` must then be ``"jumprelu"``
    (the config's validation says so first)."""
    pair = pair_of(site)
    if pair is None:
        return get(config.sae.arch)
    if config.sae.arch != "jumprelu":
        raise ValueError(f"config.sae.arch: site {site!r} trains a JumpReLU transcoder, not {config.sae.arch!r}")
    if d_out is None:
        raise ValueError(f"site {site!r}: a transcoder needs the output width d_out of its paired source")
    arch = Transcoder(int(d_out), pair.affine)
    if not isinstance(arch, Architecture):
        raise TypeError("sae.transcoder.Transcoder does not satisfy sae.common.Architecture")
    return arch
