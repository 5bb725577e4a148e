r"""Writes a static, offline HTML dashboard of an SAE's latents.

    S=workdirs/demo/saes/res/layer_15/width_4k/jumprelu_quadratic_batch_centred/average_l0_42
    python launch/analyze.py --sae=$S --out=workdirs/dash

Scans held-out text of the embedded corpus with the LM (BOS/EOS/padding and norm outliers never
encoded), then writes ``<out>/index.html`` (searchable, sortable list of latents with firing
frequency and logit-lens class and tokens), ``<out>/latents/<i>.html`` (top contexts shaded by
activation, activation histogram, logit-lens top/bottom tokens, token-set enrichment) and
``<out>/summary.json``. Open ``index.html`` in any browser; nothing is fetched from the network.

The layer and site come from the SAE's metadata.json (a released Gemma Scope params.npz has
none: pass --layer and --site, and --checkpoint for its model). A transcoder's dashboard encodes
its input site (the MLP input, at the rows kept at both of its sites) and reads its decoder rows
(MLP-output space, part of the residual stream) through the unembedding for the logit lens. The LM (checkpoint, sequence
length, batch, outlier factor) comes from the config the SAE was trained with: ``--config``, or
by default the ``config.json`` of the workdir the SAE was exported into; explicit flags win.
"""

import functools

from absl import app, flags
from ml_collections import config_flags

from gemmascope.commands import run_module
from gemmascope.config import cli
from gemmascope.sites import LM_SITES, PAIR_SITES


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _SAE, _OUT, _TOKENS, _LATENTS, _CONTEXTS, _SPLIT, _CONFIG, _CHECKPOINT, _LAYER, _SITE, _SEQ, _BATCH, _ENRICH
    _SAE = flags.DEFINE_string("sae", None, "Exported SAE folder or its params.npz (metadata.json beside it).")
    _OUT = flags.DEFINE_string("out", None, "Output folder for the HTML site.")
    _TOKENS = flags.DEFINE_integer("tokens", 50_000, "Text tokens to scan (the embedded held-out split has ~29k).")
    _LATENTS = flags.DEFINE_string("latents", "all", "Latents to list and give pages: 'all' or e.g. '0-99,512'.")
    _CONTEXTS = flags.DEFINE_integer("contexts", 12, "Top activating contexts per latent.")
    _SPLIT = flags.DEFINE_enum("split", "heldout", ["heldout", "train", "all"], "Documents of the embedded corpus.")
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "Config the SAE was trained with (default: its workdir's config.json, if any).",
        lock_config=True,
    )
    _CHECKPOINT = flags.DEFINE_string(
        "checkpoint",
        None,
        "LM: 'embedded', a .gguf, a HF dir or hub id (default: the config's lm.checkpoint, else 'embedded').",
    )
    _LAYER = flags.DEFINE_integer("layer", None, "Override the SAE's layer.")
    _SITE = flags.DEFINE_enum(
        "site", None, [*LM_SITES, *PAIR_SITES], "Override the SAE's site (transcoder, transcoder_affine: a transcoder)."
    )
    _SEQ = flags.DEFINE_integer("context_length", None, "Packed sequence length, BOS first (default: config, else 128)")
    _BATCH = flags.DEFINE_integer("batch_sequences", None, "Sequences per LM batch (default: config, else 32).")
    _ENRICH = flags.DEFINE_bool("enrichment", True, "Token-set enrichment of the listed latents' logit weights.")
    flags.mark_flags_as_required(["sae", "out"])


def main(argv):
    del argv
    from gemmascope.analysis.dashboard import DashboardInputError, build_dashboard
    from gemmascope.sae.files.io import SAEFileError

    if _TOKENS.value <= 0 or _CONTEXTS.value <= 0:
        raise app.UsageError("--tokens and --contexts must be positive")
    lm = cli.dashboard_lm_settings(_CONFIG.value, _CHECKPOINT.value, _SEQ.value, _BATCH.value)
    try:
        build_dashboard(
            _SAE.value,
            _OUT.value,
            n_tokens=_TOKENS.value,
            latents=_LATENTS.value,
            layer=_LAYER.value,
            site=_SITE.value,
            split=_SPLIT.value,
            k=_CONTEXTS.value,
            enrichment=_ENRICH.value,
            **lm,
        )
    except (DashboardInputError, SAEFileError) as e:
        raise app.UsageError(str(e)) from None


def run(argv: list[str] | None = None) -> None:
    """``gemmascope analyze ...`` and ``python launch/analyze.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv, flags_parser=cli.flags_parser(saved_config=cli.workdir_of_sae))
