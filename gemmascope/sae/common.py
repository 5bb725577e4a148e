"""What every SAE architecture shares: the contract, the typed SAE config, and the common pieces.

Units. Functions named ``*_train`` work in *training units*: inputs ``x / C`` (``E||x/C||^2 = 1``)
with the pre-encoder bias (the encoder sees ``x - b_dec``) and the training parametrisation of
the params (``log_threshold``, Gated's ``r_mag`` ...). :mod:`gemmascope.sae.files.model`'s ``encode`` /
``decode`` work in *raw units* on exported files (normalisation and pre-encoder bias folded).

:class:`Architecture` names what each module of :data:`gemmascope.sae.archs.ARCHS` provides;
the modules import this one (never :mod:`~gemmascope.sae.archs`), so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """``config.sae`` as a frozen, typed value, built once (:meth:`from_config`).

    Hashable, so it can be a static argument; every field is described in
    :func:`gemmascope.config.base_config`.
    """

    arch: str
    bandwidth: float
    threshold_init: float
    threshold_param: str
    threshold_min: float
    pre_encoder_bias: bool
    topk_ks: tuple[int, ...]
    auxk_k: int
    auxk_coefficient: float
    auxk_dead_tokens: int
    jumprelu_auxk: bool
    revive_dead_every: int
    l0_controller_rate: float
    sparsity_loss: str
    quadratic_form: str
    quadratic_coefficient: float
    frequency_penalty: float
    frequency_max: float
    threshold_init_mode: str
    threshold_init_l0: float
    b_dec_init: str
    transcoder_init: str
    matryoshka_prefixes: tuple[int, ...]
    batchtopk_threshold_lr: float

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> SAEConfig:
        """From ``config.sae`` (or a partial dict: missing fields take the defaults of
        :func:`gemmascope.config.base_config`). Unknown keys raise, naming the key."""
        from gemmascope.config import base_config

        defaults = base_config().sae
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m.keys()) - names)
        if unknown:
            raise ValueError(f"config.sae.{unknown[0]}: not a field of SAEConfig (known: {sorted(names)})")
        vals = {}
        for f in dataclasses.fields(cls):
            v = m[f.name] if f.name in m else defaults[f.name]
            vals[f.name] = _coerce(f.type, v)
        return cls(**vals)

    @classmethod
    def from_config(cls, config) -> SAEConfig:
        """From a full experiment config (its ``sae`` section)."""
        return cls.from_mapping({k: config.sae[k] for k in config.sae.keys()})


def _coerce(type_name: str, v: Any) -> Any:
    if type_name == "bool":
        return bool(v)
    if type_name == "int":
        return int(v)
    if type_name == "float":
        return float(v)
    if type_name == "str":
        return str(v)
    if type_name.startswith("tuple[int"):
        return tuple(int(a) for a in v)
    if type_name.startswith("tuple[float"):
        return tuple(float(a) for a in v)
    return v


def as_sae_config(cfg: SAEConfig | Mapping[str, Any]) -> SAEConfig:
    """An :class:`SAEConfig` from itself or a mapping (tests and notebooks pass small dicts)."""
    return cfg if isinstance(cfg, SAEConfig) else SAEConfig.from_mapping(cfg)


@runtime_checkable
class Architecture(Protocol):
    """The contract of an SAE architecture module (all in training units).

    ``sparsity`` is the sweep value of one SAE: the coefficient lambda (JumpReLU, ReLU, Gated)
    or the static integer k (TopK). ``dead [d_sae]`` (bool) marks latents silent for the
    configured window (TopK's AuxK loss uses it). ``aux`` always holds ``mse``, ``l0``,
    ``sparsity_loss``, ``sq_err_sum`` and ``fired [d_sae]`` (see :func:`recon_aux`).
    """

    NAME: str
    UNIT_NORM_DECODER: bool  # rows renormalised after each update, gradients projected
    FILE_LAYOUT: str  # exported file layout: "jumprelu", "relu", "topk" or "transcoder" (gemmascope.sae.files.io)

    def init(self, key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig) -> Params: ...

    def encode_train(
        self, params: Mapping[str, jax.Array], x: jax.Array, cfg: SAEConfig, sparsity: Any = None
    ) -> jax.Array: ...

    def decode_train(self, params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array: ...

    def loss(
        self,
        params: Mapping[str, jax.Array],
        x: jax.Array,
        cfg: SAEConfig,
        sparsity: Any,
        dead: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def export_layout(self, params: Mapping[str, jax.Array], cfg: SAEConfig, sparsity: Any) -> Params: ...

    def thresholds(self, params: Mapping[str, jax.Array]) -> jax.Array | None: ...

    def after_update(self, params: Params, aux: Mapping[str, jax.Array], step: jax.Array, cfg: SAEConfig) -> Params:
        """Gradient-free updates after the optimiser step (BatchTopK's threshold estimate)."""
        ...


def no_update(params: Params, aux: Mapping[str, jax.Array], step: jax.Array, cfg: SAEConfig) -> Params:
    """:meth:`Architecture.after_update` of every architecture without gradient-free state."""
    return params


def init_base(key: jax.Array, d_in: int, d_sae: int) -> Params:
    """Gemma Scope initialisation without threshold: ``W_dec`` He-uniform then every row scaled to
    unit norm; ``W_enc = W_dec.T`` (untied after); ``b_enc = b_dec = 0``."""
    w_dec = jax.nn.initializers.he_uniform()(key, (d_sae, d_in), jnp.float32)
    w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
    return {
        "W_enc": w_dec.T,
        "W_dec": w_dec,
        "b_enc": jnp.zeros((d_sae,), jnp.float32),
        "b_dec": jnp.zeros((d_in,), jnp.float32),
    }


def pre_activations(params: Mapping[str, jax.Array], x: jax.Array, pre_encoder_bias: bool = True) -> jax.Array:
    """``[batch, d_in] -> [batch, d_sae]``: ``(x - b_dec) @ W_enc + b_enc`` (or without ``- b_dec``).

    Computed as ``x @ W_enc + (b_enc - b_dec @ W_enc)``: the same value, but the gradient to
    ``b_dec`` through the encoder is then a vector-matrix product, not a sixth
    ``[batch, d_sae] x [d_sae, d_in]`` matmul (measured: a third off the gradient's time at
    4096 x 576 x 4096).
    """
    b = params["b_enc"]
    if pre_encoder_bias:
        b = b - params["b_dec"] @ params["W_enc"]
    return x @ params["W_enc"] + b


def decode_train(params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
    """``[batch, d_sae] -> [batch, d_in]``: ``f @ W_dec + b_dec``."""
    return f @ params["W_dec"] + params["b_dec"]


def recon_aux(
    x: jax.Array, x_hat: jax.Array, f: jax.Array, l0_per_example: jax.Array, sparsity_loss: jax.Array
) -> tuple[jax.Array, dict[str, Any]]:
    """``(mse, aux)`` shared by every architecture's loss: ``mse`` is ``||x - x_hat||^2`` summed
    over d_in and averaged over the batch (differentiable); aux holds stop-gradient statistics."""
    sq_err = jnp.sum((x - x_hat) ** 2, axis=-1)
    mse = jnp.mean(sq_err)
    sg = jax.lax.stop_gradient
    aux = {
        "mse": sg(mse),
        "l0": sg(jnp.mean(l0_per_example)),
        "sparsity_loss": sg(sparsity_loss),
        "fired": sg(jnp.any(f != 0, axis=0)),
        "sq_err_sum": sg(jnp.sum(sq_err)),
    }
    return mse, aux


def reconstruction_loss(
    params: Mapping[str, jax.Array], f: jax.Array, x: jax.Array, prefixes: tuple[int, ...] = ()
) -> tuple[jax.Array, jax.Array]:
    """``(loss, x_hat)``: the reconstruction term of the loss and the full reconstruction.

    Without ``prefixes``: ``mean_batch ||x - x_hat||^2``. Matryoshka (Bussmann et al. 2025,
    arXiv 2503.17547; Nabeshima 2024): with prefix sizes ``m_1 < ... < m_P = d_sae`` the sum over
    nested dictionaries ``sum_p mean_batch ||x - (f[:, :m_p] @ W_dec[:m_p] + b_dec)||^2``, so the
    first latents must reconstruct on their own. Computed group by group (``f[:, m_{p-1}:m_p] @
    W_dec[m_{p-1}:m_p]`` added to a running sum): the decoder's matmul FLOPs are those of one
    full decode; the extra cost is P residuals of ``[batch, d_in]``.
    """
    if not prefixes:
        x_hat = decode_train(params, f)
        return jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1)), x_hat
    x_hat, total, start = params["b_dec"], 0.0, 0
    for end in prefixes:
        x_hat = x_hat + f[:, start:end] @ params["W_dec"][start:end]
        total = total + jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1))
        start = end
    return total, x_hat


def l0_per_example(f: jax.Array) -> jax.Array:
    """``[batch, d_sae] -> [batch]`` float: latents with positive code."""
    return jnp.sum(f > 0, axis=-1).astype(jnp.float32)
