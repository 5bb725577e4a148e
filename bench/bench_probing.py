r"""Our sparse probing (gemmascope.eval.probing) against sae-bench 0.6.0's on the same SAE,
activations and labels.

    python bench/bench_probing.py --sae=workdirs/sm_rl_ds1/saes/.../params.npz   # venv /tmp/saebench-venv
    python bench/bench_probing.py --sae=... --no_write                          # BENCHMARKS.md untouched

Run by hand, not by the test suite. sae-bench lives in its own venv (``python3.11 -m venv``, then
``pip install torch==2.13.0 sae-bench==0.6.0``: torch pinned, its CPU wheel), made here when absent.
sae-bench pulls torchvision 0.28.0's CUDA wheel, which does not load against the CPU torch
(``operator torchvision::nms does not exist``) and breaks transformers' imports, so it is removed
from that venv (nothing here needs it). And with the jaxtyping (0.3.11) and beartype (0.23.1) it
installs, sae-bench's ``train_probe_on_activations`` fails its own runtime shape check: its class
dict binds ``train_dataset_size`` to the ``N`` texts of a class, then the probe it calls gets the
``2N`` texts of a balanced task (``BeartypeCallHintParamViolation``: "size of dimension
train_dataset_size is 80 which does not equal the existing value of 40"). The checker runs with
``JAXTYPING_DISABLE=1``, which turns those annotations off and changes no computation.

What runs: the embedded LM of the SAE's workdir config (``config.json`` two folders above
``saes/``), ``--topics`` of the embedded fortunes corpus as one-vs-rest tasks (our
:func:`~gemmascope.eval.probing.make_tasks`, splits by document). Here: our pooled features
(:func:`~gemmascope.eval.probing.pooled_features`) and probes at every k; the texts' token-level
activations (zero off real text) and the SAE go to ``bench/saebench_probing_check.py`` in sae-bench's
venv, which pools them with sae-bench's functions and probes (1) our exact tasks with its top-k
selection and sklearn probe, and (2) its own negative sampling through ``train_probe_on_activations``.
Goal: mean accuracy within 1 percentage point of sae-bench's at every k on (1); (2) differs by the
negatives drawn, so its gap is the noise of that draw. Prints and, unless ``--no_write``, appends a
section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gemmascope.data import sites as sites_lib  # noqa: E402
from gemmascope.eval import probing as P  # noqa: E402
from gemmascope.sae.files import io as sae_io  # noqa: E402

PINS = ("torch==2.13.0", "sae-bench==0.6.0")
GOAL_PP = 1.0
SECTION = "## Sparse probing against sae-bench 0.6.0 (bench/bench_probing.py)"
CHECKER = os.path.join(ROOT, "bench", "saebench_probing_check.py")


def ensure_venv(venv: str, base_python: str) -> str:
    """The venv's python, with :data:`PINS` installed and torchvision removed (module doc)."""
    python = os.path.join(venv, "bin", "python")
    code = "from importlib.metadata import version as v; print(v('sae-bench'), v('torch'))"
    have = subprocess.run([python, "-c", code], capture_output=True, text=True) if os.path.exists(python) else None
    if not (have and have.returncode == 0 and have.stdout.split()[0] == "0.6.0"):
        if not os.path.exists(python):
            subprocess.run([base_python, "-m", "venv", venv], check=True)
        print(f"pip install {' '.join(PINS)} (several minutes)", flush=True)
        run = subprocess.run([python, "-m", "pip", "install", "-q", *PINS], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"pip install {' '.join(PINS)} failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision"], capture_output=True)
    return python


def token_activations(lm, texts, layer, site, settings, factor) -> np.ndarray:
    """``[n, T, d]`` float32: each text's activations at its kept tokens (our rows: real text less
    norm outliers), zero elsewhere, as sae-bench's collection leaves masked positions."""
    out = None
    for idx, toks, mask in P.text_batches(lm.tokenizer, texts, lm.cfg, settings.context_length, settings.batch_texts):
        act, keep = sites_lib.capture(lm, toks, mask, [(layer, site)], factor)[(layer, site)]
        a = np.asarray(act) * np.asarray(keep)[..., None]
        if out is None:
            out = np.zeros((len(texts), settings.context_length, a.shape[-1]), np.float32)
        out[idx, : a.shape[1]] = a[: len(idx)]
    last = int(np.max(np.nonzero(np.abs(out).sum((0, 2)))[0])) + 1
    return out[:, :last]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", required=True, help="an exported JumpReLU SAE's params.npz (metadata.json beside it)")
    ap.add_argument("--venv", default="/tmp/saebench-venv")
    ap.add_argument("--python", default="python3.11", help="the interpreter that makes the venv")
    ap.add_argument("--topics", default="computers,cookie,definitions,people,politics")
    ap.add_argument("--n_train", type=int, default=200)
    ap.add_argument("--n_test", type=int, default=100)
    ap.add_argument("--k", default="1,2,5,10,20,50")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--no_write", action="store_true")
    ap.add_argument("--from_dir", default=None, help="report from a finished run's in.npz and out.json")
    args = ap.parse_args()

    python = ensure_venv(args.venv, args.python)
    from gemmascope import config as config_lib
    from gemmascope.config import files as config_files
    from gemmascope.lm.loading import load_lm

    workdir = args.sae[: args.sae.index("/saes/")] if "/saes/" in args.sae else os.path.dirname(args.sae)
    config = config_lib.prepare(config_files.load_saved(workdir))
    meta = sae_io.load_metadata(args.sae)
    layer, site = int(meta["layer"]), str(meta["site"])
    sae = sae_io.load_params(args.sae)
    if "threshold" not in sae:
        sys.exit(f"{args.sae}: not a JumpReLU SAE (the checker loads it into SAELens's JumpReLUSAE)")
    ks = tuple(int(k) for k in args.k.split(","))
    settings = P.ProbingSettings(
        k_values=(*ks, None), n_train=args.n_train, n_test=args.n_test, topics=tuple(args.topics.split(","))
    )
    if args.from_dir:  # report again from a finished run's files (no LM, no sae-bench)
        finish(args, settings, os.path.join(args.from_dir, "in.npz"), os.path.join(args.from_dir, "out.json"), meta)
        return
    texts, labels, names = P.fortune_topics()
    is_test = P.split_of(texts, settings.test_fraction, settings.salt)
    tasks = P.make_tasks(labels, names, is_test, settings)
    used = np.unique(np.concatenate([np.concatenate([t.train, t.test]) for t in tasks]))
    where = np.full(len(texts), -1)
    where[used] = np.arange(len(used))
    sub = [texts[i] for i in used]
    factor = float(config.lm.outlier_norm_factor)
    lm = load_lm(config.lm.checkpoint, config.lm.dtype, log=print)
    print(f"{len(tasks)} tasks, {len(sub)} texts; layer {layer} {site}; SAE {args.sae}", flush=True)
    raw, (codes,), _ = P.pooled_features(lm, sub, layer, site, [sae], settings, factor)
    acts = token_activations(lm, sub, layer, site, settings, factor)
    local = [P.Task(t.name, where[t.train], t.train_y, where[t.test], t.test_y) for t in tasks]

    work = tempfile.mkdtemp(prefix="probing-saebench-")
    arrays = {"acts": acts, "ours_raw": raw, "ours_sae": codes, **{k: sae[k] for k in ("W_enc", "W_dec", "b_enc")}}
    arrays.update(b_dec=sae["b_dec"], threshold=sae["threshold"])
    for i, t in enumerate(local):
        arrays.update({f"task{i}_train": t.train, f"task{i}_train_y": t.train_y})
        arrays.update({f"task{i}_test": t.test, f"task{i}_test_y": t.test_y})
        c = names.index(t.name)
        for side, pos, flag in (("train", t.train[t.train_y == 1], False), ("test", t.test[t.test_y == 1], True)):
            assert (labels[used[pos]] == c).all() and (is_test[used[pos]] == flag).all()
            arrays[f"class_{side}_{t.name}"] = pos  # the class's texts on each side: (2)'s class dict
    arrays["meta"] = np.array(json.dumps({"tasks": [t.name for t in local], "k_values": list(ks)}))
    np.savez(os.path.join(work, "in.npz"), **arrays)
    # JAXTYPING_DISABLE: module doc (sae-bench's shape annotations reject its own call)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="", JAXTYPING_DISABLE="1")
    out = os.path.join(work, "out.json")
    run = subprocess.run([python, CHECKER, os.path.join(work, "in.npz"), out], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"sae-bench's side failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    print(f"inputs and sae-bench's results in {work}", flush=True)
    finish(args, settings, os.path.join(work, "in.npz"), out, meta)


def finish(args, settings, inp: str, out: str, meta) -> None:
    """Our probes on the pooled features and tasks in ``inp``, against sae-bench's ``out``."""
    z = np.load(inp)
    names = json.loads(str(z["meta"]))["tasks"]
    tasks = [
        P.Task(n, z[f"task{i}_train"], z[f"task{i}_train_y"], z[f"task{i}_test"], z[f"task{i}_test_y"])
        for i, n in enumerate(names)
    ]
    ours = {
        "llm": P.probe_features(z["ours_raw"], tasks, settings),
        "sae": P.probe_features(z["ours_sae"], tasks, settings),
    }
    with open(out) as fh:
        ref = json.load(fh)
    ref["flips"] = threshold_flips(z)
    ks = [k for k in settings.k_values if k is not None]
    lines, ok = report(ours, ref, ks, names)
    print("\n".join(lines))
    if not args.no_write:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as fh:
            fh.write(section(lines, ok, args, meta, len(z["ours_raw"]), ref))


def threshold_flips(z, tol: float = 1e-3) -> dict[str, float]:
    """Our pooled SAE codes against a float64 NumPy encode of the same token activations: how many
    ``(text, latent)`` entries differ by more than ``tol``, and the largest such entry's closest
    pre-activation to its threshold (a JumpReLU code jumps by the threshold there, so a token within
    float32 rounding of it moves the text's mean by ``threshold / n_tokens``)."""
    acts, w, b, th = z["acts"], z["W_enc"].astype(np.float64), z["b_enc"].astype(np.float64), z["threshold"]
    worst, count, margin = 0.0, 0, float("nan")
    for s in range(0, len(acts), 100):
        a = acts[s : s + 100].astype(np.float64)
        keep = np.abs(a).sum(-1) != 0
        pre = a @ w + b
        f = (pre * (pre > th) * keep[..., None]).sum(1) / keep.sum(1)[:, None]
        d = np.abs(f - z["ours_sae"][s : s + 100])
        count += int((d > tol).sum())
        if d.max() > worst:
            worst = float(d.max())
            i, j = np.unravel_index(d.argmax(), d.shape)
            margin = float(np.abs(pre[i, keep[i], j] - th[j]).min())
    return {"over_tol": count, "entries": int(z["ours_sae"].size), "max_abs_diff": worst, "margin": margin, "tol": tol}


def report(ours, ref, ks, tasks) -> tuple[list[str], bool]:
    """Markdown table rows: per features and k, our mean accuracy, sae-bench's on the same tasks
    and with its own sampling, the gaps in percentage points, and how many of the task accuracies
    differ at all on the same tasks."""
    ok, lines = True, []
    lines.append(
        "| features | k | ours | sae-bench, same tasks | gap (pp) | tasks differing | sae-bench, own sampling "
        "(mean +- sd over 5 seeds) | gap (pp) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for kind in ("llm", "sae"):
        for k in [*ks, None]:
            n = P.k_name(k)
            mine = ours[kind]["mean"][n]
            per_seed = np.mean([ref["own_sampling"][kind][n][t] for t in tasks], axis=0)  # [seeds]
            own, spread = float(per_seed.mean()), float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
            if k is None:
                same_cell, gap, differ = "n/a", "", ""
            else:
                same = float(np.mean([ref["same_tasks"][kind][t][n] for t in tasks]))
                differ = sum(ours[kind]["tasks"][t][n] != ref["same_tasks"][kind][t][n] for t in tasks)
                ok = ok and abs(mine - same) * 100 <= GOAL_PP
                same_cell, gap, differ = f"{same:.4f}", f"{(mine - same) * 100:+.2f}", f"{differ}/{len(tasks)}"
            label = "raw activations" if kind == "llm" else "SAE latents"
            lines.append(
                f"| {label} | {n} | {mine:.4f} | {same_cell} | {gap} | {differ} | {own:.4f} +- {spread:.4f} | "
                f"{(mine - own) * 100:+.2f} |"
            )
    return lines, ok


def section(lines, ok, args, meta, n_texts, ref) -> str:
    pool, fl = ref["pool_max_abs_diff"], ref["flips"]
    rel = {k: pool[k] / max(ref["pool_max_abs"][k], 1e-30) for k in pool}
    return (
        f"\n{SECTION}\n\n"
        f"SAE `{args.sae}` ({meta.get('architecture')}, layer {meta.get('layer')} {meta.get('site')}, d_sae "
        f"{meta.get('d_sae')}); topics {args.topics} of the embedded corpus as one-vs-rest tasks, up to "
        f"{args.n_train} train / {args.n_test} test positives per task and as many negatives, {n_texts} texts, "
        f"x86_64 CPU, {args.date}. Pooled features: sae-bench's pooling of the same token activations against "
        f"ours, max |diff| {pool['llm']:.1e} raw ({rel['llm']:.1e} of the largest), {pool['sae']:.1e} SAE "
        f"({rel['sae']:.1e}); against a float64 NumPy encode, {fl['over_tol']} of {fl['entries']:,} (text, latent) "
        f"entries of our pooled codes differ by over {fl['tol']:g} (largest {fl['max_abs_diff']:.3f}, where a token's "
        f"pre-activation is {fl['margin']:.1e} from its threshold: JumpReLU jumps by the threshold there, so float32 "
        "rounding in either code moves that text's mean by threshold / n_tokens). Same tasks: our texts and labels through sae-bench's top-k mask and sklearn probe on "
        "its pooled features. Own sampling: sae-bench's `train_probe_on_activations` on the same classes, its own "
        "negatives (seeds 42-46: mean and standard deviation over seeds of the mean over tasks); `all` is its AdamW probe with early stopping on the test set against our z-scored "
        f"L-BFGS fit. Goal: same-task gap within {GOAL_PP:g} pp at every k: {'PASS' if ok else 'FAIL'}.\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
