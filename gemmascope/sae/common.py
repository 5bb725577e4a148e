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

from gemmascope.sae import sparse

Params = dict[str, jax.Array]


SPARSE_PATHS = ("auto", "dense", "sparse")


@dataclasses.dataclass(kw_only=True, frozen=True)
class SAEConfig:
    """The ``sae`` section of every config: each field with its default and why. The one list:
    :func:`gemmascope.config.base_config` builds ``config.sae`` from these defaults, and
    :meth:`from_config` reads it back as this frozen, hashable value (a static argument).

    Fields that name an architecture apply to it only (the config's validation says so).
    """

    arch: str = "jumprelu"  # a module of gemmascope.sae.archs.ARCHS
    bandwidth: float = 0.001  # JumpReLU: eps of the rectangle kernel, in normalised units
    threshold_init: float = 0.001
    # "direct" (kept >= threshold_min) or "log" (the reference code's). "direct", because on the toy
    # sweep "log" left L0 at 40-54 for every lambda while "direct" spanned the range (docs/frontier.md).
    threshold_param: str = "direct"
    threshold_min: float = 1e-6
    pre_encoder_bias: bool = True
    # JumpReLU sparsity loss (gemmascope.sae.jumprelu.sparsity_penalty): "l0" = lambda * L0 (Gemma
    # Scope; sweep over config.lambdas), "quadratic" = a penalty around a target L0 (Gemma Scope 2;
    # sweep over config.target_l0s, one coefficient). quadratic_form: "per_example" =
    # coef * mean_i (2/T) (L0_i - T)^2, "batch" = coef * (mean_i L0_i - T)^2 / T. The coefficient
    # warms up with lambda_warmup_steps like lambda. "batch" by default: its delta LM loss was lower
    # at matched L0 on the SmolLM2 frontier (docs/frontier.md), though it lands further above its
    # target at the same coefficient (l0_controller_rate closes that).
    sparsity_loss: str = "l0"
    quadratic_form: str = "batch"
    quadratic_coefficient: float = 1e-3
    # JumpReLU frequency penalty: coef * sum_j relu(p_j - frequency_max)^2 / frequency_max, p_j the
    # fraction of the batch on which latent j fires (through the step STE). 0 = off.
    frequency_penalty: float = 0.0
    frequency_max: float = 0.01
    # JumpReLU threshold init: "constant" (threshold_init) or "quantile": each threshold at the
    # (1 - L0 / d_sae) quantile of its pre-activations on the normalisation sample, so the first
    # step sits near L0 = the SAE's target (quadratic) or threshold_init_l0 (the "l0" loss).
    threshold_init_mode: str = "constant"
    threshold_init_l0: float = 0.0
    # Data-dependent starts, from the normalisation sample (before the quantile thresholds):
    # b_dec_init "zero" (Gemma Scope) or "mean" (b_dec at the sample mean, so a pre-encoder bias
    # centres the encoder's input). transcoder_init "regression": the encoder reads the least-squares
    # linear prediction of the target (W_enc = W_lin @ W_dec.T, as an SAE's W_dec.T reads x) with
    # b_dec at the target mean, and an affine transcoder starts at the least-squares affine map (W_skip
    # = W_lin) with its encoder scaled by 0.1; "random" = independent random encoder, W_skip = 0
    # (with which the affine transcoders' latents died: docs/results.md).
    b_dec_init: str = "zero"
    transcoder_init: str = "regression"
    # Matryoshka training (architectures with MATRYOSHKA = True): nested dictionary prefix sizes,
    # increasing and ending at the width; the reconstruction loss is summed over the prefixes.
    # () = off.
    matryoshka_prefixes: tuple[int, ...] = ()
    # arch "batchtopk": rate of the running mean of the smallest kept activation, the threshold
    # of the JumpReLU it exports as.
    batchtopk_threshold_lr: float = 0.01
    # Baselines (docs/SPEC.md section 4). arch "topk"/"batchtopk": the sweep axis, latents kept per
    # token (lambdas unused).
    topk_ks: tuple[int, ...] = (32,)
    auxk_k: int = 512  # the AuxK loss: latents in the AuxK reconstruction of the residual
    auxk_coefficient: float = 1.0 / 32  # the AuxK loss's weight
    auxk_dead_tokens: int = 10_000_000  # a latent is dead for AuxK after this many tokens unfired
    # arch "jumprelu": add TopK's AuxK loss (the three auxk_ fields above) so dead latents get a
    # gradient back (off: Gemma Scope has none; docs/frontier.md measures it).
    jumprelu_auxk: bool = False
    # arch "jumprelu": every N steps, each latent silent for those N steps gets its threshold
    # lowered to the (1 - L0 / d_sae) quantile of its pre-activations on that step's batch (L0: the
    # SAE's target, or threshold_init_l0), as the quantile init does at step 0. 0 = off. Why: a
    # dead latent's threshold sits above every pre-activation, so no gradient reaches it again.
    revive_dead_every: int = 0
    # JumpReLU with the quadratic loss: an integral controller on the L0 miss, so held-out L0 lands
    # on the target instead of where the quadratic term balances the reconstruction's pull. Each SAE
    # carries a multiplier nu (state "l0_dual", starting at 0) that adds nu * mean_i L0_i to its loss
    # (an L0 coefficient, trains the thresholds through the step STE, like Gemma Scope's lambda) and
    # is updated after every step by dual ascent: nu += rate * (mean L0 - T) / T. 0 = off. On by
    # default: it runs only where there is a target (inert on lambda sweeps, where another non-zero
    # value is refused); 1e-3 held every measured target within 5% (docs/gemma3.md, "L0 targets").
    l0_controller_rate: float = 1e-3
    # The training step's sparse path (gemmascope.sae.sparse): decoder and weight gradients over the
    # latents that fire, the encoder's forward dense. "dense", "sparse", or "auto": sparse on XLA:CPU
    # from width gemmascope.sae.sparse.AUTO_MIN_WIDTH on, where the slots are at most 1/8 of the
    # width and the latents are not sharded (measured 2.4x the dense step at 16k, 3-4.7x at 65k; at
    # the demos' 4,096 "auto" is the dense program). Architectures without a sparse loss (relu,
    # gated, the cross-layer transcoder) always train dense; "sparse" is then an error.
    sparse_path: str = "auto"
    # Slots per row of the sparse path (the latents it can hold per token; a batch with a row over
    # it takes the dense step instead, reported as the metric sparse_fallback). 0 = each SAE's own
    # default: TopK's k; BatchTopK 4k; JumpReLU 4x its target L0 with the quadratic loss, else 256.
    sparse_capacity: int = 0

    def __post_init__(self):
        if self.sparse_path not in SPARSE_PATHS:
            raise ValueError(f"config.sae.sparse_path: must be one of {SPARSE_PATHS}, got {self.sparse_path!r}")
        if self.sparse_capacity < 0:
            raise ValueError(f"config.sae.sparse_capacity: must be >= 0 (0 = chosen), got {self.sparse_capacity!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{field: default-typed value}`` in declaration order (what ``config.sae`` holds)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> SAEConfig:
        """From ``config.sae`` (or a partial dict: missing fields take the defaults above).
        Unknown keys raise, naming the key."""
        defaults = cls().to_dict()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m.keys()) - names)
        if unknown:
            raise ValueError(f"config.sae.{unknown[0]}: not a field of SAEConfig (known: {sorted(names)})")
        vals = {}
        for f in dataclasses.fields(cls):
            v = m[f.name] if f.name in m else defaults[f.name]
            try:
                vals[f.name] = _coerce(f.type, v)
            except (TypeError, ValueError):
                raise ValueError(f"config.sae.{f.name}: expected {f.type}, got {v!r}") from None
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


@dataclasses.dataclass(frozen=True)
class SweepAxis:
    """What tells the SAEs of one stacked sweep apart: ``kind`` names the value in metrics and
    files (``"lambda"``: a sparsity coefficient, ``"target_l0"``, ``"k"``: latents kept per
    token), ``field`` the config field listing the values, ``metadata_key`` its name in
    ``metadata.json``; ``static`` values are Python ints compiled into the step (TopK's k), the
    others a traced ``[K]`` array."""

    kind: str
    field: str
    metadata_key: str
    static: bool = False


LAMBDA_AXIS = SweepAxis("lambda", "lambdas", "sparsity_coefficient")
TARGET_L0_AXIS = SweepAxis("target_l0", "target_l0s", "target_l0")
K_AXIS = SweepAxis("k", "sae.topk_ks", "k", static=True)


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
    MATRYOSHKA: bool  # trains Matryoshka-style when cfg.matryoshka_prefixes is set
    OWN_FIELDS: tuple[str, ...]  # SAEConfig fields only this architecture reads (others must leave them default)

    def sweep_axis(self, cfg: SAEConfig) -> SweepAxis:
        """The sweep axis this architecture trains over under ``cfg``."""
        ...

    def sparsity_argument(self, cfg: SAEConfig, value: Any, warmup: jax.Array, nu: jax.Array) -> tuple[Any, jax.Array]:
        """``(sparsity, coefficient)``: what :meth:`loss` takes for sweep value ``value`` at a step
        whose sparsity warm-up factor is ``warmup`` (``nu``: the L0 controller's multiplier), and
        the effective sparsity coefficient reported in the metrics."""
        ...

    def uses_auxk(self, cfg: SAEConfig) -> bool:
        """Whether :meth:`loss` takes the ``dead`` mask (TopK's AuxK loss)."""
        ...

    def variant_suffix(self, cfg: SAEConfig) -> str:
        """The training variant's part of the run name (``"_quadratic_batch"``; ``""`` for none)."""
        ...

    def metadata(self, cfg: SAEConfig) -> dict[str, Any]:
        """The ``metadata.json`` fields this architecture's settings add (beyond the sweep value)."""
        ...

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


# The contract's common answers, for a module to name (``sweep_axis = common.lambda_axis``).


def lambda_axis(cfg: SAEConfig) -> SweepAxis:
    """:meth:`Architecture.sweep_axis` of a sparsity-coefficient sweep (``config.lambdas``)."""
    return LAMBDA_AXIS


def k_axis(cfg: SAEConfig) -> SweepAxis:
    """:meth:`Architecture.sweep_axis` of a k sweep (``config.sae.topk_ks``)."""
    return K_AXIS


def warmed_coefficient(cfg: SAEConfig, value: Any, warmup: jax.Array, nu: jax.Array) -> tuple[Any, jax.Array]:
    """:meth:`Architecture.sparsity_argument` of a coefficient sweep: ``lambda * warmup``, twice."""
    lam = value * warmup
    return lam, lam


def static_k(cfg: SAEConfig, value: Any, warmup: jax.Array, nu: jax.Array) -> tuple[Any, jax.Array]:
    """:meth:`Architecture.sparsity_argument` of a k sweep: the static int k (reported as a float)."""
    return int(value), jnp.asarray(value, jnp.float32)


def no_auxk(cfg: SAEConfig) -> bool:
    return False


def always_auxk(cfg: SAEConfig) -> bool:
    return True


def no_suffix(cfg: SAEConfig) -> str:
    return ""


def no_metadata(cfg: SAEConfig) -> dict[str, Any]:
    return {}


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
    return x @ params["W_enc"] + encoder_bias(params, pre_encoder_bias)


def encoder_bias(params: Mapping[str, jax.Array], pre_encoder_bias: bool = True) -> jax.Array:
    """``[d_sae]``: the bias of :func:`pre_activations`, ``b_enc - b_dec @ W_enc`` (or ``b_enc``)."""
    b = params["b_enc"]
    if pre_encoder_bias:
        b = b - params["b_dec"] @ params["W_enc"]
    return b


def sparse_decode(params: Mapping[str, jax.Array], f: jax.Array, slots: tuple[jax.Array, jax.Array]) -> jax.Array:
    """``[batch, cap] -> [batch, d_in]``: :func:`decode_train` of the codes ``f`` held at the sparse
    path's ``slots = (idx [batch, cap], used)`` (:mod:`gemmascope.sae.sparse`)."""
    return sparse.decode(f, slots[0], params["W_dec"], slots[1]) + params["b_dec"]


def decode_train(params: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
    """``[batch, d_sae] -> [batch, d_in]``: ``f @ W_dec + b_dec``."""
    return f @ params["W_dec"] + params["b_dec"]


def recon_aux(
    x: jax.Array,
    x_hat: jax.Array,
    f: jax.Array,
    l0_per_example: jax.Array,
    sparsity_loss: jax.Array,
    idx: jax.Array | None = None,
    d_sae: int | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """``(mse, aux)`` shared by every architecture's loss: ``mse`` is ``||x - x_hat||^2`` summed
    over d_in and averaged over the batch (differentiable); aux holds stop-gradient statistics.
    The sparse path passes its slots: codes ``f [batch, cap]`` at latents ``idx``, of ``d_sae``."""
    sq_err = jnp.sum((x - x_hat) ** 2, axis=-1)
    mse = jnp.mean(sq_err)
    sg = jax.lax.stop_gradient
    aux = {
        "mse": sg(mse),
        "l0": sg(jnp.mean(l0_per_example)),
        "sparsity_loss": sg(sparsity_loss),
        "fired": sg(jnp.any(f != 0, axis=0)) if idx is None else sparse.fired(idx, f, d_sae),
        "sq_err_sum": sg(jnp.sum(sq_err)),
    }
    return mse, aux


def reconstruction_loss(
    params: Mapping[str, jax.Array],
    f: jax.Array,
    x: jax.Array,
    prefixes: tuple[int, ...] = (),
    slots: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(loss, x_hat)``: the reconstruction term of the loss and the full reconstruction.

    Without ``prefixes``: ``mean_batch ||x - x_hat||^2``. Matryoshka (Bussmann et al. 2025,
    arXiv 2503.17547; Nabeshima 2024): with prefix sizes ``m_1 < ... < m_P = d_sae`` the sum over
    nested dictionaries ``sum_p mean_batch ||x - (f[:, :m_p] @ W_dec[:m_p] + b_dec)||^2``, so the
    first latents must reconstruct on their own. Computed group by group (``f[:, m_{p-1}:m_p] @
    W_dec[m_{p-1}:m_p]`` added to a running sum): the decoder's matmul FLOPs are those of one
    full decode; the extra cost is P residuals of ``[batch, d_in]``.

    ``slots = (idx [batch, cap], used)`` (the sparse path): ``f`` holds the codes at latents ``idx``,
    and each group decodes the slots whose latent lies in it (P slot decodes).
    """
    if not prefixes:
        x_hat = decode_train(params, f) if slots is None else sparse_decode(params, f, slots)
        return jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1)), x_hat
    x_hat, total, start = params["b_dec"], 0.0, 0
    for end in prefixes:
        if slots is None:
            x_hat = x_hat + f[:, start:end] @ params["W_dec"][start:end]
        else:
            idx, used = slots
            x_hat = x_hat + sparse.decode(jnp.where((idx >= start) & (idx < end), f, 0.0), idx, params["W_dec"], used)
        total = total + jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1))
        start = end
    return total, x_hat


def l0_per_example(f: jax.Array) -> jax.Array:
    """``[batch, d_sae] -> [batch]`` float: latents with positive code."""
    return jnp.sum(f > 0, axis=-1).astype(jnp.float32)
