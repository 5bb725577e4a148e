"""``python launch/export.py ...``: the ``gemmascope export`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.export`.
"""

from gemmascope.commands.export import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
