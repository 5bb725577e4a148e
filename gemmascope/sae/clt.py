"""A cross-layer transcoder (CLT): JumpReLU features that read one layer and write to it and every
later layer (Ameisen et al. 2025, "Circuit Tracing"; Gemma Scope 2 ships them for Gemma 3 270M and
1B), in training units. It satisfies :class:`gemmascope.sae.common.Architecture`, as the per-layer
:class:`~gemmascope.sae.transcoder.Transcoder` does, on paired rows that hold every layer.

For ``L`` layers, features of source layer ``l`` read that layer's MLP input ``x_l [d_in]`` and
the prediction of layer ``m``'s MLP output sums the writes of every source layer up to ``m``::

    f_l   = JumpReLU(x_l @ W_enc[l] + b_enc[l], threshold[l])                 [d_sae]
    y_m^  = sum_{l <= m} f_l @ W_dec[l, :, m, :] + b_dec[m]  (+ x_m @ W_skip[m])  [d_out]
    loss  = mean_batch sum_m ||y_m - y_m^||^2 + sparsity(mean_l L0_l)

``W_dec [L, d_sae, L, d_out]`` is stored whole, but the forward reads only its causal blocks ``l <=
m`` (:meth:`CrossLayerTranscoder.decode_train`), so the entries that write to earlier layers stay
at zero with zero gradient (Gemma Scope 2's files hold them as zeros too) and cost no FLOPs. The
sparsity term is JumpReLU's (:func:`gemmascope.sae.jumprelu.sparsity_penalty`, the quadratic
target-L0 form or lambda * L0) on the per-layer L0 averaged over layers, so a target L0 means "per
layer", as it does for the 18 per-layer transcoders a CLT is compared with. Decoder rows are not
kept unit norm: a feature's norm is spread over the layers it writes to, and the threshold is what
gates it.

Rows: ``[B, L * d_in + L * d_out]``, every layer's input then every layer's target, each block in
layer order (:meth:`CrossLayerTranscoder.split`). A one-layer CLT is exactly the JumpReLU
transcoder on the same weights (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemmascope.sae import jumprelu
from gemmascope.sae.common import Params, SAEConfig, as_sae_config, init_base, recon_aux
from gemmascope.sae.transcoder import JumpReLUWriter, Transcoder
from gemmascope.sites import LayerSpan

SKIP_KEY = "W_skip"


def causal_mask(n_layers: int) -> jax.Array:
    """``[L, 1, L, 1]`` float: 1 where source layer ``l`` may write to target layer ``m >= l``."""
    m = jnp.triu(jnp.ones((n_layers, n_layers), jnp.float32))
    return m[:, None, :, None]


@jax.custom_vjp
def causal_decode(f: jax.Array, w: jax.Array) -> jax.Array:
    """``f [B, L, n], W_dec [L, n, L, o] -> [B, L, o]``: target layer ``m`` sums the writes of
    source layers ``0..m``, one contraction per target over its sources only, so the blocks below
    the causal diagonal cost nothing and get no gradient.

    The gradient is written by hand: ``W_dec``'s is built in one buffer, a target layer's column
    ``W_dec[:m+1, :, m]`` at a time (``dynamic_update_slice``), where autodiff of the sliced forward
    would materialise a zero-padded full-size ``W_dec`` per target layer and add them up (measured
    by the dry run of Gemma 3 1B's CLT: 235 GB of temporaries per device against 58 GB)."""
    return jnp.stack([jnp.einsum("bls,lso->bo", f[:, : m + 1], w[: m + 1, :, m]) for m in range(w.shape[0])], axis=1)


def _causal_decode_fwd(f, w):
    return causal_decode(f, w), (f, w)


def _causal_decode_bwd(res, g):
    f, w = res
    n = w.shape[0]
    g_w = jnp.zeros_like(w)
    for m in range(n):  # column m: sources 0..m
        col = jnp.einsum("bls,bo->lso", f[:, : m + 1], g[:, m])[:, :, None, :]
        g_w = jax.lax.dynamic_update_slice(g_w, col.astype(w.dtype), (0, 0, m, 0))
    # source layer l's codes feed targets l..L-1
    g_f = jnp.stack([jnp.einsum("bmo,smo->bs", g[:, l:], w[l, :, l:]) for l in range(n)], axis=1)
    return g_f.astype(f.dtype), g_w


causal_decode.defvjp(_causal_decode_fwd, _causal_decode_bwd)


@dataclasses.dataclass(frozen=True)
class CrossLayerTranscoder(JumpReLUWriter):
    """A CLT over ``n_layers`` layers writing ``d_out`` features per layer; ``affine`` adds a
    per-layer ``x_m @ W_skip[m]``."""

    n_layers: int
    d_out: int
    affine: bool = False

    NAME = "clt"
    UNIT_NORM_DECODER = False
    FILE_LAYOUT = "clt"

    @classmethod
    def for_span(cls, span: LayerSpan, n_layers: int, d_out: int) -> CrossLayerTranscoder:
        """The model a cross-layer site trains (:func:`gemmascope.sae.archs.for_site`)."""
        return cls(n_layers, d_out, span.affine)

    def init(self, key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> Params:
        """Per source layer: the transcoder's start (He-uniform unit rows, encoder the decoder's
        transpose when ``d_in == d_out``), its decoder copied to every target layer at or after
        it and scaled by ``1 / sqrt(L - l)`` (so a feature's total write starts at unit norm);
        biases 0, thresholds ``cfg.threshold_init``, ``W_skip = 0`` when affine."""
        cfg = as_sae_config(cfg)
        n = self.n_layers
        enc, dec = [], []
        for lk in jax.random.split(key, n):
            k_dec, k_enc = jax.random.split(lk)
            d = init_base(k_dec, self.d_out, d_sae)
            e = d if d_in == self.d_out else init_base(k_enc, d_in, d_sae)
            enc.append(e["W_enc"])
            dec.append(d["W_dec"])
        writes = jnp.arange(n, 0, -1, dtype=jnp.float32)  # layers each source writes to: L - l
        w_dec = jnp.stack(dec)[:, :, None, :] / jnp.sqrt(writes)[:, None, None, None]
        params = {
            "W_enc": jnp.stack(enc),
            "W_dec": jnp.broadcast_to(w_dec, (n, d_sae, n, self.d_out)) * causal_mask(n),
            "b_enc": jnp.zeros((n, d_sae), jnp.float32),
            "b_dec": jnp.zeros((n, self.d_out), jnp.float32),
            "threshold": jnp.full((n, d_sae), float(cfg.threshold_init), jnp.float32),
        }
        if self.affine:
            params[SKIP_KEY] = jnp.zeros((n, d_in, self.d_out), jnp.float32)
        return params

    def layer_params(self, params: Mapping[str, jax.Array], layer: int) -> Params:
        """Source layer ``layer``'s slice as a per-layer :class:`~gemmascope.sae.transcoder.Transcoder`'s
        params (its write to its own layer as ``W_dec [d_sae, d_out]``)."""
        out = {k: params[k][layer] for k in ("W_enc", "b_enc", "threshold", "b_dec")}
        out["W_dec"] = params["W_dec"][layer, :, layer]
        if SKIP_KEY in params:
            out[SKIP_KEY] = params[SKIP_KEY][layer]
        return out

    def layer_rows(self, xy: jax.Array, d_in: int, layer: int) -> jax.Array:
        """``[n, d_in + d_out]``: layer ``layer``'s input and target parts of the rows ``xy``."""
        x, y = self.split(xy, d_in)
        return jnp.concatenate([x[:, layer], y[:, layer]], axis=-1)

    def data_init(self, params: Mapping[str, jax.Array], xy: jax.Array, cfg: SAEConfig) -> Params:
        """The per-layer transcoder's ``"regression"`` start (``cfg.transcoder_init``), layer by
        layer on that layer's rows of the normalised sample ``xy``: each source layer's encoder
        (plain) or skip and bias (affine) start from the least-squares map of its own layer, as the
        18 per-layer transcoders a CLT is compared with do; the writes to later layers keep
        :meth:`init`'s scaled copies."""
        d_in = params["W_enc"].shape[1]
        one = Transcoder(self.d_out, self.affine)
        out = dict(params)
        for layer in range(self.n_layers):
            p = one.data_init(self.layer_params(params, layer), self.layer_rows(xy, d_in, layer), cfg)
            out["W_enc"] = out["W_enc"].at[layer].set(p["W_enc"])
            out["b_dec"] = out["b_dec"].at[layer].set(p["b_dec"])
            if SKIP_KEY in p:
                out[SKIP_KEY] = out[SKIP_KEY].at[layer].set(p[SKIP_KEY])
        return out

    def quantile_thresholds(self, params: Mapping[str, jax.Array], xy: jax.Array, target_l0: Any, cfg: SAEConfig):
        """Every layer's thresholds at the quantiles of its own pre-activations on the normalised
        sample that give the target L0 per layer (the per-layer transcoder's rule, layer by layer)."""
        d_in = params["W_enc"].shape[1]
        one = Transcoder(self.d_out, self.affine)
        thr = [
            one.quantile_thresholds(self.layer_params(params, l), self.layer_rows(xy, d_in, l), target_l0, cfg)[
                "threshold"
            ]
            for l in range(self.n_layers)
        ]
        return {**params, "threshold": jnp.stack(thr)}

    def fold_scales(self, layout: Mapping[str, Any], norm_scale: Any, dim_scale: Any = None) -> dict[str, np.ndarray]:
        """Training-unit arrays (:meth:`export_layout`) trained on ``x_l / (C_in[l] s_in[l])`` and
        ``y_m / (C_out[m] s_out[m])`` (``norm_scale [2L]``; ``dim_scale [L * d_in + L * d_out]``,
        one per column of the paired rows, or ``None``: all 1) -> raw units, the features left in
        training units (a feature writes to several layers, each with its own ``C_out``, so no one
        factor could move into them). With ``k_in[l] = C_in[l] s_in[l]`` and ``k_out[m] = C_out[m]
        s_out[m]`` (vectors over the dimensions)::

            W_enc'[l] = W_enc[l] / k_in[l][:, None]      b_enc', threshold' unchanged
            W_dec'[l, :, m] = W_dec[l, :, m] * k_out[m]   b_dec'[m] = b_dec[m] * k_out[m]
            W_skip'[m] = W_skip[m] * k_out[m][None, :] / k_in[m][:, None]
        """
        c = np.asarray(norm_scale, np.float64).reshape(-1)
        n = self.n_layers
        if c.shape != (2 * n,):
            raise ValueError(f"a {n}-layer CLT needs 2 * {n} normalisation constants, got shape {c.shape}")
        p = {k: np.asarray(v, np.float64) for k, v in layout.items()}
        d_in = p["W_enc"].shape[1]
        s = np.ones(n * (d_in + self.d_out)) if dim_scale is None else np.asarray(dim_scale, np.float64)
        if s.shape != (n * (d_in + self.d_out),):
            raise ValueError(
                f"a {n}-layer CLT needs {n} * ({d_in} + {self.d_out}) per-dimension scales, got shape {s.shape}"
            )
        k_in = c[:n, None] * s[: n * d_in].reshape(n, d_in)
        k_out = c[n:, None] * s[n * d_in :].reshape(n, self.d_out)
        out = {
            "W_enc": p["W_enc"] / k_in[:, :, None],
            "b_enc": p["b_enc"],
            "threshold": p["threshold"],
            "W_dec": p["W_dec"] * k_out[None, None, :, :],
            "b_dec": p["b_dec"] * k_out,
        }
        if SKIP_KEY in p:
            out[SKIP_KEY] = p[SKIP_KEY] * k_out[:, None, :] / k_in[:, :, None]
        return {k: v.astype(np.float32) for k, v in out.items()}

    def split(self, xy: jax.Array, d_in: int) -> tuple[jax.Array, jax.Array]:
        """``[B, L * d_in + L * d_out] -> (x [B, L, d_in], y [B, L, d_out])``."""
        n = self.n_layers
        x = xy[..., : n * d_in].reshape(*xy.shape[:-1], n, d_in)
        y = xy[..., n * d_in :].reshape(*xy.shape[:-1], n, self.d_out)
        return x, y

    def pre_activations(self, params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
        """``x [B, L, d_in] -> [B, L, d_sae]``: each layer's encoder on its own input."""
        return jnp.einsum("bld,lds->bls", x, params["W_enc"]) + params["b_enc"]

    def encode_train(
        self, params: Mapping[str, jax.Array], x: jax.Array, cfg: SAEConfig | Mapping[str, Any], sparsity: Any = None
    ) -> jax.Array:
        """Codes ``f [B, L, d_sae]`` of a whole row ``[B, L * d_in + L * d_out]`` (its input part)."""
        del sparsity
        cfg = as_sae_config(cfg)
        xs, _ = self.split(x, params["W_enc"].shape[1])
        return jumprelu.jumprelu(self.pre_activations(params, xs), params["threshold"], cfg.bandwidth)

    def decode_train(self, params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
        """``f [B, L, d_sae] -> [B, L, d_out]``: every target layer's sum of the writes of the
        layers at or before it, plus its bias (without the skip, which needs ``x``: :meth:`predict`).

        :func:`causal_decode`: one contraction per target layer ``m``, of ``f[:, :m+1]`` with
        ``W_dec[:m+1, :, m]`` over (source layer, latent). The masked full product (``einsum`` with
        ``W_dec`` times :func:`causal_mask`) spends half its FLOPs, forward and backward, on blocks
        that are zero; this skips them (bench/bench_clt_decoder.py: 2.2x for the decoder's forward
        and backward at L = 18, d_sae = 512, d_out = 640, batch 512, on XLA:CPU) and gives the
        entries below the diagonal no gradient, as the mask did."""
        return causal_decode(f, params["W_dec"]) + params["b_dec"]

    def predict(self, params: Mapping[str, jax.Array], f: jax.Array, x: jax.Array) -> jax.Array:
        """``y^ [B, L, d_out]`` from the codes and the inputs ``x [B, L, d_in]`` (for the skip)."""
        y_hat = self.decode_train(params, f)
        if SKIP_KEY in params:
            y_hat = y_hat + jnp.einsum("bld,ldo->blo", x, params[SKIP_KEY])
        return y_hat

    def loss(
        self,
        params: Mapping[str, jax.Array],
        xy: jax.Array,
        cfg: SAEConfig | Mapping[str, Any],
        sparsity: Any,
        dead: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean over the batch of ``sum_m ||y_m - y_m^||^2`` plus JumpReLU's sparsity penalty on the
        per-layer L0 averaged over layers. aux as every architecture's (``l0``: that per-layer
        mean; ``fired [L * d_sae]``: any firing per feature)."""
        del dead
        cfg = as_sae_config(cfg)
        xs, ys = self.split(xy, params["W_enc"].shape[1])
        f, l0 = jumprelu.jumprelu_and_l0(self.pre_activations(params, xs), params["threshold"], cfg.bandwidth)
        l0_mean = jnp.mean(l0, axis=-1)  # [B]: per-layer L0, averaged over layers
        sparsity_term = jumprelu.sparsity_penalty(l0_mean, cfg, sparsity)
        b = xy.shape[0]  # every layer's target as one row: the shared squared error and statistics
        y_hat = self.predict(params, f, xs)
        mse, aux = recon_aux(ys.reshape(b, -1), y_hat.reshape(b, -1), f.reshape(b, -1), l0_mean, sparsity_term)
        return mse + sparsity_term, aux

    def export_layout(self, params: Mapping[str, jax.Array], cfg: SAEConfig, sparsity: Any = None) -> Params:
        """The stacked arrays, still in training units, the decoder's non-causal entries zero."""
        out = {k: params[k] for k in ("W_enc", "b_enc", "b_dec", "threshold")}
        out["W_dec"] = params["W_dec"] * causal_mask(self.n_layers)
        if SKIP_KEY in params:
            out[SKIP_KEY] = params[SKIP_KEY]
        return out

    def thresholds(self, params: Mapping[str, jax.Array]) -> jax.Array:
        return params["threshold"]


#: The sites a CLT trains at (added to :data:`gemmascope.sites.SPAN_SITES` by the registry): each
#: layer's residual before the pre-MLP norm (``hook_resid_mid``) -> every later layer's MLP output
#: (after Gemma's post-MLP norm, ``hook_mlp_out``), plain or with an affine skip per layer.
SPANS = {
    "clt": LayerSpan("res_mid", "mlp", CrossLayerTranscoder.NAME),
    "clt_affine": LayerSpan("res_mid", "mlp", CrossLayerTranscoder.NAME, affine=True),
}
