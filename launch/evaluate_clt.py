r"""Scores the replacement model of every cross-layer transcoder under ``<workdir>/saes`` (every
MLP of its layers replaced at once), and of the per-layer transcoders trained beside it at each
sweep value (``configs/clt.py:compare=True``), on held-out text: delta LM loss, KL and the
total L0 per token.

    python launch/evaluate_clt.py --workdir=workdirs/clt

Without ``--config``, the workdir's ``config.json`` names the LM and the text. Writes
``<workdir>/eval/replacement.{json,md}``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope import config as config_lib
from gemmascope.config import cli
from gemmascope.config import files as config_files
from gemmascope.eval.replacement import evaluate_replacements

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config naming the LM and text (configs/NAME.py or a path); default: the workdir's config.json.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir holding saes/ (and config.json, from training).")
_TOKENS = flags.DEFINE_integer("max_tokens", 20_000, "Held-out tokens.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        if _CONFIG.value is None:
            config_files.load_saved(_WORKDIR.value)  # raises, naming the missing file
        config = config_lib.prepare(_CONFIG.value)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None
    evaluate_replacements(config, _WORKDIR.value, _TOKENS.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser(saved_config=cli.workdir_of))
