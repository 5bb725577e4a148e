"""The ``gemmascope`` console command: ``gemmascope <subcommand> [flags]``, installed by ``pip install``.

Each subcommand is a module of this package with ``define_flags()`` (its absl flags), ``main(argv)``
and ``run(argv)``, and a line in :data:`COMMANDS`; the scripts under ``launch/`` are two-line
wrappers around the same ``run``, so
``gemmascope train --config=configs/toy.py --workdir=W`` and ``python launch/train.py
--config=configs/toy.py --workdir=W`` take the same flags and do the same thing (``configs/NAME.py``
resolves to the package's experiment configs from any directory). The command needs no checkout.

Why the flags are declared in ``define_flags()`` (called by ``run``), not at import: absl flags
live in one global registry and several subcommands declare the same names (``--config``,
``--workdir``, ``--out``) with their own help; declared at import, two command modules could not be
imported into one process (the package's own import checks import every module). Only the
chosen subcommand declares its flags. This module imports nothing heavy: an unknown config field
still fails before JAX starts.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence

PROG = "gemmascope"
#: subcommand -> (module of this package, one line for ``gemmascope --help``), in pipeline order
COMMANDS = {
    "generate": ("generate", "run the LM over the corpus once and write the activation store"),
    "train": ("train", "train a sweep of SAEs (resumes after a kill; --dry_run sizes it)"),
    "evaluate": ("evaluate", "score every exported SAE of a workdir (delta loss, FVU, L0, SAEBench core)"),
    "export": ("export", "write an SAE in another layout, or a workdir as Gemma Scope 2's release tree"),
    "analyze": ("analyze", "write an offline HTML dashboard of an SAE's latents"),
    "steer": ("steer", "generate text while adding a latent's decoder row at its site"),
    "attribute": ("attribute", "the attribution graph of a prompt through transcoders or a CLT (circuit tracing)"),
    "verify-store": ("verify_store", "check (and --repair) an activation store after copying it"),
    "compare": ("compare", "read several workdirs' eval tables together (seeds, budgets, peers)"),
    "plot-metrics": ("plot_metrics", "training curves as PNG from metrics.jsonl"),
}


def usage() -> str:
    """The text of ``gemmascope --help``: every subcommand with its line."""
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items())
    return (
        f"usage: {PROG} <command> [flags]\n\n"
        "Train, evaluate and read JumpReLU sparse autoencoders on every site of an LM (JAX).\n\n"
        f"commands:\n{rows}\n\n"
        f"'{PROG} <command> --help' lists a command's flags; '{PROG} help <command>' does the same.\n"
        f"Example: {PROG} train --config=configs/toy.py --workdir=/tmp/toy\n"
    )


def run_module(module_name: str, main: Callable, argv: Sequence[str] | None = None, flags_parser=None) -> None:
    """``absl.app.run(main)`` for the command module ``module_name`` with ``argv`` (``sys.argv``
    when None; its first item names the program in messages, e.g. ``"gemmascope train"``).

    absl's ``--help`` prints ``__main__``'s docstring and the flags declared by the module named
    ``sys.argv[0]``; since the flags are now declared in ``module_name``, not in the script being
    run, its docstring and its flags are handed to the names absl looks up, so ``--help`` reads as
    it did when the code lived in ``launch/``.
    """
    from absl import app, flags

    argv = list(sys.argv if argv is None else argv)
    sys.argv = argv
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = sys.modules[module_name].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(argv[0], flag)
    app.run(main, argv=argv, **({"flags_parser": flags_parser} if flags_parser is not None else {}))


def main(argv: Sequence[str] | None = None) -> None:
    """The console entry point (``setup.py`` ``entry_points``): dispatches to a subcommand."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    if args[:1] == ["help"] and len(args) > 1:
        args = [args[1], "--help"]
    if not args or args[0] in ("-h", "--help", "-help", "--helpshort", "--helpfull", "help"):
        (sys.stdout if args else sys.stderr).write(usage())
        sys.exit(0 if args else 2)
    name = args[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        sys.stderr.write(f"{PROG}: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})\n")
        sys.exit(2)
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    module.run([f"{PROG} {name}", *args[1:]])
