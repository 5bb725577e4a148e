r"""Checks an activation store after copying it: every chunk of every site, checksums, row counts,
finiteness. Prints a summary (rows, sites, bytes, rate) or every fault; exits 1 on a fault.

    python launch/verify_store.py --store=workdirs/demo/activations/train
    python launch/verify_store.py --store=DIR --repair   # then rerun the generate command

``--repair`` rolls a damaged store back to its last durable point before the first damaged shard
(see :func:`gemmascope.data.store.repair_store`); the generate command, rerun, rewrites only what
follows. The logic is :func:`gemmascope.data.store.verify_store`.
"""

import functools
import sys

from absl import flags

from gemmascope.commands import run_module


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _STORE, _REPAIR
    _STORE = flags.DEFINE_string("store", None, "Root of one store (e.g. <workdir>/activations/train).")
    _REPAIR = flags.DEFINE_bool("repair", False, "Roll a damaged store back so that generation rewrites the rest.")
    flags.mark_flags_as_required(["store"])


def main(argv) -> int:
    del argv
    from gemmascope.data import store as store_lib

    report = store_lib.verify_store(_STORE.value)
    print(report.summary(), flush=True)
    if report.ok:
        return 0
    if _REPAIR.value:
        try:
            store_lib.repair_store(_STORE.value, report)
        except store_lib.StoreError as e:
            print(f"cannot repair: {e}", flush=True)
    return 1


def run(argv: list[str] | None = None) -> None:
    """``gemmascope verify-store ...`` and ``python launch/verify_store.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, lambda argv: sys.exit(main(argv)), argv)
