"""SAE metrics at a site of the LM: L0, FVU, delta LM loss (with clean and zero-ablation losses
beside it), firing counts per latent, and reconstruction error by token position.

Definitions (docs/SPEC.md section 4):

* L0: mean number of non-zero latents per token.
* FVU: ``E||x - x_hat||^2 / E||x - E[x]||^2`` with the dataset mean per dimension (accumulated
  in float64 over every evaluated token).
* Delta LM loss: next-token cross-entropy with the site replaced by the SAE reconstruction, minus
  the clean cross-entropy, averaged over positions whose target is a real (non-special) token.
  The zero-ablation loss (the site replaced by zeros) is reported beside it for scale.

SAEBench's core metrics (names as SAEBench writes them; ``x`` the site's activation and ``x_hat``
its reconstruction at every evaluated token, ``E`` the mean over those tokens):

* ``ce_loss_score``: fraction of the zero-ablation loss gap recovered,
  ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``; 1 for a perfect SAE, 0 for one that outputs 0.
* ``kl_div_with_sae``: ``KL(p_clean || p_sae)`` of the next-token distributions (nats), averaged
  over the positions the losses average over (:mod:`gemmascope.eval.kl`, vocabulary in chunks).
* ``explained_variance``: ``1 - E||x - x_hat||^2 / E||x - E[x]||^2`` = ``1 - FVU`` (SAEBench's
  current, dataset-variance definition; not its per-batch "legacy" one).
* ``cossim``: ``E[cos(x, x_hat)]``, taken as 0 at a token where ``x`` or ``x_hat`` is zero.
* ``l2_ratio``: ``E[||x_hat|| / ||x||]`` (a norm below 1e-4 divides as 1, as SAELens does).
* ``relative_reconstruction_bias`` (shrinkage; Gated SAE paper eq. 10): ``gamma = E||x_hat||^2 /
  E[x . x_hat]``, the ``gamma`` minimising ``E||x_hat / gamma - x||^2``; 1 without shrinkage,
  below 1 when the SAE shrinks. One ratio of sums over all tokens (SAELens averages per-batch
  ratios); NaN when ``E[x . x_hat] = 0`` (e.g. an SAE that outputs 0).
* ``frac_alive``: fraction of latents that fired on at least one evaluated token;
  ``freq_over_1_percent`` / ``freq_over_10_percent``: fraction of latents firing on more than
  1% / 10% of the tokens.

Which positions are replaced: real-text positions only. BOS (and EOS/padding) keep their
activation, as in training, where they were never seen; so do the norm outliers that training
also never saw (``outlier_norm_factor`` times the batch median of real tokens; counted in the
result). Zero ablation replaces the same positions.

The SAE enters through :func:`reconstruct` on raw-unit params (``params.npz``, any
architecture: :mod:`gemmascope.sae.files.model`), the same function for our exports and released
Gemma Scope files.

Transcoders (``site`` a paired site of :data:`gemmascope.sites.PAIR_SITES`, e.g.
``"transcoder"`` = ``mlp_in -> mlp``): ``x`` above is the *output* site (the MLP output), the
prediction ``y_hat = transcode(x_in)`` is computed from the real input site ``x_in`` (the MLP
input after its pre-norm) captured in the same prefix run, and the spliced runs replace the output
site with ``y_hat``. The spliced forward from the layer recomputes the same ``x_in`` (nothing
before the MLP output changes), so this equals a whole forward with the MLP's output replaced by
the transcoder's prediction of it (tested). L0 counts the codes of ``x_in``; FVU and the SAEBench
reconstruction metrics are of the MLP output, so a transcoder and an SAE on ``mlp`` of the same
layer are scored on the same quantity. Zero ablation zeroes the MLP output. The positions are the
paired store's: real text kept by the outlier rule at *both* sites (the AND of the two masks).
Plain and affine transcoders differ only in the file (``W_skip`` present or not) and are
evaluated together under either paired-site name.

Speed: the SAEs of one site are evaluated together. The LM runs once up to the site's layer;
the clean, zero-ablation and per-SAE runs each start from there. The clean and zero-ablation
losses depend only on the LM, site and tokens, so they can be cached across SAEs and runs
(``baseline_cache``); the clean loss does not depend on the site either, so it is shared
across sites (``clean_cache``). The clean run itself still runs from the site on (the KL needs
its next-token distribution); its logits are computed once per vocabulary tile for all SAEs.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.common import fvu_from_sums
from gemmascope.data import sites as sites_lib
from gemmascope.eval.kl import next_token_ce_and_kl
from gemmascope.lm.config import LMConfig, site_dim
from gemmascope.lm.loss import next_token_ce_from_residual
from gemmascope.lm.model import forward
from gemmascope.sae.files import model as sae_model
from gemmascope.sites import pair_of

L2_RATIO_FLOOR = 1e-4  # ||x|| below this divides as 1 in the L2 ratio (SAELens's guard)


def reconstruct(sae: dict[str, jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Raw-unit SAE or transcoder (any architecture): ``x [..., d_in] -> (prediction [..., d_out],
    codes [..., d_sae])``. For an SAE the prediction is the reconstruction of ``x``; for a
    transcoder ``x`` is its input site and the prediction is of its output site, with the affine
    skip ``x @ W_skip`` when the file has one (:func:`gemmascope.sae.files.model.transcode`; under jit
    the encoder runs once)."""
    return sae_model.transcode(sae, x), sae_model.encode(sae, x)


def read_write_sites(site: str) -> tuple[str, str]:
    """``(site read, site replaced)`` of an evaluated site: ``(site, site)`` for an SAE, the
    input and output sites for a transcoder (``"transcoder"`` -> ``("mlp_in", "mlp")``)."""
    pair = pair_of(site)
    return (site, site) if pair is None else (pair.input_site, pair.output_site)


def check_saes(saes: Sequence[dict[str, Any]], cfg: LMConfig, site: str) -> None:
    """Raises a ValueError naming the SAE (index), key and shape when a file cannot be evaluated at
    ``site`` of this LM: widths that are not the read / written sites' widths, or an affine skip
    (a transcoder) evaluated at an SAE site."""
    read, write = read_write_sites(site)
    widths = ((0, read), (1, write))  # (axis, site): W_enc [d_in, .], W_dec [., d_out], W_skip [d_in, d_out]
    axes = {"W_enc": widths[:1], "W_dec": widths[1:], "W_skip": widths}
    for i, s in enumerate(saes):
        if "affine_skip_connection" in s:
            raise ValueError(
                f"SAE {i}: key 'affine_skip_connection' (a raw Gemma Scope 2 transcoder file): load it with "
                "gemmascope.sae.files.io.load_params, which names the skip 'W_skip'"
            )
        if "W_skip" in s and pair_of(site) is None:
            raise ValueError(
                f"SAE {i}: has 'W_skip' (an affine transcoder) but site {site!r} is not a transcoder site; "
                "evaluate it at site 'transcoder_affine'"
            )
        for key, checks in axes.items():
            for axis, where in checks:
                want = site_dim(cfg, where)
                if key in s and np.shape(s[key])[axis] != want:
                    raise ValueError(
                        f"SAE {i}: {key!r} has shape {tuple(np.shape(s[key]))}, but axis {axis} must be {want}, "
                        f"the width of {where!r} in this LM (site {site!r}): wrong model or site for this file"
                    )


# Real-text positions that are not norm outliers: the filter the store applied (one implementation).
splice_positions = sites_lib.keep_mask


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "site", "outlier_norm_factor", "ks", "baselines"))
def _batch_metrics(
    lm_params,
    saes,
    tokens,
    mask,
    *,
    cfg: LMConfig,
    layer: int,
    site: str,
    outlier_norm_factor: float,
    ks: tuple,
    baselines: tuple[str, ...],
):
    """One batch, every SAE of ``saes`` (a list at one site), sharing the LM up to ``layer``.

    The residual stream entering ``layer`` and the site's activation ``x`` are computed once;
    each SAE encodes and decodes ``x`` once, and each run (clean and zero-ablation when named in
    ``baselines``, one per SAE) resumes from ``layer`` with the site replaced at the selected
    positions (from ``layer + 1`` for ``res``, whose replaced value is the next layer's input).
    For a transcoder site ``x`` is the output site and each transcoder reads ``x_in``, the input
    site of the same prefix run (module doc). Returns ``(common, [per-SAE])`` sums.
    """
    read, write = read_write_sites(site)
    key, last = (layer, write), (cfg.n_layers - 1, "res")
    start = dict(start_layer=0, h_in=None)
    if layer > 0:
        h_in = forward(lm_params, tokens, cfg, capture=[(layer - 1, "res")], stop_after=layer - 1).captures[
            (layer - 1, "res")
        ]
        start = dict(start_layer=layer, h_in=h_in)
    caps = forward(lm_params, tokens, cfg, capture=[key, (layer, read)], stop_after=layer, **start).captures
    x_raw = caps[key]
    x = x_raw.astype(jnp.float32)  # the replaced site: the SAE's input and target, the transcoder's target
    x_in = caps[(layer, read)].astype(jnp.float32)  # what the SAE or transcoder reads
    sel = splice_positions(x, mask, outlier_norm_factor)
    if read != write:  # the paired store's rows: kept at both sites
        sel = sel & splice_positions(x_in, mask, outlier_norm_factor)
    s = sel.astype(jnp.float32)

    def final_residual(replacement=None):
        """Last block's output ``[B, T, d]``, the site set to ``replacement`` at the selected positions."""
        fn = None
        if replacement is not None:
            fn = lambda a: jnp.where(sel[..., None], replacement.astype(a.dtype), a)  # noqa: E731
        if write == "res":
            # The block output is the residual entering the next layer: resume there, so the
            # site's layer runs once per batch instead of once per run.
            h = x_raw if fn is None else fn(x_raw)
            if layer < cfg.n_layers - 1:
                h = forward(
                    lm_params, tokens, cfg, capture=[last], stop_after=cfg.n_layers - 1, start_layer=layer + 1, h_in=h
                ).captures[last]
            return h
        out = forward(
            lm_params,
            tokens,
            cfg,
            capture=[last],
            splice={key: fn} if fn is not None else None,
            stop_after=cfg.n_layers - 1,
            **start,
        )
        return out.captures[last]

    w = mask[:, 1:].astype(jnp.float32)  # targets that are real tokens
    common = {
        "n_targets": jnp.sum(w),
        "n_tokens": jnp.sum(s),
        "n_outliers": jnp.sum(mask) - jnp.sum(s),
        "x_sum": jnp.sum(x * s[..., None], axis=(0, 1)),  # summed again in float64 across batches
        "x_sq_sum": jnp.sum(jnp.sum(x * x, axis=-1) * s),
        "count_by_pos": jnp.sum(s, axis=0),
    }
    if "zero" in baselines:
        common["ce_zero"] = jnp.sum(
            next_token_ce_from_residual(lm_params, final_residual(jnp.zeros_like(x)), tokens, cfg) * w
        )
    recons = [reconstruct(dict(sae, k=k) if k is not None else sae, x_in) for sae, k in zip(saes, ks)]
    # Every SAE's run against the clean run (KL), the clean logits computed once per vocabulary tile.
    ce_clean, ce_sae, kl = next_token_ce_and_kl(
        lm_params, final_residual(), jnp.stack([final_residual(x_hat) for x_hat, _ in recons]), tokens, cfg=cfg
    )
    if "clean" in baselines:
        common["ce_clean"] = jnp.sum(ce_clean * w)
    x_norm = jnp.linalg.norm(x, axis=-1)  # [B, T]
    per_sae = []
    for i, (x_hat, f) in enumerate(recons):
        err = jnp.sum((x - x_hat) ** 2, axis=-1)  # [B, T]
        fired = (f != 0) & sel[..., None]
        xh_norm = jnp.linalg.norm(x_hat, axis=-1)
        dot = jnp.sum(x * x_hat, axis=-1)
        cos = jnp.where((x_norm > 0) & (xh_norm > 0), dot / jnp.maximum(x_norm * xh_norm, 1e-30), 0.0)
        per_sae.append(
            {
                "ce_sae": jnp.sum(ce_sae[i] * w),
                "kl_sum": jnp.sum(kl[i] * w),
                "l0_sum": jnp.sum(fired),
                "err_sum": jnp.sum(err * s),
                "fire_counts": jnp.sum(fired, axis=(0, 1)),
                "err_by_pos": jnp.sum(err * s, axis=0),
                "cos_sum": jnp.sum(cos * s),
                "l2_ratio_sum": jnp.sum(xh_norm / jnp.where(x_norm < L2_RATIO_FLOOR, 1.0, x_norm) * s),
                "xhat_sq_sum": jnp.sum(xh_norm**2 * s),
                "x_dot_xhat_sum": jnp.sum(dot * s),
            }
        )
    return common, per_sae


def _batch_key(tokens: np.ndarray, mask: np.ndarray) -> str:
    h = hashlib.blake2b(np.ascontiguousarray(tokens, np.int32).tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(mask, bool).tobytes())
    return h.hexdigest()


def _add(acc: dict[str, Any], out: dict[str, Any]) -> None:
    for k, v in out.items():
        v = np.asarray(v, np.float64)
        acc[k] = acc[k] + v if k in acc else v


def evaluate_saes(
    lm_params,
    cfg: LMConfig,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    saes: Sequence[dict[str, Any]],
    layer: int,
    site: str,
    outlier_norm_factor: float = 10.0,
    max_tokens: int | None = None,
    log: Callable | None = None,
    baseline_cache: dict[str, list[float]] | None = None,
    clean_cache: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of several SAEs at one site, in one pass over the batches (see module doc).

    ``baseline_cache`` (batch content hash -> ``[ce_clean_sum, ce_zero_sum]``, for this LM and
    site) skips the clean and zero-ablation runs of batches seen before; ``clean_cache`` (batch
    content hash -> ``ce_clean_sum``, for this LM, any site: the clean loss does not depend on the
    site) skips the clean run at a site that is new but whose text was evaluated at another site.
    New entries are added to both. Each result has the keys of :func:`evaluate_sae`.

    ``site`` may be a transcoder site (``"transcoder"`` or ``"transcoder_affine"``, the same
    computation: plain and affine transcoders of a layer can share the pass); ``saes`` are then
    transcoder params (``W_skip`` when affine). Bad widths or a skip at an SAE site raise before
    any compute (:func:`check_saes`).
    """
    check_saes(saes, cfg, site)
    arrays, ks = zip(*(sae_model.split_static_k(s) for s in saes))
    arrays, ks = list(arrays), tuple(ks)
    common: dict[str, Any] = {}
    accs: list[dict[str, Any]] = [{} for _ in saes]
    t0 = time.time()
    for tokens, mask in batches:
        bkey = _batch_key(tokens, mask)
        cached = baseline_cache.get(bkey) if baseline_cache is not None else None
        clean = clean_cache.get(bkey) if clean_cache is not None else None
        if cached is not None:
            need: tuple[str, ...] = ()
        else:
            need = ("zero",) if clean is not None else ("clean", "zero")
        c_out, outs = jax.device_get(
            _batch_metrics(
                lm_params,
                arrays,
                jnp.asarray(tokens, jnp.int32),
                jnp.asarray(mask),
                cfg=cfg,
                layer=int(layer),
                site=site,
                outlier_norm_factor=float(outlier_norm_factor),
                ks=ks,
                baselines=need,
            )
        )
        if cached is None:
            clean = float(c_out["ce_clean"]) if clean is None else clean
            cached = [clean, float(c_out["ce_zero"])]
            if baseline_cache is not None:
                baseline_cache[bkey] = cached
            if clean_cache is not None:
                clean_cache[bkey] = clean
        c_out = dict(c_out, ce_clean=cached[0], ce_zero=cached[1])
        _add(common, c_out)
        for acc, out in zip(accs, outs):
            _add(acc, out)
        n_tok = int(common["n_tokens"])
        if log:
            dt = max(time.time() - t0, 1e-9)
            log(f"[eval] {n_tok:,} tokens x {len(saes)} SAE(s) ({n_tok / dt:,.0f} tok/s)")
        if max_tokens is not None and n_tok >= max_tokens:
            break
    if not common or common["n_tokens"] == 0:
        raise ValueError("evaluate_saes: the batches held no real-text tokens")
    n = common["n_tokens"]
    nt = common["n_targets"]
    tps = float(n / max(time.time() - t0, 1e-9))
    results = []
    for acc in accs:
        res = {
            "l0": float(acc["l0_sum"] / n),
            "fvu": float(fvu_from_sums(acc["err_sum"], common["x_sum"], common["x_sq_sum"], n)),
            "ce_clean": float(common["ce_clean"] / nt),
            "ce_sae": float(acc["ce_sae"] / nt),
            "ce_zero": float(common["ce_zero"] / nt),
            "n_tokens": int(n),
            "n_targets": int(nt),
            "n_outliers_kept_clean": int(common["n_outliers"]),
            "fire_counts": acc["fire_counts"].astype(np.int64),
            "err_by_position": np.where(
                common["count_by_pos"] > 0, acc["err_by_pos"] / np.maximum(common["count_by_pos"], 1), np.nan
            ),
            "tokens_per_second": tps,
        }
        res["delta_loss"] = res["ce_sae"] - res["ce_clean"]
        res["dead_fraction"] = float(np.mean(res["fire_counts"] == 0))
        res.update(saebench_core(res, acc, n))
        results.append(res)
    return results


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else float("nan")


def saebench_core(res: dict[str, Any], acc: dict[str, Any], n: float) -> dict[str, float]:
    """SAEBench's core metrics from the accumulated sums (definitions in the module doc)."""
    freq = np.asarray(res["fire_counts"], np.float64) / n
    return {
        "ce_loss_score": _ratio(res["ce_zero"] - res["ce_sae"], res["ce_zero"] - res["ce_clean"]),
        "kl_div_with_sae": float(acc["kl_sum"] / res["n_targets"]),
        "explained_variance": 1.0 - res["fvu"],
        "cossim": float(acc["cos_sum"] / n),
        "l2_ratio": float(acc["l2_ratio_sum"] / n),
        "relative_reconstruction_bias": _ratio(acc["xhat_sq_sum"], acc["x_dot_xhat_sum"]),
        "frac_alive": float(np.mean(freq > 0)),
        "freq_over_1_percent": float(np.mean(freq > 0.01)),
        "freq_over_10_percent": float(np.mean(freq > 0.1)),
    }


def evaluate_sae(
    lm_params,
    cfg: LMConfig,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    sae: dict[str, Any],
    layer: int,
    site: str,
    outlier_norm_factor: float = 10.0,
    max_tokens: int | None = None,
    log: Callable | None = None,
) -> dict[str, Any]:
    """Streams ``(tokens [B, T], mask [B, T])`` batches and returns the metrics (see module doc).

    Result keys: l0, fvu, ce_clean, ce_sae, ce_zero, delta_loss, n_tokens, n_targets,
    n_outliers_kept_clean, fire_counts [d_sae], dead_fraction, err_by_position [T] (mean squared
    error per position, NaN where no token), tokens_per_second, and SAEBench's core metrics
    (module doc): ce_loss_score, kl_div_with_sae, explained_variance, cossim, l2_ratio,
    relative_reconstruction_bias, frac_alive, freq_over_1_percent, freq_over_10_percent.
    """
    return evaluate_saes(
        lm_params,
        cfg,
        batches,
        saes=[sae],
        layer=layer,
        site=site,
        outlier_norm_factor=outlier_norm_factor,
        max_tokens=max_tokens,
        log=log,
    )[0]


def firing_histogram(fire_counts: np.ndarray, n_tokens: int, bins: int = 40) -> tuple[np.ndarray, np.ndarray, int]:
    """log10 firing-frequency histogram of the latents that fired: ``(counts, edges, n_dead)``."""
    freq = np.asarray(fire_counts, np.float64) / max(n_tokens, 1)
    alive = freq > 0
    lo = np.log10(1.0 / max(n_tokens, 1))
    counts, edges = np.histogram(np.log10(freq[alive]), bins=bins, range=(lo, 0.0))
    return counts, edges, int((~alive).sum())
