"""Configuration, in one package: every field, its checks, the files and the command line.

Where to look, field by field:

| module | what it holds |
|---|---|
| :mod:`~gemmascope.config.defaults` | :func:`base_config`: every field with its default and why (the one list) |
| :mod:`~gemmascope.config.validation` | :func:`validate` / :func:`prepare`: every check, before any compute |
| :mod:`~gemmascope.config.sparsity` | the checks of the sparsity fields (losses, targets, Matryoshka) |
| :mod:`~gemmascope.config.checks` | :class:`ConfigError` and the field checks the two above use |
| :mod:`~gemmascope.config.args` | ``arg`` strings (``configs/sweep_9b.py:width=1m``) |
| :mod:`~gemmascope.config.sweep` | what a config implies: sweep axis, variant name, step count |
| :mod:`~gemmascope.config.files` | configs as files: ``config.json`` in a workdir, config files by path |
| :mod:`~gemmascope.config.cli` | the command-line habits of every ``launch/`` script |
| :mod:`~gemmascope.config.coverage` | Gemma Scope's and Gemma Scope 2's coverage, and the sweep configs on it |
| :mod:`~gemmascope.config.experiments` | the experiment configs (``--config=configs/demo.py`` names them) |

The sites a config names are :mod:`gemmascope.sites` and the architectures
:mod:`gemmascope.sae.archs` (modules below this one: the trainer and the evaluator learn what a
site or an architecture is without importing the config, and the checks here derive from them).

Every experiment config starts from :func:`base_config`. The returned ConfigDict is locked, so an
override of an unknown field (``--config.lamdas=...``) fails at once naming the field; :func:`validate`
then checks values and names the field of the first bad one. Both happen before any model, store
or device work.
"""

from gemmascope.config.args import lock, parse_arg, parse_width
from gemmascope.config.checks import ConfigError
from gemmascope.config.defaults import EXPORT_LAYOUTS, base_config
from gemmascope.config.sweep import scales_dims, sweep_field, sweep_kind, sweep_values, total_steps, variant_name
from gemmascope.config.validation import prepare, resolve, validate

__all__ = [
    "EXPORT_LAYOUTS",
    "ConfigError",
    "base_config",
    "lock",
    "parse_arg",
    "parse_width",
    "prepare",
    "resolve",
    "scales_dims",
    "sweep_field",
    "sweep_kind",
    "sweep_values",
    "total_steps",
    "validate",
    "variant_name",
]
