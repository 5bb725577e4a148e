"""Command-line habits shared by every ``launch/`` script (absl flags + ``ml_collections`` configs).

``app.run(main, flags_parser=cli.flags_parser())`` gives a launch script:

* an unknown config field (``--config.lamdas=1``) stops with ONE line naming the field and the
  closest known ones (``config.lamdas: unknown field; did you mean config.lambdas?``), before
  any config file is even loaded, instead of ml_collections' traceback;
* the comma form for every tuple field: ``--config.sites=res,mlp`` is ``("res", "mlp")`` as
  ``--config.layers=5,25`` is ``(5, 25)`` (ml_collections parses the first with
  ``ast.literal_eval``, which fails on bare words, and so kept the single site ``"res,mlp"``);
* with ``saved_config=...``: when ``--config`` is not given, the config the workdir was trained
  with (``<workdir>/config.json``, written by ``launch/train.py``) through the config file
  ``gemmascope/config/experiments/workdir.py``, so ``--config.<field>=`` overrides still apply to it.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable, Sequence

from absl import app
from ml_collections.config_flags import config_flags, tuple_parser

from gemmascope import config as config_lib
from gemmascope.config import files as config_files
from gemmascope.config.experiments import workdir

FLAG = "config"


def _override_paths(argv: Sequence[str], flag: str = FLAG) -> list[str]:
    """``["--config.sae.arch=topk", "--noconfig.runlocal", "-config.seed", "5"]`` -> the field paths."""
    out = []
    for a in argv:
        if a == "--":
            break
        for prefix in (f"--{flag}.", f"-{flag}.", f"--no{flag}.", f"-no{flag}."):
            if a.startswith(prefix):
                out.append(a[len(prefix) :].split("=", 1)[0])
                break
    return out


def check_overrides(argv: Sequence[str], flag: str = FLAG) -> None:
    """Raises :class:`gemmascope.config.ConfigError` for the first ``--config.<path>`` that names
    no field of :func:`gemmascope.config.base_config` (every config is built from it, and
    :func:`gemmascope.config.validate` refuses fields it lacks)."""
    known = config_files.field_paths()
    for path in _override_paths(argv, flag):
        err = config_files.unknown_field_error(path, known)
        if err is not None:
            raise err


def parse_tuple(text: str) -> tuple:
    """A tuple field's command-line value: ``"res,mlp"`` -> ``("res", "mlp")``, ``"5,25"`` ->
    ``(5, 25)``, ``"('a','b')"`` -> ``("a", "b")``, ``"gs://b/x"`` -> ``("gs://b/x",)``.

    A Python literal is taken as it is; otherwise the text is split at commas and each item is a
    literal when it parses as one (``1e-3``, ``5``) and a bare string when not.
    """
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        v = tuple(_item(s) for s in text.split(",") if s.strip())
    if isinstance(v, (list, tuple)):
        return tuple(v)
    return (v,)


def _item(s: str):
    s = s.strip()
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


def install_tuple_parser() -> None:
    """Registers :func:`parse_tuple` for ``tuple`` config fields with ``ml_collections`` (its
    documented ``register_flag_parser_for_type``; the parser must stay a ``TupleParser`` so that
    repeated ``--config.x=a --config.x=b`` still collect)."""

    class CommaTupleParser(tuple_parser.TupleParser):
        def parse(self, argument):
            if isinstance(argument, str):
                return parse_tuple(argument)
            return super().parse(argument)

    config_flags.register_flag_parser_for_type(tuple, CommaTupleParser())


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in raw argv (last one wins), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == "--":
            break
        for p in (f"--{name}", f"-{name}"):
            if a.startswith(p + "="):
                value = a[len(p) + 1 :]
            elif a == p and i + 1 < len(argv):
                value = argv[i + 1]
    return value


def saved_config_file() -> str:
    """The config file that loads a workdir's ``config.json`` (``--config=<this>:<workdir>``)."""
    return os.path.abspath(workdir.__file__)


def find_workdir(path: str) -> str | None:
    """The workdir holding ``path`` (an exported SAE under ``<workdir>/saes/...``): the nearest
    ancestor with a ``config.json`` and a ``saes`` folder, or None."""
    p = os.path.abspath(path)
    while True:
        if os.path.isfile(os.path.join(p, "config.json")) and os.path.isdir(os.path.join(p, "saes")):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def with_saved_config(argv: list[str], workdir: str | None, flag: str = FLAG) -> list[str]:
    """``argv`` plus ``--config=<saved_config_file()>:<workdir>`` when it has no ``--config`` and
    ``workdir/config.json`` exists (the config file then fails naming a missing file)."""
    if _flag_value(argv, flag) is not None or not workdir:
        return list(argv)
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        return list(argv)
    return [argv[0], f"--{flag}={saved_config_file()}:{workdir}", *argv[1:]]


def with_config_path(argv: list[str], flag: str = FLAG) -> list[str]:
    """``argv`` with ``--config=configs/NAME.py[:arg]`` pointing at the file
    :func:`gemmascope.config.files.config_file_path` resolves it to (the package's experiment
    config when no such file exists here)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--":
            break
        for p in (f"--{flag}=", f"-{flag}="):
            if a.startswith(p):
                path, sep, arg = a[len(p) :].partition(":")
                out[i] = f"{p}{config_files.config_file_path(path)}{sep}{arg}"
        if a in (f"--{flag}", f"-{flag}") and i + 1 < len(out):
            path, sep, arg = out[i + 1].partition(":")
            out[i + 1] = f"{config_files.config_file_path(path)}{sep}{arg}"
    return out


def prepare_argv(argv: Sequence[str], saved_config: Callable[[list[str]], str | None] | None = None, flag: str = FLAG):
    """What every launch script does to its argv before absl parses it: checks override names
    (:class:`~gemmascope.config.ConfigError` on an unknown field), installs the comma tuple
    parser, points ``--config=configs/NAME.py`` at the package's experiment config
    (:func:`with_config_path`) and fills ``--config`` from the workdir when ``saved_config(argv)``
    names one and ``--config`` is absent (:func:`with_saved_config`)."""
    argv = list(argv)
    check_overrides(argv[1:], flag)
    install_tuple_parser()
    argv = with_config_path(argv, flag)
    if saved_config is not None:
        argv = with_saved_config(argv, saved_config(argv), flag)
    return argv


def flags_parser(saved_config: Callable[[list[str]], str | None] | None = None, flag: str = FLAG):
    """The ``flags_parser`` for ``absl.app.run``: :func:`prepare_argv` (one line and exit 2 on an
    unknown field), then parses as absl does."""

    def parse(argv):
        try:
            argv = prepare_argv(argv, saved_config, flag)
        except config_lib.ConfigError as e:
            sys.stderr.write(f"{os.path.basename(argv[0])}: {e}\n")
            sys.exit(2)
        return app.parse_flags_with_usage(argv)

    return parse


def workdir_of(argv: Sequence[str]) -> str | None:
    """``saved_config`` for scripts with ``--workdir``."""
    return _flag_value(argv, "workdir")


def workdir_of_sae(argv: Sequence[str]) -> str | None:
    """``saved_config`` for scripts with ``--sae``: the workdir the SAE was exported into."""
    sae = _flag_value(argv, "sae")
    return find_workdir(sae) if sae else None


def dashboard_lm_settings(config, checkpoint=None, context_length=None, batch_sequences=None) -> dict:
    """``build_dashboard`` LM arguments: the explicit flag, else the config's ``lm.*``, else the
    embedded default. The dashboard scans the embedded corpus whatever ``config.text`` says."""
    lm = config.lm if config is not None else None
    if config is not None and config.text.kind != "embedded":
        print(f"[analyze] the config trained on text.kind={config.text.kind!r}; dashboards scan the embedded corpus")

    def pick(flag, field, default):
        return flag if flag is not None else (lm[field] if lm is not None else default)

    return {
        "checkpoint": pick(checkpoint, "checkpoint", "embedded"),
        "seq_len": int(pick(context_length, "context_length", 128)),
        "batch_sequences": int(pick(batch_sequences, "batch_sequences", 32)),
        "outlier_norm_factor": float(pick(None, "outlier_norm_factor", 10.0)),
    }
