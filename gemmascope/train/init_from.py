"""Fine-tuning from an exported SAE: ``config.init_from``.

``--config.init_from=DIR`` (a tuple: ``DIR_A,DIR_B`` for several widths) starts training from the
weights of SAE folders in any layout :func:`gemmascope.sae.files.io.load_params` reads (our
``params.npz``, Gemma Scope, Gemma Scope 2, SAELens), with the normalisation recomputed on this
run's activations and a fresh optimiser (Adam moments 0, step 0: the learning-rate and sparsity
warm-ups run again). What starts where:

* **Widths.** Each width of ``config.widths`` takes the one folder whose ``d_sae`` equals it, and
  every SAE of that width (the whole sweep: each lambda, target L0 or k, at every site and layer
  of the config) starts from it. A width no folder matches, two folders of one width, or a folder
  no width uses is an error.
* **Checks, before any LM or compute** (:func:`check`, first thing in
  :func:`gemmascope.train.loop.train_and_evaluate`; the config-level ones in
  :mod:`gemmascope.config.validation`): the folder loads; its layout is the architecture's
  (JumpReLU and TopK only: ``config.sae.arch`` ``jumprelu``, with any of its variants, or
  ``topk``; others, transcoders and cross-layer sites are refused); its site, when its metadata
  names one, is the location's (its layer may differ: fine-tuning to another layer is a use);
  its ``d_in`` is the location's (the toy source's, the store's metadata, or an online model's
  GGUF metadata; where none of them tells it without the LM, the check runs once the source is
  open, still before any step). Each error names ``config.init_from``, the folder and both
  shapes.
* **Units** (:func:`unfold`, the inverse of the export fold,
  :func:`gemmascope.sae.files.layouts.fold_normalisation` after ``fold_dim_scale``). A file
  holds raw units, ``pre = x @ W + b``, ``x_hat = f @ W_d + b_d``; training sees
  ``u = x / (C s)`` (``s`` the per-dimension scales, 1 without them) with a pre-encoder bias.
  With this run's ``C`` and ``s``::

      W_enc = W * s[:, None]         W_dec = W_d / s[None, :]      b_dec = b_d / (C s)
      b_enc = b / C + b_dec @ W_enc  (without the pre-encoder bias: b / C)
      threshold = t / C

  so the training pre-activations are the file's divided by ``C``, the same latents fire, codes
  are ``f / C`` and the reconstruction is ``x_hat / (C s)``. Where the decoder rows are kept unit
  norm (the recipe) and a row ``i`` of ``W_dec`` is not (a foreign file; per-dimension scales),
  JumpReLU moves its norm ``n_i`` into the encoder (``W_dec[i] / n_i``; ``W_enc[:, i]``, ``b_enc[i]``
  and ``threshold[i]`` times ``n_i``): the same mask and reconstruction, codes ``n_i f_i / C``.
  TopK cannot (a per-latent scale changes which k are largest), so a TopK file whose decoder rows
  are not unit norm (within :data:`UNIT_NORM_RTOL`) is refused unless
  ``config.unit_norm_decoder=False``, and TopK with per-dimension scales is refused. The file
  replaces every initialisation, the data-dependent ones (``sae.threshold_init_mode``,
  ``sae.b_dec_init``) included; a TopK file's ``k`` is not read (``sae.topk_ks`` is the sweep).
* **Resume.** A rerun restores the latest checkpoint first: once a location has one, the files
  of ``init_from`` only pass :func:`check` again; the weights come from the checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from gemmascope.config import ConfigError
from gemmascope.config.defaults import INIT_FROM_ARCHS
from gemmascope.sae import archs, jumprelu
from gemmascope.sae.common import SAEConfig
from gemmascope.sae.files import io as sae_io
from gemmascope.sites import pair_of, span_of
from gemmascope.train import step as step_lib

#: A TopK file's decoder rows count as unit norm within this relative tolerance.
UNIT_NORM_RTOL = 1e-4


def _shape(d_in: int, d_sae: int) -> str:
    return f"[d_in={d_in}, d_sae={d_sae}]"


class InitFile:
    """One ``init_from`` folder, loaded and checked: raw-unit ``params``, ``meta`` (its
    ``metadata.json`` or what its layout tells), its file ``layout`` and ``d_in``, ``d_sae``."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.params = sae_io.load_params(path)
            self.meta = sae_io.load_metadata(path)
        except (sae_io.SAEFileError, OSError) as e:
            raise ConfigError(f"config.init_from: {path}: cannot load an SAE from it ({e})") from None
        transcoder = self.meta.get("architecture") == "transcoder" or "W_skip" in self.params
        if transcoder or np.ndim(self.params["W_enc"]) != 2:
            raise ConfigError(f"config.init_from: {path} is a transcoder or cross-layer file, not an SAE")
        self.layout = "topk" if "k" in self.params else ("jumprelu" if "threshold" in self.params else "relu")
        self.d_in, self.d_sae = (int(n) for n in np.shape(self.params["W_enc"]))

    @property
    def shape(self) -> str:
        return _shape(self.d_in, self.d_sae)


def load_files(config) -> dict[int, InitFile]:
    """``{width: InitFile}`` for every width of ``config.widths`` ({} without ``init_from``); a
    ConfigError naming the field, the folder and the shapes when a width has no folder or two, a
    folder no width uses, or a layout other than the architecture's."""
    if not config.init_from:
        return {}
    files = [InitFile(p) for p in config.init_from]
    want = archs.get(config.sae.arch).FILE_LAYOUT
    widths = [int(w) for w in config.widths]
    for f in files:
        if f.layout != want:
            raise ConfigError(
                f"config.init_from: {f.path} is a {f.layout} SAE {f.shape}; config.sae.arch={config.sae.arch!r} "
                f"starts from {want} files"
            )
        if f.d_sae not in widths:
            raise ConfigError(
                f"config.init_from: {f.path} is {f.shape}, but config.widths={tuple(widths)} has no width "
                f"{f.d_sae}: the SAEs trained here are " + ", ".join(_shape(f.d_in, w) for w in widths)
            )
    out = {}
    for w in widths:
        same = [f for f in files if f.d_sae == w]
        if len(same) != 1:
            have = ", ".join(f"{f.path} {f.shape}" for f in files)
            what = "no folder" if not same else f"{len(same)} folders"
            raise ConfigError(
                f"config.init_from: width {w} of config.widths (SAEs [d_in, d_sae={w}]) has {what} of "
                f"d_sae={w} among {have}; give exactly one folder per width"
            )
        out[w] = same[0]
    if config.sae.arch == "topk" and config.unit_norm_decoder:
        for f in out.values():
            n = np.linalg.norm(np.asarray(f.params["W_dec"], np.float64), axis=-1)
            if np.max(np.abs(n - 1.0)) > UNIT_NORM_RTOL:
                raise ConfigError(
                    f"config.init_from: {f.path} is a TopK SAE {f.shape} whose decoder rows are not unit norm "
                    f"(norms {n.min():.4g} .. {n.max():.4g}); training keeps them unit norm, which changes a TopK's "
                    "choice of latents. Set --config.unit_norm_decoder=False to fine-tune it as it is"
                )
    return out


def path_for(config, width: int) -> str:
    """The folder width ``width`` started from (metadata.json's ``init_from``)."""
    return config.init_from[0] if len(config.init_from) == 1 else load_files(config)[int(width)].path


def check(config, workdir: str, log=print) -> dict[int, InitFile]:
    """Every check of ``config.init_from`` that needs the files (the config-level ones ran in
    :func:`gemmascope.config.validate`), before any LM or compute: :func:`load_files`, then each
    location's site and ``d_in`` against each file's. Returns :func:`load_files`'s mapping."""
    files = load_files(config)
    for width, f in files.items():
        for site in config.sites:
            have = f.meta.get("site")
            for layer in config.layers:
                d_in = site_d_in(config, workdir, site, int(layer))
                here = f"site {site!r} layer {layer}: SAEs " + _shape(d_in if d_in is not None else f.d_in, width)
                if have is not None and have != site:
                    raise ConfigError(
                        f"config.init_from: {f.path} is an SAE of site {have!r} {f.shape}; config.sites trains {here}"
                    )
                if d_in is not None and d_in != f.d_in:
                    raise ConfigError(f"config.init_from: {f.path} is {f.shape}, but {here} (d_in {f.d_in} != {d_in})")
        where = ", ".join(f"{k} {f.meta[k]}" for k in ("model", "site", "layer") if k in f.meta)
        log(f"[init_from] width {width}: every SAE starts from {f.path} {f.shape}" + (f" ({where})" if where else ""))
    return files


def site_d_in(config, workdir: str, site: str, layer: int) -> int | None:
    """``d_in`` of a location without running the LM: the toy source's, the activation store's
    metadata, or an online GGUF model's (its header); None when none tells it cheaply (a missing
    store, a Hugging Face model: :func:`start_state` checks it once the source is open)."""
    if config.source == "toy":
        return int(config.toy.d_in)
    if config.source == "store":
        from gemmascope.data import store as store_lib
        from gemmascope.data.generate import part_root, store_root
        from gemmascope.data.sites import location_key

        try:
            info = store_lib.open_store(part_root(store_root(config, workdir), "train"))
        except store_lib.StoreError:
            return None  # the source's own error says how to create it
        meta = info.sites.get(location_key(site, layer))
        return None if meta is None else int(meta["d_in"])
    try:
        from gemmascope.lm import config as lm_config
        from gemmascope.lm import embedded, gguf_file, loading

        name = embedded.parse(config.lm.checkpoint)
        path = embedded.gguf_path(name) if name is not None else str(config.lm.checkpoint)
        if not (path.endswith(".gguf") and os.path.isfile(path)):
            return None
        meta, _ = gguf_file.read(path)
        return int(lm_config.site_dim(loading.config_from_gguf(meta), site))
    except Exception:  # noqa: BLE001 (anything unreadable here is the LM loader's to report)
        return None


def unfold(
    params: dict[str, Any], norm_scale: float, dim_scale: Any = None, *, pre_encoder_bias: bool, unit_rows: bool
) -> dict[str, np.ndarray]:
    """Raw-unit file params -> the released keys in training units on rows ``x / (C s)`` (the
    module doc's formulas; float64 arithmetic, float32 out). ``unit_rows``: move each decoder
    row's norm into its latent's encoder column, bias and threshold (JumpReLU under the recipe)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    c = float(norm_scale)
    s = np.ones(p["W_enc"].shape[0]) if dim_scale is None else np.asarray(dim_scale, np.float64)
    out = {
        "W_enc": p["W_enc"] * s[:, None],
        "W_dec": p["W_dec"] / s[None, :],
        "b_enc": p["b_enc"] / c,
        "b_dec": p["b_dec"] / (c * s),
    }
    if "threshold" in p:
        out["threshold"] = p["threshold"] / c
    if unit_rows:
        n = np.linalg.norm(out["W_dec"], axis=-1)
        n = np.where(n > 0, n, 1.0)  # a zero row stays (nothing to move)
        out["W_dec"] = out["W_dec"] / n[:, None]
        out["W_enc"] = out["W_enc"] * n[None, :]
        out["b_enc"] = out["b_enc"] * n
        if "threshold" in out:
            out["threshold"] = out["threshold"] * n
    if pre_encoder_bias:
        out["b_enc"] = out["b_enc"] + out["b_dec"] @ out["W_enc"]
    return {k: v.astype(np.float32) for k, v in out.items()}


def training_params(f: InitFile, config, arch, norm_scale, dim_scale=None) -> dict[str, np.ndarray]:
    """One SAE's training params (``arch.init``'s keys and parametrisation) from ``f``."""
    cfg = SAEConfig.from_config(config)
    unit = step_lib.unit_norm_decoder(config, arch)
    ds = None if dim_scale is None else np.asarray(dim_scale)
    p = unfold(f.params, float(np.asarray(norm_scale)), ds, pre_encoder_bias=cfg.pre_encoder_bias, unit_rows=unit)
    p = {k: v for k, v in p.items() if k != "threshold" or arch.NAME != "topk"}
    if "threshold" in p:
        p = jumprelu.with_threshold(p, p["threshold"], cfg)
    return {k: np.asarray(v, np.float32) for k, v in p.items()}


def start_state(loc, norm_scale, dim_scale) -> Any:
    """The first state of a location (:class:`gemmascope.train.loop._Location`) from its width's
    file: every SAE of the sweep at its :func:`training_params`, this run's ``norm_scale`` and
    ``dim_scale``, a fresh optimiser; the rest as :func:`gemmascope.train.step.init_state`."""
    config, k = loc.config, len(loc.values)
    if pair_of(loc.site) or span_of(loc.site) or loc.arch.NAME not in INIT_FROM_ARCHS:
        raise ConfigError(f"config.init_from: site {loc.site!r} ({loc.arch.NAME}) cannot start from a file")
    f = load_files(config)[loc.width]
    if f.d_in != loc.d_in:  # where check() could not tell the source's d_in without it
        raise ConfigError(
            f"config.init_from: {f.path} is {f.shape}, but site {loc.site!r} layer {loc.layer}: SAEs "
            f"{_shape(loc.d_in, loc.width)} (d_in {f.d_in} != {loc.d_in})"
        )
    one = training_params(f, config, loc.arch, norm_scale, dim_scale)
    stacked = {n: np.broadcast_to(v, (k,) + v.shape).copy() for n, v in one.items()}
    tx = step_lib.optimizer(config, loc.arch)

    def build(params):
        state = step_lib.init_state(
            loc.key,
            config,
            loc.d_in,
            d_sae=loc.width,
            n_saes=k,
            norm_scale=norm_scale,
            arch=loc.arch,
            dim_scale=dim_scale,
        )
        return {**state, "params": params, "opt": jax.vmap(tx.init)(params)}

    state = loc.sweep.init(build, stacked)
    loc.log(f"[{loc.name}] {k} SAEs start from {f.path} {f.shape} (fresh optimiser; this run's normalisation)")
    return state
