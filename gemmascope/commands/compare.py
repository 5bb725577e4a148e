r"""Reads the ``eval/table.csv`` of several evaluated workdirs together: seeds, budgets, peers.

    python launch/compare.py --out=workdirs/compare_4x --ref=batchtopk \
        --table=workdirs/rv4/eval/table.csv=revival --table=workdirs/rv4s1/eval/table.csv=revival \
        --table=workdirs/b4/eval/table.csv=batchtopk --table=workdirs/b4s1/eval/table.csv=batchtopk \
        --table=workdirs/rv4/peers/eval/table.csv=SAELens

Each ``--table`` is ``PATH[=LABEL]``; tables sharing a label are runs (seeds) of one series and are
averaged at matched L0, with standard errors and, against ``--ref``, Welch's t test. Writes
``<out>/compare.md`` and ``<out>/l0_vs_{delta_loss,fvu}.png`` (:mod:`gemmascope.eval.compare`).
"""

import functools

from absl import app, flags

from gemmascope.commands import run_module


@functools.cache
def define_flags() -> None:
    """Declares this command's flags, once, when it runs (see :mod:`gemmascope.commands`: not at
    import, since every command module must import beside the others)."""
    global _TABLES, _OUT, _REF
    _TABLES = flags.DEFINE_multi_string("table", [], "PATH[=LABEL] of an eval/table.csv; repeat.")
    _OUT = flags.DEFINE_string("out", None, "Folder for compare.md and the plots.")
    _REF = flags.DEFINE_string("ref", None, "Series (label) the ratios are to.")
    flags.mark_flags_as_required(["out"])


def parse_table(spec: str) -> tuple[str, str | None]:
    """``"PATH=LABEL"`` -> ``(PATH, LABEL)``, ``"PATH"`` -> ``(PATH, None)``. The label is what
    follows the last ``=`` after a ``.csv`` path, so a folder named ``budget=4`` stays in the path."""
    path, sep, label = spec.rpartition("=")
    if sep and path.endswith(".csv") and label:
        return path, label
    if spec.endswith(".csv"):
        return spec, None
    raise app.UsageError(f"--table={spec!r}: expected PATH.csv or PATH.csv=LABEL")


def main(argv):
    del argv
    if not _TABLES.value:
        raise app.UsageError("give at least one --table=PATH[=LABEL]")
    from gemmascope.eval.compare import compare_tables

    try:
        compare_tables([parse_table(t) for t in _TABLES.value], _OUT.value, ref=_REF.value)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    print(f"wrote {_OUT.value}/compare.md and l0_vs_delta_loss.png, l0_vs_fvu.png")


def run(argv: list[str] | None = None) -> None:
    """``gemmascope compare ...`` and ``python launch/compare.py ...`` (``argv``: ``sys.argv`` when None)."""
    define_flags()
    run_module(__name__, main, argv)
