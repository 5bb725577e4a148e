"""``python launch/generate_activations.py ...``: the ``gemmascope generate`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.generate`.
"""

from gemmascope.commands.generate import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
