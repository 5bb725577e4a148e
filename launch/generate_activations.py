r"""Runs the LM over the corpus once and writes every configured (layer, site) to the store.

    python launch/generate_activations.py --config=configs/demo.py --workdir=workdirs/demo

Rerun the same command after a kill: it resumes and finishes with every row present once.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope import config as config_lib
from gemmascope.config import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/NAME.py: gemmascope/config/experiments/, or a path).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The store goes to <workdir>/activations unless config.store.path.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        config = config_lib.prepare(_CONFIG.value)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None
    from gemmascope.data.generate import generate  # imports JAX only after validation

    generate(config, _WORKDIR.value, prepared=True)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser())
