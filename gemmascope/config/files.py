"""Configs from files and workdirs, and field names for the command line.

* :func:`load_config_file`: ``get_config(arg)`` of a config file (``path[:arg]``);
  :func:`config_file_path`: where ``configs/NAME.py`` is (the package's experiment configs).
* :func:`load_saved`: the resolved config a workdir was trained with (``workdir/config.json``).
* :func:`field_paths` / :func:`unknown_field_error`: every dotted field of :func:`base_config`, and
  the one-line error with close matches that ``--config.<typo>=...`` gets.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os

import ml_collections

from gemmascope.config import ConfigError, base_config, experiments, lock

#: The folder name that stands for the package's experiment configs on the command line.
CONFIGS_ALIAS = "configs"


def config_file_path(path: str) -> str:
    """The config file ``path`` names: ``path`` itself when the file exists, else for
    ``configs/NAME.py`` (any folder named ``configs``) the package's experiment config
    ``gemmascope/config/experiments/NAME.py``, so ``--config=configs/demo.py`` runs from any
    directory and from an installed package; anything else unchanged (its loader then says it is
    missing)."""
    if os.path.isfile(path) or os.path.basename(os.path.dirname(path)) != CONFIGS_ALIAS:
        return path

    packaged = os.path.join(os.path.dirname(os.path.abspath(experiments.__file__)), os.path.basename(path))
    return packaged if os.path.isfile(packaged) else path


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file: ``"configs/demo.py"`` or ``"configs/demo.py:runlocal=True"``
    (the same ``path[:arg]`` form as ``--config=`` on the command line, through
    :func:`config_file_path`)."""
    path, _, arg = spec.partition(":")
    path = config_file_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    mod_spec = importlib.util.spec_from_file_location(f"_gemmascope_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def field_paths(c: ml_collections.ConfigDict | None = None, prefix: str = "") -> list[str]:
    """Every dotted field path of ``c`` (default :func:`base_config`), sub-configs included:
    ``["seed", "sites", ..., "sae", "sae.arch", ...]``."""
    c = base_config() if c is None else c
    out = []
    for k in c.keys():
        out.append(prefix + k)
        if isinstance(c[k], ml_collections.ConfigDict) and k != "runlocal_overrides":
            out += field_paths(c[k], f"{prefix}{k}.")
    return out


def unknown_field_error(path: str, known: list[str] | None = None) -> ConfigError | None:
    """None when ``path`` (``"sae.arch"``) names a field of :func:`base_config` (anything under
    ``runlocal_overrides`` is left to that config), else an error naming it with the closest
    known paths (difflib): ``config.lamdas: unknown field; did you mean config.lambdas?``."""
    known = field_paths() if known is None else known
    if path in known or path == "runlocal_overrides" or path.startswith("runlocal_overrides."):
        return None
    close = difflib.get_close_matches(path, known, n=2, cutoff=0.6)
    if not close:  # a typo in the last part only: "sae.treshold" -> the fields of "sae"
        head, _, tail = path.rpartition(".")
        close = [
            f"{head}.{m}" if head else m
            for m in difflib.get_close_matches(
                tail, [p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == head], n=2, cutoff=0.6
            )
        ]
    hint = "; did you mean " + " or ".join(f"config.{m}" for m in close) + "?" if close else ""
    return ConfigError(f"config.{path}: unknown field{hint}")


def _kind(v) -> str:
    """A JSON value's kind: ``bool``, ``int``, ``float``, ``str``, ``NoneType``, ``list``, ``dict``."""
    return "float" if isinstance(v, float) else type(v).__name__


def saved_value_problem(default, v) -> str | None:
    """What is wrong with the saved value ``v`` of a field whose default is ``default``, or None.

    ml_collections accepts None and bools in any (int) field and ``tuple("abc")`` turns a string
    into a tuple of letters; a resolved config never holds those, so they are corruption: the value
    must have its default's type (an int in a float field, too), and a tuple field a list of items
    of the default items' type (of strings or numbers when the default is empty)."""
    if isinstance(default, tuple):
        if not isinstance(v, list):
            return "must be a list"
        kinds = {_kind(x) for x in default} or {"str", "int", "float"}
        kinds |= {"int"} if "float" in kinds else set()
        bad = [x for x in v if _kind(x) not in kinds]
        return f"every item must be a {' or '.join(sorted(kinds))}" if bad else None
    want = {_kind(default)} | ({"int"} if isinstance(default, float) else set())
    return None if _kind(v) in want else f"must be a {' or '.join(sorted(want))}"


def load_saved(path: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with: ``path`` is the workdir or its ``config.json``
    (written by :func:`gemmascope.train.loop.train_and_evaluate`, already resolved, so
    ``runlocal`` is cleared here and later overrides stay as given).

    JSON turns tuples into lists and has no ConfigDict types, so the values are written into a
    fresh :func:`base_config` field by field: tuples come back as tuples and a field this
    version does not know (a config.json from another version) fails naming the file and field.
    """
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise ConfigError(f"{file}: no saved config (launch/train.py writes it into the workdir); pass --config")
    with open(file, encoding="utf-8") as fh:
        try:
            saved = json.load(fh)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise ConfigError(f"{file}: not valid JSON ({e})") from None
    c = base_config()

    def fill(dst, src, prefix):
        if not isinstance(src, dict):
            where = f"config.{prefix[:-1]}" if prefix else "the config"
            raise ConfigError(f"{file}: {where} must be a JSON object, got {src!r:.80}")
        for k, v in src.items():
            if k == "runlocal_overrides":
                continue
            if k not in dst:
                raise ConfigError(f"{file}: config.{prefix}{k}: unknown field (saved by another version?)")
            if isinstance(dst[k], ml_collections.ConfigDict):
                fill(dst[k], v, f"{prefix}{k}.")
                continue
            problem = saved_value_problem(dst[k], v)
            if problem:
                raise ConfigError(f"{file}: config.{prefix}{k}: {problem}, got {v!r:.80}")
            try:
                dst[k] = tuple(v) if isinstance(dst[k], tuple) else v
            except TypeError as e:
                raise ConfigError(f"{file}: config.{prefix}{k}: {e}") from None

    fill(c, saved, "")
    c.runlocal = False
    return lock(c)
