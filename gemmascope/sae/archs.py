"""The registry of SAE architectures: one line per architecture module (:data:`ARCHS`).

Each module satisfies :class:`gemmascope.sae.common.Architecture` (checked at registration) and
is the only holder of its facts: its name, file layout, sweep axis, Matryoshka support, the
fields only it reads, its sparsity argument, AuxK use, variant suffix and metadata. Everything
the rest of the code asks about architectures (which exist, which sweep over k, which train
Matryoshka-style, which file layout a ``metadata.json`` architecture has) is derived here from
those declarations, so a new architecture is its module plus one line below.

The modules import :mod:`gemmascope.sae.common` for what they share, never this registry.
"""

from __future__ import annotations

import typing
from types import ModuleType

from gemmascope.sae import batchtopk, clt, crosscoder, gated, jumprelu, layer_saes, relu, topk
from gemmascope.sae.common import Architecture, SAEConfig, SweepAxis
from gemmascope.sae.transcoder import Transcoder
from gemmascope.sites import pair_of, register_span, span_of

ARCHS: dict[str, Architecture] = {}
#: Multi-layer architectures by name: classes with ``for_span(span, n_layers, d_out)`` whose
#: modules declare the cross-layer sites they train at (``SPANS``).
MULTILAYER: dict[str, type] = {}


def register(module: ModuleType | Architecture) -> Architecture:
    """Adds an architecture module (or object) under its ``NAME``; raises ``TypeError`` naming
    what it lacks of the contract. Returns it."""
    if not isinstance(module, Architecture):
        contract = set(typing.get_type_hints(Architecture)) | {
            n for n, v in vars(Architecture).items() if not n.startswith("_") and callable(v)
        }
        missing = sorted(n for n in contract if not hasattr(module, n))
        raise TypeError(
            f"{getattr(module, '__name__', module)} does not satisfy sae.common.Architecture (missing {missing})"
        )
    ARCHS[module.NAME] = module
    return module


def register_multilayer(module: ModuleType, *classes: type) -> None:
    """Adds a multi-layer architecture module: its classes (each with ``NAME`` and
    ``for_span``) and the cross-layer sites its ``SPANS`` declare, each naming one of them."""
    for cls in classes:
        MULTILAYER[cls.NAME] = cls
    for name, span in module.SPANS.items():
        if span.arch not in MULTILAYER:
            raise TypeError(f"{module.__name__}: site {name!r} names architecture {span.arch!r}, not registered")
        register_span(name, span)


for _m in (jumprelu, relu, topk, gated, batchtopk):
    register(_m)
register_multilayer(clt, clt.CrossLayerTranscoder)
register_multilayer(crosscoder, crosscoder.WeaklyCausalCrosscoder, crosscoder.AcausalCrosscoder)
register_multilayer(layer_saes, layer_saes.LayerSAEs)


def get(name: str) -> Architecture:
    if name not in ARCHS:
        raise ValueError(f"unknown SAE architecture {name!r} (known: {sorted(ARCHS)})")
    return ARCHS[name]


def names() -> tuple[str, ...]:
    """Every registered architecture, in registration order."""
    return tuple(ARCHS)


def sweep_axis(config) -> SweepAxis:
    """The sweep axis of ``config`` (its ``sae.arch`` under its ``sae`` settings)."""
    return get(config.sae.arch).sweep_axis(SAEConfig.from_config(config))


def k_archs() -> tuple[str, ...]:
    """The architectures whose sweep is over k (static ints in the step) under the defaults."""
    return tuple(n for n, m in ARCHS.items() if m.sweep_axis(SAEConfig()).static)


def matryoshka_archs() -> tuple[str, ...]:
    """The architectures that train Matryoshka-style."""
    return tuple(n for n, m in ARCHS.items() if m.MATRYOSHKA)


def file_layouts() -> dict[str, str]:
    """``metadata.json`` ``architecture`` -> file layout, for every architecture, the
    transcoder (a JumpReLU writing to another site) and the multi-layer ones."""
    multi = {n: c.FILE_LAYOUT for n, c in MULTILAYER.items()}
    return {**{n: m.FILE_LAYOUT for n, m in ARCHS.items()}, Transcoder.NAME: Transcoder.FILE_LAYOUT, **multi}


def own_fields() -> dict[str, tuple[str, ...]]:
    """``sae`` field -> the architectures that read it, for the fields some architecture owns."""
    out: dict[str, tuple[str, ...]] = {}
    for n, m in ARCHS.items():
        for f in m.OWN_FIELDS:
            out[f] = out.get(f, ()) + (n,)
    return out


def for_site(config, site: str, d_out: int | None = None, *, n_layers: int = 1) -> Architecture:
    """The architecture training at ``site``: ``config.sae.arch`` for a single site; for a paired
    site (``config.sites`` entry of :data:`gemmascope.sites.PAIR_SITES`) a JumpReLU
    :class:`~gemmascope.sae.transcoder.Transcoder` writing ``d_out`` features (the paired
    source's ``d_out``), affine as the pair says; for a cross-layer site
    (:data:`gemmascope.sites.SPAN_SITES`) the multi-layer architecture its span names
    (:data:`MULTILAYER`) over the source's ``n_layers``. ``config.sae.arch`` must then be
    ``"jumprelu"`` (the config's validation says so first)."""
    pair, span = pair_of(site), span_of(site)
    if pair is None and span is None:
        return get(config.sae.arch)
    if config.sae.arch != Transcoder.BASE:
        raise ValueError(f"config.sae.arch: site {site!r} trains a JumpReLU model, not {config.sae.arch!r}")
    if d_out is None:
        raise ValueError(f"site {site!r}: a transcoder needs the output width d_out of its paired source")
    if span is None:
        arch = Transcoder(int(d_out), pair.affine)
    else:
        arch = MULTILAYER[span.arch].for_span(span, int(n_layers), int(d_out))
    if not isinstance(arch, Architecture):
        raise TypeError(f"{type(arch).__name__} does not satisfy sae.common.Architecture")
    return arch
