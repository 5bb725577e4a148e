"""Crosscoders over several layers of one site (Lindsey et al. 2024, "Sparse Crosscoders for
Cross-Layer Features and Model Diffing"): one dictionary whose features read and reconstruct the
residual stream at a chosen set of layers, trained as one model from one LM pass per batch.

Two forms, both JumpReLU with our target-L0 recipe, both on the paired rows of a cross-layer site
(:class:`gemmascope.sites.LayerSpan`, here ``res`` -> ``res``: ``[B, L * d + L * d]``, every
layer's input then every layer's target, which are the same activations, each block divided by
its own layer's constant):

* :class:`WeaklyCausalCrosscoder` (site ``crosscoder``), Gemma Scope 2's form (McDougall et al.
  2025, section 2.6: "a latent's encoder weights are restricted to a single layer and its decoder
  may reconstruct activations from that layer or any future layer"; Gemma Scope 2 trains it on
  the post-MLP residual at four layers, 25 / 50 / 65 / 85% of the depth). Features of layer ``l``
  read ``x_l``; the reconstruction of layer ``m`` sums the writes of every layer up to ``m``::

      f_l  = JumpReLU(x_l @ W_enc[l] + b_enc[l])                  [d_sae] per layer
      x_m^ = sum_{l <= m} f_l @ W_dec[l, :, m, :] + b_dec[m]      [d]

  That is the cross-layer transcoder's maths with the residual as both input and target, so it
  is :class:`~gemmascope.sae.clt.CrossLayerTranscoder` (its loss, starts, fold, stacked
  arrays and files, a target L0 meaning per layer) under its own name. Its files are
  Gemma Scope 2's ``crosscoder/layer_<l1>_<l2>_..._width_<W>_l0_<bucket>/params_layer_<i>.safetensors``:
  the CLT's per-layer keys (``w_enc [d, d_sae]``, ``w_dec [d_sae, L, d]`` ...), the hooks
  ``model.layers.<l>.output``.
* :class:`AcausalCrosscoder` (site ``crosscoder_acausal``), the paper's global form: every
  feature reads the concatenation of the layers and writes all of them::

      f    = JumpReLU(concat_l(x_l) @ W_enc + b_enc)              [d_sae]
      x_m^ = f @ W_dec[:, m-th block] + b_dec[m-th block]

  which is a JumpReLU transcoder from the concatenated layers to themselves (no pre-encoder bias,
  unit-norm decoder rows over all the layers' blocks, a target L0 meaning the one dictionary's),
  with per-layer normalisation folded block by block. Its file is a plain SAE on the
  concatenation (``params.safetensors`` in Gemma Scope 2's keys, ``d_in = L * d``), which every
  SAE reader loads as it is.

The loss sums every layer's squared error, as both papers' do (the mean squared error over the
concatenated row). Both are declared here with the sites they train at (:data:`SPANS`) and
registered with one line in :mod:`gemmascope.sae.archs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from gemmascope.sae.clt import CrossLayerTranscoder
from gemmascope.sae.common import Params, SAEConfig
from gemmascope.sae.transcoder import Transcoder
from gemmascope.sites import LayerSpan


@dataclasses.dataclass(frozen=True)
class WeaklyCausalCrosscoder(CrossLayerTranscoder):
    """Gemma Scope 2's weakly causal crosscoder over ``n_layers`` layers of width ``d_out``
    (the CLT's maths on the residual; module docstring)."""

    NAME = "crosscoder"
    FILE_LAYOUT = "clt"  # Gemma Scope 2's crosscoder files are its CLT files

    @classmethod
    def for_span(cls, span: LayerSpan, n_layers: int, d_out: int) -> WeaklyCausalCrosscoder:
        if span.affine:
            raise ValueError("a crosscoder reconstructs its own input: it has no affine skip")
        return cls(n_layers, d_out, False)


@dataclasses.dataclass(frozen=True)
class AcausalCrosscoder(Transcoder):
    """The acausal crosscoder over ``n_blocks`` layers of width ``d_block`` (module docstring):
    a :class:`~gemmascope.sae.transcoder.Transcoder` from the concatenated layers to themselves,
    ``d_out = n_blocks * d_block``; the trainer's ``d_in`` is one layer's width."""

    n_blocks: int = 1  # the layers it reads (not ``n_layers``: its latents form one group, not one per layer)
    d_block: int = 0

    @property
    def INPUT_BLOCKS(self) -> int:  # noqa: N802  (read by the trainer as a constant of the architecture)
        """The encoder reads ``n_blocks`` layers of ``d_block``, each normalised by its own layer's
        constant (the trainer's :func:`gemmascope.train.step.normalise`)."""
        return self.n_blocks

    NAME = "crosscoder_acausal"
    FILE_LAYOUT = "jumprelu"  # its file is a plain JumpReLU SAE on the concatenated layers

    @classmethod
    def for_span(cls, span: LayerSpan, n_layers: int, d_out: int) -> AcausalCrosscoder:
        if span.affine:
            raise ValueError("a crosscoder reconstructs its own input: it has no affine skip")
        return cls(n_layers * int(d_out), False, int(n_layers), int(d_out))

    def init(self, key: jax.Array, d_in: int, d_sae: int, cfg: SAEConfig | Mapping[str, Any]) -> Params:
        """The transcoder's start on the concatenation (``W_enc [L * d, d_sae]``, the decoder's
        transpose); ``d_in`` is one layer's width, as the trainer gives it."""
        if int(d_in) != self.d_block:
            raise ValueError(f"crosscoder over layers of width {self.d_block}, got d_in={d_in}")
        return super().init(key, self.n_blocks * self.d_block, d_sae, cfg)

    def fold_scales(self, layout: Mapping[str, Any], norm_scale: Any, dim_scale: Any = None) -> dict[str, np.ndarray]:
        """Training-unit arrays trained on blocks ``x_l / (C_in[l] s_in[l])`` (input) and ``x_m /
        (C_out[m] s_out[m])`` (target) -> raw units, the features left in training units; with
        ``k_in``, ``k_out`` the per-column products (``dim_scale [2 L d]`` or ``None``: all 1)::

            W_enc' = W_enc / k_in[:, None]      b_enc', threshold' unchanged
            W_dec' = W_dec * k_out[None, :]     b_dec' = b_dec * k_out
        """
        c = np.asarray(norm_scale, np.float64).reshape(-1)
        n, d = self.n_blocks, self.d_block
        if c.shape != (2 * n,):
            raise ValueError(f"a {n}-layer crosscoder needs 2 * {n} normalisation constants, got shape {c.shape}")
        s = np.ones(2 * n * d) if dim_scale is None else np.asarray(dim_scale, np.float64)
        if s.shape != (2 * n * d,):
            raise ValueError(f"a {n}-layer crosscoder needs 2 * {n} * {d} per-dimension scales, got shape {s.shape}")
        k_in, k_out = np.repeat(c[:n], d) * s[: n * d], np.repeat(c[n:], d) * s[n * d :]
        p = {k: np.asarray(v, np.float64) for k, v in layout.items()}
        out = {
            "W_enc": p["W_enc"] / k_in[:, None],
            "b_enc": p["b_enc"],
            "threshold": p["threshold"],
            "W_dec": p["W_dec"] * k_out[None, :],
            "b_dec": p["b_dec"] * k_out,
        }
        return {k: v.astype(np.float32) for k, v in out.items()}


#: The sites the crosscoders train at (added to :data:`gemmascope.sites.SPAN_SITES` by the
#: registry): the post-MLP residual (``res``) of every layer of ``config.layers``.
SPANS = {
    "crosscoder": LayerSpan("res", "res", WeaklyCausalCrosscoder.NAME),
    "crosscoder_acausal": LayerSpan("res", "res", AcausalCrosscoder.NAME, causal=False),
}
