"""``python launch/analyze.py ...``: the ``gemmascope analyze`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.analyze`.
"""

from gemmascope.commands.analyze import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
