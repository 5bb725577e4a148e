"""Experiment configs, importable from the installed package (``from gemmascope.config.experiments import demo``).

Each module has ``get_config(arg=None)`` returning a locked ``ml_collections.ConfigDict`` built
on :func:`gemmascope.config.base_config`. On the command line they are named by path, as
``ml_collections`` config files: ``--config=configs/demo.py`` is this folder's ``demo.py`` (the
command line resolves ``configs/NAME.py`` here when no such file exists where it runs:
:func:`gemmascope.config.files.config_file_path`), as is
``--config=gemmascope/config/experiments/demo.py``; a config file of your own is named
by its path. ``workdir.py`` is the config a workdir was trained with.
"""
