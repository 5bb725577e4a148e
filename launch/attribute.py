"""``python launch/attribute.py ...``: the ``gemmascope attribute`` command, kept as a script.

The flags, the help (``--help``) and the code are in :mod:`gemmascope.commands.attribute`.
"""

from gemmascope.commands.attribute import main, run  # noqa: F401

if __name__ == "__main__":
    run()
