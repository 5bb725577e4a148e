r"""Generate text with our LM while adding ``alpha * W_dec[latent]`` at the SAE's site.

    S=workdirs/demo/saes/res/layer_15/width_4k/jumprelu_quadratic_batch_centred/average_l0_42
    python launch/steer.py --sae=$S \
        --latent=123 --alphas=0,8 --prompt="The best thing about" --max_new_tokens=30

The layer and site come from the SAE's metadata.json (override with --layer/--site, e.g. for a
released Gemma Scope file). ``--alphas=0,4,8`` prints one continuation per alpha. For a
transcoder (site ``transcoder``/``transcoder_affine``) the decoder row is added to the MLP output of
its layer (the splice at ``(layer, "mlp")``), from where it joins the residual stream.
"""

import functools

from absl import app, flags

from gemmascope.commands import run_module
from gemmascope.sites import LM_SITES, PAIR_SITES


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _SAE, _LATENT, _ALPHAS, _PROMPT, _CHECKPOINT, _LAYER, _SITE, _NEW, _TEMP
    _SAE = flags.DEFINE_string("sae", None, "params.npz or the folder holding it.")
    _LATENT = flags.DEFINE_integer("latent", None, "Latent whose decoder row is added.")
    _ALPHAS = flags.DEFINE_list("alphas", ["0", "8"], "Steering strengths (raw activation units).")
    _PROMPT = flags.DEFINE_string("prompt", "I think that", "Prompt text (BOS is prepended).")
    _CHECKPOINT = flags.DEFINE_string("checkpoint", "embedded", "LM: 'embedded', a .gguf, a HF dir or hub id.")
    _LAYER = flags.DEFINE_integer("layer", None, "Override the SAE's layer.")
    _SITE = flags.DEFINE_enum(
        "site", None, [*LM_SITES, *PAIR_SITES], "Override the SAE's site (transcoder, transcoder_affine: a transcoder)."
    )
    _NEW = flags.DEFINE_integer("max_new_tokens", 30, "Tokens to generate.")
    _TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
    flags.mark_flags_as_required(["sae", "latent"])


def main(argv):
    del argv
    from gemmascope.analysis.steering import steer_text
    from gemmascope.lm.loading import load_lm
    from gemmascope.sae.files import io as sae_io

    sae = sae_io.load_params(_SAE.value)
    meta = sae_io.load_metadata(_SAE.value)
    layer = _LAYER.value if _LAYER.value is not None else meta.get("layer")
    site = _SITE.value or meta.get("site")
    if layer is None or site is None:
        raise app.UsageError(f"{_SAE.value}: no metadata.json with layer/site; pass --layer and --site")
    lm = load_lm(_CHECKPOINT.value)
    lm.check_layer(int(layer), "--layer")
    cfg, params, tok = lm.cfg, lm.params, lm.tokenizer
    for a in _ALPHAS.value:
        text = steer_text(
            params,
            cfg,
            tok,
            prompt=_PROMPT.value,
            sae_params=sae,
            latent=_LATENT.value,
            alpha=float(a),
            layer=int(layer),
            site=site,
            max_new_tokens=_NEW.value,
            temperature=_TEMP.value,
        )
        print(f"alpha={float(a):g}: {_PROMPT.value}{text}")


def run(argv: list[str] | None = None) -> None:
    """``gemmascope steer ...`` and ``python launch/steer.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv)
