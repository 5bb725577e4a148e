r"""Trains a sweep of SAEs: ``python launch/train.py --config=configs/toy.py --workdir=W``.

Overrides: ``--config.lambdas=0.01,0.03 --config.num_tokens=1000000``. Rerun the same command on
the same workdir to resume after a kill.

Devices: ``--config.mesh.data=D --config.mesh.model=M`` (D * M devices; see README "Scaling out").
Several processes (multi-host): start one per host (or per GPU) with ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set (or ``--config.distributed.*``); see
``launch/tpu_pod.sh`` and ``launch/multi_gpu.sh``.

One run per workdir: a second ``train.py`` on a workdir in use stops and names the holder of
``<workdir>/.lock-train``; ``--force_unlock`` takes over a lease left by a run known to be dead.

``--dry_run``: compile the real-size sharded step on ``D * M`` fake CPU devices with abstract
shapes and print per-device memory and FLOPs; needs no LM, no store and no workdir.
"""

import functools
import os
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
    global _CONFIG, _WORKDIR, _DRY_RUN, _DEVICE_GB, _FORCE_UNLOCK
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file (configs/NAME.py: gemmascope/config/experiments/, or a path).",
        lock_config=True,
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exported SAEs go.")
    _DRY_RUN = flags.DEFINE_bool(
        "dry_run", False, "Compile the sharded step on fake CPU devices and print memory/FLOPs."
    )
    _DEVICE_GB = flags.DEFINE_float("device_memory_gb", 95.0, "Per-device memory the dry run checks against.")
    _FORCE_UNLOCK = flags.DEFINE_bool(
        "force_unlock", False, "Remove the workdir's train lease (its holder is known to be dead) and take it."
    )
    flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = _CONFIG.value
    try:
        config = config_lib.prepare(config)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None
    if _DRY_RUN.value:
        n = int(config.mesh.data) * int(config.mesh.model)
        os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX starts its backend: D * M fake devices
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
        ).strip()
        from gemmascope.train import dryrun

        try:
            reports = dryrun.dry_run(config, device_memory_gb=_DEVICE_GB.value, prepared=True)
        except config_lib.ConfigError as e:
            raise app.UsageError(str(e)) from None
        if not all(r["fits"] for r in reports):
            sys.exit(1)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (except with --dry_run)")
    from gemmascope.train.loop import train_and_evaluate  # imports JAX only after validation

    try:
        train_and_evaluate(config, _WORKDIR.value, prepared=True, force_unlock=_FORCE_UNLOCK.value)
    except config_lib.ConfigError as e:  # e.g. mesh.data * mesh.model != the devices present
        raise app.UsageError(str(e)) from None
    except LeaseHeldError as e:  # another run holds the workdir: its holder, not a traceback
        sys.exit(f"error: {e}")


def run(argv: list[str] | None = None) -> None:
    """``gemmascope train ...`` and ``python launch/train.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv, flags_parser=cli.flags_parser())
