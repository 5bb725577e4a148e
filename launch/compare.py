"""``python launch/compare.py ...``: the ``gemmascope compare`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.compare`.
"""

from gemmascope.commands.compare import main, parse_table, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
