"""``python launch/steer.py ...``: the ``gemmascope steer`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.steer`.
"""

from gemmascope.commands.steer import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
