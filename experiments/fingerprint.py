r"""Fingerprints a workdir's stored rows and exported SAEs, to show a refactor changed no behaviour.

    python experiments/fingerprint.py --workdir=workdirs/demo_rl --out=before.json
    python experiments/fingerprint.py --workdir=workdirs/demo_rl --out=after.json --against=before.json

Hashes (SHA-256) every store chunk under ``activations/`` (the raw bytes tensorstore wrote) and every
array of every exported ``params.npz`` (name, dtype, shape and bytes, so the zip container's
timestamps do not count); JSON files are left out (they hold paths and times). With ``--against``
it prints each difference and exits 1 if there is any.
"""

import hashlib
import json
import os
import sys

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir holding activations/ and saes/.")
_OUT = flags.DEFINE_string("out", None, "JSON file to write the fingerprint to.")
_AGAINST = flags.DEFINE_string("against", None, "An earlier fingerprint to compare with.")
flags.mark_flags_as_required(["workdir", "out"])


def fingerprint(workdir: str) -> dict[str, str]:
    """``{relative path[:array]: sha256}`` of the store's chunks and the exported arrays."""
    out: dict[str, str] = {}
    for root, _, files in os.walk(workdir):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, workdir)
            if rel.startswith("activations" + os.sep) and os.sep + "c" + os.sep in rel:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            elif rel.startswith("saes" + os.sep) and name == "params.npz":
                with np.load(path) as z:
                    for key in sorted(z.files):
                        a = z[key]
                        h = hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes())
                        out[f"{rel}:{key}"] = h.hexdigest()
    return dict(sorted(out.items()))


def main(argv):
    del argv
    fp = fingerprint(_WORKDIR.value)
    if not fp:
        raise app.UsageError(f"{_WORKDIR.value}: no store chunks or params.npz found")
    with open(_OUT.value, "w") as f:
        json.dump(fp, f, indent=1)
    n_store = sum(k.startswith("activations") for k in fp)
    print(f"{len(fp)} hashes ({n_store} store chunks, {len(fp) - n_store} exported arrays) -> {_OUT.value}")
    if _AGAINST.value:
        with open(_AGAINST.value) as f:
            before = json.load(f)
        diffs = [k for k in sorted(set(before) | set(fp)) if before.get(k) != fp.get(k)]
        for k in diffs:
            print(f"differs: {k} ({before.get(k, 'absent')[:12]} -> {fp.get(k, 'absent')[:12]})")
        print(f"{len(diffs)} of {len(set(before) | set(fp))} differ")
        sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    app.run(main)
