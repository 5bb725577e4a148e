"""Shared by the benchmarks (and ``experiments/frontier_peers.py``): the machine in words, and appending rows to BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "BENCHMARKS.md")
HEADER = "# Benchmarks\n\nRatios measured within one run on the machine named in each row (absolute numbers on a shared\n2-core CPU are noise; the ratios are the result). Rows are appended by the scripts under `bench/` and by\n`experiments/frontier_peers.py`.\n"


def machine() -> str:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return f"{platform.machine()} {os.cpu_count()} cores, {dev.platform}:{kind}, jax {jax.__version__}"


def append_rows(section: str, table_header: str, rows: list[str]) -> None:
    """Appends ``rows`` under ``## section`` (creating the file, section and table header if absent)."""
    text = open(PATH).read() if os.path.exists(PATH) else HEADER
    stamp = datetime.date.today().isoformat()
    rows = [r.rstrip() + f" {stamp} |" if not r.rstrip().endswith(stamp + " |") else r for r in rows]
    head = f"\n## {section}\n\n{table_header.splitlines()[0]} date |\n{table_header.splitlines()[1]}---|\n"
    if f"## {section}\n" not in text:
        text = text.rstrip("\n") + "\n" + head
        text += "\n".join(rows) + "\n"
    else:
        start = text.index(f"## {section}\n")
        nxt = text.find("\n## ", start + 1)
        end = len(text) if nxt < 0 else nxt
        block = text[start:end].rstrip("\n") + "\n" + "\n".join(rows) + "\n"
        text = text[:start] + block + text[end:]
    with open(PATH, "w") as fh:
        fh.write(text)


def add_to_table(section_heading: str, header_start: str, rows: list[str]) -> bool:
    """Appends ``rows`` after the last row of the table whose header line starts with
    ``header_start`` inside the section headed ``section_heading`` (a whole ``## ...`` line), for a
    section that holds several tables. False (nothing written) where the section or the table is
    absent, so the caller writes the whole section instead."""
    if not rows or not os.path.exists(PATH):
        return False
    text = open(PATH).read()
    start = text.find(section_heading + "\n")
    if start < 0:
        return False
    nxt = text.find("\n## ", start + 1)
    end = len(text) if nxt < 0 else nxt
    lines = text[start:end].split("\n")
    head = next((i for i, line in enumerate(lines) if line.startswith(header_start)), None)
    if head is None:
        return False
    last = head + 1  # the separator line; then the rows while they last
    while last + 1 < len(lines) and lines[last + 1].startswith("|"):
        last += 1
    lines[last + 1 : last + 1] = rows
    with open(PATH, "w") as fh:
        fh.write(text[:start] + "\n".join(lines) + text[end:])
    return True
