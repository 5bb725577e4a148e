r"""Evaluates every exported SAE under ``<workdir>/saes`` on held-out text of the config's LM.

    python launch/evaluate.py --workdir=workdirs/demo                       # the config it was trained with
    python launch/evaluate.py --config=configs/demo.py --workdir=workdirs/demo

Without ``--config``, the workdir's ``config.json`` (written by ``launch/train.py``) names the LM
and the text; ``--config.<field>=`` overrides apply to either. Writes eval.json beside each
params.npz (rerunning skips finished SAEs), and
``<workdir>/eval/{table.csv,table.md,matched_l0.md,l0_vs_delta_loss.png,l0_vs_fvu.png}``.

Transcoders exported into the same workdir (sites ``transcoder``, ``transcoder_affine``) are scored
with the MLP output replaced by their prediction from the real MLP input; with them come
``<workdir>/eval/transcoders_vs_saes.md`` and ``transcoders_vs_saes_layer_<L>.png``: plain and affine
transcoders against the SAEs on that layer's ``mlp`` at matched L0 (train those SAEs into the same
workdir, e.g. ``config.sites = ("mlp", "transcoder", "transcoder_affine")``).

Cross-layer transcoders (``configs/clt.py``) are scored by their replacement model, every MLP of
their layers replaced at once, beside the per-layer transcoders trained with them at each sweep
value: ``<workdir>/eval/replacement.{json,md}`` (:mod:`gemmascope.eval.replacement`).

``--probing`` adds sparse probing (:mod:`gemmascope.eval.probing`, docs/probing.md): k-sparse probes on
each SAE's latents and on the raw activations at its site, topic of each embedded text, into eval.json,
the tables and ``<workdir>/eval/probing.md``.
"""

import functools

from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope import config as config_lib
from gemmascope.commands import run_module
from gemmascope.config import cli
from gemmascope.config import files as config_files


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _CONFIG, _WORKDIR, _TOKENS, _CLT_TOKENS, _PROBING
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "Config naming the LM and text (configs/NAME.py or a path); default: the workdir's config.json.",
        lock_config=True,
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Workdir holding saes/ (and config.json, from training).")
    _TOKENS = flags.DEFINE_integer("max_tokens", 100_000, "Held-out tokens per SAE.")
    _CLT_TOKENS = flags.DEFINE_integer("clt_max_tokens", 20_000, "Held-out tokens per replacement model (CLTs).")
    _PROBING = flags.DEFINE_bool(
        "probing", False, "Also sparse probing (gemmascope.eval.probing): eval.json fields and eval/probing.md."
    )
    flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        if _CONFIG.value is None:  # no --config and no <workdir>/config.json (cli fills it otherwise)
            config_files.load_saved(_WORKDIR.value)  # raises, naming the missing file
        config = config_lib.prepare(_CONFIG.value)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None
    from gemmascope.eval.evaluate import evaluate_workdir, find_saes
    from gemmascope.eval.replacement import evaluate_replacements, workdir_replacements

    clts = bool(workdir_replacements(_WORKDIR.value))
    if find_saes(_WORKDIR.value) or not clts:  # one-layer SAEs and transcoders (or the error naming none)
        evaluate_workdir(config, _WORKDIR.value, _TOKENS.value)
        if _PROBING.value:
            from gemmascope.eval.probing import probe_workdir

            probe_workdir(config, _WORKDIR.value)
    if clts:
        evaluate_replacements(config, _WORKDIR.value, min(_TOKENS.value, _CLT_TOKENS.value))


def run(argv: list[str] | None = None) -> None:
    """``gemmascope evaluate ...`` and ``python launch/evaluate.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv, flags_parser=cli.flags_parser(saved_config=cli.workdir_of))
