r"""Activation store throughput: the shuffled reader's GB/s against a raw read of the same files.

    python bench/bench_store.py                        # d_in 576, 300k rows (~0.7 GB), batch 4096
    python bench/bench_store.py --rows=100000 --keep   # smaller; keep the store folder afterwards

Writes a store of the demo shape (random fp32 rows, d_in 576) under a temporary folder, then, on
the same files and in the same run:

* raw: every byte of the store's files read with plain Python ``readinto`` into one 16 MiB buffer,
  file after file (the upper bound for one reader on this machine and filesystem);
* reader: one epoch of :class:`ActivationReader` (shuffled chunk order, shuffle buffer, the
  per-chunk NaN/inf check, batches gathered in shuffled order, prefetch thread), consumer idle.

The same rows are written twice: with a ``crc32c`` over every inner chunk (the format the writer
produces) and without (the format of stores written before per-chunk checksums), and the reader is
timed on both, interleaved, so the cost of verifying every chunk's checksum is a ratio within one
run (section "Activation store: chunk checksums").

Each is timed with the files in the page cache ("warm", best of ``--repeats``) and, where
``posix_fadvise(DONTNEED)`` can evict them, from the disk ("cold", once each). The ratio
reader / raw is the result; rows/s is for comparison with a trainer's consumption. Appends rows to
BENCHMARKS.md under "Activation store".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.report import append_rows, machine  # noqa: E402
from gemmascope.data import store as st  # noqa: E402

SITE = "res_L12"


def store_files(root: str) -> list[str]:
    out = []
    for folder, _, files in os.walk(root):
        out += [os.path.join(folder, f) for f in files]
    return sorted(out)


def evict(files: list[str]) -> bool:
    """Drops the files' pages from the page cache; False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def raw_read(files: list[str]) -> tuple[float, int]:
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    total = 0
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                total += n
    return time.perf_counter() - t, total


def reader_read(root: str, batch: int, seed: int, prefetch: int, buffer_rows: int | None) -> tuple[float, int]:
    r = st.ActivationReader(root, SITE, batch, seed=seed, epochs=1, prefetch=prefetch, shuffle_buffer_rows=buffer_rows)
    rows = 0
    t = time.perf_counter()
    for x in r:
        rows += x.shape[0]
    dt = time.perf_counter() - t
    r.close()
    return dt, rows


def write_store(root: str, rows: int, d_in: int, batch_rows: int, checksums: bool = True) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((batch_rows, d_in), dtype=np.float32)  # generation is not timed
    t = time.perf_counter()
    with st.ActivationWriter(
        root, {SITE: d_in}, {"model": "bench", "corpus": "random normal"}, chunk_checksums=checksums
    ) as w:
        done = 0
        for b in range(-(-rows // batch_rows)):
            n = min(batch_rows, rows - done)
            block[:, 0] = b  # distinct batches
            w.write_batch(b, {SITE: block[:n]})
            done += n
    return time.perf_counter() - t, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--d_in", type=int, default=576)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--buffer_rows", type=int, default=None, help="shuffle buffer (default: the reader's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="parent folder for the store (default: a temp folder)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no_report", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = ap.parse_args()

    parent = tempfile.mkdtemp(prefix="bench_store_", dir=args.dir)
    root = os.path.join(parent, "acts")
    plain = os.path.join(parent, "acts_no_checksums")
    try:
        wt, n = write_store(root, args.rows, args.d_in, batch_rows=8192)
        write_store(plain, args.rows, args.d_in, batch_rows=8192, checksums=False)
        plain_files = store_files(plain)
        files = store_files(root)
        size = sum(os.path.getsize(f) for f in files)
        info = st.open_store(root).sites[SITE]
        print(
            f"store: {n} rows x {args.d_in} fp32 = {size / 1e9:.3f} GB in {len(files)} files "
            f"(chunk {info['chunk_rows']} rows, shard {info['shard_rows']} rows); "
            f"write {size / wt / 1e9:.3f} GB/s ({wt:.1f} s, {n / wt:,.0f} rows/s)"
        )
        reader = st.ActivationReader(root, SITE, args.batch, seed=0, shuffle_buffer_rows=args.buffer_rows)
        window_rows = reader.window_chunks * reader.chunk_rows
        reader.close()

        results, unchecked = {}, {}
        cold = evict(files) and evict(plain_files)
        if cold:
            results["cold"] = (raw_read(files), None)
            evict(files)
            results["cold"] = (results["cold"][0], reader_read(root, args.batch, 0, args.prefetch, args.buffer_rows))
            unchecked["cold"] = reader_read(plain, args.batch, 0, args.prefetch, args.buffer_rows)
        raws, reads, plain_reads = [], [], []
        for i in range(args.repeats):  # interleaved: both formats see the same machine load
            raws.append(raw_read(files))
            reads.append(reader_read(root, args.batch, i, args.prefetch, args.buffer_rows))
            plain_reads.append(reader_read(plain, args.batch, i, args.prefetch, args.buffer_rows))
        results["warm"] = (min(raws), min(reads))
        unchecked["warm"] = min(plain_reads)

        rows_out = []
        for cache, ((raw_t, raw_b), (rd_t, rd_rows)) in results.items():
            raw_gbs = raw_b / raw_t / 1e9
            rd_bytes = rd_rows * args.d_in * 4
            rd_gbs = rd_bytes / rd_t / 1e9
            rows_s = rd_rows / rd_t
            print(
                f"{cache:>4}: raw read {raw_gbs:.3f} GB/s ({raw_t:.2f} s); reader {rd_gbs:.3f} GB/s "
                f"({rd_t:.2f} s, {rows_s:,.0f} rows/s, {rows_s / args.batch:,.1f} batches/s); "
                f"ratio {rd_gbs / raw_gbs:.2f}"
            )
            rows_out.append(
                f"| {machine()} | {n:,} x {args.d_in} fp32, {size / 1e9:.2f} GB, chunk {info['chunk_rows']} / "
                f"shard {info['shard_rows']} rows | batch {args.batch}, shuffle buffer {window_rows:,} rows, "
                f"prefetch {args.prefetch} | {cache} | {raw_gbs:.2f} | {rd_gbs:.2f} | {rd_gbs / raw_gbs:.2f} "
                f"| {rows_s:,.0f} | {size / wt / 1e9:.2f} |"
            )
        crc_rows = []
        for cache, (_, (rd_t, rd_rows)) in results.items():
            pl_t, pl_rows = unchecked[cache]
            with_gbs, without_gbs = rd_rows * args.d_in * 4 / rd_t / 1e9, pl_rows * args.d_in * 4 / pl_t / 1e9
            print(
                f"{cache:>4}: reader with chunk crc32c {with_gbs:.3f} GB/s, "
                f"without {without_gbs:.3f} GB/s; ratio {with_gbs / without_gbs:.2f}"
            )
            crc_rows.append(
                f"| {machine()} | {n:,} x {args.d_in} fp32, chunk {info['chunk_rows']} / "
                f"shard {info['shard_rows']} rows | batch {args.batch}, prefetch {args.prefetch} | {cache} "
                f"| {with_gbs:.2f} | {without_gbs:.2f} | {with_gbs / without_gbs:.2f} "
                f"| {rd_rows / rd_t:,.0f} |"
            )
        if not args.no_report:
            append_rows(
                "Activation store: chunk checksums (bench/bench_store.py)",
                "| machine | store | reader | page cache | reader GB/s, crc32c per chunk "
                "| reader GB/s, no chunk checksum | with / without | reader rows/s with crc32c |\n"
                "|---|---|---|---|---|---|---|---|",
                crc_rows,
            )
            append_rows(
                "Activation store",
                "| machine | store | reader | page cache | raw read GB/s | reader GB/s | reader / raw "
                "| reader rows/s | write GB/s |\n"
                "|---|---|---|---|---|---|---|---|---|",
                rows_out,
            )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
