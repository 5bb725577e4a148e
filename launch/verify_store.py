"""``python launch/verify_store.py ...``: the ``gemmascope verify-store`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.verify_store`.
"""

from gemmascope.commands.verify_store import main, run  # noqa: F401  (main: as before the move)

if __name__ == "__main__":
    run()
