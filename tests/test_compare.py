"""gemmascope.eval.compare: several workdirs' eval tables read together (seeds averaged at matched L0)."""

import csv
import os

import pytest

from gemmascope.eval.compare import compare_tables, read_table, welch
from gemmascope.eval.evaluate import COLUMNS


def _table(path, arch, pts):
    """An eval/table.csv with one row per ``(l0, delta_loss, fvu, dead_fraction)``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for l0, dl, fvu, dead in pts:
            w.writerow(
                {"architecture": arch, "site": "res", "l0": l0, "delta_loss": dl, "fvu": fvu, "dead_fraction": dead}
            )
    return str(path)


def test_seeds_are_averaged_at_matched_l0_and_ratios_are_to_the_reference(tmp_path):
    # L0 20 and 80 bracket 40 at the midpoint in log L0, so the matched value is the mean of the two
    a0 = _table(tmp_path / "a0/table.csv", "jumprelu", [(20, 0.30, 0.25, 0.1), (80, 0.10, 0.15, 0.3)])
    a1 = _table(tmp_path / "a1/table.csv", "jumprelu", [(20, 0.26, 0.23, 0.1), (80, 0.14, 0.17, 0.1)])
    b = _table(tmp_path / "b/table.csv", "batchtopk", [(10, 0.5, 0.4, 0.0), (40, 0.25, 0.2, 0.0), (160, 0.05, 0.1, 0)])
    out = tmp_path / "out"
    res = compare_tables([(a0, "ours"), (a1, "ours"), (b, None)], str(out), ref="batchtopk")
    ours = res["ours"][40.0]
    assert ours["delta_loss_runs"] == pytest.approx([0.20, 0.20])
    assert ours["fvu_runs"] == pytest.approx([0.20, 0.20])
    assert ours["delta_loss"] == pytest.approx(0.20)
    assert ours["dead_fraction_runs"] == pytest.approx([0.2, 0.1])
    assert res["batchtopk"][40.0]["delta_loss"] == pytest.approx(0.25)
    # at L0 80, seed 0 and 1 are measured points (0.10, 0.14): mean 0.12; batchtopk halfway 40..160
    assert res["ours"][80.0]["delta_loss"] == pytest.approx(0.12)
    assert res["batchtopk"][80.0]["delta_loss"] == pytest.approx(0.15)
    # L0 160 lies outside ours' range: n/a, never extrapolated
    assert res["ours"][160.0]["delta_loss"] is None
    md = (out / "compare.md").read_text()
    # L0 20: ours measured (0.30, 0.26: mean 0.28), batchtopk halfway 10..40 in log L0 (0.375)
    assert (
        "| ours | 2 | 0.28 (0.3 / 0.26) **0.75x** | 0.2 (0.2 / 0.2) **0.80x** | 0.12 (0.1 / 0.14) **0.80x** | n/a |"
        in md
    )
    assert (out / "l0_vs_delta_loss.png").stat().st_size > 0 and (out / "l0_vs_fvu.png").stat().st_size > 0


def test_welch_t_test_matches_hand_values_and_scipy():
    # a = 1, 2, 3: mean 2, s^2 1, v 1/3; b = 4, 6: mean 5, s^2 2, v 1
    # t = -3 / sqrt(4/3); df = (4/3)^2 / ((1/3)^2 / 2 + 1^2 / 1) = 32/19
    w = welch([1.0, 2.0, 3.0], [4.0, 6.0])
    assert w["t"] == pytest.approx(-3 / (4 / 3) ** 0.5, rel=1e-12)
    assert w["df"] == pytest.approx(32 / 19, rel=1e-12)
    from scipy import stats

    ref = stats.ttest_ind([1.0, 2.0, 3.0], [4.0, 6.0], equal_var=False)
    assert w["t"] == pytest.approx(ref.statistic, rel=1e-12) and w["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert welch([1.0], [2.0, 3.0]) is None  # one run has no spread to test against
    assert welch([1.0, 1.0], [2.0, 2.0]) is None  # no spread at all: t is undefined


def test_seed_spread_and_welch_against_the_reference_in_the_result_and_markdown(tmp_path):
    # every run measured at L0 40 and 80, so the matched values are the rows themselves
    ours = [(0.20, 0.10), (0.22, 0.12), (0.24, 0.11)]
    ref = [(0.25, 0.13), (0.27, 0.12)]
    tables = [
        (_table(tmp_path / f"o{i}/table.csv", "jumprelu", [(40, a, 0.2, 0), (80, b, 0.1, 0)]), "ours")
        for i, (a, b) in enumerate(ours)
    ] + [
        (_table(tmp_path / f"r{i}/table.csv", "batchtopk", [(40, a, 0.2, 0), (80, b, 0.1, 0)]), "btk")
        for i, (a, b) in enumerate(ref)
    ]
    res = compare_tables(tables, str(tmp_path / "out"), ref="btk")
    c = res["ours"][40.0]
    assert c["delta_loss_se"] == pytest.approx(0.02 / 3**0.5)  # s = 0.02 over three runs
    assert c["delta_loss_welch"] == welch([0.20, 0.22, 0.24], [0.25, 0.27])
    assert c["fvu_welch"] is None  # identical FVUs everywhere: no spread, no test
    assert res["btk"][40.0]["delta_loss_welch"] is None  # the reference is not tested against itself
    assert res["btk"][40.0]["delta_loss_se"] == pytest.approx(0.01)
    w = c["delta_loss_welch"]
    md = (tmp_path / "out/compare.md").read_text()
    assert "### Seed spread" in md
    assert f"| ours | n/a | 0.22 ± 0.012 (t {w['t']:.2f}, p {w['p']:.2g}) |" in md
    assert "| btk | n/a | 0.26 ± 0.01 |" in md


def test_a_mean_needs_every_run_of_its_series(tmp_path):
    a0 = _table(tmp_path / "a0/table.csv", "jumprelu", [(20, 0.3, 0.25, 0), (80, 0.1, 0.15, 0)])
    a1 = _table(tmp_path / "a1/table.csv", "jumprelu", [(30, 0.3, 0.25, 0), (80, 0.1, 0.15, 0)])
    res = compare_tables([(a0, "x"), (a1, "x")], str(tmp_path / "out"))
    assert res["x"][20.0]["delta_loss"] is None and res["x"][20.0]["n"] == 1


def test_bad_tables_fail_naming_file_column_and_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_table(str(tmp_path / "nowhere.csv"))
    p = tmp_path / "t.csv"
    p.write_text("architecture,l0,fvu,dead_fraction\njumprelu,20,0.2,0\n")
    with pytest.raises(ValueError, match=r"t\.csv: column 'delta_loss' missing"):
        read_table(str(p))
    p.write_text("architecture,l0,delta_loss,fvu,dead_fraction\njumprelu,20,oops,0.2,0\n")
    with pytest.raises(ValueError, match=r"row 2, column 'delta_loss' = 'oops' is not a finite number"):
        read_table(str(p))
    p.write_text("architecture,l0,delta_loss,fvu,dead_fraction\njumprelu,20,0.3,0.2,0\njumprelu,40,0.2,nan,0\n")
    with pytest.raises(ValueError, match=r"row 3, column 'fvu' = 'nan' is not a finite number"):
        read_table(str(p))
    good = _table(tmp_path / "g/table.csv", "topk", [(20, 0.3, 0.2, 0), (40, 0.2, 0.1, 0)])
    with pytest.raises(ValueError, match="ref='nope'"):
        compare_tables([(good, None)], str(tmp_path / "out"), ref="nope")
    assert not (tmp_path / "out").exists()  # the bad ref is caught before anything is written


def test_table_specs_split_at_the_label_not_at_an_equals_sign_in_the_path():
    import importlib.util

    from absl import app

    spec = importlib.util.spec_from_file_location("compare_launch", "launch/compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_table("w/eval/table.csv=seed 0") == ("w/eval/table.csv", "seed 0")
    assert mod.parse_table("w/eval/table.csv") == ("w/eval/table.csv", None)
    assert mod.parse_table("runs/budget=4/eval/table.csv") == ("runs/budget=4/eval/table.csv", None)
    assert mod.parse_table("runs/budget=4/eval/table.csv=4x") == ("runs/budget=4/eval/table.csv", "4x")
    for bad in ("w/eval/table.csv=", "w/eval/table.md", "=x"):
        with pytest.raises(app.UsageError, match="expected PATH.csv"):
            mod.parse_table(bad)
