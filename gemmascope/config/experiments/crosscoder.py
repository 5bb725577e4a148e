r"""Crosscoders on the embedded Gemma 3 270M's residual stream at Gemma Scope 2's four layers
(5, 9, 12, 15: about 25 / 50 / 65 / 85% of the depth), trained online: each batch runs the LM once
and reads the post-MLP residual (``res``) of the four layers.

    python launch/train.py --config=configs/crosscoder.py --workdir=workdirs/crosscoder

``arg``: ``width=`` (features per layer, default 1024), ``acausal`` (default False: Gemma Scope
2's weakly causal form, features of layer l reading layer l and writing layers l and later; True
adds the acausal form, one dictionary reading and writing all four layers, at ``4 * width``
features so the two have the same number of latents), ``runlocal`` (width 32, 8 steps of 256
rows: a quick end-to-end check).

The recipe is the CLT demo's (configs/clt.py): Gemma Scope 2's quadratic penalty around each
target L0 (per layer for the weakly causal form; the one dictionary's for the acausal form, so its
targets are four times as large), thresholds at the quantiles giving the target. Normalisation:
one constant per layer, folded into the exported files (module doc of
:mod:`gemmascope.sae.crosscoder`).
"""

from gemmascope import config as config_lib
from gemmascope.config.experiments import clt

LAYERS = (5, 9, 12, 15)  # Gemma Scope 2's crosscoder layers for Gemma 3 270M
TARGET_L0S = (10.0, 30.0)


def get_config(arg=None):
    a = config_lib.parse_arg(arg, runlocal=False, width=1024, acausal=False)
    n = len(LAYERS) if a.acausal else 1
    c = clt.get_config(f"runlocal={a.runlocal},width={n * int(a.width)}")  # the CLT demo's recipe and budget
    c.unlock()
    c.sites = ("crosscoder_acausal",) if a.acausal else ("crosscoder",)
    c.layers = LAYERS
    c.target_l0s = tuple(n * t for t in TARGET_L0S)
    c.runlocal_overrides.widths = (n * 32,)
    return config_lib.lock(c)
