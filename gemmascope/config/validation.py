"""Validation before any compute: :func:`validate` names the field of the first bad value;
:func:`prepare` (runlocal overrides, then validation) is what every entry point calls."""

from __future__ import annotations

import math

import ml_collections

from gemmascope.config.checks import ConfigError, get_field, nonneg_number, positive_int, require
from gemmascope.config.defaults import E2E_CALIBRATE_ROWS, EXPORT_LAYOUTS, INIT_FROM_ARCHS, base_config
from gemmascope.config.sparsity import validate_sparsity
from gemmascope.config.sweep import sweep_values
from gemmascope.sae import archs
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.transcoder import Transcoder
from gemmascope.sites import (
    LM_SITES,
    PAIR_SITES,
    SPAN_SITES,
    component_sites,
    known_sites,
    pair_of,
    site_pairs,
    span_of,
)


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises :class:`ConfigError` naming the first invalid field; returns the config."""
    base = base_config()
    _check_no_unknown(c, base, "")
    require(
        isinstance(c.sites, (tuple, list)) and len(c.sites) > 0, "sites", f"must be a non-empty list, got {c.sites!r}"
    )
    for s in c.sites:
        require(s in known_sites(), "sites", f"unknown site {s!r} (known: {list(known_sites())})")
    require(
        isinstance(c.layers, (tuple, list)) and len(c.layers) > 0,
        "layers",
        f"must be a non-empty list, got {c.layers!r}",
    )
    for layer in c.layers:
        require(
            isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0,
            "layers",
            f"every layer must be an integer >= 0, got {layer!r}",
        )
    require(
        isinstance(c.widths, (tuple, list)) and len(c.widths) > 0,
        "widths",
        f"must be a non-empty list, got {c.widths!r}",
    )
    for w in c.widths:
        require(
            isinstance(w, int) and not isinstance(w, bool) and w > 0,
            "widths",
            f"every width must be a positive integer, got {w!r}",
        )
    require(
        isinstance(c.lambdas, (tuple, list)) and len(c.lambdas) > 0,
        "lambdas",
        f"must be a non-empty list, got {c.lambdas!r}",
    )
    for lam in c.lambdas:
        require(
            isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam >= 0,
            "lambdas",
            f"every sparsity coefficient must be a finite number >= 0, got {lam!r}",
        )
    known = archs.names()
    require(c.sae.arch in known, "sae.arch", f"unknown architecture {c.sae.arch!r} (known: {list(known)})")
    arch, sae = archs.get(c.sae.arch), sae_settings(c)
    if arch.uses_auxk(sae):
        positive_int(c, "sae.auxk_k")
        nonneg_number(c, "sae.auxk_coefficient")
        positive_int(c, "sae.auxk_dead_tokens")
    if arch.sweep_axis(sae).static:
        ks = c.sae.topk_ks
        require(isinstance(ks, (tuple, list)) and len(ks) > 0, "sae.topk_ks", f"must be a non-empty list, got {ks!r}")
        for k in ks:
            require(
                isinstance(k, int) and not isinstance(k, bool) and k > 0,
                "sae.topk_ks",
                f"every k must be a positive integer, got {k!r}",
            )
            for w in c.widths:
                require(k <= w, "sae.topk_ks", f"k={k} exceeds width {w}")
    validate_sparsity(c)
    require(
        c.sae.threshold_param in ("log", "direct"),
        "sae.threshold_param",
        f"must be 'log' or 'direct', got {c.sae.threshold_param!r}",
    )
    for f in ("sae.bandwidth", "sae.threshold_init", "sae.threshold_min", "lr"):
        v = get_field(c, f)
        require(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f, f"must be a number > 0, got {v!r}")
    for f in ("lr_warmup_steps", "lambda_warmup_steps"):
        v = get_field(c, f)
        require(isinstance(v, int) and v >= 0, f, f"must be an integer >= 0, got {v!r}")
    require(c.lr_decay in ("constant", "cosine"), "lr_decay", f"must be 'constant' or 'cosine', got {c.lr_decay!r}")
    require(0.0 <= c.adam_b1 < 1.0, "adam_b1", f"must be in [0, 1), got {c.adam_b1!r}")
    require(
        c.threshold_adam_b1 == -1.0 or 0.0 <= c.threshold_adam_b1 < 1.0,
        "threshold_adam_b1",
        f"must be -1 (adam_b1) or in [0, 1), got {c.threshold_adam_b1!r}",
    )
    require(c.threshold_lr_scale > 0, "threshold_lr_scale", f"must be > 0, got {c.threshold_lr_scale!r}")
    require(0.0 < c.adam_b2 < 1.0, "adam_b2", f"must be in (0, 1), got {c.adam_b2!r}")
    require(c.adam_eps > 0, "adam_eps", f"must be > 0, got {c.adam_eps!r}")
    nonneg_number(c, "grad_clip_norm")  # 0 = off
    require(
        isinstance(c.e2e.fraction, (int, float)) and 0 <= c.e2e.fraction < 1,
        "e2e.fraction",
        f"must be a fraction of the steps in [0, 1), got {c.e2e.fraction!r}",
    )
    nonneg_number(c, "e2e.kl_coefficient")
    require(
        isinstance(c.e2e.lr_scale, (int, float)) and c.e2e.lr_scale > 0,
        "e2e.lr_scale",
        f"must be a number > 0, got {c.e2e.lr_scale!r}",
    )
    require(
        isinstance(c.e2e.controller_gain, (int, float)) and c.e2e.controller_gain > 0,
        "e2e.controller_gain",
        f"must be a number > 0 (sae.l0_controller_rate's factor in the stage), got {c.e2e.controller_gain!r}",
    )
    require(
        c.e2e.kl_reaches in ("all", "decoder"),
        "e2e.kl_reaches",
        f"must be 'all' or 'decoder', got {c.e2e.kl_reaches!r}",
    )
    require(
        isinstance(c.e2e.sequences, int) and c.e2e.sequences >= 1,
        "e2e.sequences",
        f"must be an integer >= 1, got {c.e2e.sequences!r}",
    )
    n = c.e2e.calibrate_rows
    require(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0,
        "e2e.calibrate_rows",
        f"must be an integer >= 0 (training rows), got {n!r}",
    )
    require(
        n in (0, E2E_CALIBRATE_ROWS) or (c.e2e.fraction and archs.sweep_axis(c).kind == "target_l0"),
        "e2e.calibrate_rows",
        f"calibrates each SAE's L0 to its target after the end-to-end stage; needs e2e.fraction > 0 "
        f"and a target-L0 sweep (got fraction {c.e2e.fraction!r}, arch {c.sae.arch!r}, sparsity_loss "
        f"{c.sae.sparsity_loss!r}; the default, {E2E_CALIBRATE_ROWS}, is inert there: leave it or set 0)",
    )
    if c.e2e.fraction:
        require(
            set(c.sites) == {"res"} and c.source in ("store", "online"),
            "e2e.fraction",
            f"the end-to-end stage splices SAEs on 'res' sites of a real LM (store or online source); "
            f"got sites {tuple(c.sites)} with source {c.source!r}",
        )
    cap = c.dim_std_cap
    require(
        isinstance(cap, (int, float)) and not isinstance(cap, bool) and (cap == 0 or cap >= 1),
        "dim_std_cap",
        f"must be 0 (off) or a number >= 1 (times the median dimension's spread), got {cap!r}",
    )
    require(
        not (cap and c.dim_scale_power),
        "dim_std_cap",
        f"choose one per-dimension scaling: dim_std_cap={cap!r} and dim_scale_power={c.dim_scale_power!r} are both set",
    )
    p = c.dim_scale_power
    require(
        isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1,
        "dim_scale_power",
        f"must be a number in [0, 1] (0 = one scalar C), got {p!r}",
    )
    for f in (
        "batch_size",
        "num_tokens",
        "norm_sample_rows",
        "eval_rows",
        "dead_window_tokens",
        "log_every",
        "checkpoint_every",
        "max_checkpoints",
    ):
        positive_int(c, f)
    nonneg_number(c, "lr_final_fraction")
    _validate_spans(c)  # before the store's checks: a cross-layer site has no store
    require(c.source in ("toy", "store", "online"), "source", f"must be 'toy', 'store' or 'online', got {c.source!r}")
    if c.source == "toy":
        for f in ("toy.d_in", "toy.n_features"):
            positive_int(c, f)
        require(
            0 < c.toy.mean_active <= c.toy.n_features,
            "toy.mean_active",
            f"must be in (0, n_features={c.toy.n_features}], got {c.toy.mean_active!r}",
        )
        nonneg_number(c, "toy.noise_std")
        require(tuple(c.sites) == ("toy",), "sites", f"the toy source has the single site 'toy', got {tuple(c.sites)}")
    else:
        lm_or_pair = ", ".join(LM_SITES + tuple(PAIR_SITES))
        for s in c.sites:
            require(
                s in LM_SITES or s in PAIR_SITES or s in SPAN_SITES,
                "sites",
                f"LM sites are {lm_or_pair} and {', '.join(SPAN_SITES)}, got {s!r}",
            )
        positive_int(c, "lm.context_length")
        require(c.lm.context_length >= 2, "lm.context_length", f"must be >= 2, got {c.lm.context_length}")
        positive_int(c, "lm.batch_sequences")
        nonneg_number(c, "lm.outlier_norm_factor")
        require(
            c.lm.dtype in ("float32", "bfloat16"), "lm.dtype", f"must be 'float32' or 'bfloat16', got {c.lm.dtype!r}"
        )
        require(
            c.text.kind in ("embedded", "hf", "files"),
            "text.kind",
            f"must be 'embedded', 'hf' or 'files', got {c.text.kind!r}",
        )
        if c.text.kind == "hf":
            require(bool(c.text.name), "text.name", "a Hugging Face dataset name is needed when text.kind='hf'")
        if c.text.kind == "files":
            require(len(c.text.paths) > 0, "text.paths", "at least one file is needed when text.kind='files'")
        require(
            0.0 < c.text.heldout_fraction < 1.0,
            "text.heldout_fraction",
            f"must be in (0, 1), got {c.text.heldout_fraction!r}",
        )
        for s in c.store.sites:
            require(s in LM_SITES or s in PAIR_SITES, "store.sites", f"LM sites are {lm_or_pair}, got {s!r}")
        if c.source == "store":
            have, pairs = component_sites(c.store.sites), site_pairs(c.store.sites)
            missing = [s for s in c.sites if (site_pairs([s])[0] not in pairs if pair_of(s) else s not in have)]
            require(
                not missing,
                "store.sites",
                f"must include every trained site (a transcoder site its pair, written with one joint "
                f"row mask: e.g. 'transcoder'); missing {missing}",
            )
        for f in ("store.max_tokens", "text.max_documents"):
            v = get_field(c, f)
            require(isinstance(v, int) and v >= 0, f, f"must be an integer >= 0, got {v!r}")
        positive_int(c, "store.heldout_rows")
        positive_int(c, "store.shuffle_buffer_rows")
        require(
            isinstance(c.store.rows_per_flush, int) and c.store.rows_per_flush >= 0,
            "store.rows_per_flush",
            f"must be an integer >= 0, got {c.store.rows_per_flush!r}",
        )
    _validate_mesh(c)
    require(
        isinstance(c.export.layouts, (tuple, list)),
        "export.layouts",
        f"must be a list of layouts, got {c.export.layouts!r}",
    )
    for lay in c.export.layouts:
        require(lay in EXPORT_LAYOUTS, "export.layouts", f"unknown layout {lay!r} (known: {list(EXPORT_LAYOUTS)})")
    require(
        "gemma_scope_2" not in c.export.layouts or arch.FILE_LAYOUT == "jumprelu",
        "export.layouts",
        f"the gemma_scope_2 layout holds SAEs that export as JumpReLUs, not {c.sae.arch!r} "
        f"(file layout {arch.FILE_LAYOUT!r})",
    )
    require(
        "gemma_scope_2" not in c.export.layouts or all(s in ("res", "mlp", "att") + tuple(PAIR_SITES) for s in c.sites),
        "export.layouts",
        f"the gemma_scope_2 layout names LM sites (res, mlp, att), not {tuple(c.sites)} (or transcoders)",
    )
    _validate_pairs(c)
    _validate_init_from(c)
    require(
        c.wandb.mode in ("offline", "online", "disabled"),
        "wandb.mode",
        f"must be 'offline', 'online' or 'disabled', got {c.wandb.mode!r}",
    )
    return c


def sae_settings(c: ml_collections.ConfigDict) -> SAEConfig:
    """``config.sae`` as the typed :class:`~gemmascope.sae.common.SAEConfig`, a value that cannot be
    one raising :class:`ConfigError` naming its field."""
    try:
        return SAEConfig.from_config(c)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _validate_pairs(c: ml_collections.ConfigDict) -> None:
    """Transcoder sites train JumpReLU transcoders: no other arch, no Matryoshka, no SAELens export."""
    pairs = [s for s in c.sites if pair_of(s) is not None or span_of(s) is not None]
    for field, bad, what in (
        (
            "sae.arch",
            c.sae.arch != Transcoder.BASE,
            f"they train JumpReLU transcoders; set {Transcoder.BASE!r}, not {c.sae.arch!r}",
        ),
        ("sae.matryoshka_prefixes", bool(c.sae.matryoshka_prefixes), "Matryoshka training is not implemented"),
        ("sae.jumprelu_auxk", bool(c.sae.jumprelu_auxk), "the AuxK loss is not implemented for them"),
        ("sae.revive_dead_every", bool(c.sae.revive_dead_every), "threshold revival is not implemented for them"),
        ("export.layouts", "sae_lens" in c.export.layouts, "the sae_lens layout has no transcoder export here"),
    ):
        require(not (pairs and bad), field, f"transcoder sites {pairs}: {what}")


def _validate_init_from(c: ml_collections.ConfigDict) -> None:
    """``init_from``: SAE folders, for architectures and sites that can start from one. The files
    themselves (widths, layout, site, d_in) are checked by :func:`gemmascope.train.init_from.check`,
    also before any compute (the config package does not read SAE files)."""
    v = c.init_from
    require(
        isinstance(v, (tuple, list)) and all(isinstance(p, str) and p for p in v),
        "init_from",
        f"must be a list of SAE folders (() = a fresh start), got {v!r}",
    )
    if not v:
        return
    require(
        c.sae.arch in INIT_FROM_ARCHS,
        "init_from",
        f"fine-tuning starts {' and '.join(INIT_FROM_ARCHS)} SAEs, not config.sae.arch={c.sae.arch!r}",
    )
    paired = [s for s in c.sites if pair_of(s) is not None or span_of(s) is not None]
    require(not paired, "init_from", f"transcoder and cross-layer sites {paired} cannot start from a file")
    require(
        not (c.sae.arch == "topk" and c.unit_norm_decoder and (c.dim_scale_power or c.dim_std_cap)),
        "init_from",
        "a TopK SAE with per-dimension scales cannot keep both its file's choice of latents and unit-norm "
        "decoder rows; set dim_scale_power = dim_std_cap = 0 or unit_norm_decoder=False",
    )


def _validate_spans(c: ml_collections.ConfigDict) -> None:
    """Cross-layer sites train JumpReLU CLTs online over ``config.layers`` (ascending: a layer
    writes only to the layers after it), with the plain JumpReLU recipe: none of the options the
    CLT's loss does not implement, per-dimension scales only where the architecture folds them
    into its files, and its own file layout."""
    spans = [s for s in c.sites if span_of(s) is not None]
    if not spans:
        return
    require(
        list(c.layers) == sorted(set(c.layers)),
        "layers",
        f"cross-layer sites {spans} need ascending layers without repeats, got {list(c.layers)}",
    )
    for field, bad, what in (
        ("source", c.source != "online", f"they train online from one LM pass, not from {c.source!r}"),
        ("sae.threshold_param", c.sae.threshold_param != "direct", "a CLT keeps its thresholds direct"),
        ("sae.frequency_penalty", bool(c.sae.frequency_penalty), "the CLT's loss has no frequency penalty"),
        ("e2e.fraction", bool(c.e2e.fraction), "no end-to-end stage for CLTs"),
        (
            "export.layouts",
            bool(set(c.export.layouts) - {"gemma_scope"}),
            f"a CLT exports in Gemma Scope 2's CLT files only, not {list(c.export.layouts)}",
        ),
    ):
        require(not bad, field, f"cross-layer sites {spans}: {what}")
    # per-dimension scales: for the architectures that fold them into their files (fold_scales)
    unscaled = [s for s in spans if not hasattr(archs.MULTILAYER[span_of(s).arch], "fold_scales")]
    for field in ("dim_scale_power", "dim_std_cap"):
        require(
            not (unscaled and c[field]),
            field,
            f"cross-layer sites {unscaled} take one scalar C per layer, not per-dimension scales",
        )


def _validate_mesh(c: ml_collections.ConfigDict) -> None:
    """Mesh and multi-host fields; the shapes the mesh must split (the device count is checked
    when the mesh is built, :func:`gemmascope.train.sharding.make_mesh`)."""
    positive_int(c, "mesh.data")
    positive_int(c, "mesh.model")
    require(
        c.mesh.sweep in ("replicated", "sharded"),
        "mesh.sweep",
        f"must be 'replicated' or 'sharded', got {c.mesh.sweep!r}",
    )
    data, model = int(c.mesh.data), int(c.mesh.model)
    for w in c.widths:
        require(
            w % model == 0,
            "mesh.model",
            f"width {w} is not divisible by mesh.model={model} (latents are split "
            f"over 'model'; {w} % {model} = {w % model})",
        )
    require(
        c.batch_size % data == 0,
        "mesh.data",
        f"batch_size {c.batch_size} is not divisible by mesh.data={data} "
        f"(batches are split over 'data'; {c.batch_size} % {data} = {c.batch_size % data})",
    )
    if c.mesh.sweep == "sharded":
        k = len(sweep_values(c))
        require(
            k % data == 0,
            "mesh.sweep",
            f"'sharded' splits the K={k} SAEs of the sweep over mesh.data={data}, "
            f"but {k} % {data} = {k % data}; use 'replicated' or a mesh.data dividing {k}",
        )
    require(
        isinstance(c.distributed.coordinator_address, str),
        "distributed.coordinator_address",
        f"must be a string ('' = from the environment, 'auto' = detect), got {c.distributed.coordinator_address!r}",
    )
    for f, lo in (("distributed.num_processes", 0), ("distributed.process_id", -1)):
        v = get_field(c, f)
        require(isinstance(v, int) and not isinstance(v, bool) and v >= lo, f, f"must be an integer >= {lo}, got {v!r}")
    n, pid = int(c.distributed.num_processes), int(c.distributed.process_id)
    require(n == 0 or pid < n, "distributed.process_id", f"must be < num_processes={n}, got {pid}")
    nonneg_number(c, "distributed.peer_timeout_s")


def prepare(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config a run uses: :func:`resolve` (runlocal overrides applied), then :func:`validate`
    (every value checked, before any compute). Entry points take ``prepared=True`` when their
    caller (a launch script) has already done it, so it runs once."""
    return validate(resolve(c))


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``c`` with ``runlocal_overrides`` applied when ``c.runlocal`` is True."""
    out = ml_collections.ConfigDict(c.to_dict())
    if not c.runlocal:
        return out

    def apply(dst, src, prefix):
        for k in src.keys():
            if k not in dst:
                raise ConfigError(f"config.runlocal_overrides.{prefix}{k}: unknown field")
            if isinstance(src[k], ml_collections.ConfigDict):
                apply(dst[k], src[k], f"{prefix}{k}.")
            else:
                dst[k] = src[k]

    apply(out, c.runlocal_overrides, "")
    return out


def _check_no_unknown(c, base, prefix: str) -> None:
    """Fields a config added that the code never reads (configs built without base_config)."""
    for k in c.keys():
        if k == "runlocal_overrides":
            continue
        if k not in base:
            raise ConfigError(f"config.{prefix}{k}: unknown field")
        if isinstance(c[k], ml_collections.ConfigDict) and isinstance(base[k], ml_collections.ConfigDict):
            _check_no_unknown(c[k], base[k], f"{prefix}{k}.")
