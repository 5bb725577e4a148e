r"""Training curves as PNG from ``<workdir>/metrics.jsonl`` (for those without TensorBoard).

    python launch/plot_metrics.py --workdir=workdirs/demo            # -> workdirs/demo/curves/<location>.png

One figure per location, a panel per metric, one line per SAE. TensorBoard shows the same
metrics live: ``tensorboard --logdir workdirs/demo/tensorboard``.
"""

import functools

from absl import app, flags

from gemmascope.commands import run_module


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _WORKDIR, _OUT
    _WORKDIR = flags.DEFINE_string("workdir", None, "Workdir holding metrics.jsonl.")
    _OUT = flags.DEFINE_string("out", None, "Folder for the PNGs (default: <workdir>/curves).")
    flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from gemmascope.train.curves import plot_metrics

    try:
        paths = plot_metrics(_WORKDIR.value, _OUT.value)
    except FileNotFoundError as e:
        raise app.UsageError(str(e)) from None
    for p in paths:
        print(p)


def run(argv: list[str] | None = None) -> None:
    """``gemmascope plot-metrics ...`` and ``python launch/plot_metrics.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv)
