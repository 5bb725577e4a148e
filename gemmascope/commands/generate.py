r"""Runs the LM over the corpus once and writes every configured (layer, site) to the store.

    python launch/generate_activations.py --config=configs/demo.py --workdir=workdirs/demo

Rerun the same command after a kill: it resumes and finishes with every row present once.
One writer per store: a second run stops and names the holder of ``<store>/.lock-generate``;
``--force_unlock`` takes over a lease left by a run known to be dead.
"""

import functools
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope import config as config_lib
from gemmascope.commands import run_module
from gemmascope.config import cli
from gemmascope.lease import LeaseHeldError


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _CONFIG, _WORKDIR, _FORCE_UNLOCK
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file (configs/NAME.py: gemmascope/config/experiments/, or a path).",
        lock_config=True,
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "The store goes to <workdir>/activations unless config.store.path.")
    _FORCE_UNLOCK = flags.DEFINE_bool(
        "force_unlock", False, "Remove the store's generate lease (its holder is known to be dead) and take it."
    )
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        config = config_lib.prepare(_CONFIG.value)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None
    from gemmascope.data.generate import generate  # imports JAX only after validation

    try:
        generate(config, _WORKDIR.value, prepared=True, force_unlock=_FORCE_UNLOCK.value)
    except config_lib.ConfigError as e:  # e.g. the toy source, which has no store: one line, as train's
        raise app.UsageError(str(e)) from None
    except LeaseHeldError as e:  # another run writes this store: its holder, not a traceback
        sys.exit(f"error: {e}")


def run(argv: list[str] | None = None) -> None:
    """``gemmascope generate ...`` and ``python launch/generate_activations.py ...`` (argv: sys.argv if None)."""
    define_flags()
    run_module(__name__, main, argv, flags_parser=cli.flags_parser())
