"""bench/report.py: rows appended under a section of BENCHMARKS.md, and rows added to one of a
section's several tables, leaving every other line as it was."""

from __future__ import annotations

from bench import report

DOC = """# Benchmarks

## One

| a | date |
|---|---|
| 1 | 2026-12-01 |

## Two tables

text

| case | x |
|---|---|
| p1 | 1 |

between

| setting | y |
|---|---|
| s1 | 2 |

after

## Three

| z |
|---|
"""


def test_rows_go_into_the_named_table_of_a_section_and_nothing_else_moves(tmp_path, monkeypatch):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(DOC)
    monkeypatch.setattr(report, "PATH", str(path))
    assert report.add_to_table("## Two tables", "| case |", ["| p2 | 3 |"])
    assert report.add_to_table("## Two tables", "| setting |", ["| s2 | 4 |", "| s3 | 5 |"])
    want = DOC.replace("| p1 | 1 |\n", "| p1 | 1 |\n| p2 | 3 |\n").replace(
        "| s1 | 2 |\n", "| s1 | 2 |\n| s2 | 4 |\n| s3 | 5 |\n"
    )
    assert path.read_text() == want
    # an absent section or table: False, and the file is untouched
    assert not report.add_to_table("## Four", "| case |", ["| p9 | 9 |"])
    assert not report.add_to_table("## One", "| case |", ["| p9 | 9 |"])
    assert path.read_text() == want
    # append_rows adds under an existing section's table (stamped with the date) and creates a new one
    today = report.datetime.date.today().isoformat()
    report.append_rows("One", "| a |\n|---|", ["| 2 |"])
    report.append_rows("Five", "| b |\n|---|", ["| 7 |"])
    text = path.read_text()
    assert f"| 1 | 2026-12-01 |\n| 2 | {today} |\n\n## Two tables" in text
    assert text.rstrip().endswith(f"## Five\n\n| b | date |\n|---|---|\n| 7 | {today} |")
