"""``python launch/plot_metrics.py ...``: the ``gemmascope plot-metrics`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.plot_metrics`.
"""

from gemmascope.commands.plot_metrics import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
