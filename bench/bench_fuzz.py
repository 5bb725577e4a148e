r"""Malformed files at scale: the targets of ``tests/test_fuzz.py`` with many more mutations.

    python bench/bench_fuzz.py                              # 2000 mutations per target
    python bench/bench_fuzz.py --mutations=20000 --seed=1   # more, and other mutations
    python bench/bench_fuzz.py --only=gguf --mutations=50000

The test runs a few thousand mutations in all (its CI budget); this runs as many as asked, per
target (a loader on one valid input: ``load_params:npz-topk``, ``open_store``, ...), and prints
for every target and every loader how many mutations loaded (and passed the completeness check),
how many raised the loader's named error, and every other outcome (a bug: another exception
type, an incomplete result, an error not naming the file, a hang past ``--timeout``) with the
first few bugs and the seed and index that replay them. Exit status 1 when there is a bug.

Why a separate script: each new seed explores other mutations, so a long run here finds what
the test's fixed sample misses; what it finds becomes a fix in the loader (the test then covers
the fix's class of input through its own sample).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.test_fuzz import TARGETS, run_target  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutations", type=int, default=2000, help="mutations per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="run the targets whose name contains this")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--show", type=int, default=3, help="bugs printed per target")
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow / invalid-cast notes on garbage values

    targets = [t for t in TARGETS if args.only in t.name]
    if not targets:
        print(f"no target matches {args.only!r}; targets: {', '.join(t.name for t in TARGETS)}")
        return 2
    by_loader: dict[str, Counter] = {}
    bugs = []
    t0 = time.perf_counter()
    print(f"{'target':34s} {'mutations':>9s} {'loaded':>7s} {'error':>7s} {'bugs':>5s} {'/s':>7s}  other outcomes")
    with tempfile.TemporaryDirectory() as tmp:
        for i, target in enumerate(targets):
            folder = os.path.join(tmp, str(i))
            os.makedirs(folder)
            r = run_target(target, folder, args.mutations, args.seed, timeout=args.timeout)
            other = {k: v for k, v in r.counts.items() if k not in ("loaded", "error")}
            n_bugs = sum(other.values())
            print(
                f"{target.name:34s} {args.mutations:9d} {r.counts['loaded']:7d} {r.counts['error']:7d} "
                f"{n_bugs:5d} {args.mutations / max(r.seconds, 1e-9):7.0f}  {other or ''}",
                flush=True,
            )
            by_loader.setdefault(target.name.split(":")[0], Counter()).update(r.counts)
            bugs += r.bugs[: args.show]
    print("\nper loader:")
    for loader, counts in by_loader.items():
        other = {k: v for k, v in counts.items() if k not in ("loaded", "error")}
        print(
            f"  {loader:20s} {sum(counts.values()):8d} mutations: {counts['loaded']} loaded, {counts['error']} named errors, {other or 'no bugs'}"
        )
    total = sum(sum(c.values()) for c in by_loader.values())
    print(f"{total} mutations in {time.perf_counter() - t0:.1f} s (seed {args.seed})")
    for b in bugs:
        print("\n" + b)
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
