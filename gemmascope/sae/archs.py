"""The SAE architectures the sweep trainer knows, each a module satisfying
:class:`gemmascope.sae.common.Architecture` (checked at import).

The modules import :mod:`gemmascope.sae.common` for what they share, never this registry.
"""

from __future__ import annotations

from gemmascope.sae import batchtopk, gated, jumprelu, relu, topk
from gemmascope.sae.common import Architecture

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
