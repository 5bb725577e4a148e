"""The replacement model: the MLPs of a span of layers all replaced at once by what a cross-layer
transcoder (or a set of per-layer transcoders) predicts, scored by the LM's next-token loss and
its KL from the clean model (the comparison that motivates CLTs, Ameisen et al. 2025); likewise
the residual stream at a weakly causal crosscoder's layers replaced by its reconstructions.

Each replacement reads its input site in the *replacement* model's own forward (errors compound
through the layers, as in circuit-tracer's replacement model) and writes its output site (the MLP
output ``mlp``, after Gemma's post-MLP norm; a crosscoder's ``res``, which it also reads: the
reconstruction of layer ``m`` is what layer ``m + 1`` reads). Implementations of
:class:`Replacement`:

* :class:`CLTReplacement`: raw-unit stacked CLT arrays (:mod:`gemmascope.sae.files.multilayer`),
  reading ``res_mid``; layer ``m``'s MLP output is ``sum_{l <= m} f_l W_dec[l, :, m] + b_dec[m]
  (+ x_m W_skip[m])``, ``f_l`` the codes of layer ``l``'s read in this same forward.
* :class:`TranscoderSet`: one raw-unit transcoder per layer (``params.npz`` layout), reading
  ``mlp_in``.
* :class:`CrosscoderReplacement`: a weakly causal crosscoder (the CLT's arrays, reading and
  writing ``res``). An acausal crosscoder has none: its reconstruction of an early layer needs
  the later layers' residuals, which a causal forward has not computed yet.

Positions replaced: real text kept by the outlier rule at every read and written location of
the clean run (the rows training saw: the all-layer source's joint mask); BOS and the attention
sinks keep their MLP outputs. Losses average over positions whose target is a real token.
``l0_total``: codes per replaced token summed over the layers (the number of feature nodes an
attribution graph has per token).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.data.activations import LMActivations
from gemmascope.data.sites import keep_mask
from gemmascope.eval.kl import next_token_ce_and_kl
from gemmascope.lm.loss import next_token_ce_from_residual
from gemmascope.lm.model import forward
from gemmascope.sae.files import io as sae_io
from gemmascope.sae.files import model as sae_model
from gemmascope.sae.files import multilayer


class Replacement(Protocol):
    """What replaces the MLPs of ``layers``: ``encode(i, a [B, T, d_in]) -> codes [B, T, n]`` of
    the ``i``-th layer's read, and ``write(i, codes, reads) -> [B, T, d_out]``, layer ``i``'s MLP
    output from the codes and reads of layers ``0..i`` (lists, in layer order)."""

    read_site: str
    write_site: str
    layers: tuple[int, ...]

    def encode(self, i: int, a: jax.Array) -> jax.Array: ...

    def write(self, i: int, codes: Sequence[jax.Array], reads: Sequence[jax.Array]) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class CLTReplacement:
    """A raw-unit CLT (``W_enc [L, d_in, d_sae]`` ...) over ``layers``."""

    params: Mapping[str, Any]
    layers: tuple[int, ...]
    read_site: str = "res_mid"
    write_site: str = "mlp"

    def encode(self, i, a):
        p = self.params
        pre = a.astype(jnp.float32) @ p["W_enc"][i] + p["b_enc"][i]
        return jnp.where(pre > p["threshold"][i], pre, 0.0)

    def write(self, i, codes, reads):
        p = self.params
        y = p["b_dec"][i] + sum(codes[l] @ p["W_dec"][l, :, i] for l in range(i + 1))
        if "W_skip" in p:
            y = y + reads[i].astype(jnp.float32) @ p["W_skip"][i]
        return y


@dataclasses.dataclass(frozen=True)
class TranscoderSet:
    """One raw-unit transcoder per layer of ``layers`` (``params[i]`` for ``layers[i]``)."""

    params: Sequence[Mapping[str, Any]]
    layers: tuple[int, ...]
    read_site: str = "mlp_in"
    write_site: str = "mlp"

    def encode(self, i, a):
        return sae_model.encode(self.params[i], a.astype(jnp.float32))

    def write(self, i, codes, reads):
        return sae_model.transcode(self.params[i], reads[i].astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class CrosscoderReplacement(CLTReplacement):
    """A raw-unit weakly causal crosscoder over ``layers``: the CLT's arrays on the residual."""

    read_site: str = "res"
    write_site: str = "res"


def _batch(lm_params, tokens, mask, *, cfg, rep: Replacement, factor: float):
    """Sums over one batch: real targets, clean / replaced / zero-ablated CE, KL and codes."""
    last = (cfg.n_layers - 1, "res")
    locs = list(dict.fromkeys((l, s) for l in rep.layers for s in (rep.read_site, rep.write_site)))
    clean = forward(lm_params, tokens, cfg, capture=locs + [last], stop_after=cfg.n_layers - 1).captures
    sel = mask
    for loc in locs:
        sel = sel & keep_mask(clean[loc].astype(jnp.float32), mask, factor)
    reads, codes, l0 = [], [], []

    def read_fn(i):
        def fn(a):
            reads.append(a)
            codes.append(rep.encode(i, a))
            l0.append(jnp.sum((codes[-1] != 0) & sel[..., None]))
            return a

        return fn

    written = {}  # a splice's output at the last residual (captures hold what was computed before it)

    def write_fn(i):
        def fn(a):
            out = jnp.where(sel[..., None], rep.write(i, codes, reads).astype(a.dtype), a)
            written[(rep.layers[i], rep.write_site)] = out
            return out

        return fn

    def read_write_fn(i):  # one site read, then overwritten (a crosscoder on the residual)
        return lambda a: write_fn(i)(read_fn(i)(a))

    splice = {}
    for i, l in enumerate(rep.layers):
        if rep.read_site == rep.write_site:
            splice[(l, rep.read_site)] = read_write_fn(i)
        else:
            splice[(l, rep.read_site)] = read_fn(i)
            splice[(l, rep.write_site)] = write_fn(i)
    h_rep = forward(lm_params, tokens, cfg, capture=[last], splice=splice, stop_after=cfg.n_layers - 1).captures[last]
    h_rep = written.get(last, h_rep)
    zero = {(l, rep.write_site): (lambda a: jnp.where(sel[..., None], jnp.zeros_like(a), a)) for l in rep.layers}
    h_zero = forward(lm_params, tokens, cfg, capture=[last], splice=zero, stop_after=cfg.n_layers - 1).captures[last]
    if last in zero:
        h_zero = zero[last](h_zero)
    ce_clean, ce_rep, kl = next_token_ce_and_kl(lm_params, clean[last], h_rep[None], tokens, cfg=cfg)
    w = mask[:, 1:].astype(jnp.float32)
    return {
        "n_targets": jnp.sum(w),
        "n_tokens": jnp.sum(sel),
        "ce_clean": jnp.sum(ce_clean * w),
        "ce_replaced": jnp.sum(ce_rep[0] * w),
        "kl_sum": jnp.sum(kl[0] * w),
        "ce_zero": jnp.sum(next_token_ce_from_residual(lm_params, h_zero, tokens, cfg) * w),
        "l0_sum": sum(l0),
    }


@functools.lru_cache(maxsize=8)
def _compiled(cfg, rep_type, layers: tuple[int, ...], sites: tuple[str, str], factor: float):
    """One jitted batch step per LM, kind of replacement and span: the replacements of a workdir
    (every sweep value) share it, their arrays traced arguments."""

    def run(lm_params, rep_params, tokens, mask):
        rep = rep_type(rep_params, layers, *sites)
        return _batch(lm_params, tokens, mask, cfg=cfg, rep=rep, factor=factor)

    return jax.jit(run)


def replacement_scores(
    lm, rep: Replacement, batches: Iterable[tuple[np.ndarray, np.ndarray]], *, outlier_norm_factor: float
) -> dict[str, float]:
    """``{ce_clean, ce_replaced, delta_loss, kl, ce_zero, ce_loss_score, l0_total, n_tokens}`` of
    the replacement model over ``batches`` of ``(tokens [B, T], mask [B, T])`` (module doc);
    ``ce_loss_score`` is the fraction of the all-MLPs-zeroed loss gap recovered."""
    sites = (rep.read_site, rep.write_site)
    step = _compiled(lm.cfg, type(rep), tuple(rep.layers), sites, float(outlier_norm_factor))
    rep_params = jax.tree.map(jnp.asarray, rep.params)
    acc: dict[str, float] = {}
    for tokens, mask in batches:
        out = jax.device_get(step(lm.params, rep_params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool)))
        for k, v in out.items():
            acc[k] = acc.get(k, 0.0) + float(v)
    n = max(acc["n_targets"], 1.0)
    ce_clean, ce_rep, ce_zero = acc["ce_clean"] / n, acc["ce_replaced"] / n, acc["ce_zero"] / n
    return {
        "ce_clean": ce_clean,
        "ce_replaced": ce_rep,
        "delta_loss": ce_rep - ce_clean,
        "kl": acc["kl_sum"] / n,
        "ce_zero": ce_zero,
        "ce_loss_score": (ce_zero - ce_rep) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
        "l0_total": acc["l0_sum"] / max(acc["n_tokens"], 1.0),
        "n_tokens": acc["n_tokens"],
    }


def workdir_replacements(workdir: str) -> list[tuple[str, Replacement, dict[str, Any]]]:
    """``(name, replacement, metadata)`` of every CLT under ``workdir/saes`` and of every set of
    per-layer transcoders there trained at one sweep value on the CLTs' layers (the peers):
    ``transcoder[_affine] <sweep_value>`` when every one of those layers has one."""
    out, clt_layers = [], None
    for cfg_path in sorted(glob.glob(os.path.join(workdir, "saes", "*", "layers*", "*", "*", "config.json"))):
        folder = os.path.dirname(cfg_path)
        with open(cfg_path) as fh:
            meta = json.load(fh)
        arch, layers = meta.get("architecture", "clt"), tuple(int(l) for l in meta["layers"])
        kind = {"clt": CLTReplacement, "crosscoder": CrosscoderReplacement}.get(arch)
        if kind is None:
            continue
        if arch == "clt":
            clt_layers = layers
        out.append((os.path.relpath(folder, workdir), kind(multilayer.load_gemma_scope_2_clt(folder), layers), meta))
    if clt_layers is None:
        return out
    sets: dict[tuple[str, float], dict[int, str]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "saes", "transcoder*", "layer_*", "*", "*", "params.npz"))):
        meta = sae_io.load_metadata(path)
        sets.setdefault((meta["site"], float(meta["sweep_value"])), {})[int(meta["layer"])] = path
    for (site, value), by_layer in sorted(sets.items()):
        if all(l in by_layer for l in clt_layers):
            params = [sae_io.load_params(by_layer[l]) for l in clt_layers]
            out.append((f"{site} {value:g}", TranscoderSet(params, clt_layers), {"site": site, "sweep_value": value}))
    return out


def evaluate_replacements(config, workdir: str, max_tokens: int, log=print) -> list[dict[str, Any]]:
    """Scores every replacement of :func:`workdir_replacements` on at most ``max_tokens`` held-out
    tokens of the config's text; writes ``workdir/eval/replacement.{json,md}`` and returns the rows."""
    reps = workdir_replacements(workdir)
    if not reps:
        raise FileNotFoundError(f"no cross-layer transcoders under {os.path.join(workdir, 'saes')} (train first)")
    lm = LMActivations(config, [], log=log)
    batches, got = [], 0
    for toks, mask in lm.packed_batches("heldout"):
        batches.append((toks, mask))
        got += int(mask.sum())
        if got >= max_tokens:
            break
    rows = []
    for name, rep, meta in reps:
        r = replacement_scores(lm.lm, rep, batches, outlier_norm_factor=float(config.lm.outlier_norm_factor))
        rows.append({"name": name, "sweep_value": meta.get("sweep_value"), **r})
        log(f"[replacement] {name}: L0 total {r['l0_total']:.0f}, delta loss {r['delta_loss']:.3f}, KL {r['kl']:.3f}")
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", "replacement.json"), "w") as fh:
        json.dump(rows, fh, indent=2)
    lines = [
        "| replacement (every MLP of the span; a crosscoder's residuals) | L0 total | delta loss (nats) | KL "
        "| CE loss score |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['l0_total']:.0f} | {r['delta_loss']:.3f} | {r['kl']:.3f} | {r['ce_loss_score']:.3f} |"
        for r in rows
    ]
    with open(os.path.join(workdir, "eval", "replacement.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return rows
