"""``python launch/train.py ...``: the ``gemmascope train`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.train`.
"""

from gemmascope.commands.train import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
