"""Experiment configs, importable from the installed package (``from gemmascope.configs import demo``).

Each module has ``get_config(arg=None)`` returning a locked ``ml_collections.ConfigDict`` built
on :func:`gemmascope.config.base_config`. On the command line they are named by path, as
``ml_collections`` config files: ``--config=configs/demo.py`` (the repository's ``configs/``
holds one-line files that re-export these, so every documented command keeps working) or
``--config=gemmascope/configs/demo.py``. ``workdir.py`` is the config a workdir was trained with.
"""
