"""One JumpReLU SAE per layer, trained side by side from one LM pass per batch: the whole-model
sweep Gemma Scope's ``_all`` releases hold (every layer of a site), without running the LM once
per layer.

On the rows of a cross-layer site that reads and writes the same LM site at every layer of
``config.layers`` (``res_all``, ``mlp_all``, ``att_all``: ``[B, L * d + L * d]``, each layer's
activations as input and again as target, each block divided by its own layer's constant), the
SAE of layer ``l`` sees only ``x_l``::

    loss = sum_l loss_jumprelu(params[l], x_l)       (each term exactly gemmascope.sae.jumprelu.loss)

Parameters are JumpReLU's stacked over a layer axis (``W_enc [L, d, d_sae]`` ...), so every
layer's gradient, Adam state and unit-norm decoder rows are those of a JumpReLU SAE trained alone
on the same batches, and each layer's sparsity term is its own (a target L0 is every layer's).
The L0 controller (``sae.l0_controller_rate``) keeps one multiplier per layer
(:attr:`LayerSAEs.controller_shape`), each steering its own layer's L0, as in single-location
runs. When training ends each layer is exported as an ordinary JumpReLU
SAE of its LM site and layer (``saes/<site>/layer_<l>/...``, :mod:`gemmascope.train.export_clt`),
so evaluation, dashboards and every file layout take them as they take single-location SAEs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gemmascope.sae import jumprelu
from gemmascope.sae.common import Params, SAEConfig, as_sae_config, decode_train
from gemmascope.sae.transcoder import JumpReLUWriter
from gemmascope.sites import LM_SITES, LayerSpan


@dataclasses.dataclass(frozen=True)
class LayerSAEs(JumpReLUWriter):
    """``n_layers`` independent JumpReLU SAEs of width ``d_out`` inputs, one per layer."""

    n_layers: int
    d_out: int

    NAME = "layer_saes"
    FILE_LAYOUT = "layer_saes"  # exported layer by layer as JumpReLU SAEs
    UNIT_NORM_DECODER = jumprelu.UNIT_NORM_DECODER

    @property
    def controller_shape(self) -> tuple[int, ...]:
        """The L0 controller's multipliers per sweep value: one per layer (``aux["controller_l0"]``
        is the matching per-layer batch L0)."""
        return (self.n_layers,)

    @classmethod
    def for_span(cls, span: LayerSpan, n_layers: int, d_out: int) -> LayerSAEs:
        return cls(int(n_layers), int(d_out))

    def _x(self, xy: jax.Array) -> jax.Array:
        """``[B, L * d + L * d] -> [B, L, d]``: the input half (the target half is the same)."""
        return xy[..., : self.n_layers * self.d_out].reshape(*xy.shape[:-1], self.n_layers, self.d_out)

    def init(self, key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> Params:
        """JumpReLU's start from ``key`` for every layer: what ``L`` single-location runs of one
        config start from (each from ``config.seed``), so the two train the same SAEs."""
        one = jumprelu.init(key, d_in, d_sae, as_sae_config(cfg))
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.n_layers, *a.shape)), one)

    def quantile_thresholds(self, params: Mapping[str, jax.Array], xy: jax.Array, target_l0: Any, cfg: SAEConfig):
        """JumpReLU's quantile start, each layer on its own rows of the normalised sample."""
        return jax.vmap(lambda p, x: jumprelu.quantile_thresholds(p, x, target_l0, cfg), in_axes=(0, 1))(
            params, self._x(xy)
        )

    def encode_train(
        self, params: Mapping[str, jax.Array], x: jax.Array, cfg: SAEConfig | Mapping[str, Any], sparsity: Any = None
    ) -> jax.Array:
        """Codes ``f [B, L, d_sae]``: each layer's SAE on its own block of the rows."""
        cfg = as_sae_config(cfg)
        return jax.vmap(lambda p, xl: jumprelu.encode_train(p, xl, cfg, sparsity), in_axes=(0, 1), out_axes=1)(
            params, self._x(x)
        )

    def decode_train(self, params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
        """``f [B, L, d_sae] -> [B, L, d]``."""
        return jax.vmap(lambda p, fl: decode_train(jumprelu.layout_params(p), fl), in_axes=(0, 1), out_axes=1)(
            params, f
        )

    def loss(
        self,
        params: Mapping[str, jax.Array],
        xy: jax.Array,
        cfg: SAEConfig | Mapping[str, Any],
        sparsity: Any,
        dead: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The sum over layers of JumpReLU's loss, each layer on its own block. aux: ``mse``,
        ``sq_err_sum``, ``sparsity_loss`` summed over layers (so the trainer's FVU is every
        layer's together), ``l0`` the mean over layers, ``controller_l0 [L]`` each layer's,
        ``fired [L * d_sae]``. With the L0 controller ``sparsity`` is ``(T, coef, nu [L])``: each
        layer's term gets its own multiplier."""
        del dead
        cfg = as_sae_config(cfg)
        per_layer = isinstance(sparsity, tuple) and len(sparsity) > 2
        s_axes = (None, None, 0) if per_layer else None
        losses, aux = jax.vmap(lambda p, x, s: jumprelu.loss(p, x, cfg, s), in_axes=(0, 1, s_axes))(
            params, self._x(xy), sparsity
        )
        out = {k: jnp.sum(aux[k]) for k in ("mse", "sq_err_sum", "sparsity_loss")}
        out["l0"] = jnp.mean(aux["l0"])
        out["controller_l0"] = aux["l0"]
        out["fired"] = aux["fired"].reshape(-1)
        return jnp.sum(losses), out

    def export_layout(self, params: Mapping[str, jax.Array], cfg: SAEConfig, sparsity: Any = None) -> Params:
        return jax.vmap(jumprelu.layout_params)(params)

    def thresholds(self, params: Mapping[str, jax.Array]) -> jax.Array:
        return jax.vmap(jumprelu.thresholds)(params)


#: The sites it trains at (added to :data:`gemmascope.sites.SPAN_SITES` by the registry): every
#: layer of ``config.layers`` of one LM site, as input and as target.
SPANS = {f"{s}_all": LayerSpan(s, s, LayerSAEs.NAME) for s in ("res", "mlp", "att") if s in LM_SITES}
