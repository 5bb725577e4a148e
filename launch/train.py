r"""Trains a sweep of SAEs: ``python launch/train.py --config=configs/toy.py --workdir=W``.

Overrides: ``--config.lambdas=0.01,0.03 --config.num_tokens=1000000``. Rerun the same command on
the same workdir to resume after a kill.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from gemmascope import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exported SAEs go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = _CONFIG.value
    try:
        config = config_lib.validate(config_lib.resolve(config))
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e))
    from gemmascope.train.loop import train_and_evaluate  # imports JAX only after validation

    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
