"""Gemma Scope's coverage of Gemma 2 (docs/SPEC.md section 2) and Gemma Scope 2's of Gemma 3 (section 7)
as data, and the sweep configs built on them.

One config is one width of one model: the sites and layers Gemma Scope trained at that width, a
lambda grid (Gemma Scope) or two target L0s (Gemma Scope 2), the token budget of that width and a
device mesh sized for it. ``configs/sweep_2b.py``, ``sweep_9b.py`` and ``sweep_27b.py`` are thin
wrappers over :func:`sweep_config`,
``configs/sweep_gemma3.py`` (``arg`` ``model=270m|1b|4b|12b|27b``) over :func:`sweep_config_gemma3`;
the jobs that together cover a model are :func:`jobs` (one ``arg`` string each).

| model | every layer, every site | residual stream only |
|---|---|---|
| 2B (26 layers, d 2304)  | 16k, 65k  | layer 12 at 32k..524k; layers 5, 12, 19 at 1m |
| 9B (42 layers, d 3584)  | 16k, 131k | layer 20 at 32k..524k; layers 9, 20, 31 at 1m |
| 27B (46 layers, d 4608) | -         | layers 10, 22, 34 at 131k |

Chosen here (docs/SPEC.md leaves them open): six lambdas per location, log-spaced around the 6e-4
that gave L0 about 50 on 9B layer 20; the meshes below (8 devices up to 262k, 16 from 524k; the
1m sweep split over two data groups). ``python launch/train.py --config=configs/sweep_9b.py:width=1m
--dry_run`` compiles a config's step on fake devices and prints its per-device memory.

Gemma Scope 2 (Gemma 3, every model 270M..27B): every layer, sites ``res``, ``mlp``, ``att`` at
widths 16k and 262k, the residual stream at 65k and 1m at four depths, two target L0s per
location ("small", "big"), trained with Gemma Scope 2's target-L0 recipe: the quadratic penalty
around each target (``sae.sparsity_loss = "quadratic"``, sweep axis ``config.target_l0s``, one SAE
per target) and thresholds initialised at the quantile giving each target. Chosen here (not
confirmed by the release notes docs/SPEC.md quotes): the four depths at 25%, 50%, 65% and 85% of
the layers (:func:`four_depths`), and the target L0s 10 and 60 for every model (docs/SPEC.md gives
them for 270M only; the larger models also have a "medium").
"""

from __future__ import annotations

from typing import Any

import ml_collections

from gemmascope import config as config_lib

K16, K32, K65, K131, K262, K524, M1 = (2**e for e in range(14, 21))
ALL_SITES = ("res", "att", "mlp")

# model -> (hub id, number of layers, {width: (sites, layers)})
MODELS: dict[str, dict[str, Any]] = {
    "2b": {
        "hub": "google/gemma-2-2b",
        "preset": "gemma2_2b",
        "n_layers": 26,
        "cover": {
            K16: (ALL_SITES, "all"),
            K65: (ALL_SITES, "all"),
            K32: (("res",), (12,)),
            K131: (("res",), (12,)),
            K262: (("res",), (12,)),
            K524: (("res",), (12,)),
            M1: (("res",), (5, 12, 19)),
        },
    },
    "9b": {
        "hub": "google/gemma-2-9b",
        "preset": "gemma2_9b",
        "n_layers": 42,
        "cover": {
            K16: (ALL_SITES, "all"),
            K131: (ALL_SITES, "all"),
            K32: (("res",), (20,)),
            K65: (("res",), (20,)),
            K262: (("res",), (20,)),
            K524: (("res",), (20,)),
            M1: (("res",), (9, 20, 31)),
        },
    },
    "27b": {
        "hub": "google/gemma-2-27b",
        "preset": "gemma2_27b",
        "n_layers": 46,
        "cover": {K131: (("res",), (10, 22, 34))},
    },
}
# (Width 131k at 9B layer 20 res is inside the every-layer set, so it appears once.)


def four_depths(n_layers: int) -> tuple[int, ...]:
    """The four layers of Gemma Scope 2's larger widths: 25%, 50%, 65%, 85% of the depth, rounded
    half up (270M: 5, 9, 12, 15)."""
    return tuple(int(f * n_layers + 0.5) for f in (0.25, 0.5, 0.65, 0.85))


GEMMA3_SIZES = {  # size -> (hub id, preset, layers)
    "270m": ("google/gemma-3-270m", "gemma3_270m", 18),
    "1b": ("google/gemma-3-1b-pt", "gemma3_1b", 26),
    "4b": ("google/gemma-3-4b-pt", "gemma3_4b", 34),
    "12b": ("google/gemma-3-12b-pt", "gemma3_12b", 48),
    "27b": ("google/gemma-3-27b-pt", "gemma3_27b", 62),
}
GEMMA_SCOPE_2_L0S = (10, 60)  # ("small", "big"); docs/SPEC.md section 7, for 270M
for _size, (_hub, _preset, _n) in GEMMA3_SIZES.items():
    MODELS[f"gemma3-{_size}"] = {
        "hub": _hub,
        "preset": _preset,
        "n_layers": _n,
        "l0s": GEMMA_SCOPE_2_L0S,
        "cover": {
            K16: (ALL_SITES, "all"),
            K262: (ALL_SITES, "all"),
            K65: (("res",), four_depths(_n)),
            M1: (("res",), four_depths(_n)),
        },
    }

LAMBDAS = (2e-4, 4e-4, 6e-4, 1e-3, 2e-3, 4e-3)


def tokens_for(width: int) -> int:
    """docs/SPEC.md section 1: 4B tokens for 16k, 16B for 1m, 8B otherwise."""
    return 4_000_000_000 if width <= K16 else 16_000_000_000 if width >= M1 else 8_000_000_000


def mesh_for(width: int) -> tuple[int, int, str]:
    """(data, model, sweep): pure data parallel at 16k, then tensor parallel over latents.

    Sized for devices of >= 80 GB (H100 / TPU v5p); the dry run prints the per-device bytes.
    """
    if width <= K16:
        return 8, 1, "replicated"
    if width <= K65:
        return 4, 2, "replicated"
    if width <= K262:
        return 2, 4, "replicated"
    if width <= K524:
        return 2, 8, "replicated"
    return 2, 8, "sharded"  # 1m: each data group holds 3 of the 6 SAEs, latents over 8 devices


def locations(model: str) -> list[tuple[str, int, int]]:
    """Every (site, layer, width) Gemma Scope trained on this model."""
    m = MODELS[model]
    out = []
    for width, (sites, layers) in sorted(m["cover"].items()):
        layers = tuple(range(m["n_layers"])) if layers == "all" else layers
        out += [(s, layer, width) for s in sites for layer in layers]
    return out


def jobs(model: str) -> list[str]:
    """``arg`` strings whose configs together cover the model (one width each)."""
    pre = f"model={model[len('gemma3-') :]}," if model.startswith("gemma3-") else ""
    return [f"{pre}width={w}" for w in sorted(MODELS[model]["cover"])]


def sweep_config(model: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of one width of ``model``; ``arg``: ``width=16k`` (default: the smallest covered),
    ``layer=N`` / ``site=res`` to keep one layer / site of it, ``data=``/``model=``/``sweep=`` to
    override the mesh, ``runlocal`` for a CPU-sized run of the same shape of job."""
    a = config_lib.parse_arg(arg, width=0, layer=-1, site="", data=0, model=0, sweep="", runlocal=False)
    return _sweep_config(model, a, mesh_model=int(a.model))


def sweep_config_gemma3(arg: str | None) -> ml_collections.ConfigDict:
    """Gemma Scope 2's sweep of one Gemma 3 model at one width: ``arg`` ``model=270m|1b|4b|12b|27b``
    (default 270m), then as :func:`sweep_config` (``width=``, ``layer=``, ``site=``, ``data=``,
    ``sweep=``, ``runlocal``) except that the mesh's model axis is ``tp=`` (``model=`` is the LM)."""
    a = config_lib.parse_arg(arg, model="270m", width=0, layer=-1, site="", data=0, tp=0, sweep="", runlocal=False)
    if a.model not in GEMMA3_SIZES:
        raise config_lib.ConfigError(f"config arg model={a.model}: not a Gemma 3 model (known: {list(GEMMA3_SIZES)})")
    return _sweep_config(f"gemma3-{a.model}", a, mesh_model=int(a.tp))


def _sweep_config(model: str, a: ml_collections.ConfigDict, mesh_model: int) -> ml_collections.ConfigDict:
    m = MODELS[model]
    width = int(a.width) or min(m["cover"])
    if width not in m["cover"]:
        raise config_lib.ConfigError(
            f"config arg width={width}: Gemma Scope has no {model} SAEs of that width (covered: {sorted(m['cover'])})"
        )
    sites, layers = m["cover"][width]
    layers = tuple(range(m["n_layers"])) if layers == "all" else tuple(layers)
    if a.layer >= 0:
        if a.layer not in layers:
            raise config_lib.ConfigError(
                f"config arg layer={a.layer}: not covered at width {width} "
                f"(layers {layers[0]}..{layers[-1]} of {layers})"
            )
        layers = (a.layer,)
    if a.site:
        if a.site not in sites:
            raise config_lib.ConfigError(f"config arg site={a.site}: not covered at width {width} (sites {sites})")
        sites = (a.site,)
    data, model_par, sweep = mesh_for(width)

    c = config_lib.base_config()
    c.source = "store"
    c.sites, c.layers, c.widths = sites, layers, (width,)
    c.lambdas = LAMBDAS
    c.num_tokens = tokens_for(width)
    c.batch_size = 4096
    c.lm.checkpoint = m["hub"]
    c.lm.dtype = "float32"
    c.lm.context_length = 1024
    c.lm.batch_sequences = 8
    c.text.kind = "hf"
    c.text.name = "HuggingFaceFW/fineweb"  # Gemma's pre-training mix is not public; any large web text
    c.text.config = "sample-10BT"
    c.store.sites = sites
    c.mesh.data = int(a.data) or data
    c.mesh.model = mesh_model or model_par
    c.mesh.sweep = a.sweep or sweep
    if "l0s" in m:  # Gemma Scope 2: one SAE per target L0 instead of the lambda grid
        c.sae.sparsity_loss, c.sae.threshold_init_mode = "quadratic", "quantile"
        c.target_l0s = tuple(float(t) for t in m["l0s"])
    c.log_every = 1000
    c.checkpoint_every = 10_000
    r = c.runlocal_overrides
    r.widths = (1024,)
    r.batch_size = 256
    r.num_tokens = 200 * 256
    r.mesh = dict(data=1, model=1, sweep="replicated")
    r.store = dict(max_tokens=100_000, heldout_rows=4096)
    r.norm_sample_rows = r.eval_rows = 4096
    c.runlocal = bool(a.runlocal)
    return config_lib.lock(c)
