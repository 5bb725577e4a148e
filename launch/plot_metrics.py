r"""Training curves as PNG from ``<workdir>/metrics.jsonl`` (for those without TensorBoard).

    python launch/plot_metrics.py --workdir=workdirs/demo            # -> workdirs/demo/curves/<location>.png

One figure per location, a panel per metric, one line per SAE. TensorBoard shows the same
metrics live: ``tensorboard --logdir workdirs/demo/tensorboard``.
"""

from absl import app, flags

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


if __name__ == "__main__":
    app.run(main)
