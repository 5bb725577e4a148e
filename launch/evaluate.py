"""``python launch/evaluate.py ...``: the ``gemmascope evaluate`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.evaluate`.
"""

from gemmascope.commands.evaluate import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
